"""PixieScorer: exact PIXIE (and Qwen3-Reranker, and encoder cross-encoder) scores on plain transformers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .batching import plan_pair_batches
from .cpu import cpu_defaults, log_cpu_path_once
from .encoding import EncodedPair, PairEncoder, check_max_doc_tokens
from .families import ModelFamily
from .loading import LoadedModel, load_model
from .packing import fast_kernel
from .ranking import RankResult, check_top_n, rank_by_score
from .runner import ModelRunner, PrefixState
from .template import DEFAULT_INSTRUCTION
from .validation import check_documents, check_pairs, check_query

if TYPE_CHECKING:
    from .engine import ScoringEngine

__all__ = ["DEFAULT_MODEL", "PixieScorer", "RankResult"]

logger = logging.getLogger(__name__)

PrefixCache = tuple[tuple[int, ...], PrefixState] | None
"""One prefix and its KV cache, kept while the batches of its query run."""

DEFAULT_MODEL = "telepix/PIXIE-Spell-Reranker-Preview-0.6B"

# Padded tokens per forward pass. Large batches feed a GPU; on CPU small ones win (per CPU class: cpu.py).
_DEFAULT_TOKEN_BUDGET = {"cuda": 16384, "mps": 8192}
# Above this many pairs a progress bar is worth showing (when show_progress_bar is left to decide).
_PROGRESS_MIN_PAIRS = 2000


class PixieScorer:
    """Scores (query, document) pairs with a PIXIE-style reranker, exactly as the model card's code does.

    One instance wraps one loaded checkpoint; instances asking for the same checkpoint, device and dtype share the
    model in memory (also across threads), so every framework adapter can hold its own scorer cheaply.

    Args:
        model: Hugging Face Hub id or local folder of the checkpoint.
        device: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"`` or a ``torch.device``; ``None`` picks cuda, then mps,
            then cpu.
        dtype: A ``torch.dtype`` or its name (``"float32"``, ``"bfloat16"``, ``"float16"``). ``None`` picks bfloat16
            on CUDA and on CPUs with bf16 matrix units (AMX, AVX512-BF16), float32 elsewhere. Use ``"float32"`` to reproduce the model
            card's printed scores to 1e-5; the sigmoid always runs in float32.
        max_length: Most tokens of one whole (query, document) input, template included. ``None``: the model's own
            limit (40960 for PIXIE). Longer inputs lose the end of the document only; the template is never cut.
        instruction: The task instruction of the prompt template, used when a call gives none. It changes the
            scores: describe your domain's task here. Ignored by encoder cross-encoders, which take no template.
        family: Force a :class:`~pixie_integrations.ModelFamily` instead of detecting it from the config.
        revision: Hub revision (branch, tag or commit) to load.
        token: Hugging Face token for private or gated checkpoints.
        cache_dir: Where the Hub cache lives, if not the default.
        local_files_only: Never touch the network; load from the local cache or folder only.
        trust_remote_code: Allow checkpoints that ship their own modelling code (some encoder rerankers need it).
        token_budget: Most padded tokens in one forward pass. ``None``: 16384 on CUDA, 8192 on MPS, 1024 on CPU
            (small batches are faster on CPU, large ones on GPU; measured per CPU class: docs/performance.md).
            It bounds peak memory; a CUDA out-of-memory error splits the batch and retries.
        batch_size: Most pairs in one forward pass, on top of the token budget. ``None``: no cap.
        show_progress_bar: Show a tqdm bar over batches. ``None``: only for calls with many pairs.
        attn_implementation: Passed to transformers (``"sdpa"``, ``"eager"``, ``"flash_attention_2"``).
        model_kwargs: Extra keyword arguments for ``from_pretrained`` of the model.
        tokenizer_kwargs: Extra keyword arguments for ``AutoTokenizer.from_pretrained``.
        config_kwargs: Extra keyword arguments for ``AutoConfig.from_pretrained`` (config attributes to override).
        reuse_prefix: Run the shared part of a query's inputs (system prompt, instruction, query) once and reuse it
            for all of that query's documents. Same scores, a fifth less compute. Padded batches, and packed ones
            on a CPU, read the prefix's key/value cache (the prefix runs once per query); packed batches on CUDA
            hold the prefix once per batch, every document attending to it. ``None``: on for CPU and MPS; off on
            CUDA (with padded batches the cache-extended attention mask cost more than it saved there; packed
            prefix sharing is not yet timed on a GPU) and with ``compile=True`` on padded batches (a cached prefix
            runs eager).
        compile: ``torch.compile`` the model. Packed batches compile once with dynamic shapes (one more graph for
            the shared-prefix layout); padded batches use static shapes, each batch padded up to one of a few
            (rows x tokens) buckets that compiles once. Each compilation is logged with its time (seconds to
            minutes) and cached on disk (``$TORCHINDUCTOR_CACHE_DIR``, else the user's cache folder), so the next
            process starts warm. Shared by every scorer of the same loaded model.
        pack: Run each batch as one packed sequence: no padding, and attention stays within each pair. On CUDA a
            variable-length FlashAttention kernel runs it (torch >= 2.9 with bf16/fp16, or the ``flash-attn``
            package); elsewhere each pair's attention runs as blocked matrix multiplies, which on a CPU is faster
            than SDPA's masked kernel. ``None``: on where the CUDA kernel exists; on a CPU, per CPU class
            (on for every class); off elsewhere. Needs SDPA attention (the default) and
            a template family; if the first packed batch fails, the scorer logs a warning and pads from then on.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] = DEFAULT_MODEL,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        max_length: int | None = None,
        instruction: str = DEFAULT_INSTRUCTION,
        family: ModelFamily | str | None = None,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        token_budget: int | None = None,
        batch_size: int | None = None,
        show_progress_bar: bool | None = None,
        attn_implementation: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        tokenizer_kwargs: dict[str, Any] | None = None,
        config_kwargs: dict[str, Any] | None = None,
        reuse_prefix: bool | None = None,
        compile: bool = False,
        pack: bool | None = None,
    ) -> None:
        if not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, not {type(instruction).__name__}")
        if token_budget is not None and token_budget <= 0:
            raise ValueError(f"token_budget must be positive, got {token_budget}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._loaded: LoadedModel = load_model(
            os.fspath(model),
            device=device,
            dtype=dtype,
            family=family,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            trust_remote_code=trust_remote_code,
            local_files_only=local_files_only,
            attn_implementation=attn_implementation,
            model_kwargs=model_kwargs,
            tokenizer_kwargs=tokenizer_kwargs,
            config_kwargs=config_kwargs,
        )
        self.instruction = instruction
        cpu = self.device.type == "cpu"
        if token_budget is None:
            token_budget = cpu_defaults().token_budget if cpu else _DEFAULT_TOKEN_BUDGET.get(self.device.type, 2048)
        self.token_budget = token_budget
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self._encoder = PairEncoder(self._loaded, max_length=max_length)
        kernel = fast_kernel(self.device, self.dtype)
        if pack is None:
            # CUDA: where a variable-length kernel exists. CPU: per CPU class, compiled or not (on Zen 4, compiled
            # packed batches ran 1.4x compiled padded ones).
            pack = kernel is not None or (cpu and cpu_defaults().pack)
        self._runner = ModelRunner(self._loaded, compile=compile, token_budget=self.token_budget, pack=pack)
        if reuse_prefix is None:
            # Compiled padded batches have bucketed static shapes; a cached prefix (its length differs per query)
            # runs eager. Packed batches share the prefix compiled or not (read from its cache, or run in-batch).
            reuse_prefix = (self._runner.packs or not compile) and (
                cpu_defaults().reuse_prefix if cpu else self.device.type != "cuda"
            )
        self.reuse_prefix = reuse_prefix and self._runner.supports_shared_prefix
        if cpu:
            dtype_name = str(self.dtype).removeprefix("torch.")
            log_cpu_path_once(dtype_name, self.token_budget, self.reuse_prefix, torch.get_num_threads(), self.pack)
        elif self.device.type == "cuda":
            logger.info(
                "%s on %s: %s, %s, token budget %d, compile=%s, prefix reuse %s.",
                self.model_name,
                torch.cuda.get_device_name(self.device),
                str(self.dtype).removeprefix("torch."),
                f"packed batches ({kernel})" if self.pack else "padded batches",
                self.token_budget,
                compile,
                "on" if self.reuse_prefix else "off",
            )
        if self.family is ModelFamily.ENCODER and instruction != DEFAULT_INSTRUCTION:
            logger.warning("%s is an encoder cross-encoder: it takes no prompt, so the instruction is ignored.", model)

    # -- what was loaded -------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The ``model`` argument this scorer was built with (hub id or path)."""
        return self._loaded.name

    @property
    def family(self) -> ModelFamily:
        """How this checkpoint is scored."""
        return self._loaded.family

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self._loaded.device

    @property
    def dtype(self) -> torch.dtype:
        """The model's weight dtype (the sigmoid always runs in float32)."""
        return self._loaded.dtype

    @property
    def pack(self) -> bool:
        """Whether batches run packed (see the ``pack`` argument; off after a failed first packed batch)."""
        return self._runner.packs

    @property
    def max_length(self) -> int:
        """Most tokens of one whole (query, document) input."""
        return self._encoder.max_length

    @property
    def model(self) -> Any:
        """The underlying ``transformers`` model (shared: do not modify it)."""
        return self._loaded.model

    @property
    def tokenizer(self) -> Any:
        """The underlying ``transformers`` tokenizer (shared)."""
        return self._loaded.tokenizer

    def __repr__(self) -> str:
        return (
            f"PixieScorer(model={self.model_name!r}, family={self.family.value!r}, device={str(self.device)!r}, "
            f"dtype={str(self.dtype).removeprefix('torch.')!r}, max_length={self.max_length})"
        )

    # -- scoring ---------------------------------------------------------------------------------------------------
    def score(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
    ) -> list[float]:
        """Score each document against one query.

        Args:
            query: The search query.
            documents: Document texts; an empty list gives ``[]``.
            instruction: Task instruction for this call; ``None`` uses the scorer's.
            raw: Return the logit (log-odds) instead of the probability.
            max_doc_tokens: Cut each document to at most this many tokens; the template is never cut. ``None``:
                only ``max_length`` applies.

        Returns:
            One Python float per document, in input order: the probability of relevance, the number the model
            card's ``CrossEncoder.predict`` prints.
        """
        check_query(query)
        docs = check_documents(documents)
        return self._score(
            ((query, d) for d in docs), len(docs), instruction=instruction, raw=raw, max_doc_tokens=max_doc_tokens
        )

    def score_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
    ) -> list[float]:
        """Score (query, document) pairs whose queries differ. Same arguments and return as :meth:`score`."""
        checked = check_pairs(pairs)
        return self._score(iter(checked), len(checked), instruction=instruction, raw=raw, max_doc_tokens=max_doc_tokens)

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
    ) -> list[RankResult]:
        """Rank documents by relevance to the query, best first (ties keep input order).

        Args:
            query: The search query.
            documents: Document texts.
            top_n: Keep the best ``top_n``; ``None`` (or more than there are) keeps all.
            instruction: Task instruction for this call; ``None`` uses the scorer's.
            raw: Report logits instead of probabilities (the order is the same).
            max_doc_tokens: Cut each document to at most this many tokens; the template is never cut.
        """
        check_top_n(top_n)  # before scoring anything
        scores = self.score(query, documents, instruction=instruction, raw=raw, max_doc_tokens=max_doc_tokens)
        return rank_by_score(scores, documents, top_n)

    # -- async, through the model's batching engine ------------------------------------------------------------------
    @property
    def engine(self) -> ScoringEngine:
        """The batching engine of this scorer's model (one worker per loaded model, started on first use).

        :meth:`ascore`, :meth:`ascore_pairs` and :meth:`arank` and the HTTP server run on it, so concurrent callers
        share forward passes; the synchronous methods run in the caller's thread.
        """
        from .engine import get_engine

        return get_engine(self)

    async def ascore(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
    ) -> list[float]:
        """:meth:`score` without holding a thread: awaits the model's batching engine, sharing its forward passes
        with every other concurrent caller. Same arguments and scores; cancelling the task drops the pairs not yet
        run."""
        check_query(query)
        docs = check_documents(documents)
        self._check_instruction(instruction)
        check_max_doc_tokens(max_doc_tokens)
        result = await self.engine.ascore(
            [(query, d) for d in docs], scorer=self, instruction=instruction, raw=raw, max_doc_tokens=max_doc_tokens
        )
        return result.scores

    async def ascore_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
    ) -> list[float]:
        """:meth:`score_pairs` through the batching engine, as :meth:`ascore`."""
        checked = check_pairs(pairs)
        self._check_instruction(instruction)
        check_max_doc_tokens(max_doc_tokens)
        result = await self.engine.ascore(
            checked, scorer=self, instruction=instruction, raw=raw, max_doc_tokens=max_doc_tokens
        )
        return result.scores

    async def arank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
    ) -> list[RankResult]:
        """:meth:`rank` through the batching engine, as :meth:`ascore`."""
        check_top_n(top_n)
        scores = await self.ascore(query, documents, instruction=instruction, raw=raw, max_doc_tokens=max_doc_tokens)
        return rank_by_score(scores, documents, top_n)

    @staticmethod
    def _check_instruction(instruction: object) -> None:
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str or None, not {type(instruction).__name__}")

    # -- internals -------------------------------------------------------------------------------------------------
    def _score(
        self,
        pairs: Iterable[tuple[str, str]],
        count: int,
        *,
        instruction: str | None,
        raw: bool,
        max_doc_tokens: int | None = None,
    ) -> list[float]:
        check_max_doc_tokens(max_doc_tokens)  # also for empty input: a bad value is a bug either way
        if count == 0:
            return []
        self._check_instruction(instruction)
        if instruction is None:
            instruction = self.instruction
        encoded, truncated = self._encoder.encode(list(pairs), instruction, max_doc_tokens=max_doc_tokens)
        return self._scores(self._run(encoded), raw=raw, truncated=truncated, count=count)

    def _scores(
        self, logits: torch.Tensor, *, raw: bool, truncated: int, count: int, max_length: int | None = None
    ) -> list[float]:
        """Python floats from float32 logits (the sigmoid in float32), warning once per call about cut documents."""
        if truncated:
            logger.warning(
                "%d of %d documents were longer than max_length=%d tokens with the template; their ends were cut.",
                truncated,
                count,
                self.max_length if max_length is None else min(max_length, self.max_length),
            )
        values = logits if raw else torch.sigmoid(logits)
        return [float(v) for v in values.tolist()]

    def _run(self, encoded: list[EncodedPair]) -> torch.Tensor:
        """Raw float32 logits for encoded pairs, in input order."""
        out = torch.empty(len(encoded), dtype=torch.float32)
        show = self.show_progress_bar
        if show is None:
            show = len(encoded) >= _PROGRESS_MIN_PAIRS
        progress = None
        if show:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(encoded), desc="Reranking", unit="pair")
        # Only the current query's prefix state is kept: batches of one query come one after another.
        cached: PrefixCache = None
        try:
            for batch, shared in self._plan(encoded):
                pairs = [encoded[i] for i in batch]
                state, cached = self._prefix_state(pairs, shared, cached)
                out[batch] = self._forward_splitting(pairs, state, shared=shared)
                if progress is not None:
                    progress.update(len(batch))
        finally:
            if progress is not None:
                progress.close()
        return out

    def _prefix_state(
        self, pairs: list[EncodedPair], shared: bool, cached: PrefixCache
    ) -> tuple[PrefixState | None, PrefixCache]:
        """The KV cache a shared batch runs with (``None`` for other batches, and for packed batches that run their
        prefix themselves), taken from ``cached`` when it holds this prefix; returns it and the cache to keep."""
        if not shared or self._runner.prefix_in_batch:
            return None, cached
        prefix = pairs[0].prefix
        if cached is None or cached[0] != prefix:
            cached = (prefix, self._runner.encode_prefix(prefix))
        return cached[1], cached

    def _plan(self, encoded: list[EncodedPair]) -> list[tuple[list[int], bool]]:
        """Batches of indices, each flagged whether its pairs share one prefix (run once, through its KV cache)."""
        return plan_pair_batches(encoded, self.token_budget, self.batch_size, reuse_prefix=self.reuse_prefix)

    def _forward_splitting(
        self, batch: list[EncodedPair], state: PrefixState | None, *, shared: bool = False
    ) -> torch.Tensor:
        """Forward one batch (``shared``: its pairs share one prefix, whose KV cache ``state`` holds unless packed
        batches run the prefix themselves); on out-of-memory, halve it and retry so that no pair is lost."""
        try:
            if state is not None:
                return self._runner.run_with_prefix(state, batch)
            return self._runner(batch, share_prefix=shared)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(batch) // 2
            logger.warning("Out of memory on a batch of %d pairs; splitting it in two and retrying.", len(batch))
            return torch.cat(
                [
                    self._forward_splitting(batch[:half], state, shared=shared),
                    self._forward_splitting(batch[half:], state, shared=shared),
                ]
            )
