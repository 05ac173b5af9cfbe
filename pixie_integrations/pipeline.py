"""The batch pipeline that the scorer's synchronous path and the batching engine share.

Encoded pairs in, float32 logits out: plan length-sorted token-budget batches (:mod:`.batching`), give a batch
whose pairs share a query its prefix's key/value state (:class:`PrefixCache`), run it, and halve a batch that runs
out of memory until it fits. :func:`scores_from_logits` turns logits into the Python floats every API returns (the
sigmoid in float32). Nothing here knows about callers: :class:`~pixie_integrations.PixieScorer` runs one call's
pairs through it, :class:`~pixie_integrations.engine.ScoringEngine` the pairs of many.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from .batching import plan_pair_batches
from .cpu import cpu_defaults
from .encoding import EncodedPair
from .loading import LoadedModel
from .packing import fast_kernel
from .runner import ModelRunner, PrefixState

__all__ = ["BatchPipeline", "BatchSettings", "PrefixCache", "RunStats", "log_truncated", "scores_from_logits"]

logger = logging.getLogger(__name__)

# Padded tokens per forward pass. Large batches feed a GPU; on CPU small ones win (per CPU class: cpu.py).
_DEFAULT_TOKEN_BUDGET = {"cuda": 16384, "mps": 8192}


@dataclass(frozen=True)
class BatchSettings:
    """How batches are formed and run, resolved for one model on one device (see :class:`PixieScorer`'s arguments
    of the same names)."""

    token_budget: int
    """Most padded tokens in one forward pass."""
    batch_size: int | None
    """Most pairs in one forward pass; ``None``: no cap."""
    reuse_prefix: bool
    """Whether a query's prefix runs once for all of its documents."""
    pack: bool
    """Whether batches run packed (no padding)."""
    compile: bool
    """Whether the model runs ``torch.compile``-d."""


@dataclass
class RunStats:
    """What :meth:`BatchPipeline.run` did for one call (traces report it)."""

    batches: int = 0
    """Forward passes run."""
    shared_prefix_batches: int = 0
    """Of those, passes whose pairs shared one query prefix."""
    prefix_runs: int = 0
    """Query prefixes encoded into a key/value cache."""


class PrefixCache:
    """Key/value states of query prefixes, each run once and kept while pairs that need it are pending.

    Keyed by the prefix's token ids. At most ``capacity`` states are held (the least recently used goes first);
    :meth:`retain` drops the states no pending pair needs any more.
    """

    def __init__(self, encode: Callable[[Sequence[int]], PrefixState], *, capacity: int = 16) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self._encode = encode
        self._capacity = capacity
        self._states: OrderedDict[tuple[int, ...], PrefixState] = OrderedDict()
        self.runs = 0
        """Prefixes encoded so far (a cache miss each)."""

    def __len__(self) -> int:
        return len(self._states)

    def get(self, prefix: tuple[int, ...]) -> PrefixState:
        """The state of ``prefix``, encoding it only if it is not held."""
        state = self._states.get(prefix)
        if state is not None:
            self._states.move_to_end(prefix)
            return state
        state = self._encode(prefix)
        self.runs += 1
        self._states[prefix] = state
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)
        return state

    def retain(self, prefixes: Collection[tuple[int, ...]]) -> None:
        """Keep only the states of ``prefixes`` (those that pending pairs still need)."""
        for prefix in [p for p in self._states if p not in prefixes]:
            del self._states[prefix]


