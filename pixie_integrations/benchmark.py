"""``pixie-rerank bench``: PixieScorer against the model card's own path, on the same weights, in the same run.

Workloads: ``beir`` (20 queries x 100 documents, log-normal lengths with a 180-token median, as in BEIR
reranking), ``latency`` (1 x 100) and ``long`` (documents up to 8k tokens). A random-weight model of PIXIE's exact
shape (``--shape pixie``; same FLOPs as the real one) runs with no download; ``--model`` times a real checkpoint
instead. ``--preset cpu`` sizes a run for a CPU (PIXIE's shape, 2 queries x 12 documents, ~10 minutes). The 4-layer
cut (``--shape pixie-4l``) is quicker but overstates CPU speed-ups: whatever runs outside the decoder layers, and
the last layer's shortcut (it runs for each pair's last token only), weighs 7x more against 4 layers than 28. The
card-* systems need sentence-transformers (pip install "pixie-integrations[bench]"); the OpenVINO and ONNX Runtime
peers on the same weights (openvino-fp32, openvino-bf16, openvino-int8, onnxruntime-fp32, onnxruntime-int8) need
pip install "pixie-integrations[bench-peers]".
Figures and how to read them:
https://github.com/telepix-integrations/pixie-integrations/blob/main/docs/performance.md

Importable: :func:`run_benchmark` returns the same dictionary the command writes as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .bench_peers import PEERS, missing_peer_modules
from .cpu import cpu_info, torch_build
from .template import DEFAULT_INSTRUCTION, format_document, format_query

__all__ = [
    "SHAPES",
    "WORKLOADS",
    "CardReference",
    "Workload",
    "build_random_model",
    "build_workload",
    "register",
    "run_benchmark",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkloadSpec:
    queries: int
    docs_per_query: int
    median_tokens: int
    sigma: float
    min_tokens: int
    max_tokens: int


WORKLOADS: dict[str, WorkloadSpec] = {
    "beir": WorkloadSpec(queries=20, docs_per_query=100, median_tokens=180, sigma=0.7, min_tokens=16, max_tokens=1024),
    "latency": WorkloadSpec(
        queries=1, docs_per_query=100, median_tokens=180, sigma=0.7, min_tokens=16, max_tokens=1024
    ),
    "long": WorkloadSpec(queries=4, docs_per_query=16, median_tokens=2000, sigma=0.8, min_tokens=256, max_tokens=8192),
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

_WORDS = [
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
        words.extend(rng.choice(_WORDS) for _ in range(max(8, n_tokens)))
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


def build_random_model(shape: str, path: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """Write a random-weight Qwen3 seq-cls checkpoint of a named shape (with the package's small tokenizer)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    from .testing import build_tiny_tokenizer

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


# -- systems under test --------------------------------------------------------------------------------------------
ScoreFn = Callable[[str, list[str]], list[float]]


class CardReference:
    """The model card's code: its ``format_queries``/``format_document`` and sentence-transformers ``CrossEncoder``.

    The card's sentence-transformers tokenized each pair as a plain text pair
    (``tokenizer(text_a, text_b, padding=True, truncation=True)``). From 5.4 on, sentence-transformers routes a pair
    through the tokenizer's chat template when the tokenizer has one, and a PIXIE / Qwen3 checkpoint may ship Qwen3's
    template: ``CrossEncoder.predict`` then no longer gives the card's numbers. So a tokenizer with a chat template
    gets the card's tokenization here, on the ``CrossEncoder``'s own model and tokenizer; one without goes through
    ``CrossEncoder.predict`` itself. Either way the scores are what the card printed, whatever sentence-transformers
    is installed.

    Args:
        path: Checkpoint folder or hub id, as ``CrossEncoder`` takes it.
        device: Where ``CrossEncoder`` puts the model.
        dtype: Weight dtype name (``"float32"``, ``"bfloat16"``); ``None``: the ``CrossEncoder``'s default.
        batch_size: Pairs per forward pass (the card's ``predict`` default, 32).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, device: str = "cpu", dtype: str | None = None, batch_size: int = 32
    ) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        kwargs: dict[str, Any] = {"model_kwargs": {"dtype": getattr(torch, dtype)}} if dtype else {}
        self.cross_encoder = CrossEncoder(os.fspath(path), device=device, **kwargs)
        self.batch_size = batch_size
        self.uses_chat_template = bool(getattr(self.cross_encoder.tokenizer, "chat_template", None))

    def predict(self, pairs: Sequence[tuple[str, str] | Sequence[str]]) -> list[float]:
        """Scores of already formatted (text A, text B) pairs, as the card's ``model.predict(pairs)``."""
        if not self.uses_chat_template:
            batch = [[a, b] for a, b in pairs]
            return [
                float(s) for s in self.cross_encoder.predict(batch, batch_size=self.batch_size, show_progress_bar=False)
            ]
        return self._predict_as_pairs([(a, b) for a, b in pairs])

    def score(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """The card's recipe for one query: format each pair, then :meth:`predict`."""
        instruction = instruction if instruction is not None else DEFAULT_INSTRUCTION
        return self.predict([(format_query(query, instruction), format_document(d)) for d in documents])

    def _predict_as_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        import torch

        tokenizer = self.cross_encoder.tokenizer
        model = self.cross_encoder.model
        device = next(model.parameters()).device
        out: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            features = tokenizer(
                [a for a, _ in batch], [b for _, b in batch], padding=True, truncation=True, return_tensors="pt"
            ).to(device)
            with torch.inference_mode():
                logits = model(**features).logits
            # The card's head has one logit and CrossEncoder's activation for it is the sigmoid.
            out += [float(s) for s in torch.sigmoid(logits).reshape(-1).float().cpu().tolist()]
        return out


def _crossencoder_system(path: str, device: str, dtype: str) -> ScoreFn:
    """The model card's code (:class:`CardReference`), batch 32."""
    reference = CardReference(path, device=device, dtype=dtype)
    return reference.score


def _pixie_system(path: str, device: str, **kwargs: Any) -> ScoreFn:
    from .scorer import PixieScorer

    scorer = PixieScorer(path, device=device, show_progress_bar=False, **kwargs)
    logger.info("%s", scorer)
    return lambda query, documents: scorer.score(query, documents)


_CARD_SYSTEMS = ("card-fp32", "card-bf16")
# OpenVINO and ONNX Runtime on the same weights (their runtimes are imported only when one is asked for).
_PEER_SYSTEMS = tuple(PEERS)
_PEER_SETTINGS = ("batch_size",)
_PIXIE_PRESETS: dict[str, dict[str, Any]] = {
    "pixie": {},
    "pixie-fp32": {"dtype": "float32"},
    "pixie-noprefix": {"reuse_prefix": False},
    "pixie-compile": {"compile": True},
    "pixie-padded": {"pack": False},
}
# PixieScorer settings a system name may set (pixie:key=value,...), by the kind of value each takes.
_INT_SETTINGS = ("token_budget", "batch_size", "max_length")
_BOOL_SETTINGS = ("reuse_prefix", "compile", "pack", "trust_remote_code")
_STR_SETTINGS = ("dtype", "attn_implementation", "family", "revision", "instruction")
_SETTINGS = tuple(sorted(_INT_SETTINGS + _BOOL_SETTINGS + _STR_SETTINGS))


def parse_system(name: str) -> tuple[str, dict[str, Any]]:
    """``"pixie:token_budget=8192,compile=true"`` -> ``("pixie", {"token_budget": 8192, "compile": True})``.

    Raises:
        ValueError: An unknown system, an unknown setting (the message lists the valid ones) or a bad value.
    """
    from .cli_args import dtype as parse_dtype
    from .cli_args import positive_int

    base, colon, params = name.partition(":")
    if base in _CARD_SYSTEMS:
        if colon:
            raise ValueError(f"{base} is the model card's code as is and takes no settings (got {name!r})")
        return base, {}
    if base not in _PIXIE_PRESETS and base not in _PEER_SYSTEMS:
        known = _CARD_SYSTEMS + tuple(_PIXIE_PRESETS) + _PEER_SYSTEMS
        raise ValueError(f"Unknown system {base!r}; choose from {', '.join(known)}")
    settings = dict(_PIXIE_PRESETS.get(base, {}))
    allowed = _PEER_SETTINGS if base in _PEER_SYSTEMS else _SETTINGS
    for item in params.split(",") if colon else []:
        key, equals, value = (part.strip() for part in item.partition("="))
        if key not in allowed or not equals:
            what = f"unknown setting {key!r}" if key not in allowed else f"no value for {key!r}"
            raise ValueError(f"{what} in {name!r}; settings are key=value pairs of {', '.join(allowed)}")
        try:
            if key in _INT_SETTINGS:
                settings[key] = positive_int(value)
            elif key in _BOOL_SETTINGS:
                if value.lower() not in ("true", "false"):
                    raise ValueError(f"expected true or false, got {value!r}")
                settings[key] = value.lower() == "true"
            elif key == "dtype":
                settings[key] = parse_dtype(value)
            else:
                settings[key] = value
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"{key} in {name!r}: {exc}") from None
    return base, settings


def _system_arg(text: str) -> str:
    """argparse ``type=`` of ``--systems``: refuse a bad system name before anything loads."""
    try:
        parse_system(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _peer_system(name: str, path: str, device: str, **settings: Any) -> ScoreFn:
    """OpenVINO or ONNX Runtime on the same weights (CPU only), scored as the card's code scores."""
    from .bench_peers import PeerScorer

    if device != "cpu":
        raise ValueError(f"{name} runs on the CPU only (got --device {device})")
    return PeerScorer(path, name=name, **settings).score


def _systems(names: Sequence[str], path: str, device: str) -> dict[str, Callable[[], ScoreFn]]:
    """Factories for named systems; ``pixie:key=value,...`` passes settings to PixieScorer."""
    factories: dict[str, Callable[[], ScoreFn]] = {}
    for name in names:
        base, settings = parse_system(name)
        if base in _PEER_SYSTEMS:
            factories[name] = lambda base=base, settings=settings: _peer_system(  # type: ignore[misc]
                base, path, device, **settings
            )
        elif base in _CARD_SYSTEMS:
            dtype = "float32" if base == "card-fp32" else "bfloat16"
            factories[name] = lambda dtype=dtype: _crossencoder_system(path, device, dtype)  # type: ignore[misc]
        else:
            factories[name] = lambda settings=settings: _pixie_system(path, device, **settings)  # type: ignore[misc]
    return factories


def _missing_bench_extra(systems: Sequence[str]) -> str | None:
    """What to install when a card-* system is asked for without sentence-transformers (or a peer without its
    runtime), else ``None``."""
    import importlib.util

    card = [name for name in systems if name.partition(":")[0] in _CARD_SYSTEMS]
    if card and importlib.util.find_spec("sentence_transformers") is None:
        return (
            f"{', '.join(card)} run the model card's code, which needs sentence-transformers: "
            'pip install "pixie-integrations[bench]" (or time PixieScorer alone: --systems pixie pixie-fp32)'
        )
    peers = [name for name in systems if name.partition(":")[0] in _PEER_SYSTEMS]
    missing = sorted({module for name in peers for module in missing_peer_modules(name.partition(":")[0])})
    if missing:
        return (
            f"{', '.join(peers)} need {', '.join(missing)}, not installed here: "
            'pip install "pixie-integrations[bench-peers]"'
        )
    return None


class _Progress:
    """The bench bar: one step per load, warm-up or timed call, and what runs now with its seconds so far.

    A call of the card's code on a CPU can take a minute; the ticking label shows the run is alive meanwhile (its
    thread only wakes once a second, which costs the timings nothing measurable).
    """

    def __init__(self, total: int, *, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc="bench", unit="step", disable=not enabled, dynamic_ncols=True)
        self._label = ""
        self._since = time.perf_counter()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(target=self._tick, name="pixie-bench-progress", daemon=True)
            self._thread.start()

    def doing(self, label: str) -> None:
        self._label, self._since = label, time.perf_counter()
        self._show()

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.close()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            self._show()

    def _show(self) -> None:
        if self._label:
            self.bar.set_postfix_str(f"{self._label} {time.perf_counter() - self._since:.0f}s")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_systems(
    factories: dict[str, Callable[[], ScoreFn]],
    workload: Workload,
    device: str,
    repeats: int,
    progress: _Progress | None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[float]], dict[str, str]]:
    """Load every system, warm each up on the first query, then time them query by query, interleaved.

    Interleaving (with the order rotated each query) makes the ratios robust to a machine whose speed drifts during
    the run, as shared cloud CPUs do: every system sees the same conditions, query for query.
    """
    import torch

    cuda = device.startswith("cuda")
    systems: dict[str, ScoreFn] = {}
    stats: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for name, make in factories.items():
        try:
            if progress is not None:
                progress.doing(f"loading {name}")
            t0 = time.perf_counter()
            score = make()
            load_s = time.perf_counter() - t0
            if progress is not None:
                progress.done()
                progress.doing(f"warming up {name}")
            t0 = time.perf_counter()
            # Kernels, allocator, compilation: not timed. A compiled system compiles once per shape bucket, so it
            # warms up on every query (its compile time is then all in warmup_s, none in the timed run).
            warm_up = list(zip(workload.queries, workload.documents))
            if not parse_system(name)[1].get("compile", False):
                warm_up = warm_up[:1]
            for query, documents in warm_up:
                score(query, documents)
            _sync(device)
            stats[name] = {"load_s": load_s, "warmup_s": time.perf_counter() - t0}
            systems[name] = score
            if progress is not None:
                progress.done()
        except Exception as exc:  # one failing system (e.g. compilation) must not lose the others
            logger.error("system %s failed: %s: %s", name, type(exc).__name__, exc)
            logger.info("system %s failed", name, exc_info=True)  # -v shows where
            failed[name] = f"{type(exc).__name__}: {exc}"
    latencies: dict[str, list[float]] = {name: [] for name in systems}
    peaks: dict[str, float] = {name: 0.0 for name in systems}
    scores: dict[str, list[float]] = {name: [] for name in systems}
    names = list(systems)
    step = 0
    for rep in range(repeats):
        for query, documents in zip(workload.queries, workload.documents):
            for name in names[step % len(names) :] + names[: step % len(names)]:
                if progress is not None:
                    progress.doing(f"{name}, query {step % len(workload.queries) + 1}/{len(workload.queries)}")
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    before = torch.cuda.memory_allocated()
                t0 = time.perf_counter()
                got = systems[name](query, documents)
                _sync(device)
                latencies[name].append(time.perf_counter() - t0)
                if cuda:
                    peaks[name] = max(peaks[name], (torch.cuda.max_memory_allocated() - before) / 2**20)
                if rep == 0:
                    scores[name].extend(got)
                if progress is not None:
                    progress.done()
            step += 1
    for name in names:
        total = sum(latencies[name])
        stats[name].update(
            pairs_per_s=workload.pairs * repeats / total,
            seconds=total,
            latency_p50_ms=1000 * statistics.median(latencies[name]),
            latency_p95_ms=1000 * _percentile(latencies[name], 95),
        )
        if cuda:
            stats[name]["peak_activation_memory_mb"] = peaks[name]
    return {n: stats[n] for n in names}, scores, failed


def _rss_mb() -> float:
    """This process's resident memory now (Linux), else its peak so far."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _peak_rss_mb()


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _memory_of_system(name: str, path: str, device: str, query: str, documents: list[str]) -> dict[str, float]:
    """In a fresh process: load one system, score one query, and report that process's peak resident memory.

    ``idle_rss_mb`` is the same process before loading (Python, torch and the libraries), so ``peak_rss_mb`` minus
    it is what the system itself (weights, activations, its library's caches) costs.
    """
    import torch  # noqa: F401  (the baseline includes torch and transformers, as every system needs them)
    import transformers  # noqa: F401

    base = name.partition(":")[0]
    if base in _CARD_SYSTEMS:
        import sentence_transformers  # noqa: F401
    if base in _PEER_SYSTEMS:  # the runtime's own libraries count as the baseline, as torch does
        for module in PEERS[base].modules:
            importlib.import_module(module)
    idle = _rss_mb()
    score = _systems([name], path, device)[name]()
    score(query, documents)
    peak = _peak_rss_mb()
    # Peak includes loading (e.g. float32 weights cast to bfloat16); after_query is what stays resident to serve.
    return {"peak_rss_mb": peak, "idle_rss_mb": idle, "rss_over_idle_mb": peak - idle, "rss_after_query_mb": _rss_mb()}


def _measure_memory(
    names: Sequence[str], path: str, device: str, workload: Workload, progress: _Progress | None
) -> dict[str, dict[str, float]]:
    """Each system's peak memory in a process of its own (so no system's memory counts against another's)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing inherited from this process
    out: dict[str, dict[str, float]] = {}
    for name in names:
        if progress is not None:
            progress.doing(f"memory of {name} (own process)")
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
                out[name] = pool.submit(
                    _memory_of_system, name, path, device, workload.queries[0], workload.documents[0]
                ).result()
        except Exception as exc:  # noqa: BLE001  (a system failing here fails, reported, in the timed run too)
            logger.warning("memory of %s not measured: %s: %s", name, type(exc).__name__, exc)
        if progress is not None:
            progress.done()
    return out


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two score lists (1: the same order; ties count as neither agreeing nor disagreeing)."""
    concordant = discordant = ties_a = ties_b = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            da, db = a[i] - a[j], b[i] - b[j]
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif (da > 0) == (db > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denominator if denominator else 1.0


def _ranking_agreement(
    scores: Sequence[float], reference: Sequence[float], work: Workload, name: str, k: int = 10
) -> dict[str, float]:
    """How far a system's rankings agree with the reference's, per query: Kendall's tau and top-k overlap (mean)."""
    taus, overlaps, start = [], [], 0
    for documents in work.documents:
        got, ref = scores[start : start + len(documents)], reference[start : start + len(documents)]
        start += len(documents)
        taus.append(kendall_tau(got, ref))
        top = min(k, len(documents))
        best = {i for i in sorted(range(len(got)), key=lambda i: -got[i])[:top]}
        ref_best = {i for i in sorted(range(len(ref)), key=lambda i: -ref[i])[:top]}
        overlaps.append(len(best & ref_best) / top)
    return {
        "kendall_tau_vs_" + name: statistics.mean(taus),
        f"top{k}_overlap_vs_" + name: statistics.mean(overlaps),
    }


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_benchmark(
    *,
    workload: str = "beir",
    model: str | None = None,
    shape: str = "pixie",
    systems: Sequence[str] = ("card-fp32", "card-bf16", "pixie"),
    device: str | None = None,
    queries: int | None = None,
    docs_per_query: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    show_progress: bool = True,
    model_dir: str | os.PathLike[str] | None = None,
    memory: bool = True,
) -> dict[str, Any]:
    """Time each system on one workload and the same weights; report speed, memory and score differences.

    Args:
        workload: ``"beir"``, ``"latency"`` or ``"long"``.
        model: A checkpoint to time; ``None`` builds a random one of ``shape`` (no download).
        shape: ``"pixie"`` (28 layers, PIXIE's FLOPs), ``"pixie-4l"`` (4 layers: quick, overstates speed-ups) or
            ``"tiny"``.
        systems: Which of ``card-fp32``, ``card-bf16`` (the model card's CrossEncoder path), ``pixie`` (defaults),
            ``pixie-fp32``, ``pixie-noprefix``, ``pixie-compile``, ``pixie-padded``, and the peers ``openvino-fp32``,
            ``openvino-bf16``, ``openvino-int8``, ``onnxruntime-fp32``, ``onnxruntime-int8`` (CPU; their
            ``batch_size`` default is 4, e.g. ``openvino-bf16:batch_size=8``) to run. The first is the reference for
            ratios and score differences.
        device: ``None`` picks cuda, mps, then cpu.
        queries, docs_per_query: Shrink the workload.
        repeats: Timed passes over the workload (after one untimed warm-up query).
        model_dir: Where to keep the random model (default: a temporary folder).
        memory: Measure each system's peak resident memory in a process of its own (one more load and query per
            system, before the timed run).
    """
    import torch
    from transformers import AutoTokenizer

    from .loading import resolve_device

    device_name = str(resolve_device(device))
    tmp: tempfile.TemporaryDirectory[str] | None = None
    random_model = model is None
    if model is None:
        if model_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix="pixie-bench-")
            model_dir = Path(tmp.name) / shape
        model = str(build_random_model(shape, model_dir, seed=seed))
    else:
        model = _local_checkpoint(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        work = build_workload(workload, tokenizer, seed=seed, queries=queries, docs_per_query=docs_per_query)
        input_tokens = sum(
            len(tokenizer(format_query(q) + format_document(d), add_special_tokens=False)["input_ids"])
            for q, docs in zip(work.queries, work.documents)
            for d in docs
        )
        factories = _systems(systems, model, device_name)
        # Steps: each system's memory run, load and warm-up, then one per system and query.
        steps = len(factories) * (2 + int(memory) + len(work.queries) * repeats)
        progress = _Progress(steps, enabled=show_progress)
        try:
            memory_of = _measure_memory(list(factories), model, device_name, work, progress) if memory else {}
            results, all_scores, failed = _time_systems(factories, work, device_name, repeats, progress)
        finally:
            progress.close()
        for name, stats in results.items():
            stats.update(memory_of.get(name, {}))
        for stats in results.values():
            stats["tokens_per_s"] = input_tokens * repeats / stats["seconds"]
        if not results:
            raise RuntimeError(f"every system failed: {failed}")
        reference = next(iter(results))
        for name, stats in results.items():
            stats["speedup_vs_" + reference] = stats["pairs_per_s"] / results[reference]["pairs_per_s"]
            stats["latency_p50_ratio_vs_" + reference] = stats["latency_p50_ms"] / results[reference]["latency_p50_ms"]
            stats["max_abs_score_diff_vs_" + reference] = max(
                abs(a - b) for a, b in zip(all_scores[name], all_scores[reference])
            )
            stats.update(_ranking_agreement(all_scores[name], all_scores[reference], work, reference))
        return {
            "workload": {
                **asdict(WORKLOADS[workload]),
                # What ran (--queries/--docs cut the workload's own sizes).
                "name": workload,
                "queries": len(work.queries),
                "docs_per_query": len(work.documents[0]),
                "pairs": work.pairs,
                "input_tokens": input_tokens,
                "mean_tokens_per_pair": input_tokens / work.pairs,
            },
            "model": f"random {shape}-shaped Qwen3 seq-cls (seed {seed})" if random_model else model,
            "machine": _machine(device_name),
            "reference": reference,
            "systems": results,
            "failed": failed,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()
        del torch


def _local_checkpoint(model: str) -> str:
    """A folder holding ``model``: the path itself, or its Hub snapshot (downloaded once, with a progress bar).

    Every system then loads the same local files; without network the Hub cache is used at once (no retries).
    """
    from .loading import ModelLoadError, _looks_like_path, hub_unreachable

    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    if _looks_like_path(model):
        raise ModelLoadError(
            f"Model path {model!r} does not exist; point --model at a folder holding a checkpoint (config.json, "
            "weights, tokenizer files), or leave --model out to time a random model of --shape"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(
            model, local_files_only=hub_unreachable(), ignore_patterns=["*.onnx", "onnx/*", "openvino/*", "*.h5"]
        )
    except Exception as exc:  # not found, gated, or out of reach and not cached: all say the same to the user
        raise ModelLoadError(
            f"Could not get {model!r} from the Hugging Face Hub ({type(exc).__name__}: {exc}); pass a local folder "
            "with --model, or leave --model out to time a random model of --shape"
        ) from exc


def _machine(device: str) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {
        "device": device,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu": cpu_info().as_dict(),
        "cpu_threads": torch.get_num_threads(),
        "torch_build": torch_build(),
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _machine_line(machine: dict[str, Any]) -> str:
    """CPU model, class, ISA flags, threads and torch build, in one line."""
    cpu = machine.get("cpu")
    build = machine.get("torch_build", {})
    if not isinstance(cpu, dict):  # results written before the CPU was recorded
        return f"cpu: {cpu}, {machine.get('cpu_threads')} threads, torch {machine.get('torch')}"
    libs = ", ".join(
        f"{lib} {build[key]}" for lib, key in (("MKL", "mkl_version"), ("oneDNN", "onednn_version")) if key in build
    )
    return (
        f"cpu: {cpu['model']} (class {cpu['class']}; {', '.join(cpu['flags']) or 'no flags of note'}), "
        f"{machine.get('cpu_threads')} threads; torch {machine.get('torch')}"
        + (f" ({libs}, kernels {build.get('cpu_capability')})" if build else "")
    )


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table of one benchmark result."""
    ref = result["reference"]
    lines = [
        (
            f"workload {result['workload']['name']}: {result['workload']['pairs']} pairs, "
            f"{result['workload']['mean_tokens_per_pair']:.0f} tokens/pair; model: {result['model']}; "
            f"device: {result['machine'].get('gpu', result['machine']['device'])}"
        ),
        _machine_line(result["machine"]),
        "",
        (
            f"| system | pairs/s | tokens/s | p50 ms | p95 ms | speed-up vs {ref} | max |score diff| | Kendall tau | "
            "peak RSS MB |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["systems"].items():
        rss = f"{s['peak_rss_mb']:.0f}" if "peak_rss_mb" in s else "-"
        lines.append(
            f"| {name} | {s['pairs_per_s']:.1f} | {s['tokens_per_s']:.0f} | {s['latency_p50_ms']:.0f} | "
            f"{s['latency_p95_ms']:.0f} | {s['speedup_vs_' + ref]:.2f}x | {s['max_abs_score_diff_vs_' + ref]:.2e} | "
            f"{s.get('kendall_tau_vs_' + ref, float('nan')):.4f} | {rss} |"
        )
    for name, error in result.get("failed", {}).items():
        lines.append(f"| {name} | failed: {error[:80]} | | | | | | | |")
    if any("peak_rss_mb" in s for s in result["systems"].values()):
        lines.append("")
        lines.append(
            "peak RSS: each system loaded and run on one query in a process of its own (loading included; the JSON "
            "also has rss_after_query_mb)."
        )
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from .cli_args import fail
    from .loading import ModelLoadError

    missing = _missing_bench_extra(args.systems)
    if missing is not None:
        return fail(missing)
    if args.preset == "cpu":
        args.queries = args.queries or 2
        args.docs = args.docs or 12
    try:
        result = _run_benchmark(args)
    except (ModelLoadError, RuntimeError, ValueError) as exc:
        logger.info("bench failed", exc_info=True)  # -v shows where
        return fail(exc)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    return run_benchmark(
        workload=args.workload,
        model=args.model,
        shape=args.shape or "pixie",
        systems=args.systems,
        device=args.device,
        queries=args.queries,
        docs_per_query=args.docs,
        repeats=args.repeats,
        seed=args.seed,
        show_progress=not args.no_progress,
        model_dir=args.model_dir,
        memory=not args.no_memory,
    )


def register(subparsers: Any) -> None:
    from .cli_args import device, positive_int

    parser = subparsers.add_parser(
        "bench",
        help="time PixieScorer against the model card's CrossEncoder path on the same weights",
        # The module docstring without its Sphinx markup and its note for Python callers.
        description=__doc__.split("\n\nImportable")[0].replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="beir")
    parser.add_argument("--preset", choices=["cpu"], help="cpu: 24 pairs (2 queries x 12 documents) of PIXIE's shape")
    parser.add_argument("--model", help="checkpoint to time (default: a random model of --shape, no download)")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="random model shape (default: pixie)")
    parser.add_argument("--model-dir", help="keep the random model here (reused across runs)")
    parser.add_argument(
        "--systems",
        nargs="+",
        type=_system_arg,
        default=["card-fp32", "card-bf16", "pixie"],
        help="systems to time; the first is the reference. card-fp32, card-bf16 (the model card's code), pixie, "
        "pixie-fp32, pixie-noprefix, pixie-compile, pixie-padded, or pixie:key=value,... for PixieScorer settings "
        f"(e.g. pixie:token_budget=8192,compile=true; settings: {', '.join(_SETTINGS)}); the same weights in "
        f"OpenVINO or ONNX Runtime on CPU: {', '.join(_PEER_SYSTEMS)} (batch 4; e.g. openvino-bf16:batch_size=8; "
        'pip install "pixie-integrations[bench-peers]"). Default: %(default)s',
    )
    parser.add_argument("--device", type=device, help="cpu, cuda, cuda:N or mps (default: the best available)")
    parser.add_argument("--queries", type=positive_int, help="use only this many queries")
    parser.add_argument("--docs", type=positive_int, help="documents per query")
    parser.add_argument("--repeats", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the result as JSON here")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="skip the per-system memory runs (each system loaded and run once in a process of its own)",
    )
    parser.set_defaults(func=_run)
