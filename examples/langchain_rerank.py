"""Rerank LangChain retrieval results with PIXIE, the way CohereRerank is used, on your own machine.

Run it:

    pip install -e ".[langchain]" -e integrations/langchain-pixie   # in a clone (once released: langchain-pixie)
    # a tiny random model built here: offline, seconds, meaningless scores (it shows the plumbing)
    python examples/langchain_rerank.py --tiny
    # the real PIXIE-Spell-Reranker-Preview-0.6B from the Hugging Face Hub (downloaded once, ~1.2 GB)
    python examples/langchain_rerank.py
    # a local copy of it (no network needed)
    python examples/langchain_rerank.py --model ./PIXIE-Spell-Reranker-Preview-0.6B --device cpu

It builds an in-memory vector store with a fake (deterministic, offline) embedding, so the first stage is a poor
retriever on purpose: the reranker's job is to put the relevant documents on top. It then shows the same reranker
three ways: on its own, inside an LCEL chain, and (if langchain-classic is installed) in a
ContextualCompressionRetriever, plus the run the rerank adds to LangChain tracing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.runnables import RunnableConfig, RunnableLambda, RunnablePassthrough
from langchain_core.tracers.context import collect_runs
from langchain_core.vectorstores import InMemoryVectorStore

from pixie_integrations import DEFAULT_MODEL
from pixie_integrations.langchain import PixieRerank

DOCUMENTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "텔레픽스는 우주에서 수집한 정보를 분석하여 '우주 경제(Space Economy)'라는 새로운 가치를 창출하고 있습니다.",
    "A satellite imaging company analyses earth observation data for agriculture, defence and the ocean.",
    "Rerankers are evaluated with NDCG at cut-offs 1, 3, 5 and 10 over a first-stage shortlist.",
    "The quick brown fox jumps over the lazy dog. Paris is the capital of France.",
    "Bread rises because yeast produces carbon dioxide while the dough proofs.",
]
QUERY = "국방 분야에 어떤 위성 서비스가 제공되나요?"


def show(title: str, docs: list[Document]) -> None:
    print(f"\n== {title}")
    for doc in docs:
        print(f"  {doc.metadata['relevance_score']:.4f}  [{doc.id}] {doc.page_content[:70]}")


def main() -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="build a tiny random model here and run fully offline")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: per device)")
    parser.add_argument("--query", default=QUERY)
    parser.add_argument("--top-n", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model, device, dtype = args.model, args.device, args.dtype
        if args.tiny:
            from pixie_integrations.testing import build_tiny_reranker

            model = str(build_tiny_reranker(Path(tmp) / "tiny-pixie"))
            device, dtype = device or "cpu", dtype or "float32"
            print(f"Built a tiny RANDOM reranker in {model} (its scores only show the plumbing, not quality).")
        run(model, device, dtype, args.query, args.top_n)


def run(model: str, device: str | None, dtype: str | None, query: str, top_n: int) -> None:
    # Nothing is loaded here: the scorer is created on the first rerank and shared with any other adapter.
    reranker = PixieRerank(model=model, device=device, dtype=dtype, top_n=top_n)

    store = InMemoryVectorStore(embedding=DeterministicFakeEmbedding(size=64))
    store.add_documents([Document(page_content=text, id=f"doc-{i}") for i, text in enumerate(DOCUMENTS)])
    retriever = store.as_retriever(search_kwargs={"k": 6})

    # 1. On its own: the same call ContextualCompressionRetriever makes.
    candidates = retriever.invoke(query)
    reranked = reranker.compress_documents(candidates, query)
    show(f"compress_documents: top {top_n} of {len(candidates)} candidates", list(reranked))

    # 2. rerank(): CohereRerank.rerank's signature and meanings, for your own plumbing.
    print("\n== rerank()")
    for hit in reranker.rerank([d.page_content for d in candidates], query, top_n=2):
        print(f"  {hit}")
    # Object documents scored on their rank_fields (as YAML, as langchain-cohere sends them), each document cut to
    # 32 of its own tokens (the prompt template is never cut); top_n=-1 is Cohere's "the instance's top_n".
    records = [{"title": f"passage {d.id}", "text": d.page_content, "views": i} for i, d in enumerate(candidates)]
    print("== rerank(records, rank_fields=['title', 'text'], max_tokens_per_doc=32)")
    for hit in reranker.rerank(records, query, rank_fields=["title", "text"], max_tokens_per_doc=32, top_n=-1):
        print(f"  {hit}  {records[hit['index']]['title']}")

    # 3. An LCEL chain: retrieve, rerank (passing the chain's callbacks on, so the rerank is traced), format.
    def rerank_step(inputs: dict, config: RunnableConfig) -> list[Document]:
        return list(reranker.compress_documents(inputs["docs"], inputs["query"], callbacks=config.get("callbacks")))

    async def arerank_step(inputs: dict, config: RunnableConfig) -> list[Document]:
        docs = await reranker.acompress_documents(inputs["docs"], inputs["query"], callbacks=config.get("callbacks"))
        return list(docs)

    chain = (
        {"docs": retriever, "query": RunnablePassthrough()}
        | RunnableLambda(rerank_step, afunc=arerank_step, name="rerank")
        | RunnableLambda(lambda docs: "\n".join(f"- {d.page_content}" for d in docs), name="format")
    )
    with collect_runs() as collector:
        context = chain.invoke(query)
    print(f"\n== LCEL chain output\n{context}")
    print("\n== trace of that chain (what LangSmith would show)")
    for root in collector.traced_runs:
        print_tree(root)

    # 4. Async: scoring runs in a worker thread, so the event loop stays free.
    async_docs = asyncio.run(reranker.acompress_documents(candidates, query))
    show("acompress_documents (async)", list(async_docs))

    # 5. The CohereRerank swap: ContextualCompressionRetriever lives in langchain-classic in LangChain 1.x.
    try:
        from langchain_classic.retrievers import ContextualCompressionRetriever
    except ImportError:
        print("\n(pip install langchain-classic to also see ContextualCompressionRetriever)")
        return
    compression = ContextualCompressionRetriever(base_compressor=reranker, base_retriever=retriever)
    show("ContextualCompressionRetriever", compression.invoke(query))


def print_tree(run, depth: int = 0) -> None:
    detail = ""
    if run.name == "PixieRerank":
        detail = f"  inputs={run.inputs}  scores={[round(s, 4) for s in (run.outputs or {}).get('scores', [])]}"
    print(f"  {'  ' * depth}{run.run_type}: {run.name}{detail}")
    for child in sorted(run.child_runs, key=lambda r: r.start_time):
        print_tree(child, depth + 1)


if __name__ == "__main__":
    main()