class BatchPipeline:
    """Plans and runs batches of encoded pairs on one loaded model.

    Build it with :meth:`build`, which resolves each ``None`` setting to this device's default (the same defaults
    :class:`~pixie_integrations.PixieScorer` documents).
    """

    def __init__(self, loaded: LoadedModel, runner: ModelRunner, settings: BatchSettings) -> None:
        self._loaded = loaded
        self.runner = runner
        self.settings = settings

    @classmethod
    def build(
        cls,
        loaded: LoadedModel,
        *,
        token_budget: int | None = None,
        batch_size: int | None = None,
        reuse_prefix: bool | None = None,
        compile: bool = False,
        pack: bool | None = None,
    ) -> BatchPipeline:
        """A pipeline for ``loaded`` with each ``None`` setting at its default for the model's device."""
        if token_budget is not None and token_budget <= 0:
            raise ValueError(f"token_budget must be positive, got {token_budget}")
        if batch_size is not None and batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        device = loaded.device
        cpu = device.type == "cpu"
        if token_budget is None:
            token_budget = cpu_defaults().token_budget if cpu else _DEFAULT_TOKEN_BUDGET.get(device.type, 2048)
        if pack is None:
            # CUDA: where a variable-length kernel exists. CPU: per CPU class, compiled or not (on Zen 4, compiled
            # packed batches ran 1.4x compiled padded ones).
            pack = fast_kernel(device, loaded.dtype) is not None or (cpu and cpu_defaults().pack)
        runner = ModelRunner(loaded, compile=compile, token_budget=token_budget, pack=pack)
        if reuse_prefix is None:
            # Compiled padded batches have bucketed static shapes; a cached prefix (its length differs per query)
            # runs eager. Packed batches share the prefix compiled or not (read from its cache, or run in-batch).
            reuse_prefix = (runner.packs or not compile) and (
                cpu_defaults().reuse_prefix if cpu else device.type != "cuda"
            )
        settings = BatchSettings(
            token_budget=token_budget,
            batch_size=batch_size,
            reuse_prefix=reuse_prefix and runner.supports_shared_prefix,
            pack=runner.packs,
            compile=compile,
        )
        return cls(loaded, runner, settings)

    def plan(self, encoded: Sequence[EncodedPair]) -> list[tuple[list[int], bool]]:
        """Batches of indices into ``encoded``, each flagged whether its pairs share one prefix."""
        settings = self.settings
        return plan_pair_batches(
            encoded, settings.token_budget, settings.batch_size, reuse_prefix=settings.reuse_prefix
        )

    def new_prefix_cache(self, capacity: int = 16) -> PrefixCache:
        """An empty cache of this model's prefix states."""
        return PrefixCache(self.runner.encode_prefix, capacity=capacity)

    def run_batch(self, pairs: list[EncodedPair], shared: bool, prefixes: PrefixCache) -> torch.Tensor:
        """Float32 logits of one planned batch (``shared``: its pairs share one prefix, taken from ``prefixes``
        unless packed batches run the prefix themselves)."""
        state = None
        if shared and not self.runner.prefix_in_batch:
            state = prefixes.get(pairs[0].prefix)
        return self._forward_splitting(pairs, state, shared=shared)

    def run(
        self,
        encoded: Sequence[EncodedPair],
        *,
        progress: Callable[[int], object] | None = None,
        stats: RunStats | None = None,
    ) -> torch.Tensor:
        """Float32 logits for ``encoded``, in input order; ``progress`` is called with each batch's size, and
        ``stats`` (if given) counts the batches and prefix runs."""
        out = torch.empty(len(encoded), dtype=torch.float32)
        # The batches of one query follow each other, so one held prefix state is enough here.
        prefixes = self.new_prefix_cache(capacity=1)
        for batch, shared in self.plan(encoded):
            out[batch] = self.run_batch([encoded[i] for i in batch], shared, prefixes)
            if progress is not None:
                progress(len(batch))
            if stats is not None:
                stats.batches += 1
                stats.shared_prefix_batches += shared
        if stats is not None:
            stats.prefix_runs += prefixes.runs
        return out

    def _forward_splitting(
        self, batch: list[EncodedPair], state: PrefixState | None, *, shared: bool
    ) -> torch.Tensor:
        """Forward one batch; on out-of-memory, halve it and retry so that no pair is lost."""
        try:
            if state is not None:
                return self.runner.run_with_prefix(state, batch)
            return self.runner(batch, share_prefix=shared)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
            if self._loaded.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(batch) // 2
            logger.warning("Out of memory on a batch of %d pairs; splitting it in two and retrying.", len(batch))
            return torch.cat(
                [
                    self._forward_splitting(batch[:half], state, shared=shared),
                    self._forward_splitting(batch[half:], state, shared=shared),
                ]
            )


def scores_from_logits(logits: torch.Tensor, *, raw: bool) -> list[float]:
    """Python floats from float32 logits: the logits themselves with ``raw``, else the sigmoid in float32."""
    values = logits if raw else torch.sigmoid(logits.float())
    return [float(v) for v in values.tolist()]


def log_truncated(truncated: int, count: int, max_length: int) -> None:
    """Warn, once per call, that ``truncated`` of ``count`` documents had their ends cut at ``max_length``."""
    if truncated:
        logger.warning(
            "%d of %d documents were longer than max_length=%d tokens with the template; their ends were cut.",
            truncated,
            count,
            max_length,
        )
