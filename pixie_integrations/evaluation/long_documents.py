"""Long-document strategies side by side on the user's data: one table, the whole-document (truncate) row first.

``compare_long_documents(data, model, ["truncate", "chunk:512", "chunk:512:mean"])`` evaluates the model once per
strategy on the same shortlist and score cache and reports NDCG@k, Avg. NDCG, its difference from the truncate row,
and what each run cost (pairs scored, seconds). ``pixie-rerank eval --compare-long-documents`` prints it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..chunking import AGGREGATES, LongDocuments
from .cache import ScoreCache
from .report import safe_name, write_json
from .results import EvaluationResult, ModelResult

__all__ = ["LongDocumentComparison", "compare_long_documents", "parse_strategies", "strategy_label"]

SPEC_HELP = (
    "truncate, or chunk[:TOKENS[:AGGREGATE[:OVERLAP]]] (AGGREGATE: max, first, mean), comma-separated, e.g. "
    "truncate,chunk:512,chunk:512:mean,chunk:256:max:32"
)
"""The strategy list's syntax, as ``--help`` says it."""


def parse_strategies(text: str) -> list[LongDocuments]:
    """``"truncate,chunk:512:mean"`` -> the strategies, truncate first (added when missing), each once.

    Raises:
        ValueError: A spec that is not ``truncate`` or ``chunk[:TOKENS[:AGGREGATE[:OVERLAP]]]``, or values that do
            not fit together (the message names the spec).
    """
    strategies: list[LongDocuments] = [LongDocuments()]
    for spec in (part.strip() for part in text.split(",")):
        if not spec:
            continue
        parsed = _parse_one(spec)
        if parsed not in strategies:
            strategies.append(parsed)
    if len(strategies) == 1:
        raise ValueError(f"--compare-long-documents {text!r} names no chunking strategy; {SPEC_HELP}")
    return strategies


def _parse_one(spec: str) -> LongDocuments:
    name, *fields = spec.split(":")
    if name == "truncate" and not fields:
        return LongDocuments()
    if name != "chunk" or len(fields) > 3:
        raise ValueError(f"{spec!r} is not a strategy: {SPEC_HELP}")
    values: dict[str, Any] = {}
    try:
        if fields and fields[0]:
            values["chunk_tokens"] = int(fields[0])
        if len(fields) > 1 and fields[1]:
            if fields[1] not in AGGREGATES:
                raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {fields[1]!r}")
            values["aggregate"] = fields[1]
        if len(fields) > 2 and fields[2]:
            values["chunk_overlap"] = int(fields[2])
        return LongDocuments("chunk", **values)
    except ValueError as exc:
        raise ValueError(f"{spec!r}: {exc} ({SPEC_HELP})") from None


def strategy_label(settings: LongDocuments) -> str:
    """A strategy's row name: ``truncate (whole document)`` or ``chunk 512 max`` (``+32 overlap``...)."""
    if not settings.chunked:
        return "truncate (whole document up to max_length)"
    size = settings.chunk_tokens if settings.chunk_tokens is not None else "max_length"
    label = f"chunk {size} {settings.aggregate}"
    if settings.chunk_overlap:
        label += f", overlap {settings.chunk_overlap}"
    if settings.max_chunks is not None:
        label += f", at most {settings.max_chunks} chunks"
    if settings.chunk_boundary != "token":
        label += f", {settings.chunk_boundary} ends"
    return label


@dataclass
class LongDocumentComparison:
    """One model's figures under each strategy; ``rows[0]`` is the truncate (whole-document) run."""

    dataset: str
    model: str
    strategies: list[LongDocuments]
    results: list[ModelResult]
    k_values: tuple[int, ...]
    evaluations: list[EvaluationResult] = field(repr=False, default_factory=list)

    @property
    def table(self) -> str:
        """Markdown: a row per strategy with NDCG@k, Avg. NDCG, its difference from truncate, and the cost."""
        base = self.results[0].avg_ndcg
        head = ["strategy", *(f"NDCG@{k}" for k in self.k_values), "Avg. NDCG", "vs truncate", "pairs scored", "s"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for settings, result in zip(self.strategies, self.results):
            delta = "-" if result is self.results[0] else f"{result.avg_ndcg - base:+.4f}"
            cells = [
                strategy_label(settings),
                *(f"{result.ndcg[k]:.4f}" for k in self.k_values),
                f"{result.avg_ndcg:.4f}",
                delta,
                str(result.pairs_scored),
                f"{result.seconds:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def to_markdown(self) -> str:
        return (
            f"# Long documents: {self.model} on {self.dataset}\n\n{self.table}\n\n"
            "- Every row reranks the same shortlist. A chunked score is the best (max), first or mean chunk's; "
            "pairs scored counts candidates scored in this run (0: all from the score cache), s its seconds.\n"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "model": self.model,
            "strategies": [
                {"label": strategy_label(s), "long_documents": s.to_dict(), **r.to_dict()}
                for s, r in zip(self.strategies, self.results)
            ],
        }


def compare_long_documents(
    data: str | os.PathLike[str],
    model: Any,
    strategies: Sequence[LongDocuments | str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> LongDocumentComparison:
    """Evaluate ``model`` on ``data`` once per long-document strategy (truncate first) and compare them.

    Args:
        data: A BEIR-layout folder, as for :func:`~pixie_integrations.evaluation.evaluate`.
        model: One hub id, folder or :class:`~pixie_integrations.PixieScorer`.
        strategies: :class:`~pixie_integrations.LongDocuments` values, or specs as :func:`parse_strategies` reads
            them; the truncate run is added first when missing.
        output_dir: Each strategy's run goes to ``<output_dir>/<strategy>/`` (one score cache,
            ``<output_dir>/scores.sqlite``, serves all); ``long_documents.md`` and ``.json`` hold the table.
        **options: Further :func:`~pixie_integrations.evaluation.evaluate` arguments (``run``, ``max_length``...).
    """
    from .runner import evaluate  # the orchestration above this module

    settings = _with_truncate_first([s if isinstance(s, LongDocuments) else _parse_one(s) for s in strategies])
    out = None if output_dir is None else Path(output_dir)
    cache = options.pop("cache", True)
    owned = not isinstance(cache, ScoreCache)
    if cache is True:
        cache = ScoreCache(None if out is None else out / "scores.sqlite")
    elif cache is False:
        cache = ScoreCache(None)
    elif owned:
        cache = ScoreCache(cache)
    evaluations: list[EvaluationResult] = []
    try:
        for strategy in settings:
            folder = None if out is None else out / safe_name(strategy_label(strategy))
            evaluations.append(
                evaluate(data, model, output_dir=folder, cache=cache, long_documents=strategy, **options)
            )
    finally:
        if owned:
            cache.close()
    first = evaluations[0]
    comparison = LongDocumentComparison(
        dataset=first.dataset,
        model=first.models[0].model,
        strategies=settings,
        results=[e.models[0] for e in evaluations],
        k_values=first.k_values,
        evaluations=evaluations,
    )
    if out is not None:
        (out / "long_documents.md").write_text(comparison.to_markdown(), encoding="utf-8")
        write_json(out / "long_documents.json", comparison.to_dict())
    return comparison


def _with_truncate_first(strategies: list[LongDocuments]) -> list[LongDocuments]:
    unique = list(dict.fromkeys(strategies))
    truncate = [s for s in unique if not s.chunked]
    return [truncate[0] if truncate else LongDocuments(), *(s for s in unique if s.chunked)]
