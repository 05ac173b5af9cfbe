"""PixieScorer on the model card's Korean example: scores, a ranking, and a domain instruction.

python examples/quickstart.py                  # the real model (downloads it once)
python examples/quickstart.py --model ./pixie  # a local copy
python examples/quickstart.py --tiny           # offline: a tiny random model built here (scores are noise)
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from pixie_integrations import DEFAULT_MODEL, ModelLoadError, PixieScorer

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
DOCUMENTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "텔레픽스는 위성 영상 획득부터 분석, 서비스 제공까지 전 주기를 아우르는 솔루션을 제공합니다.",
]


def main() -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tiny", action="store_true", help="build and use a tiny random model (offline)")
    parser.add_argument("--dtype", default=None, help="float32 reproduces the card's numbers; default: per device")
    args = parser.parse_args()
    model = args.model
    if args.tiny:
        from pixie_integrations.testing import build_tiny_reranker

        model = str(build_tiny_reranker(tempfile.mkdtemp(prefix="tiny-pixie-")))
    try:
        scorer = PixieScorer(model, dtype=args.dtype)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(scorer)
    if scorer.device.type == "cpu":  # what this CPU got, and why (also logged once at INFO)
        from pixie_integrations.cpu import cpu_defaults, cpu_info

        info, defaults = cpu_info(), cpu_defaults()
        print(f"CPU: {info.model}, class {info.cpu_class.value}: default {defaults.dtype} ({defaults.why})")
    print("scores:", [round(s, 5) for s in scorer.score(QUERY, DOCUMENTS)])
    print("ranking:")
    for hit in scorer.rank(QUERY, DOCUMENTS, top_n=3):
        print(f"  {hit.score:.5f}  [{hit.index}] {hit.document}")
    domain = "Given a question about a satellite company, retrieve passages about the industries it serves"
    print("with a domain instruction:", [round(s, 5) for s in scorer.score(QUERY, DOCUMENTS, instruction=domain)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
