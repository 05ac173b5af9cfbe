"""Serve PIXIE over HTTP and rerank through it with RemoteScorer, as worker processes sharing one model would.

Run it:

    pip install -e ".[serve]"   # in a clone (once released: pip install "pixie-integrations[serve]")
    # a tiny random model built here: offline, seconds, meaningless scores (it shows the plumbing)
    python examples/serving_rerank.py --tiny
    # the real PIXIE-Spell-Reranker-Preview-0.6B (downloaded once, ~1.2 GB), or a local copy of it
    python examples/serving_rerank.py --model ./PIXIE-Spell-Reranker-Preview-0.6B --device cpu
    # a server that is already running: `pixie-rerank serve`, or vLLM (then --api vllm)
    python examples/serving_rerank.py --url http://127.0.0.1:8000
    python examples/serving_rerank.py --url http://127.0.0.1:8001 --api vllm

Without --url it starts the server in this process, on a free loopback port in a background thread, queries it
with plain HTTP, the cohere SDK (if installed) and RemoteScorer, compares with the in-process scorer, and stops the server.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx

from pixie_integrations import DEFAULT_MODEL, PixieScorer
from pixie_integrations.serving import RemoteScorer, create_app, serve_in_thread

QUERY = "국방 분야에 어떤 위성 서비스가 제공되나요?"
DOCUMENTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "A satellite imaging company analyses earth observation data for agriculture, defence and the ocean.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
]


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="build a tiny random model here and run fully offline")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: per device)")
    parser.add_argument("--url", help="query this running server instead of starting one")
    parser.add_argument("--api", choices=["pixie", "vllm"], default="pixie", help="what runs at --url")
    parser.add_argument("--top-n", type=int, default=3)
    args = parser.parse_args()

    if args.url:
        query_remote(args.url, args.api, args.top_n)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model, device, dtype = args.model, args.device, args.dtype
        if args.tiny:
            from pixie_integrations.testing import build_tiny_reranker

            model = str(build_tiny_reranker(Path(tmp) / "tiny-pixie"))
            device, dtype = device or "cpu", dtype or "float32"
            print(f"Built a tiny RANDOM reranker in {model} (its scores only show the plumbing, not quality).")
        local = PixieScorer(model, device=device, dtype=dtype)
        with serve_in_thread(create_app(local)) as url:
            print(f"Serving {local.model_name} at {url} (this process, a background thread)")
            remote_scores = query_remote(url, "pixie", args.top_n)
            worst = max(abs(a - b) for a, b in zip(remote_scores, local.score(QUERY, DOCUMENTS), strict=True))
            print(f"\nlargest difference from the in-process scorer: {worst:.1e}")
        print("\nserver stopped")


def query_remote(url: str, api: str, top_n: int) -> list[float]:
    """Query a server two ways; return RemoteScorer's scores in document order."""
    if api == "pixie":
        # 1. Plain HTTP: what any Cohere/Jina-style rerank client sends (vLLM serves the same route).
        body = {"query": QUERY, "documents": DOCUMENTS, "top_n": top_n, "return_documents": True}
        response = httpx.post(f"{url}/rerank", json=body, timeout=60)
        response.raise_for_status()
        print(f"\n== POST /rerank (top {top_n})")
        for hit in response.json()["results"]:
            print(f"  {hit['relevance_score']:.4f}  [{hit['index']}] {hit['document']['text'][:70]}")

    # 2. The cohere SDK, as a Cohere user's code would call it (the server also speaks /v2/rerank).
    if api == "pixie":
        try:
            import cohere
        except ImportError:
            print("\n(pip install cohere to see the cohere SDK call the same server)")
        else:
            models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
            client = cohere.ClientV2(api_key="unused-without-an-api-key", base_url=url)
            response = client.rerank(model=models[0]["id"], query=QUERY, documents=DOCUMENTS, top_n=top_n)
            print(f"\n== cohere.ClientV2.rerank (top {top_n}, {response.meta.tokens.input_tokens} tokens)")
            for result in response.results:
                print(f"  {result.relevance_score:.4f}  [{result.index}] {DOCUMENTS[result.index][:70]}")

    # 3. RemoteScorer: PixieScorer's calls over HTTP; pass it as scorer= to the LangChain or LlamaIndex PixieRerank.
    with RemoteScorer(url, api=api) as scorer:  # api="vllm": the client applies PIXIE's template itself
        print(f"\n== RemoteScorer.rank against {scorer.model_name} ({api} API)")
        for hit in scorer.rank(QUERY, DOCUMENTS, top_n=top_n):
            print(f"  {hit.score:.4f}  [{hit.index}] {hit.document[:70]}")
        return scorer.score(QUERY, DOCUMENTS)


if __name__ == "__main__":
    main()
