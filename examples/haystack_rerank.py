"""Rerank BM25 results with PIXIE-Spell-Reranker in a Haystack pipeline.

    python examples/haystack_rerank.py --tiny            # a tiny random model built here: offline, seconds
    python examples/haystack_rerank.py                   # the real model (downloads ~1.2 GB once)
    python examples/haystack_rerank.py --model ./PIXIE-Spell-Reranker-Preview-0.6B --device cuda

Needs ``pip install -e ".[haystack]" -e integrations/pixie-haystack`` in a clone (once released:
``pip install pixie-haystack``). With ``--tiny`` the scores are random: the run shows the
wiring (retriever -> ranker, async, YAML round trip), not ranking quality.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
DOCUMENTS = [
    ("텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.", "telepix.kr"),
    ("정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.", "telepix.kr"),
    ("TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.", "news"),
    ("텔레픽스는 위성 영상 획득부터 분석, 서비스 제공까지 전 주기를 아우르는 솔루션을 제공합니다.", "telepix.kr"),
    ("TelePIX analyses satellite data for the ocean, resources and agriculture (위성 데이터 활용).", "en.wiki"),
    ("The quick brown fox jumps over the lazy dog. Paris is the capital of France.", "misc"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="build a tiny random model in a temp dir; fully offline")
    parser.add_argument("--model", default=None, help="hub id or local folder (default: the PIXIE model)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: the best available)")
    parser.add_argument("--top-k", type=int, default=3, help="documents the ranker keeps")
    return parser.parse_args()


REFERENCE_TYPE = (
    "haystack_integrations.components.rankers.sentence_transformers.sentence_transformers_similarity."
    "SentenceTransformersSimilarityRanker"
)


def main() -> int:
    args = parse_args()
    if args.tiny:
        # Offline by construction: no hub lookups, no telemetry (set before Haystack is imported).
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HAYSTACK_TELEMETRY_ENABLED", "False")

    try:
        from haystack import Document, Pipeline
        from haystack.components.retrievers.in_memory import InMemoryBM25Retriever
        from haystack.document_stores.in_memory import InMemoryDocumentStore
        from haystack.utils import ComponentDevice

        from pixie_integrations import DEFAULT_MODEL, ModelLoadError
        from pixie_integrations.haystack import PixieRanker
    except ImportError as exc:
        print(exc, file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory() as tmp:
        if args.tiny:
            from pixie_integrations.testing import build_tiny_reranker

            model = str(build_tiny_reranker(Path(tmp) / "tiny-pixie"))
            device, dtype = ComponentDevice.from_str(args.device or "cpu"), "float32"
            print(f"Built a tiny random reranker in {model} (scores are random).")
        else:
            model = args.model or DEFAULT_MODEL
            device, dtype = (ComponentDevice.from_str(args.device) if args.device else None), None

        store = InMemoryDocumentStore()
        store.write_documents([Document(content=text, meta={"source": source}) for text, source in DOCUMENTS])

        ranker = PixieRanker(model=model, device=device, dtype=dtype, top_k=args.top_k, meta_fields_to_embed=["source"])
        try:
            ranker.warm_up()  # a Pipeline would do it on its first run; done here to report a load error plainly
        except ModelLoadError as exc:
            print(f"{exc}\n\nTry `--tiny` to see the pipeline work offline.", file=sys.stderr)
            return 1
        print(f"Loaded {ranker.scorer}")

        pipeline = Pipeline()
        pipeline.add_component("retriever", InMemoryBM25Retriever(document_store=store, top_k=5))
        pipeline.add_component("ranker", ranker)
        pipeline.connect("retriever.documents", "ranker.documents")

        inputs = {"retriever": {"query": QUERY}, "ranker": {"query": QUERY}}
        result = pipeline.run(inputs, include_outputs_from={"retriever"})
        print(f"\nQuery: {QUERY}")
        print(f"BM25 gave {len(result['retriever']['documents'])} documents; the ranker kept:")
        for doc in result["ranker"]["documents"]:
            print(f"  {doc.score:.4f}  [{doc.meta['source']}] {doc.content}")

        # The same pipeline, asynchronously: the model runs in a worker thread, the event loop stays free.
        async_result = asyncio.run(pipeline.run_async(inputs))
        same = [d.id for d in async_result["ranker"]["documents"]] == [d.id for d in result["ranker"]["documents"]]
        print(f"\nAsync run gives the same ranking: {same}")

        # Save and load as YAML. The ranker is saved as haystack_integrations.components.rankers.pixie.PixieRanker,
        # a module Haystack's default deserialization allow-list trusts.
        yaml_text = pipeline.dumps()
        loaded = Pipeline.loads(yaml_text)
        reloaded = loaded.run(inputs)["ranker"]["documents"]
        same = [(d.id, d.score) for d in reloaded] == [(d.id, d.score) for d in result["ranker"]["documents"]]
        token = os.environ.get("HF_API_TOKEN") or os.environ.get("HF_TOKEN")
        leaked = bool(token) and token in yaml_text
        print(f"YAML round trip ({len(yaml_text)} chars, token value inside: {leaked}) gives the same ranking: {same}")

        # A ranker saved by SentenceTransformersSimilarityRanker (its to_dict(), with its prefixes and backend)
        # loads as it is into PixieRanker; the prefixes wrap the query and document inside the PIXIE template.
        saved = {
            "type": REFERENCE_TYPE,
            "init_parameters": {
                **ranker.to_dict()["init_parameters"],
                "query_prefix": "Question: ",
                "query_suffix": "",
                "document_prefix": "Passage: ",
                "document_suffix": "",
                "config_kwargs": None,
                "backend": "torch",
                "batch_size": 16,
            },
        }
        switched = PixieRanker.from_dict(saved)
        print("\nA saved SentenceTransformersSimilarityRanker dict, loaded as PixieRanker:")
        for doc in switched.run(query=QUERY, documents=result["retriever"]["documents"])["documents"]:
            print(f"  {doc.score:.4f}  [{doc.meta['source']}] {doc.content}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
