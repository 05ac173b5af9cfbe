"""The four distributions as users get them: contents, metadata, and each framework's installed on its own.

Builds the sdists and wheels of the core (``pixie-integrations``) and of the framework distributions in
``integrations/`` from a copy of the repository (setuptools, no network) and checks them with ``twine check
--strict``. Then, per framework, makes a fresh virtual environment and installs that framework's distribution into it
with pip from the built wheels, as a user would from the index: the third-party dependencies come from this test
environment (linked into the new one, so nothing is downloaded or copied), and only those the wheels' metadata asks
for, so each environment holds one framework and what it needs.
"""

from __future__ import annotations

import email
import email.message
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path, PurePosixPath

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from pixie_integrations import __version__
from pixie_integrations.install import EXTRAS, INTEGRATIONS, clone_command, index_command, install_hint

ROOT = Path(__file__).resolve().parent.parent
NAME = "pixie_integrations"
pytestmark = pytest.mark.slow  # builds four distributions and three environments (about a minute)

REPO_URL = "https://github.com/telepix-integrations/pixie-integrations"
# Distribution -> (folder under integrations/, its module, the name it exports, the core module of that name).
FRAMEWORKS = {
    "langchain-pixie": (
        "langchain_pixie/__init__.py",
        "langchain_pixie",
        "PixieRerank",
        "pixie_integrations.langchain",
    ),
    "llama-index-postprocessor-pixie-rerank": (
        "llama_index/postprocessor/pixie_rerank/__init__.py",
        "llama_index.postprocessor.pixie_rerank",
        "PixieRerank",
        "pixie_integrations.llama_index",
    ),
    "pixie-haystack": (
        "haystack_integrations/components/rankers/pixie/__init__.py",
        "haystack_integrations.components.rankers.pixie",
        "PixieRanker",
        "pixie_integrations.haystack",
    ),
}
OURS = {canonicalize_name(name) for name in ("pixie-integrations", *FRAMEWORKS)}
# PEP 420 namespace levels that must never hold an __init__.py of ours (it would shadow other distributions).
NAMESPACE_LEVELS = (
    "haystack_integrations",
    "haystack_integrations/components",
    "llama_index",
    "llama_index/postprocessor",
)


def _run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# -- building ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """``{distribution: {"sdist": ..., "wheel": ...}}`` built from a clean copy (a build writes into its source)."""
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
    for project in (source, *sorted((source / "integrations").iterdir())):
        _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(project)])
    built: dict[str, dict[str, Path]] = {}
    for name in ("pixie-integrations", *FRAMEWORKS):
        stem = name.replace("-", "_")
        built[name] = {"sdist": out / f"{stem}-{__version__}.tar.gz", "wheel": next(out.glob(f"{stem}-*.whl"))}
    _run([sys.executable, "-m", "twine", "check", "--strict", *map(str, out.iterdir())])
    return built


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def _wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (path,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(path))


def test_sdist_holds_what_the_tests_and_examples_need(dists: dict[str, dict[str, Path]]) -> None:
    with tarfile.open(dists["pixie-integrations"]["sdist"]) as sdist:
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
        "scripts/setup.sh",
        f"{NAME}/py.typed",
        # The framework distributions' sources, which the tests build and install.
        *(f"integrations/{name}/{module}" for name, (module, *_) in FRAMEWORKS.items()),
        *(f"integrations/{name}/pyproject.toml" for name in FRAMEWORKS),
    ):
        assert path in names, path
    tracked_tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("*") if p.is_file()}
    tracked_tests = {p for p in tracked_tests if "__pycache__" not in p}
    assert tracked_tests <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if n.startswith("integrations/") and ".egg-info/" in n]


def test_each_namespace_ships_in_its_own_wheel_only(dists: dict[str, dict[str, Path]]) -> None:
    core = _wheel_names(dists["pixie-integrations"]["wheel"])
    subpackages = {
        str(init.relative_to(ROOT)) for init in (ROOT / NAME).rglob("__init__.py") if "__pycache__" not in init.parts
    }
    assert subpackages <= core, "a subpackage is missing from [tool.setuptools] packages in pyproject.toml"
    assert {n.split("/", 1)[0] for n in core} == {NAME, f"{NAME}-{__version__}.dist-info"}
    for name, (module, *_) in FRAMEWORKS.items():
        names = _wheel_names(dists[name]["wheel"])
        package = module.rsplit("/", 1)[0]
        top = {n.split("/", 1)[0] for n in names}
        assert module in names and f"{package}/py.typed" in names
        assert top == {module.split("/", 1)[0], f"{name.replace('-', '_')}-{__version__}.dist-info"}
        assert not [n for n in names if n.endswith("/__init__.py") and n != module], "an __init__.py above the leaf"
        assert f"{name.replace('-', '_')}-{__version__}.dist-info/licenses/LICENSE" in names
    for level in NAMESPACE_LEVELS:
        assert not any(f"{level}/__init__.py" in _wheel_names(d["wheel"]) for d in dists.values())


