"""The distribution as users get it: sdist and wheel contents, metadata, and the framework namespace modules.

Builds both from a copy of the repository (setuptools, no network), checks them with ``twine check --strict``, then
installs the wheel into a folder and imports it in fresh processes, next to another distribution's modules in the
same ``haystack_integrations`` / ``llama_index`` namespaces.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NAME = "pixie_integrations"
pytestmark = pytest.mark.slow  # builds both distributions (about 15 s)

REPO_URL = "https://github.com/telepix-integrations/pixie-integrations"
NAMESPACE_MODULES = {
    "haystack_integrations/components/rankers/pixie/__init__.py": "PixieRanker",
    "llama_index/postprocessor/pixie_rerank/__init__.py": "PixieRerank",
}


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sdist and wheel built from a clean copy of the repository (the build writes egg-info into its source)."""
    tmp = tmp_path_factory.mktemp("dist")
    source = tmp / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "runs", ".whl", ".device"
        ),
    )
    out = tmp / "out"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)])
    sdist = next(out.glob("*.tar.gz"))
    wheel = next(out.glob("*.whl"))
    _run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)])
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def installed(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel installed (without dependencies: the test venv has them) into its own folder."""
    target = tmp_path_factory.mktemp("site")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(dists["wheel"]),
        ]
    )
    return target


def _python(code: str, path: list[Path], cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter (this venv's) that sees ``path`` first, and not this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, path)), "HF_HUB_OFFLINE": "1"}
    return _run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env).stdout


def test_sdist_holds_what_the_tests_and_examples_need(dists: dict[str, Path]) -> None:
    with tarfile.open(dists["sdist"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for path in (
        "LICENSE",
        "README.md",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/data/beir_tiny/corpus.jsonl",
        "tests/data/beir_tiny/queries.jsonl",
        "tests/data/beir_tiny/qrels/test.tsv",
        "examples/quickstart.py",
        "docs/scorer.md",
        f"{NAME}/py.typed",
        *(f"{NAME}/_namespaces/{module}" for module in NAMESPACE_MODULES),
    ):
        assert path in names, path
    tracked_tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*") if p.is_file()}
    tracked_tests = {p for p in tracked_tests if "__pycache__" not in p}
    assert tracked_tests <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_holds_every_subpackage_and_only_leaf_namespace_modules(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        names = set(wheel.namelist())
    subpackages = {
        str(init.relative_to(ROOT))
        for init in (ROOT / NAME).rglob("__init__.py")
        if "_namespaces" not in init.parts and "__pycache__" not in init.parts
    }
    assert subpackages <= names, "a subpackage is missing from [tool.setuptools] packages in pyproject.toml"
    assert set(NAMESPACE_MODULES) <= names
    # PEP 420: no __init__.py at a namespace level, which would shadow other distributions' modules there.
    for namespace in (
        "haystack_integrations",
        "haystack_integrations/components",
        "llama_index",
        "llama_index/postprocessor",
    ):
        assert f"{namespace}/__init__.py" not in names
    assert not [n for n in names if n.startswith(f"{NAME}/_namespaces")]
    assert f"{NAME}-0.1.0.dist-info/licenses/LICENSE" in names


def test_metadata_is_release_ready(dists: dict[str, Path]) -> None:
    with zipfile.ZipFile(dists["wheel"]) as wheel:
        meta = email.message_from_bytes(wheel.read(f"{NAME}-0.1.0.dist-info/METADATA"))
    assert meta["License-Expression"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    classifiers = meta.get_all("Classifier")
    assert "Programming Language :: Python :: 3.10" in classifiers and "Typing :: Typed" in classifiers
    urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
    assert urls["Source"] == REPO_URL and urls["Issues"] == f"{REPO_URL}/issues"
    assert "bench" in meta.get_all("Provides-Extra")
    # The description is the README, shown on the package index: every link must work there.
    description = meta.get_payload()
    relative = [t for t in re.findall(r"\]\(([^)]+)\)", description) if not t.startswith(("https://", "http://", "#"))]
    assert not relative, f"relative links break on the package index: {relative}"


def test_namespace_modules_import_beside_other_distributions(installed: Path, tmp_path: Path) -> None:
    # Another distribution's modules in the same namespaces (as haystack-integrations and llama-index-* ship them).
    other = tmp_path / "other"
    for module in ("haystack_integrations/components/rankers/other", "llama_index/postprocessor/other_rerank"):
        (other / module).mkdir(parents=True)
        (other / module / "__init__.py").write_text("VALUE = 1\n")
    out = _python(
        """
        import llama_index.core
        import haystack_integrations.components.rankers.other
        import llama_index.postprocessor.other_rerank
        from haystack_integrations.components.rankers.pixie import PixieRanker
        from llama_index.postprocessor.pixie_rerank import PixieRerank
        import pixie_integrations.haystack, pixie_integrations.llama_index
        assert PixieRanker is pixie_integrations.haystack.PixieRanker
        assert PixieRerank is pixie_integrations.llama_index.PixieRerank
        print(pixie_integrations.__file__)
        """,
        [installed, other],
        cwd=tmp_path,
    )
    assert out.strip() == str(installed / NAME / "__init__.py")


def test_haystack_logs_under_the_integrations_namespace() -> None:
    pytest.importorskip("haystack")
    import pixie_integrations.haystack as adapter

    # haystack.logging.configure_logging sets up "haystack_integrations" (and "haystack"), not other packages.
    assert adapter.logger.name == "haystack_integrations.components.rankers.pixie"
    assert adapter.PixieRanker.__module__ == adapter.logger.name


def test_saved_haystack_pipeline_loads_with_the_default_allow_list(
    installed: Path, tmp_path: Path, tiny_reranker: Path
) -> None:
    saved = tmp_path / "pipeline.yaml"
    _python(
        f"""
        from haystack import Pipeline
        from pixie_integrations.haystack import PixieRanker
        p = Pipeline()
        p.add_component("ranker", PixieRanker(model={str(tiny_reranker)!r}, top_k=1))
        open({str(saved)!r}, "w").write(p.dumps())
        """,
        [installed],
        cwd=tmp_path,
    )
    assert "type: haystack_integrations.components.rankers.pixie.PixieRanker" in saved.read_text()
    # A fresh process that never imported pixie_integrations, with Haystack's default allow-list.
    out = _python(
        f"""
        import logging
        from haystack import Document, Pipeline
        p = Pipeline.loads(open({str(saved)!r}).read())
        docs = [Document(content="Berlin is in Germany"), Document(content="Paris is in France")]
        result = p.run({{"ranker": {{"query": "German city", "documents": docs}}}})
        print(len(result["ranker"]["documents"]), type(p.get_component("ranker")).__module__)
        """,
        [installed],
        cwd=tmp_path,
    )
    assert out.split() == ["1", "haystack_integrations.components.rankers.pixie"]
