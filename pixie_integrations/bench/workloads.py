"""The bench's workloads (random text cut to log-normal token lengths) and its random-weight models of named shapes."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SHAPES",
    "WORDS",
    "WORKLOADS",
    "CalibrationPairs",
    "Workload",
    "WorkloadSpec",
    "build_random_model",
    "build_workload",
    "calibration_pairs",
]


@dataclass(frozen=True)
class WorkloadSpec:
    queries: int
    docs_per_query: int
    median_tokens: int
    sigma: float
    min_tokens: int
    max_tokens: int
    warm_up_docs: int | None = None
    """Documents of the first query each system warms up on (``None``: all of them)."""


WORKLOADS: dict[str, WorkloadSpec] = {
    "beir": WorkloadSpec(queries=20, docs_per_query=100, median_tokens=180, sigma=0.7, min_tokens=16, max_tokens=1024),
    "latency": WorkloadSpec(
        queries=1, docs_per_query=100, median_tokens=180, sigma=0.7, min_tokens=16, max_tokens=1024
    ),
    "long": WorkloadSpec(queries=4, docs_per_query=16, median_tokens=2000, sigma=0.8, min_tokens=256, max_tokens=8192),
    # Documents as long as MultiLongDocRetrieval's (~8k tokens): where whole-document attention dominates the cost.
    "long-8k": WorkloadSpec(
        queries=2, docs_per_query=4, median_tokens=8000, sigma=0.05, min_tokens=7000, max_tokens=8192, warm_up_docs=1
    ),
}

# Qwen3 shapes: PIXIE's own (Qwen3-0.6B) and a 4-layer cut of it (quick; it overstates CPU speed-ups).
SHAPES: dict[str, dict[str, int]] = {
    "pixie": {
        "num_hidden_layers": 28,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151669,
    },
    "pixie-4l": {
        "num_hidden_layers": 4,
        "hidden_size": 1024,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 151669,
    },
    "tiny": {
        "num_hidden_layers": 2,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 2048,
    },
}

WORDS = [
    "satellite",
    "data",
    "analysis",
    "service",
    "ocean",
    "resource",
    "agriculture",
    "defence",
    "imaging",
    "orbit",
    "sensor",
    "optical",
    "payload",
    "reranker",
    "query",
    "document",
    "relevance",
    "search",
    "engine",
    "retrieval",
    "benchmark",
    "evaluation",
    "korean",
    "english",
    "model",
    "텔레픽스",
    "위성",
    "데이터",
    "분석",
    "서비스",
    "해양",
    "자원",
    "농업",
    "국방",
    "영상",
    "정밀",
    "기술",
    "수준",
    "우주",
    "경제",
    "가치",
    "솔루션",
    "제공",
    "주기",
]
"""The words workload texts are drawn from (English and Korean, as PIXIE's domain)."""


@dataclass
class Workload:
    """Queries, each with its documents, and the token counts they were cut to."""

    name: str
    queries: list[str]
    documents: list[list[str]]
    doc_tokens: list[list[int]] = field(default_factory=list)

    @property
    def pairs(self) -> int:
        return sum(len(d) for d in self.documents)


def _text_of_tokens(tokenizer: Any, rng: random.Random, n_tokens: int) -> str:
    """Random words cut at a token boundary so that the text is ``n_tokens`` tokens long (give or take a merge)."""
    words: list[str] = []
    while True:
        words.extend(rng.choice(WORDS) for _ in range(max(8, n_tokens)))
        text = " ".join(words)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        if len(encoded["input_ids"]) >= n_tokens:
            return text[: encoded["offset_mapping"][n_tokens - 1][1]]


def build_workload(
    name: str, tokenizer: Any, *, seed: int = 0, queries: int | None = None, docs_per_query: int | None = None
) -> Workload:
    """Build a named workload with ``tokenizer``; ``queries``/``docs_per_query`` shrink it (e.g. for a CPU run)."""
    spec = WORKLOADS[name]
    rng = random.Random(seed)
    n_queries = queries or spec.queries
    n_docs = docs_per_query or spec.docs_per_query
    workload = Workload(name=name, queries=[], documents=[])
    for _ in range(n_queries):
        workload.queries.append(_text_of_tokens(tokenizer, rng, rng.randint(8, 24)))
        lengths = [
            int(
                min(
                    spec.max_tokens,
                    max(spec.min_tokens, round(rng.lognormvariate(math.log(spec.median_tokens), spec.sigma))),
                )
            )
            for _ in range(n_docs)
        ]
        workload.documents.append([_text_of_tokens(tokenizer, rng, n) for n in lengths])
        workload.doc_tokens.append(lengths)
    return workload


@dataclass
class CalibrationPairs:
    """(query, document) pairs a calibrated system calibrates on, and how many of them the bench also scores."""

    pairs: list[tuple[str, str]]
    scored: int
    """How many of ``pairs`` (the last ones) are pairs the bench scores: 0 unless the workload ran out of queries."""

    def as_dict(self) -> dict[str, Any]:
        unscored = len(self.pairs) - self.scored
        return {
            "pairs": len(self.pairs),
            "pairs_also_scored": self.scored,
            "source": (
                f"{unscored} pairs of workload queries after the scored ones (same generator and seed, not scored)"
                + (f", then {self.scored} of the scored pairs" if self.scored else "")
            ),
        }


def calibration_pairs(tokenizer: Any, scored: Workload, n: int, *, seed: int = 0) -> CalibrationPairs:
    """``n`` pairs of ``scored``'s workload to calibrate on, the ones the bench does not score first.

    A workload cut to fewer queries than its spec has (``--queries``, ``--preset cpu``) has queries left: those come
    from the same generator with the same seed (a run with more queries starts with the same ones), one query's
    documents after another. When there are too few, the scored pairs fill up the rest; calibrating on the pairs a
    system is then scored on flatters it.
    """
    docs_per_query = len(scored.documents[0])
    used = len(scored.queries)
    left = WORKLOADS[scored.name].queries - used
    extra = min(left, math.ceil(n / docs_per_query))
    pairs: list[tuple[str, str]] = []
    if extra > 0:
        more = build_workload(scored.name, tokenizer, seed=seed, queries=used + extra, docs_per_query=docs_per_query)
        pairs = [(q, d) for q, docs in zip(more.queries[used:], more.documents[used:]) for d in docs][:n]
    also_scored = [(q, d) for q, docs in zip(scored.queries, scored.documents) for d in docs][: n - len(pairs)]
    return CalibrationPairs(pairs=pairs + also_scored, scored=len(also_scored))


def build_random_model(shape: str, path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a random-weight Qwen3 seq-cls checkpoint of a named shape (with the package's small tokenizer)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    from ..testing import build_tiny_tokenizer

    out = Path(path)
    if (out / "config.json").exists():
        return out
    tokenizer = build_tiny_tokenizer(out)
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = max(dims["vocab_size"], len(tokenizer))
    config = Qwen3Config(
        **dims,
        max_position_embeddings=40960,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
        architectures=["Qwen3ForSequenceClassification"],
    )
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Qwen3ForSequenceClassification(config)
    model.save_pretrained(out)
    return out
