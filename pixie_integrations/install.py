"""What to install for each optional part, said the same way everywhere: ImportErrors, ``--help`` and the docs.

Until the four distributions are on the package index an install works only from a clone, where each framework's
distribution is installed from its folder under ``integrations/``; so every hint gives both commands. Nothing here
imports anything heavy.
"""

from __future__ import annotations

__all__ = ["EXTRAS", "INTEGRATIONS", "RELEASED", "clone_command", "index_command", "install_hint"]

RELEASED = False
"""Whether the distributions are on the package index; while they are not, hints give the clone's command too."""

INTEGRATIONS = {
    "langchain": "langchain-pixie",
    "llama-index": "llama-index-postprocessor-pixie-rerank",
    "haystack": "pixie-haystack",
}
"""The core's framework extras and the distribution each one pulls (also the folder under ``integrations/``)."""

EXTRAS = ("langchain", "llama-index", "haystack", "eval", "bench", "bench-peers", "serve", "ray", "tracing", "all")
"""The extras of ``pixie-integrations`` (``test`` aside); tests/test_packaging.py checks them against pyproject.toml."""

# Extras that include the framework extras, so that a clone install also needs their folders.
_WITH_FRAMEWORKS = {"all": tuple(INTEGRATIONS)}


def _check(extra: str) -> None:
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; the extras are {', '.join(EXTRAS)}")


def clone_command(extra: str) -> str:
    """The command that installs ``extra`` in the root of a clone: ``pip install -e ".[langchain]" -e integrations/...``.

    A framework extra names its distribution, which the package index does not have yet: given as a folder too, pip
    takes it from there.
    """
    _check(extra)
    frameworks = _WITH_FRAMEWORKS.get(extra, (extra,) if extra in INTEGRATIONS else ())
    folders = "".join(f" -e integrations/{INTEGRATIONS[name]}" for name in frameworks)
    return f'pip install -e ".[{extra}]"{folders}'


def index_command(extra: str) -> str:
    """The command that installs ``extra`` from the package index: ``pip install langchain-pixie`` for a framework
    (its own distribution, which pulls the core), ``pip install "pixie-integrations[eval]"`` for the others."""
    _check(extra)
    if extra in INTEGRATIONS:
        return f"pip install {INTEGRATIONS[extra]}"
    return f'pip install "pixie-integrations[{extra}]"'


def install_hint(extra: str) -> str:
    """How to install ``extra``, as one clause for an error message or a help text.

    ``pip install -e ".[eval]" in a clone (once released: pip install "pixie-integrations[eval]")``; only the index
    command once :data:`RELEASED`.
    """
    if RELEASED:
        return index_command(extra)
    return f"{clone_command(extra)} in a clone (once released: {index_command(extra)})"
