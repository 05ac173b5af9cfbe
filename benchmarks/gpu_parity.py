"""GPU checks that CPU CI cannot make: card-code parity on CUDA, bf16 drift, and one 40k-token document.

Run from the repository root on a CUDA machine: ``python benchmarks/gpu_parity.py [--pixie-dir DIR]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder

from pixie_integrations import PixieScorer, format_document, format_query
from pixie_integrations.benchmark import build_random_model
from pixie_integrations.testing import (
    SAMPLE_DOCUMENTS,
    SAMPLE_QUERIES,
    build_tiny_qwen3_reranker_pair,
    build_tiny_reranker,
)


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pixie-dir", default=None, help="random PIXIE-shaped model folder (built if missing)")
    args = parser.parse_args()
    report: dict[str, object] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    pairs = [(q, d) for q in SAMPLE_QUERIES for d in SAMPLE_DOCUMENTS]
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_reranker(Path(tmp) / "tiny")
        card = CrossEncoder(str(tiny), device="cuda")
        expected = [float(s) for s in card.predict([[format_query(q), format_document(d)] for q, d in pairs])]
        gpu = PixieScorer(str(tiny), device="cuda", dtype="float32").score_pairs(pairs)
        cpu = PixieScorer(str(tiny), device="cpu", dtype="float32").score_pairs(pairs)
        report["tiny_fp32_cuda_vs_card_cuda"] = max_diff(gpu, expected)
        report["tiny_fp32_cuda_vs_cpu"] = max_diff(gpu, cpu)
        causal, seq_cls = build_tiny_qwen3_reranker_pair(Path(tmp) / "pair")
        report["tiny_causal_vs_seqcls_cuda"] = max_diff(
            PixieScorer(str(causal), device="cuda", dtype="float32").score_pairs(pairs),
            PixieScorer(str(seq_cls), device="cuda", dtype="float32").score_pairs(pairs),
        )

    pixie_dir = Path(args.pixie_dir or tempfile.mkdtemp()) / "pixie"
    path = str(build_random_model("pixie", pixie_dir))
    card = CrossEncoder(path, device="cuda", model_kwargs={"dtype": torch.float32})
    expected = [float(s) for s in card.predict([[format_query(q), format_document(d)] for q, d in pairs])]
    del card
    fp32 = PixieScorer(path, device="cuda", dtype="float32")
    report["pixie_shape_fp32_vs_card_fp32"] = max_diff(fp32.score_pairs(pairs), expected)
    del fp32
    bf16 = PixieScorer(path, device="cuda")
    report["pixie_shape_default_dtype"] = str(bf16.dtype)
    report["pixie_shape_bf16_vs_card_fp32"] = max_diff(bf16.score_pairs(pairs), expected)
    # One document filling the whole 40,960-token context.
    long_doc = " ".join(SAMPLE_DOCUMENTS) * 400
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    score = bf16.score(SAMPLE_QUERIES[0], [long_doc])[0]
    torch.cuda.synchronize()
    report["doc_40k"] = {
        "seconds": time.perf_counter() - start,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "score": score,
        "max_length": bf16.max_length,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
