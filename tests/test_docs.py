"""Docs that cannot drift: every ```python block of README.md and docs/*.md runs, and no --help points at a file
users do not have.

Each document runs in its own process, its blocks top to bottom in one namespace (as a reader types them), with
the Hugging Face Hub replaced by a local cache holding tiny random models under the hub ids the blocks name (the
default model included), so ``PixieScorer("telepix/PIXIE-Spell-Reranker-Preview-0.6B")`` and ``PixieRanker()``
load exactly as they would online. Local folders the docs tell users to download (``./PIXIE-...``) and datasets
(``./my-domain``) exist in the working folder; ``device="cuda"`` runs on the CPU where there is no GPU; a doc's
``http://127.0.0.1:8000`` is a live ``pixie-rerank`` server. Names a doc takes from its prose (``vectorstore``,
``index``, ``docs``) come from :data:`CONTEXT` below.

A block that needs a real service the suite cannot run (vLLM, a paid API) carries a visible marker on the line
before it: ``<!-- docs-test: skip (needs a running vLLM server) -->``. The test reports it as skipped with that reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "integrations").glob("*/README.md"))]
DATA = ROOT / "tests" / "data" / "beir_tiny"

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)\s*$")
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->")
# A quoted Hub id: owner/name, as in "telepix/PIXIE-Spell-Reranker-Preview-0.6B" (MIME types are not models).
_HUB_ID = re.compile(r"""["']([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)["']""")
_NOT_MODELS = ("application/", "text/", "image/", "multipart/")
_ENCODER_HINTS = ("bge", "gte", "jina", "minilm", "cross-encoder", "electra", "bert", "mxbai")
_DATASETS = ("my-domain", "scifact", "arguana", "fiqa", "nfcorpus", "trec-covid", "scidocs")
SERVER_URL_IN_DOCS = "http://127.0.0.1:8000"

# What a doc's prose assumes the reader already has, run before its first block. Keep it to plain setup a reader
# would have (a store, some documents): the docs' own blocks do the rest.
_LANGCHAIN_STORE = """
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.vectorstores import InMemoryVectorStore

vectorstore = InMemoryVectorStore.from_documents(
    [Document(page_content=text) for text in TEXTS], DeterministicFakeEmbedding(size=64)
)
reranker = None


def format_docs(docs):
    return "\\n\\n".join(doc.page_content for doc in docs)
"""
_LLAMA_INDEX_STORE = """
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM

Settings.llm = MockLLM()
Settings.embed_model = MockEmbedding(embed_dim=64)
index = VectorStoreIndex.from_documents([Document(text=text) for text in TEXTS])
"""
_HAYSTACK_DOCS = """
from haystack import Document

docs = [Document(content=text) for text in TEXTS]
"""
CONTEXT: dict[str, str] = {
    "langchain.md": _LANGCHAIN_STORE,
    "llama_index.md": _LLAMA_INDEX_STORE,
    "haystack.md": _HAYSTACK_DOCS,
    "scorer.md": "q1, d1, q2, d2 = QUERY, TEXTS[0], 'orbit', TEXTS[1]",
    "serving.md": "from pixie_integrations import DEFAULT_INSTRUCTION\nbase_url = SERVER_URL",
}
_COMMON = """
QUERY = "텔레픽스는 어떤 산업 분야에서 위성 데이터를 활용하나요?"
TEXTS = [
    "텔레픽스는 해양, 자원, 농업 등 다양한 분야에서 위성 데이터를 분석하여 서비스를 제공합니다.",
    "정찰 및 감시 목적의 위성 영상을 통해 국방 관련 정밀 분석 서비스를 제공합니다.",
    "The quick brown fox jumps over the lazy dog.",
    "Satellite imagery supports agriculture, ocean monitoring and defence.",
]
query, documents = QUERY, list(TEXTS)
"""


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.doc.relative_to(ROOT)}:{self.line}"


