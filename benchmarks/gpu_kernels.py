"""Which fused kernels to keep on the GPU: packed eager, liger-kernel's Triton kernels, or torch.compile's fusion.

All three in one process on the same weights and pairs (the "beir" length distribution), so their ratios are
comparable. liger-kernel (optional; ``pip install liger-kernel``) patches the model in place, so it runs last.

Run from the repository root on a CUDA machine:
``python benchmarks/gpu_kernels.py --model-dir DIR [--queries 5]``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer

from pixie_integrations import PixieScorer
from pixie_integrations.benchmark import build_random_model, build_workload


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--model-dir", required=True, help="random PIXIE-shaped model folder (built if missing)")
    parser.add_argument("--queries", type=int, default=5)
    args = parser.parse_args()
    path = str(build_random_model("pixie", Path(args.model_dir)))
    work = build_workload("beir", AutoTokenizer.from_pretrained(path), queries=args.queries)
    report: dict[str, object] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "pairs": work.pairs}

    def timed(name: str, scorer: PixieScorer, reference: list[float] | None) -> list[float]:
        start = time.perf_counter()
        scorer.score(work.queries[0], work.documents[0])  # warm-up (compilation, kernel autotuning)
        torch.cuda.synchronize()
        warmup = time.perf_counter() - start
        scores: list[float] = []
        start = time.perf_counter()
        for query, documents in zip(work.queries, work.documents):
            scores += scorer.score(query, documents)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        entry: dict[str, object] = {"pairs_per_s": work.pairs / seconds, "warmup_s": warmup}
        if reference is not None:
            entry["max_abs_diff_vs_packed_eager"] = max(abs(a - b) for a, b in zip(scores, reference))
        report[name] = entry
        print(f"{name}: {entry}", flush=True)
        return scores

    def attempt(name: str, run: Callable[[], object]) -> None:
        try:
            run()
        except Exception as exc:  # noqa: BLE001  (report it and go on to the next variant)
            report[name] = f"FAILED {type(exc).__name__}: {exc}"
            print(f"{name}: {report[name]}", flush=True)

    eager = PixieScorer(path, device="cuda", pack=True, compile=False, show_progress_bar=False)
    reference = timed("packed_eager", eager, None)

    def compiled() -> None:
        # Its own copy of the weights (a distinct config), so liger below patches only the eager one.
        scorer = PixieScorer(
            path, device="cuda", pack=True, compile=True, show_progress_bar=False, config_kwargs={"copy": 1}
        )
        timed("packed_compile", scorer, reference)

    attempt("packed_compile", compiled)

    def liger() -> None:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen3

        apply_liger_kernel_to_qwen3(
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
            model=eager.model,
        )
        timed("packed_liger", eager, reference)

    attempt("packed_liger", liger)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
