"""OpenTelemetry traces of PIXIE reranking, in OpenInference's RERANKER form (what Phoenix, Arize and Langfuse show).

Run it:

    pip install -e ".[tracing]" opentelemetry-sdk   # in a clone (once released: "pixie-integrations[tracing]")
    python examples/tracing.py --tiny            # offline: a tiny random model built here (scores are noise)
    python examples/tracing.py --tiny --console  # print every span as JSON (OpenTelemetry's console exporter)
    python examples/tracing.py --tiny --show-text  # as with OPENINFERENCE_HIDE_INPUTS/OUTPUTS=false: text recorded
    python examples/tracing.py                   # the real model (downloaded once)

It sets up an OpenTelemetry SDK provider with an in-memory exporter (an application would export to Phoenix or an
OTLP collector instead: docs/tracing.md), reranks under a parent span, once with PixieScorer and once (if
langchain-core is installed) with the LangChain compressor, and prints what each RERANKER span holds.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from pixie_integrations import DEFAULT_MODEL, PixieScorer

QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
DOCUMENTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "TelePIX의 광학 탑재체 및 AI 분석 기술은 Global standard를 상회하는 수준으로 평가받고 있습니다.",
    "The quick brown fox jumps over the lazy dog.",
]


def describe(span: object, names: dict[int, str]) -> None:
    """Print a RERANKER span: where it sits, what it was asked, what it cost."""
    a = span.attributes  # type: ignore[attr-defined]
    parent = span.parent  # type: ignore[attr-defined]
    print(
        f"\n{span.name}  (kind {a['openinference.span.kind']}, parent: {names.get(parent.span_id) if parent else None})"
    )  # type: ignore[attr-defined]
    print(f"  reranker.query       {a.get('reranker.query')!r}")
    print(f"  reranker.model_name  {a.get('reranker.model_name')}")
    print(f"  reranker.top_k       {a.get('reranker.top_k')}")
    n_in = len({k.split(".")[2] for k in a if k.startswith("reranker.input_documents.")})
    print(f"  input documents      {n_in}")
    i = 0
    while f"reranker.output_documents.{i}.document.score" in a:
        content = a.get(f"reranker.output_documents.{i}.document.content", "")
        print(f"  output {i}: score {a[f'reranker.output_documents.{i}.document.score']:.5f}  {content[:40]!r}")
        i += 1
    pixie = {k: v for k, v in a.items() if k.startswith("pixie.") and k != "pixie.instruction"}
    print("  " + ", ".join(f"{k}={v}" for k, v in pixie.items()))


def main() -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tiny", action="store_true", help="build and use a tiny random model (offline)")
    parser.add_argument("--console", action="store_true", help="also print every span as JSON")
    parser.add_argument(
        "--show-text", action="store_true", help="record the query and document text (hidden by default)"
    )
    args = parser.parse_args()
    if args.show_text:
        os.environ["OPENINFERENCE_HIDE_INPUTS"] = os.environ["OPENINFERENCE_HIDE_OUTPUTS"] = "false"

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if args.console:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("examples.tracing")

    model = args.model
    if args.tiny:
        from pixie_integrations.testing import build_tiny_reranker

        model = str(build_tiny_reranker(tempfile.mkdtemp(prefix="tiny-pixie-")))
    scorer = PixieScorer(model)

    with tracer.start_as_current_span("answer question"):
        scorer.rank(QUERY, DOCUMENTS, top_n=2)
        try:
            from langchain_core.documents import Document

            from pixie_integrations.langchain import PixieRerank
        except ImportError:
            print("(langchain-core is not installed: skipping the LangChain compressor)")
        else:
            docs = [Document(page_content=text, id=f"doc-{i}") for i, text in enumerate(DOCUMENTS)]
            PixieRerank(scorer=scorer, top_n=2).compress_documents(docs, QUERY)

    finished = exporter.get_finished_spans()
    names = {s.context.span_id: s.name for s in finished}
    for span in finished:
        if span.attributes.get("openinference.span.kind") == "RERANKER":
            describe(span, names)
    if not args.show_text:
        print("\n(query and document text are hidden by default: --show-text, or OPENINFERENCE_HIDE_INPUTS=false and")
        print(" OPENINFERENCE_HIDE_OUTPUTS=false, records them)")
    if args.tiny:
        print("(tiny random model: the scores are noise; the span layout is what a real run records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
