"""GPU checks that CPU CI cannot make: card-code parity on CUDA, bf16 drift, and one 40k-token document.

Run from the repository root on a CUDA machine: ``python benchmarks/gpu_parity.py [--pixie-dir DIR] [--tiny-only]``.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder

from pixie_integrations import PixieScorer, format_document, format_query
from pixie_integrations.benchmark import build_random_model
from pixie_integrations.packing import fast_kernel
from pixie_integrations.testing import (
    SAMPLE_DOCUMENTS,
    SAMPLE_QUERIES,
    build_tiny_qwen3_reranker_pair,
    build_tiny_reranker,
)


def max_diff(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) for x, y in zip(a, b))


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--pixie-dir", default=None, help="random PIXIE-shaped model folder (built if missing)")
    parser.add_argument("--tiny-only", action="store_true", help="only the tiny-model checks (seconds)")
    args = parser.parse_args()
    report: dict[str, object] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["packed_kernel_bf16"] = fast_kernel(torch.device("cuda"), torch.bfloat16)
    pairs = [(q, d) for q in SAMPLE_QUERIES for d in SAMPLE_DOCUMENTS]

    def check(name: str, compute: Callable[[], object]) -> None:
        # One failing check must not hide the others: record the error and go on.
        try:
            report[name] = compute()
        except Exception as exc:  # noqa: BLE001
            report[name] = f"FAILED {type(exc).__name__}: {exc}"
        print(f"{name}: {report[name]}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_reranker(Path(tmp) / "tiny")
        card = CrossEncoder(str(tiny), device="cuda")
        expected = [float(s) for s in card.predict([[format_query(q), format_document(d)] for q, d in pairs])]
        cpu = PixieScorer(str(tiny), device="cpu", dtype="float32").score_pairs(pairs)

        def tiny_scores(**kwargs: object) -> list[float]:
            return PixieScorer(str(tiny), device="cuda", reuse_prefix=False, **kwargs).score_pairs(pairs)  # type: ignore[arg-type]

        check("tiny_fp32_cuda_vs_card_cuda", lambda: max_diff(tiny_scores(dtype="float32"), expected))
        check("tiny_fp32_cuda_vs_cpu", lambda: max_diff(tiny_scores(dtype="float32"), cpu))
        check("tiny_fp32_packed_vs_card_cuda", lambda: max_diff(tiny_scores(dtype="float32", pack=True), expected))
        check("tiny_bf16_packed_vs_card_fp32", lambda: max_diff(tiny_scores(pack=True), expected))
        check("tiny_bf16_padded_vs_card_fp32", lambda: max_diff(tiny_scores(pack=False), expected))
        causal, seq_cls = build_tiny_qwen3_reranker_pair(Path(tmp) / "pair")
        check(
            "tiny_causal_vs_seqcls_cuda",
            lambda: max_diff(
                PixieScorer(str(causal), device="cuda", dtype="float32").score_pairs(pairs),
                PixieScorer(str(seq_cls), device="cuda", dtype="float32").score_pairs(pairs),
            ),
        )

    if args.tiny_only:
        print(json.dumps(report, indent=2))
        return
    pixie_dir = Path(args.pixie_dir or tempfile.mkdtemp()) / "pixie"
    path = str(build_random_model("pixie", pixie_dir))
    card = CrossEncoder(path, device="cuda", model_kwargs={"dtype": torch.float32})
    expected = [float(s) for s in card.predict([[format_query(q), format_document(d)] for q, d in pairs])]
    del card
    check(
        "pixie_shape_fp32_vs_card_fp32",
        lambda: max_diff(PixieScorer(path, device="cuda", dtype="float32").score_pairs(pairs), expected),
    )
    bf16 = PixieScorer(path, device="cuda")
    report["pixie_shape_default"] = {"dtype": str(bf16.dtype), "pack": bf16.pack, "reuse_prefix": bf16.reuse_prefix}
    check("pixie_shape_default_vs_card_fp32", lambda: max_diff(bf16.score_pairs(pairs), expected))
    padded = PixieScorer(path, device="cuda", pack=False)
    check("pixie_shape_bf16_padded_vs_card_fp32", lambda: max_diff(padded.score_pairs(pairs), expected))
    check("pixie_shape_packed_vs_padded_bf16", lambda: max_diff(padded.score_pairs(pairs), bf16.score_pairs(pairs)))

    def long_document() -> dict[str, object]:
        # One document filling the whole 40,960-token context.
        long_doc = " ".join(SAMPLE_DOCUMENTS) * 400
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        score = bf16.score(SAMPLE_QUERIES[0], [long_doc])[0]
        torch.cuda.synchronize()
        return {
            "seconds": time.perf_counter() - start,
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
            "score": score,
            "padded_score": padded.score(SAMPLE_QUERIES[0], [long_doc])[0],
            "max_length": bf16.max_length,
        }

    check("doc_40k", long_document)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