def python_blocks(doc: Path) -> list[Block]:
    """The ```python blocks of a Markdown file (indented ones in lists too), with their skip markers."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None or fence["lang"] == "":
            i += 1
            continue
        start, indent = i, fence["indent"]
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if fence["lang"] == "python":
            body = textwrap.dedent("\n".join(line.removeprefix(indent) for line in lines[start + 1 : i]))
            before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = _SKIP.search(before)
            blocks.append(Block(doc, start + 1, body, marker["reason"] if marker else None))
        i += 1
    return blocks


BLOCKS = [block for doc in DOCS for block in python_blocks(doc)]


def _hub_ids() -> set[str]:
    from pixie_integrations.scorer import DEFAULT_MODEL

    found = {DEFAULT_MODEL}
    for block in BLOCKS:
        found.update(m for m in _HUB_ID.findall(block.code) if not m.startswith(_NOT_MODELS) and not m.startswith("."))
    return found


@pytest.fixture(scope="module")
def stage(
    tmp_path_factory: pytest.TempPathFactory, tiny_reranker: Path, tiny_encoder: Path, tiny_qwen3_pair: Any
) -> dict[str, Path]:
    """A Hub cache with a tiny model under every hub id the docs name, and a working folder with their local paths."""
    cache = tmp_path_factory.mktemp("hf-cache")
    for hub_id in sorted(_hub_ids()):
        lowered = hub_id.lower()
        if "qwen3-reranker" in lowered:
            source = tiny_qwen3_pair[0]  # the causal-LM original
        elif any(hint in lowered for hint in _ENCODER_HINTS):
            source = tiny_encoder
        else:
            source = tiny_reranker
        sha = "0" * 40
        repo = cache / f"models--{hub_id.replace('/', '--')}"
        shutil.copytree(source, repo / "snapshots" / sha)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(sha)
    work = tmp_path_factory.mktemp("docs-cwd")
    for block in BLOCKS:
        for path in re.findall(r"""["']\./([\w.-]+)["']""", block.code):
            target = work / path
            if target.exists():
                continue
            if "pixie" in path.lower():
                target.symlink_to(tiny_reranker, target_is_directory=True)
            elif path in _DATASETS:
                shutil.copytree(DATA, target)
    return {"cache": cache, "work": work}


_results: dict[Path, dict[str, dict[str, str]]] = {}


def _run_doc(doc: Path, stage: dict[str, Path]) -> dict[str, dict[str, str]]:
    """Run one document's blocks in a fresh process; ``{block id: {"status": ..., "detail": ...}}``."""
    if doc not in _results:
        out = stage["work"] / f"{doc.stem}.results.json"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_CACHE": str(stage["cache"]),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "TOKENIZERS_PARALLELISM": "false",
        }
        result = subprocess.run(
            [sys.executable, __file__, str(doc), str(out)],
            cwd=stage["work"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if not out.exists():
            pytest.fail(f"running {doc.name} crashed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        _results[doc] = json.loads(out.read_text())
    return _results[doc]


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_block_runs(block: Block, stage: dict[str, Path]) -> None:
    if block.skip is not None:
        pytest.skip(f"marked in the doc: {block.skip}")
    outcome = _run_doc(block.doc, stage)[block.id]
    assert outcome["status"] == "ok", f"{block.id} failed:\n{block.code}\n\n{outcome['detail']}"


def test_skip_markers_are_rare_and_say_why() -> None:
    skipped = [block for block in BLOCKS if block.skip is not None]
    assert all(block.skip.startswith("needs ") for block in skipped), [b.id for b in skipped]
    assert len(skipped) <= max(3, len(BLOCKS) // 5), [b.id for b in skipped]


# -- install lines ------------------------------------------------------------------------------------------------
_INDEX_EXTRAS = re.compile(r"pixie-integrations\[([\w,-]+)\]")
_CLONE_EXTRAS = re.compile(r'-e "\.\[([\w,-]+)\]"')


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_install_lines_work_from_a_clone_and_name_the_index_form(doc: Path) -> None:
    """Until the release, an index install fails: every section that names one also gives the clone's command,
    with the framework distribution's folder where it needs one (pip finds that distribution nowhere else)."""
    from pixie_integrations.install import INTEGRATIONS

    for section in _sections(doc.read_text(encoding="utf-8")):
        title = section.splitlines()[0]
        cloned = {extra for found in _CLONE_EXTRAS.findall(section) for extra in found.split(",")}
        for found in _INDEX_EXTRAS.findall(section):
            missing = set(found.split(",")) - cloned
            assert not missing, f"{doc.name} {title!r}: pixie-integrations[{found}] without a clone command"
        for extra, dist in INTEGRATIONS.items():
            if extra in cloned or "all" in cloned or f"pip install {dist}" in section:
                assert f"-e integrations/{dist}" in section, f"{doc.name} {title!r}: {extra} needs its folder"


def _sections(text: str) -> list[str]:
    """The text split at its Markdown headings (a ``#`` line inside a code block is a shell comment)."""
    sections: list[list[str]] = [[]]
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            sections.append([])
        sections[-1].append(line)
    return ["\n".join(lines) for lines in sections if lines]


# -- --help -----------------------------------------------------------------------------------------------------
# Names of files a command reads or writes (a user's data and outputs), not references to documentation.
_IO_NAMES = {
    "corpus.jsonl",
    "queries.jsonl",
    "run.trec",
    "splade.trec",
    "metrics.json",
    "results.md",
    "results.json",
    "ndcg.png",
    "pairs.jsonl",  # quantize --data: the user's own pairs
    "pixie_quantization.json",  # what quantize writes into the int8 folder
}
_FILE_REFERENCE = re.compile(
    r"(?<![\w/.-])((?:[\w.<>-]+/)*[\w<>-]+\.(?:md|py|sh|txt|toml|ipynb|rst|json|jsonl|trec))\b"
)
_REPO_PATH = re.compile(r"(?<![\w/.-])((?:docs|examples|scripts|benchmarks|tests)/[\w./-]*)")


def _help_texts() -> dict[str, str]:
    from pixie_integrations.cli import build_parser

    parser = build_parser()
    texts = {"pixie-rerank": parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):  # the subcommands' parsers
            texts.update({f"pixie-rerank {name}": sub.format_help() for name, sub in action.choices.items()})
    return texts


def test_every_help_lists_the_commands() -> None:
    assert {"pixie-rerank demo", "pixie-rerank bench", "pixie-rerank eval", "pixie-rerank serve"} <= set(_help_texts())


@pytest.mark.parametrize("command", sorted(_help_texts()))
def test_help_points_at_no_file_users_do_not_have(command: str) -> None:
    text = re.sub(r"https?://\S+", "", _help_texts()[command])  # links are fine: they work without the repo
    assert "PERFORMANCE-NOTES" not in text and "CONVENTIONS" not in text
    assert not _REPO_PATH.findall(text), f"{command} --help names repository files a pip install lacks"
    unknown = [name for name in _FILE_REFERENCE.findall(text) if name.split("/")[-1] not in _IO_NAMES]
    assert not unknown, f"{command} --help refers to files users do not have: {unknown}"


# -- the runner (the subprocess side) ------------------------------------------------------------------------------
def _main(doc_path: str, out_path: str) -> None:
    import ast
    import asyncio
    import contextlib
    import inspect
    import traceback

    from pixie_integrations import loading

    if not _cuda_available():
        # Docs written for a GPU (device="cuda") run on this CPU: the same code path, another device.
        real = loading.resolve_device

        def resolve_device(device: Any) -> Any:
            if device is not None and str(device).startswith("cuda"):
                device = "cpu"
            return real(device)

        loading.resolve_device = resolve_device  # type: ignore[assignment]

    doc = Path(doc_path)
    blocks = python_blocks(doc)
    results: dict[str, dict[str, str]] = {}
    with contextlib.ExitStack() as stack:
        namespace: dict[str, Any] = {"__name__": "__docs__"}
        server_url = SERVER_URL_IN_DOCS
        if any(SERVER_URL_IN_DOCS in block.code for block in blocks if block.skip is None):
            server_url = stack.enter_context(_live_server())
        namespace["SERVER_URL"] = server_url
        exec(compile(_COMMON + CONTEXT.get(doc.name, ""), f"<context of {doc.name}>", "exec"), namespace)  # noqa: S102
        for block in blocks:
            if block.skip is not None:
                results[block.id] = {"status": "skipped", "detail": block.skip}
                continue
            source = block.code.replace(SERVER_URL_IN_DOCS, server_url)
            try:
                code = compile(source, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
                if code.co_flags & inspect.CO_COROUTINE:
                    asyncio.run(eval(code, namespace))
                else:
                    exec(code, namespace)  # noqa: S102 - running the docs is the point
            except BaseException:  # noqa: BLE001 - report every failure, SystemExit included
                results[block.id] = {"status": "failed", "detail": traceback.format_exc(limit=-8)}
            else:
                results[block.id] = {"status": "ok", "detail": ""}
    Path(out_path).write_text(json.dumps(results))


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _live_server() -> Any:
    """A real ``pixie-rerank serve`` app on a free port, over the tiny model cached under the default hub id."""
    from pixie_integrations import PixieScorer
    from pixie_integrations.serving import create_app, serve_in_thread

    return serve_in_thread(create_app(PixieScorer(dtype="float32")))


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
