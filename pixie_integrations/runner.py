"""Forward passes per model family: right-padded batches, the head applied at the last real token only.

Template families can also run a batch whose pairs share one query: the prefix (system prompt, instruction and query,
about a quarter of a typical input) goes through the model once, and its key/value cache serves every document.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from .batching import bucket_shape
from .encoding import EncodedPair
from .families import ModelFamily
from .last_layer import SCORED_TOKENS, enable_scored_tokens_only
from .loading import LoadedModel
from .packing import PREFIX_KV, PackedBatch, enable_packed_attention, fast_kernel, pack, pack_with_prefix

__all__ = ["ModelRunner", "PrefixState"]

PrefixState = list[tuple[torch.Tensor, torch.Tensor]]
"""Per-layer (keys, values) of one query's prefix, batch size 1."""

logger = logging.getLogger(__name__)


class ModelRunner:
    """Computes float32 logits for batches of encoded pairs on the model's device."""

    def __init__(
        self, loaded: LoadedModel, *, compile: bool = False, token_budget: int = 1024, pack: bool = False
    ) -> None:
        self._loaded = loaded
        self._compile = compile
        self._token_budget = token_budget
        model = loaded.model
        tokenizer = loaded.tokenizer
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        # Padding sits right of every sequence and the causal mask keeps it out of the real tokens, so any id works
        # and config.pad_token_id is never needed.
        self._pad_id = int(pad)
        self._head_weight: torch.Tensor | None = None
        self._head_bias: torch.Tensor | None = None
        family = loaded.family
        if family is ModelFamily.ENCODER:
            self._backbone = model
        else:
            self._backbone = getattr(model, model.base_model_prefix)
            if family is ModelFamily.QWEN3_SEQ_CLS:
                head = model.score
                self._head_weight = head.weight.detach().float().reshape(-1).to(loaded.device)
                if getattr(head, "bias", None) is not None:
                    self._head_bias = head.bias.detach().float().reshape(()).to(loaded.device)
            else:
                yes, no = (_single_token_id(tokenizer, word) for word in ("yes", "no"))
                lm_head = model.get_output_embeddings().weight.detach()
                # log P(yes)/P(no) over {yes, no} is one row difference: the seq-cls conversion of the same weights.
                self._head_weight = (lm_head[yes].float() - lm_head[no].float()).to(loaded.device)
        # transformers 5.24 renamed `past_key_values` to `cache`; earlier 5.x releases only know the old name.
        parameters = inspect.signature(self._backbone.forward).parameters
        self._cache_kw = "cache" if "cache" in parameters else "past_key_values"
        self.packs = pack and family.uses_template and self._enable_packing()
        # With a variable-length CUDA kernel, or compiled (a cached prefix, indexed per layer, would give each layer
        # a graph of its own), a shared prefix runs inside each packed batch (pack_with_prefix); otherwise packed
        # batches read a query's cached prefix, which then runs once per query, not once per batch.
        self._prefix_in_batch = compile or fast_kernel(loaded.device, loaded.dtype) is not None
        # Where packed attention runs segment_attention, the last layer runs for each pair's last token only.
        self._scored_only = self.packs and not self._prefix_in_batch and self._enable_scored_only()
        # Packed batches are trusted once one has run: a first failure (a kernel this torch lacks, a signature it
        # changed) falls back to padded batches, logged; a later failure is a real error and propagates.
        self._packed_ran = False
        self._forward = self._backbone
        self._compiled_ran = False  # as for packing: only a first compiled call's failure falls back
        if compile:
            self._forward = _compiled(loaded, self._backbone, dynamic=self.packs)

    def _model(self, **inputs: Any) -> Any:
        """The backbone's forward, compiled if asked; where compilation fails on its first call (no Triton, no
        C++ compiler, an unsupported device), log it once and run uncompiled from then on."""
        if not self._compile or self._compiled_ran:
            return self._forward(**inputs)
        try:
            out = self._forward(**inputs)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001  (any compiler failure: the eager model still scores)
            logger.warning(
                "torch.compile failed on this setup (%s: %s); running the model uncompiled (same scores).",
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            self._compile = False
            self._forward = self._backbone
            return self._forward(**inputs)
        self._compiled_ran = True
        return out

    def _enable_packing(self) -> bool:
        with self._loaded.lock:
            if enable_packed_attention(self._loaded.model):
                return True
        logger.warning(
            "%s: packed batches need SDPA attention without sliding windows (this model has %r); padding instead.",
            self._loaded.name,
            getattr(self._loaded.model.config, "_attn_implementation", None),
        )
        return False

    def _enable_scored_only(self) -> bool:
        with self._loaded.lock:
            return enable_scored_tokens_only(self._backbone)

    @property
    def supports_shared_prefix(self) -> bool:
        """Whether :meth:`encode_prefix` / :meth:`run_with_prefix` apply (template families only)."""
        return self._loaded.family.uses_template

    @torch.inference_mode()
    def __call__(self, batch: Sequence[EncodedPair], *, share_prefix: bool = False) -> torch.Tensor:
        """Logits for whole inputs, one row each. ``share_prefix``: the pairs share one prefix, which a packed batch
        then runs once (padded batches share it only through :meth:`run_with_prefix`)."""
        device = self._loaded.device
        if self.packs:
            return self._packed_or_padded(
                lambda: self._run_packed(batch, share_prefix), lambda: self(batch, share_prefix=share_prefix)
            )
        rows = [pair.input_ids for pair in batch]
        if self._compile and self._loaded.family is not ModelFamily.ENCODER:
            return self._run_bucketed(rows)
        shape: dict[str, int] = {}
        if self._compile:
            n_rows, width = bucket_shape(len(rows), max(len(r) for r in rows), self._token_budget)
            shape = {"n_rows": n_rows, "width": width}
        ids, mask, lengths = _pad(rows, self._pad_id, **shape)
        if self._loaded.family is ModelFamily.ENCODER:
            # Bidirectional: padding needs its mask here (padded rows and columns are masked out the same way).
            inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
            if batch[0].token_type_ids is not None:
                types, _, _ = _pad([pair.token_type_ids or () for pair in batch], 0, **shape)
                inputs["token_type_ids"] = types.to(device)
            with _compile_step(self._loaded, tuple(ids.shape)) if self._compile else contextlib.nullcontext():
                logits = self._model(**inputs).logits
            return logits[: len(rows), 0].float().cpu()
        # No attention mask: padding sits right of each row and attention is causal, so no real token ever sees a
        # pad and the scores are those of a masked pass; SDPA then runs its causal kernel instead of a masked one.
        hidden = self._model(input_ids=ids.to(device), use_cache=False).last_hidden_state
        return self._head(hidden, lengths)

    @property
    def prefix_in_batch(self) -> bool:
        """Whether a packed batch of pairs sharing a prefix runs that prefix itself (``__call__`` with
        ``share_prefix``), rather than reading its cached keys and values (:meth:`run_with_prefix`)."""
        return self.packs and self._prefix_in_batch

    def _packed_or_padded(self, packed: Callable[[], torch.Tensor], padded: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run a packed batch; where the first one fails on this setup, stop packing and run it padded."""
        try:
            logits = packed()
        except torch.OutOfMemoryError:
            raise  # the scorer splits the batch and retries
        except Exception as exc:
            if self._packed_ran:
                raise
            self._stop_packing(exc)
            return padded()
        self._packed_ran = True
        return logits

    def _stop_packing(self, exc: Exception) -> None:
        logger.warning(
            "Packed batches failed on this setup (%s: %s); running padded batches instead (same scores).",
            type(exc).__name__,
            exc,
        )
        self.packs = False
        if self._compile:  # the compiled graph was the packed one: pad to static buckets instead
            self._forward = _compiled(self._loaded, self._backbone, dynamic=False)

    def _run_packed(self, batch: Sequence[EncodedPair], share_prefix: bool) -> torch.Tensor:
        """The whole batch as one packed sequence: no padding; attention stays within each pair (packing.py).
        With ``share_prefix``, the common prefix is one segment, run once, that every document attends to."""
        if share_prefix:
            packed = pack_with_prefix(batch[0].prefix, [pair.rest for pair in batch])
        else:
            packed = pack([pair.input_ids for pair in batch])
        # Compiled with dynamic shapes: one graph for every plain packed batch, one for every shared-prefix one.
        label = "packed batches with a shared prefix" if share_prefix else "packed batches"
        with _compile_step(self._loaded, label) if self._compile else contextlib.nullcontext():
            return self._forward_packed(packed)

    def _run_packed_rests(self, state: PrefixState, batch: Sequence[EncodedPair]) -> torch.Tensor:
        """The documents and suffixes of pairs sharing a cached prefix, packed: they attend to the prefix's cached
        keys and values, then to their own (segment_attention)."""
        packed = pack([pair.rest for pair in batch], first_position=int(state[0][0].shape[-2]))
        return self._forward_packed(packed, **{PREFIX_KV: state})

    def _forward_packed(self, packed: PackedBatch, **extra: Any) -> torch.Tensor:
        """The model on one packed batch (``extra``: more keyword arguments for attention); the head at each pair's
        last token."""
        last = packed.last.to(self._loaded.device)
        if self._scored_only:  # the model returns the scored tokens' hidden states only
            extra[SCORED_TOKENS] = last
        hidden = self._model(**packed.model_kwargs(self._loaded.device), **extra).last_hidden_state
        return self._logits(hidden[0] if self._scored_only else hidden[0, last])

    def _run_bucketed(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        """The compiled forward on a batch padded to its bucket (few distinct shapes: one compilation each)."""
        n_rows, width = bucket_shape(len(rows), max(len(r) for r in rows), self._token_budget)
        ids, _, lengths = _pad(rows, self._pad_id, n_rows=n_rows, width=width)
        with _compile_step(self._loaded, (n_rows, width)):
            hidden = self._model(input_ids=ids.to(self._loaded.device), use_cache=False).last_hidden_state
        return self._head(hidden, lengths)[: len(rows)]

    @torch.inference_mode()
    def encode_prefix(self, prefix: Sequence[int]) -> PrefixState:
        """Run a query's prefix (system prompt, instruction, query) once; its per-layer keys and values."""
        cache = _new_cache(self._loaded.model.config)
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=self._loaded.device)
        self._backbone(input_ids=ids, use_cache=True, **{self._cache_kw: cache})  # fills the cache in place
        return [(layer.keys, layer.values) for layer in cache.layers]

    @torch.inference_mode()
    def run_with_prefix(self, state: PrefixState, batch: Sequence[EncodedPair]) -> torch.Tensor:
        """Logits for pairs sharing the prefix that ``state`` holds: only their documents and suffixes run."""
        if self.packs:
            return self._packed_or_padded(
                lambda: self._run_packed_rests(state, batch), lambda: self.run_with_prefix(state, batch)
            )
        device = self._loaded.device
        cache = _new_cache(self._loaded.model.config)
        for layer, (keys, values) in enumerate(state):
            size = (len(batch), -1, -1, -1)
            cache.update(keys.expand(size), values.expand(size), layer)
        ids, _, lengths = _pad([pair.rest for pair in batch], self._pad_id)
        # As in __call__, the right padding needs no mask: only the causal one, offset by the cached prefix.
        # Eager even with compile=True: the cached prefix's length differs per query, so no shape bucket fits it.
        hidden = self._backbone(input_ids=ids.to(device), use_cache=True, **{self._cache_kw: cache}).last_hidden_state
        return self._head(hidden, lengths)

    def _head(self, hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The one-logit head at each row's last real token, in float32."""
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return self._logits(hidden[rows, (lengths - 1).to(hidden.device)])

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        """The one-logit head on each pair's last hidden state (pairs x hidden), in float32, on the CPU."""
        assert self._head_weight is not None
        logits = last.float() @ self._head_weight
        if self._head_bias is not None:
            logits = logits + self._head_bias
        return logits.cpu()


def _pad(
    rows: Sequence[Sequence[int]], pad_id: int, *, n_rows: int | None = None, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad rows of ids (to ``n_rows`` x ``width`` if given; extra rows are all padding, length 1); returns
    (ids, attention mask, lengths) on the CPU."""
    n_rows = n_rows or len(rows)
    lengths = torch.tensor([len(r) for r in rows] + [1] * (n_rows - len(rows)), dtype=torch.long)
    width = width or int(lengths.max())
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return ids, mask, lengths


def _new_cache(config: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=config)


def _compiled(loaded: LoadedModel, backbone: torch.nn.Module, *, dynamic: bool) -> torch.nn.Module:
    """One compiled backbone per loaded model and kind, shared by every scorer: static shapes (one graph per shape
    bucket) for padded batches, dynamic shapes (one graph) for packed ones."""
    key = "dynamic" if dynamic else "static"
    with loaded.lock:
        if key not in loaded.compiled:
            cache = _inductor_cache_dir()
            # Each bucket is one graph: allow as many as a budget's buckets, not dynamo's default of 8.
            torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _MAX_BUCKETS)
            logger.info(
                "torch.compile for %s: %s (seconds to minutes the first time; compiled code is cached in %s, so "
                "later processes start warm).",
                loaded.name,
                "packed batches, dynamic shapes: one compilation"
                if dynamic
                else "static shapes, one compilation per batch-shape bucket",
                cache,
            )
            loaded.compiled[key] = _compile_regions(backbone, dynamic=dynamic)
        return loaded.compiled[key]


def _compile_regions(backbone: torch.nn.Module, *, dynamic: bool) -> torch.nn.Module:
    """The backbone with each decoder layer compiled ("regional compilation"), else the whole backbone compiled.

    The layers are identical blocks, so one compiled layer graph serves all of them (parameters are graph inputs):
    compilation takes one layer's time, not the model's. The shared model itself is left as it is: the compiled
    layers sit in a shallow copy of the backbone (same parameters), so uncompiled scorers of it stay uncompiled.
    """
    layers = getattr(backbone, "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return torch.compile(backbone, dynamic=dynamic)  # type: ignore[return-value]
    regional = copy.copy(backbone)
    regional._modules = dict(backbone._modules)  # its own child table: replacing `layers` leaves the original's
    regional.layers = torch.nn.ModuleList(torch.compile(layer, dynamic=dynamic) for layer in layers)
    return regional


_MAX_BUCKETS = 256
_compiled_shapes: dict[int, set[tuple[int, int] | str]] = {}
_compiled_shapes_lock = threading.Lock()


@contextlib.contextmanager
def _compile_step(loaded: LoadedModel, shape: tuple[int, int] | str) -> Iterator[None]:
    """Log a bucket's first (compiling) forward and how long it took; later forwards of that shape log nothing."""
    with _compiled_shapes_lock:
        seen = _compiled_shapes.setdefault(id(loaded), set())
        first = shape not in seen
        seen.add(shape)
    if not first:
        yield
        return
    what = f"{shape} (dynamic shapes)" if isinstance(shape, str) else f"batch shape {shape[0]} x {shape[1]} tokens"
    logger.info("Compiling for %s (graph %d of this model)...", what, len(seen))
    start = time.perf_counter()
    yield
    logger.info("Compiled for %s in %.1f s.", what, time.perf_counter() - start)


def _inductor_cache_dir() -> str:
    """Inductor's on-disk cache: ``$TORCHINDUCTOR_CACHE_DIR`` if set, else one under the user's cache folder."""
    path = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not path:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "pixie-integrations", "torchinductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = path  # read by Inductor when it compiles
    return path


def _single_token_id(tokenizer: object, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if len(ids) != 1:
        raise ValueError(f"The tokenizer splits {word!r} into {len(ids)} tokens; a Qwen3-Reranker needs one.")
    return int(ids[0])
