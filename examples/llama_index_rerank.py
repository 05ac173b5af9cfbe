"""Rerank a LlamaIndex query engine's retrieval with PIXIE.

Run it fully offline with a tiny random model built on the spot (its scores are meaningless, the plumbing is real):

    python examples/llama_index_rerank.py --tiny

or with the real reranker (downloaded from the Hugging Face Hub on first use, or a local folder):

    python examples/llama_index_rerank.py --model telepix/PIXIE-Spell-Reranker-Preview-0.6B
    python examples/llama_index_rerank.py --model ./PIXIE-Spell-Reranker-Preview-0.6B --device cpu

MockEmbedding and MockLLM stand in for a real embedding model and LLM so that nothing else needs a key or a
download: MockEmbedding gives every text the same vector, so the first stage returns the whole corpus and the
ranking you see is PIXIE's alone. Swap in your own models in a real application.

Needs: pip install -e ".[llama-index]" -e integrations/llama-index-postprocessor-pixie-rerank in a clone (once
released: pip install llama-index-postprocessor-pixie-rerank)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from llama_index.core import Document, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.schema import NodeWithScore

from pixie_integrations import DEFAULT_MODEL, ModelLoadError
from pixie_integrations.llama_index import PixieRerank

# The model card's Korean example passages, and a few English ones.
CORPUS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "텔레픽스는 우주에서 수집한 정보를 분석하여 '우주 경제(Space Economy)'라는 새로운 가치를 창출하고 있습니다.",
    "텔레픽스는 위성 영상 획득부터 분석, 서비스 제공까지 전 주기를 아우르는 솔루션을 제공합니다.",
    "A satellite imaging company analyses earth observation data for agriculture, defence and the ocean.",
    "Rerankers are evaluated with NDCG at cut-offs 1, 3, 5 and 10 over a first-stage shortlist.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
]
DEFAULT_QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"


def show(title: str, nodes: list[NodeWithScore]) -> None:
    print(f"\n{title}")
    for rank, item in enumerate(nodes, start=1):
        text = item.node.get_content().replace("\n", " ")
        print(f"#{rank} {item.score:.4f} {text[:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tiny", action="store_true", help="build a tiny random model in a temp dir (offline)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="hub id or local folder (default: %(default)s)")
    parser.add_argument("--query", default=DEFAULT_QUERY)
    parser.add_argument("--top-n", type=int, default=3)
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if args.tiny:
            from pixie_integrations.testing import build_tiny_reranker

            model = str(build_tiny_reranker(Path(tmp) / "tiny-pixie"))
            print(f"Built a tiny random reranker in {model} (its scores are random, not relevance)")

        reranker = PixieRerank(model=model, top_n=args.top_n, device=args.device, keep_retrieval_score=True)
        print(f"Reranker: {reranker.class_name()}(model={reranker.model!r}, top_n={reranker.top_n})")

        index = VectorStoreIndex.from_documents(
            [Document(text=text, metadata={"source": f"passage-{i}"}) for i, text in enumerate(CORPUS)],
            embed_model=MockEmbedding(embed_dim=8),
        )
        engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=len(CORPUS), node_postprocessors=[reranker])

        print(f"Query: {args.query}")
        response = engine.query(args.query)
        show(f"Query engine sources (best {reranker.top_n} of {len(CORPUS)}):", response.source_nodes)
        first_stage = [n.node.metadata["retrieval_score"] for n in response.source_nodes]
        print("First-stage scores kept in metadata['retrieval_score']:", [round(s, 4) for s in first_stage])

        # The same reranker works asynchronously (scoring runs in a worker thread) ...
        async_response = asyncio.run(engine.aquery(args.query))
        assert [n.node.node_id for n in async_response.source_nodes] == [n.node.node_id for n in response.source_nodes]

        # ... and on its own, on any list of NodeWithScore (the caller's nodes keep their retrieval scores).
        retrieved = index.as_retriever(similarity_top_k=len(CORPUS)).retrieve(args.query)
        show("postprocess_nodes() on the raw retrieval:", reranker.postprocess_nodes(retrieved, query_str=args.query))

        # A config saved by SentenceTransformerRerank (its to_dict()) loads as a PixieRerank.
        saved = {"model": model, "top_n": 2, "device": args.device or "cpu", "keep_retrieval_score": False,
                 "trust_remote_code": False, "class_name": "SentenceTransformerRerank"}  # fmt: skip
        switched = PixieRerank.from_dict(saved)
        show("A saved SentenceTransformerRerank config, loaded as PixieRerank:",
             switched.postprocess_nodes(retrieved, query_str=args.query))  # fmt: skip


if __name__ == "__main__":
    try:
        main()
    except ModelLoadError as exc:
        raise SystemExit(f"{exc}\n\nTo try the example offline: python examples/llama_index_rerank.py --tiny") from exc
