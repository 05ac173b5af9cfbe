"""PixieScorer: exact PIXIE (and Qwen3-Reranker, and encoder cross-encoder) scores on plain transformers."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

import torch

from .chunking import ChunkPlan, LongDocuments, log_dropped_chunks, resolve_long_documents
from .cpu import log_cpu_path_once
from .encoding import EncodedPair, PairEncoder, check_max_doc_tokens
from .engine import ScoringEngine, ScoringResult, get_engine
from .families import ModelFamily
from .loading import LoadedModel, load_model
from .packing import fast_kernel
from .pipeline import BatchPipeline, BatchSettings, RunStats, log_truncated, scores_from_logits
from .ranking import ChunkSpan, RankResult, check_top_n, rank_by_score
from .template import DEFAULT_INSTRUCTION
from .tracing import RerankSpan, TracedDocument, record_model, rerank_span
from .validation import check_documents, check_pairs, check_query

__all__ = ["DEFAULT_MODEL", "PixieScorer", "RankResult"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "telepix/PIXIE-Spell-Reranker-Preview-0.6B"

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
        self.show_progress_bar = show_progress_bar
        self._told_engine_settings = False
        self._encoder = PairEncoder(self._loaded, max_length=max_length)
        self._pipeline = BatchPipeline.build(
            self._loaded,
            token_budget=token_budget,
            batch_size=batch_size,
            reuse_prefix=reuse_prefix,
            compile=compile,
            pack=pack,
        )
        self._runner = self._pipeline.runner
        cpu = self.device.type == "cpu"
        kernel = fast_kernel(self.device, self.dtype)
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
    def loaded_model(self) -> LoadedModel:
        """The model, tokenizer and locks this scorer shares with every scorer of the same checkpoint."""
        return self._loaded

    @property
    def encoder(self) -> PairEncoder:
        """How this scorer turns pairs into token ids (template, ``max_length``, truncation)."""
        return self._encoder

    @property
    def pipeline(self) -> BatchPipeline:
        """How this scorer plans and runs batches (its :attr:`settings`)."""
        return self._pipeline

    @property
    def settings(self) -> BatchSettings:
        """How this scorer forms and runs batches (token budget, batch size, prefix reuse, packing, compile)."""
        return self._pipeline.settings

    @property
    def token_budget(self) -> int:
        """Most padded tokens in one forward pass (settable)."""
        return self._pipeline.settings.token_budget

    @token_budget.setter
    def token_budget(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"token_budget must be a positive int, got {value!r}")
        self._pipeline.settings = replace(self._pipeline.settings, token_budget=value)

    @property
    def batch_size(self) -> int | None:
        """Most pairs in one forward pass (``None``: no cap; settable)."""
        return self._pipeline.settings.batch_size

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError(f"batch_size must be a positive int or None, got {value!r}")
        self._pipeline.settings = replace(self._pipeline.settings, batch_size=value)

    @property
    def reuse_prefix(self) -> bool:
        """Whether a query's prefix runs once for all of its documents (settable; template families only)."""
        return self._pipeline.settings.reuse_prefix

    @reuse_prefix.setter
    def reuse_prefix(self, value: bool) -> None:
        value = bool(value) and self._runner.supports_shared_prefix
        self._pipeline.settings = replace(self._pipeline.settings, reuse_prefix=value)

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
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[float]:
        """Score each document against one query.

        Args:
            query: The search query.
            documents: Document texts; an empty list gives ``[]``.
            instruction: Task instruction for this call; ``None`` uses the scorer's.
            raw: Return the logit (log-odds) instead of the probability.
            max_doc_tokens: Cut each document to at most this many tokens; the template is never cut. ``None``:
                only ``max_length`` applies.
            long_documents: What happens to a document longer than the room ``max_length`` leaves: ``"truncate"``
                (the default: its end is cut, as the model card does) or ``"chunk"`` (it is scored in chunks, each
                a whole template input, and their scores aggregated); or a
                :class:`~pixie_integrations.LongDocuments` holding all the settings below. A document that fits
                in one chunk scores exactly as with ``"truncate"``. See docs/long_documents.md.
            chunk_tokens: Document tokens per chunk; ``None``: all that fit in ``max_length`` after the template.
            chunk_overlap: Tokens each chunk repeats from the one before (default 0).
            max_chunks: Most chunks per document; the rest are not scored, and are counted and logged once per
                call. ``None``: no limit.
            aggregate: ``"max"`` (the default: the best chunk), ``"first"`` or ``"mean"`` (the sigmoid of the mean
                logit, so the order does not depend on ``raw``).
            chunk_boundary: ``"token"`` (the default: any token boundary that decodes cleanly, preferably before a
                word) or ``"sentence"`` (the last sentence end inside the window, Korean and English).

        Returns:
            One Python float per document, in input order: the probability of relevance, the number the model
            card's ``CrossEncoder.predict`` prints.
        """
        check_query(query)
        docs = check_documents(documents)
        settings = _long_documents(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        with rerank_span("PixieScorer.score", entry_point="scorer") as span:
            self._trace_request(span, query, docs, instruction)
            scores, _ = self._score(
                [(query, d) for d in docs],
                instruction=instruction,
                raw=raw,
                max_doc_tokens=max_doc_tokens,
                long_documents=settings,
                span=span,
            )
            span.result(TracedDocument(d, score=s) for d, s in zip(docs, scores))
        return scores

    def score_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[float]:
        """Score (query, document) pairs whose queries differ. Same arguments and return as :meth:`score`."""
        checked = check_pairs(pairs)
        settings = _long_documents(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        with rerank_span("PixieScorer.score_pairs", entry_point="scorer") as span:
            self._trace_request(span, _one_query(checked), [d for _, d in checked], instruction)
            scores, _ = self._score(
                checked,
                instruction=instruction,
                raw=raw,
                max_doc_tokens=max_doc_tokens,
                long_documents=settings,
                span=span,
            )
            span.result(TracedDocument(d, score=s) for (_, d), s in zip(checked, scores))
        return scores

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_n: int | None = None,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[RankResult]:
        """Rank documents by relevance to the query, best first (ties keep input order).

        Args:
            query: The search query.
            documents: Document texts.
            top_n: Keep the best ``top_n``; ``None`` (or more than there are) keeps all.
            instruction: Task instruction for this call; ``None`` uses the scorer's.
            raw: Report logits instead of probabilities (the order is the same).
            max_doc_tokens: Cut each document to at most this many tokens; the template is never cut.
            long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary: As in
                :meth:`score`; with ``"chunk"`` each result's :attr:`~RankResult.chunk` says which chunk won and
                where it lies in the document.
        """
        check_top_n(top_n)  # before scoring anything
        check_query(query)
        docs = check_documents(documents)
        settings = _long_documents(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        with rerank_span("PixieScorer.rank", entry_point="scorer") as span:
            self._trace_request(span, query, docs, instruction, top_n=top_n)
            scores, chunks = self._score(
                [(query, d) for d in docs],
                instruction=instruction,
                raw=raw,
                max_doc_tokens=max_doc_tokens,
                long_documents=settings,
                span=span,
            )
            ranked = rank_by_score(scores, docs, top_n, chunks)
            _trace_ranked(span, ranked)
        return ranked

    # -- async, through the model's batching engine ------------------------------------------------------------------
    @property
    def engine(self) -> ScoringEngine:
        """The batching engine of this scorer's model (one worker per loaded model, started on first use).

        :meth:`ascore`, :meth:`ascore_pairs` and :meth:`arank` and the HTTP server run on it, so concurrent callers
        share forward passes; the synchronous methods run in the caller's thread. The engine batches with the
        model's settings (the device's defaults, or those stated with
        :func:`~pixie_integrations.engine.configure_engine`), which a scorer built with other batching settings
        is told once in the log; each request is still encoded by its own scorer (instruction, ``max_length``).
        """
        engine = get_engine(self)
        if engine.settings != self.settings and not self._told_engine_settings:
            self._told_engine_settings = True
            logger.info(
                "Async calls run on the shared engine of %s, which batches with %s; this scorer's %s apply to its "
                "synchronous calls (pixie_integrations.engine.configure_engine(scorer) states the engine's).",
                self.model_name,
                engine.settings,
                self.settings,
            )
        return engine

    async def ascore(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[float]:
        """:meth:`score` without holding a thread: awaits the model's batching engine, sharing its forward passes
        with every other concurrent caller. Same arguments and scores; cancelling the task drops the pairs not yet
        run."""
        check_query(query)
        docs = check_documents(documents)
        settings = _long_documents(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        with rerank_span("PixieScorer.ascore", entry_point="scorer") as span:
            self._trace_request(span, query, docs, instruction)
            result = await self._ascore_checked(
                [(query, d) for d in docs],
                instruction=instruction,
                raw=raw,
                max_doc_tokens=max_doc_tokens,
                long_documents=settings,
                span=span,
            )
            span.result(TracedDocument(d, score=s) for d, s in zip(docs, result.scores))
        return result.scores

    async def ascore_pairs(
        self,
        pairs: Iterable[tuple[str, str] | Sequence[str]],
        *,
        instruction: str | None = None,
        raw: bool = False,
        max_doc_tokens: int | None = None,
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[float]:
        """:meth:`score_pairs` through the batching engine, as :meth:`ascore`."""
        checked = check_pairs(pairs)
        settings = _long_documents(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        with rerank_span("PixieScorer.ascore_pairs", entry_point="scorer") as span:
            self._trace_request(span, _one_query(checked), [d for _, d in checked], instruction)
            result = await self._ascore_checked(
                checked,
                instruction=instruction,
                raw=raw,
                max_doc_tokens=max_doc_tokens,
                long_documents=settings,
                span=span,
            )
            span.result(TracedDocument(d, score=s) for (_, d), s in zip(checked, result.scores))
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
        long_documents: str | LongDocuments | None = None,
        chunk_tokens: int | None = None,
        chunk_overlap: int | None = None,
        max_chunks: int | None = None,
        aggregate: str | None = None,
        chunk_boundary: str | None = None,
    ) -> list[RankResult]:
        """:meth:`rank` through the batching engine, as :meth:`ascore`."""
        check_top_n(top_n)
        check_query(query)
        docs = check_documents(documents)
        settings = _long_documents(long_documents, chunk_tokens, chunk_overlap, max_chunks, aggregate, chunk_boundary)
        with rerank_span("PixieScorer.arank", entry_point="scorer") as span:
            self._trace_request(span, query, docs, instruction, top_n=top_n)
            result = await self._ascore_checked(
                [(query, d) for d in docs],
                instruction=instruction,
                raw=raw,
                max_doc_tokens=max_doc_tokens,
                long_documents=settings,
                span=span,
            )
            ranked = rank_by_score(result.scores, docs, top_n, result.chunks)
            _trace_ranked(span, ranked)
        return ranked

    async def _ascore_checked(
        self,
        pairs: list[tuple[str, str]],
        *,
        instruction: str | None,
        raw: bool,
        max_doc_tokens: int | None,
        long_documents: LongDocuments,
        span: RerankSpan,
    ) -> ScoringResult:
        self._check_instruction(instruction)
        check_max_doc_tokens(max_doc_tokens)
        engine = self.engine
        result = await engine.ascore(
            pairs,
            scorer=self,
            instruction=instruction,
            raw=raw,
            max_doc_tokens=max_doc_tokens,
            long_documents=long_documents,
        )
        if span.recording:
            record_model(span, self, engine.settings, engine=True, raw=raw)
            span.work(
                pairs=len(pairs),
                tokens=result.tokens,
                truncated=result.truncated,
                batches=result.batches,
                shared_prefix_batches=result.shared_prefix_batches,
                queued_seconds=result.queued_s,
                **_chunk_work(result.chunks),
            )
        return result

    @staticmethod
    def _check_instruction(instruction: object) -> None:
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str or None, not {type(instruction).__name__}")

    # -- tracing ---------------------------------------------------------------------------------------------------
    def _trace_request(
        self,
        span: RerankSpan,
        query: str | None,
        docs: list[str],
        instruction: str | None,
        *,
        top_n: int | None = None,
    ) -> None:
        if not span.recording or not span.owner:
            return
        if self.family.uses_template:
            instruction = instruction if isinstance(instruction, str) else self.instruction
        else:
            instruction = None  # encoders take no prompt
        span.request(
            query=query,
            model_name=self.model_name,
            top_k=top_n,
            instruction=instruction,
            documents=[TracedDocument(d) for d in docs],
        )

    # -- internals -------------------------------------------------------------------------------------------------
    def _score(
        self,
        pairs: list[tuple[str, str]],
        *,
        instruction: str | None,
        raw: bool,
        max_doc_tokens: int | None = None,
        long_documents: LongDocuments | None = None,
        span: RerankSpan | None = None,
    ) -> tuple[list[float], list[ChunkSpan] | None]:
        """Scores in input order, and with chunking each document's winning chunk (else ``None``)."""
        check_max_doc_tokens(max_doc_tokens)  # also for empty input: a bad value is a bug either way
        if not pairs:
            return [], None
        self._check_instruction(instruction)
        if instruction is None:
            instruction = self.instruction
        plan: ChunkPlan | None = None
        if long_documents is not None and long_documents.chunked:
            encoded, plan, truncated = self._encoder.encode_chunked(
                pairs, instruction, long_documents, max_doc_tokens=max_doc_tokens
            )
        else:
            encoded, truncated = self._encoder.encode(pairs, instruction, max_doc_tokens=max_doc_tokens)
        stats = RunStats() if span is not None and span.recording else None
        logits = self._run(encoded, stats)
        log_truncated(truncated, len(encoded), self.max_length)
        chunks = None
        if plan is not None:
            logits, chunks = plan.aggregate(logits)
            log_dropped_chunks(plan)
        if stats is not None and span is not None:
            record_model(span, self, self.settings, engine=False, raw=raw)
            span.work(
                pairs=len(pairs),
                tokens=sum(len(pair) for pair in encoded),
                truncated=truncated,
                batches=stats.batches,
                shared_prefix_batches=stats.shared_prefix_batches,
                prefix_runs=stats.prefix_runs,
                **_chunk_work(chunks),
            )
        return scores_from_logits(logits, raw=raw), chunks

    def _run(self, encoded: list[EncodedPair], stats: RunStats | None = None) -> torch.Tensor:
        """Raw float32 logits for encoded pairs, in input order (``stats``: what ran, for the trace)."""
        show = self.show_progress_bar
        if show is None:
            show = len(encoded) >= _PROGRESS_MIN_PAIRS
        if not show:
            return self._pipeline.run(encoded, stats=stats)
        from tqdm.auto import tqdm

        with tqdm(total=len(encoded), desc="Reranking", unit="pair") as progress:
            return self._pipeline.run(encoded, progress=progress.update, stats=stats)

    def _plan(self, encoded: list[EncodedPair]) -> list[tuple[list[int], bool]]:
        """Batches of indices, each flagged whether its pairs share one prefix (run once, through its KV cache)."""
        return self._pipeline.plan(encoded)


def _long_documents(
    long_documents: str | LongDocuments | None,
    chunk_tokens: int | None,
    chunk_overlap: int | None,
    max_chunks: int | None,
    aggregate: str | None,
    chunk_boundary: str | None,
) -> LongDocuments:
    """One call's long-document arguments as one :class:`LongDocuments` (checked before anything is scored)."""
    return resolve_long_documents(
        long_documents,
        chunk_tokens=chunk_tokens,
        chunk_overlap=chunk_overlap,
        max_chunks=max_chunks,
        aggregate=aggregate,
        chunk_boundary=chunk_boundary,
    )


def _one_query(pairs: list[tuple[str, str]]) -> str | None:
    """The query of pairs that all share one (a trace's ``reranker.query``), else ``None``."""
    queries = {q for q, _ in pairs}
    return next(iter(queries)) if len(queries) == 1 else None


def _chunk_work(chunks: list[ChunkSpan] | None) -> dict[str, int]:
    """What a trace records of chunking: chunk inputs scored and dropped (nothing without chunking)."""
    if chunks is None:
        return {}
    return {"chunks": sum(c.chunks for c in chunks), "chunks_dropped": sum(c.chunks_dropped for c in chunks)}


def _trace_ranked(span: RerankSpan, ranked: list[RankResult]) -> None:
    if span.recording and span.owner:
        span.result((TracedDocument(r.document, score=r.score) for r in ranked), indices=[r.index for r in ranked])
