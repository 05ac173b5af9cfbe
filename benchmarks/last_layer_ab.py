"""The last decoder layer for each pair's scored token only, against the whole last layer: two default CPU scorers on
the same weights, timed query by query in alternation, and the largest score difference between them.

    python benchmarks/last_layer_ab.py --shape pixie --queries 1 --rounds 3 --model-dir /tmp/pixie
    python benchmarks/last_layer_ab.py --shape pixie-4l --queries 2 --rounds 5 --model-dir /tmp/pixie-4l

The model folder is built (random weights of the named shape) if missing. The second scorer's runner has the
shortcut switched off; everything else is the defaults.
"""

import argparse
import statistics
import time

from transformers import AutoTokenizer

from pixie_integrations import PixieScorer
from pixie_integrations.benchmark import build_random_model, build_workload

parser = argparse.ArgumentParser(allow_abbrev=False)
parser.add_argument("--shape", default="pixie", choices=["pixie", "pixie-4l"])
parser.add_argument("--model-dir", required=True)
parser.add_argument("--queries", type=int, default=1)
parser.add_argument("--docs", type=int, default=24)
parser.add_argument("--rounds", type=int, default=3)
args = parser.parse_args()
path = str(build_random_model(args.shape, args.model_dir))
work = build_workload("beir", AutoTokenizer.from_pretrained(path), queries=args.queries, docs_per_query=args.docs)
# Distinct config kwargs: each scorer gets its own copy of the model.
shortcut = PixieScorer(path, device="cpu", config_kwargs={"ab": "shortcut"})
whole = PixieScorer(path, device="cpu", config_kwargs={"ab": "whole"})
assert shortcut._runner._scored_only, "the defaults on this machine do not take the shortcut (not packed?)"
whole._runner._scored_only = False


def run(scorer: PixieScorer) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = [s for q, d in zip(work.queries, work.documents) for s in scorer.score(q, d)]
    return time.perf_counter() - start, scores


run(shortcut), run(whole)  # warm-up
times: dict[str, list[float]] = {"shortcut": [], "whole": []}
for r in range(args.rounds):
    t_short, s_short = run(shortcut)
    t_whole, s_whole = run(whole)
    times["shortcut"].append(t_short)
    times["whole"].append(t_whole)
    print(f"round {r + 1}: last layer for scored tokens {t_short:.2f} s, whole last layer {t_whole:.2f} s")
diff = max(abs(a - b) for a, b in zip(s_short, s_whole))
ratio = statistics.median(times["whole"]) / statistics.median(times["shortcut"])
print(f"{args.shape}: {ratio:.3f}x faster with the shortcut (medians); max score difference {diff:.2e}")