def test_metadata_is_release_ready(dists: dict[str, dict[str, Path]]) -> None:
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()
    for name, built in dists.items():
        meta = _wheel_metadata(built["wheel"])
        assert meta["Name"] == name and meta["Version"] == __version__, "one version for all four distributions"
        assert meta["License-Expression"] == "Apache-2.0"
        assert "Typing :: Typed" in meta.get_all("Classifier")
        urls = dict(url.split(", ", 1) for url in meta.get_all("Project-URL"))
        assert urls["Source"].startswith(REPO_URL) and urls["Issues"] == f"{REPO_URL}/issues"
        # The description is the README, shown on the package index: every link must work there.
        description = meta.get_payload()
        relative = [t for t in re.findall(r"\]\(([^)]+)\)", description) if not t.startswith(("https://", "#"))]
        assert not relative, f"{name}: relative links break on the package index: {relative}"
    for name in FRAMEWORKS:
        assert (ROOT / "integrations" / name / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()
        requires = {
            Requirement(r).name: Requirement(r) for r in _wheel_metadata(dists[name]["wheel"]).get_all("Requires-Dist")
        }
        assert str(requires["pixie-integrations"].specifier) == f"=={__version__}"
    core = _wheel_metadata(dists["pixie-integrations"]["wheel"])
    assert "Programming Language :: Python :: 3.10" in core.get_all("Classifier")
    assert set(EXTRAS) <= set(core.get_all("Provides-Extra"))


def test_the_framework_extras_pull_the_framework_distributions(dists: dict[str, dict[str, Path]]) -> None:
    core = _wheel_metadata(dists["pixie-integrations"]["wheel"])
    assert set(core.get_all("Provides-Extra")) - {"test"} == set(EXTRAS), "install.EXTRAS lists every extra"
    for extra, name in INTEGRATIONS.items():
        assert _requirements(dists["pixie-integrations"]["wheel"], extra) == [
            *_requirements(dists["pixie-integrations"]["wheel"]),
            f'{name}=={__version__}; extra == "{extra}"',
        ]
    assert (
        sorted(p.name for p in (ROOT / "integrations").iterdir()) == sorted(INTEGRATIONS.values()) == sorted(FRAMEWORKS)
    )
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert 'for folder in integrations/*/; do integrations+=(-e "$folder"); done' in setup
    assert '-e ".[test]" "${integrations[@]}"' in setup


def test_install_hints_say_both_ways_until_released() -> None:
    assert clone_command("langchain") == 'pip install -e ".[langchain]" -e integrations/langchain-pixie'
    assert index_command("langchain") == "pip install langchain-pixie"
    assert index_command("eval") == 'pip install "pixie-integrations[eval]"'
    assert clone_command("all").count(" -e integrations/") == 3
    assert install_hint("haystack") == (
        'pip install -e ".[haystack]" -e integrations/pixie-haystack in a clone (once released: pip install '
        "pixie-haystack)"
    )
    with pytest.raises(ValueError, match="unknown extra"):
        install_hint("langchian")


# -- one fresh environment per framework -----------------------------------------------------------------------------
def _closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``requirements`` need, transitively (markers evaluated, extras followed), ours
    left out: they are what a user's pip would have installed beside them."""
    found: dict[str, metadata.Distribution] = {}
    todo = [(Requirement(r), "") for r in requirements]
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        key = (name, frozenset(requirement.extras))
        if name in OURS or key in seen:
            continue
        seen.add(key)
        dist = found.setdefault(name, metadata.distribution(name))
        for line in dist.requires or []:
            todo.extend((Requirement(line), wanted) for wanted in ("", *requirement.extras))
    return list(found.values())


def _link(source: Path, target: Path, paths: set[PurePosixPath]) -> None:
    """Link ``paths`` (relative to ``source``) under ``target``: a regular package or a file as one link; a folder
    without ``__init__.py`` (a namespace other distributions share) as a real folder of links, so that pip installing
    into it writes into the new environment, never into this one."""
    for top in sorted({p.parts[0] for p in paths}):
        here = source / top
        if here.is_dir() and not top.endswith(".dist-info") and not (here / "__init__.py").exists():
            (target / top).mkdir(exist_ok=True)
            _link(
                here,
                target / top,
                {PurePosixPath(*p.parts[1:]) for p in paths if p.parts[0] == top and len(p.parts) > 1},
            )
        elif not (target / top).exists():
            (target / top).symlink_to(here, target_is_directory=here.is_dir())


def _requirements(wheel: Path, extra: str = "") -> list[str]:
    """What ``wheel`` (with ``extra``) asks for, ours and theirs."""
    lines = _wheel_metadata(wheel).get_all("Requires-Dist") or []
    return [
        line
        for line in lines
        if Requirement(line).marker is None or Requirement(line).marker.evaluate({"extra": extra})
    ]


def _environment(tmp: Path, dists: dict[str, dict[str, Path]], install: str, neighbours: tuple[str, ...]) -> Path:
    """A fresh venv holding what ``pip install <install>`` gives from the built wheels (plus ``neighbours``, other
    distributions of the same namespaces); returns its python."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    requirement = Requirement(install)
    root = dists["pixie-integrations"]["wheel"] if requirement.extras else dists[requirement.name]["wheel"]
    wanted = _requirements(root, *requirement.extras)
    for ours in [r for r in wanted if canonicalize_name(Requirement(r).name) in OURS]:
        wanted += _requirements(dists[Requirement(ours).name]["wheel"])
    wanted += _requirements(dists["pixie-integrations"]["wheel"])
    wanted += [n for n in neighbours if _installed(n)]
    for dist in _closure(wanted):
        files = {PurePosixPath(str(f)) for f in dist.files or [] if not str(f).startswith("..")}
        assert files, f"{dist.metadata['Name']} lists no files"
        _link(Path(str(dist.locate_file(""))), site, files)
    wheels = dists["pixie-integrations"]["wheel"].parent
    # Away from this checkout (PYTHONPATH, the working folder), whose own metadata pip would take as installed.
    env = {**_clean_env(), "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    _run([*pip, "install", "-q", "--no-index", "--find-links", str(wheels), install], env=env, cwd=tmp)
    _run([*pip, "check"], env=env, cwd=tmp)
    return python


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _python(python: Path, *code: str, cwd: Path, **env: str) -> str:
    """Run the ``code`` parts, one after the other, in a fresh interpreter of that environment, away from this
    checkout."""
    clean = {
        **_clean_env(),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **env,
    }
    source = "\n".join(textwrap.dedent(part) for part in code)
    return _run([str(python), "-c", source], cwd=cwd, env=clean).stdout


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


_SEES_ONLY = """
    import importlib.metadata, importlib.util
    import pixie_integrations
    assert {ours!r} in pixie_integrations.__file__, pixie_integrations.__file__  # the installed wheel, not a checkout
    present = {{d.metadata["Name"] for d in importlib.metadata.distributions()}}
    assert {installed!r} <= present and not {absent!r} & present, present
    for module in {missing!r}:
        assert importlib.util.find_spec(module) is None, module
    from {module} import {export} as public
    import {core} as core
    assert public is core.{export}
"""


def _alone(tmp: Path, name: str, missing: tuple[str, ...]) -> str:
    """Code that checks, in that environment: the core and ``name`` are the installed distributions of ours,
    ``missing`` cannot even be found (``importlib.util.find_spec`` is what tools probing for a framework call), and
    both import paths give the same class."""
    _, module, export, core = FRAMEWORKS[name]
    code = _SEES_ONLY.format(
        ours=str(tmp / "venv"),
        installed={"pixie-integrations", name},
        absent=set(FRAMEWORKS) - {name},
        missing=missing,
        module=module,
        export=export,
        core=core,
    )
    return code


def test_langchain_distribution_alone(dists: dict[str, dict[str, Path]], tmp_path: Path, tiny_reranker: Path) -> None:
    python = _environment(tmp_path, dists, "langchain-pixie", neighbours=())
    alone = _alone(tmp_path, "langchain-pixie", ("llama_index", "haystack", "haystack_integrations"))
    out = _python(
        python,
        alone,
        f"""
        from langchain_core.documents import Document
        from langchain_pixie import PixieRerank
        reranker = PixieRerank(model={str(tiny_reranker)!r}, top_n=1, device="cpu", dtype="float32")
        best = reranker.compress_documents([Document(page_content="a"), Document(page_content="b")], "q")
        print(len(best), type(best[0].metadata["relevance_score"]).__name__)
        try:
            import pixie_integrations.llama_index
        except ImportError as exc:
            print(exc)
        """,
        cwd=tmp_path,
    )
    assert out.splitlines()[0] == "1 float"
    assert install_hint("llama-index") in out  # the LlamaIndex adapter says what to install, both ways


def test_llama_index_distribution_through_the_core_extra(
    dists: dict[str, dict[str, Path]], tmp_path: Path, tiny_reranker: Path
) -> None:
    # pixie-integrations[llama-index], next to another distribution of llama_index.postprocessor.
    neighbour = "llama-index-postprocessor-cohere-rerank"
    python = _environment(tmp_path, dists, "pixie-integrations[llama-index]", neighbours=(neighbour,))
    alone = _alone(
        tmp_path, "llama-index-postprocessor-pixie-rerank", ("langchain_pixie", "haystack", "haystack_integrations")
    )
    out = _python(
        python,
        alone,
        f"""
        import importlib.util
        from llama_index.core.schema import NodeWithScore, TextNode
        from llama_index.postprocessor.pixie_rerank import PixieRerank
        reranker = PixieRerank(top_n=1, model={str(tiny_reranker)!r}, device="cpu", dtype="float32")
        best = reranker.postprocess_nodes([NodeWithScore(node=TextNode(text=t)) for t in "ab"], query_str="q")
        print(len(best), type(best[0].score).__name__)
        if {_installed(neighbour)!r}:
            import llama_index.postprocessor.cohere_rerank  # the namespace is shared, not shadowed
        """,
        cwd=tmp_path,
    )
    assert out.split() == ["1", "float"]


def test_haystack_distribution_alone_and_saved_pipelines(
    dists: dict[str, dict[str, Path]], tmp_path: Path, tiny_reranker: Path
) -> None:
    # Next to another distribution of haystack_integrations.components.rankers (the reference ranker).
    neighbour = "sentence-transformers-haystack"
    python = _environment(tmp_path, dists, "pixie-haystack", neighbours=(neighbour,))
    alone = _alone(tmp_path, "pixie-haystack", ("langchain_pixie", "langchain_core", "llama_index"))
    saved = tmp_path / "pipeline.yaml"
    _python(
        python,
        alone,
        f"""
        from haystack import Pipeline
        from pixie_integrations.haystack import PixieRanker
        p = Pipeline()
        p.add_component("ranker", PixieRanker(model={str(tiny_reranker)!r}, top_k=1))
        open({str(saved)!r}, "w").write(p.dumps())
        if {_installed(neighbour)!r}:
            import haystack_integrations.components.rankers.sentence_transformers  # shared, not shadowed
        """,
        cwd=tmp_path,
    )
    assert "type: haystack_integrations.components.rankers.pixie.PixieRanker" in saved.read_text()
    # A fresh process that never imported pixie_integrations, with Haystack's default allow-list.
    out = _python(
        python,
        f"""
        from haystack import Document, Pipeline
        p = Pipeline.loads(open({str(saved)!r}).read())
        docs = [Document(content="Berlin is in Germany"), Document(content="Paris is in France")]
        result = p.run({{"ranker": {{"query": "German city", "documents": docs}}}})
        print(len(result["ranker"]["documents"]), type(p.get_component("ranker")).__module__)
        """,
        cwd=tmp_path,
    )
    assert out.split() == ["1", "haystack_integrations.components.rankers.pixie"]


def test_haystack_logs_under_the_integrations_namespace() -> None:
    pytest.importorskip("haystack")
    import pixie_integrations.haystack as adapter

    # haystack.logging.configure_logging sets up "haystack_integrations" (and "haystack"), not other packages.
    assert adapter.logger.name == "haystack_integrations.components.rankers.pixie"
    assert adapter.PixieRanker.__module__ == adapter.logger.name


def test_the_release_workflow_builds_checks_and_publishes_all_four() -> None:
    workflow = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "python -m build --outdir dist/core ." in workflow
    assert 'for project in integrations/*/; do\n            python -m build --outdir dist/integrations "$project"' in workflow
    assert "twine check --strict dist/core/* dist/integrations/*" in workflow
    assert "packages-dir: dist/core/" in workflow and "packages-dir: dist/integrations/" in workflow
    assert workflow.index("packages-dir: dist/core/") < workflow.index("packages-dir: dist/integrations/")
