"""What every ``pixie-rerank`` subcommand shares: argparse ``type=`` validators and one-line error reporting.

A user mistake (``--device gpu``, ``--dtype flaot32``, a missing model folder) ends in one line on stderr that says
what to do instead and a non-zero exit, never a traceback. Nothing here imports torch until a ``--device`` is given.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any, NoReturn

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "ArgumentParser",
    "add_device_dtype",
    "device",
    "dtype",
    "fail",
    "one_line",
    "port",
    "positive_int",
]

EXIT_USAGE = 2
"""Exit status of a user error (argparse's own)."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""

# Accepted spellings, mapped to the name the rest of the package takes (loading.resolve_dtype knows them all).
_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "auto": "auto",
}
_DEVICES = ("cpu", "cuda", "cuda:N", "mps")


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose usage errors are one line (the usage itself is one ``--help`` away), and that takes
    no abbreviations: ``--dtyp`` is refused rather than read as ``--dtype`` (and a new option cannot change what an
    old abbreviation meant). Subcommands get this class too (argparse's ``parser_class``)."""

    def __init__(self, *args: Any, allow_abbrev: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, allow_abbrev=allow_abbrev, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """``text`` with its line breaks and runs of spaces folded, so that an error stays one line."""
    return " ".join(str(text).split())


def fail(message: object, *, code: int = EXIT_USAGE) -> int:
    """Print ``pixie-rerank: error: <message>`` as one line on stderr and return ``code`` (the exit status)."""
    print(f"pixie-rerank: error: {one_line(message)}", file=sys.stderr)
    return code


def dtype(text: str) -> str:
    """``--dtype``: float32, bfloat16 or float16 (and their usual short names); anything else is refused."""
    key = text.strip().lower().removeprefix("torch.")
    if key in _DTYPES:
        return _DTYPES[key]
    guess = difflib.get_close_matches(key, list(_DTYPES), n=1)
    hint = f"did you mean {_DTYPES[guess[0]]}? " if guess else ""
    raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; {hint}use float32, bfloat16 or float16")


def device(text: str) -> str:
    """``--device``: cpu, cuda, cuda:N or mps, and only one this machine has (checked with torch, imported here)."""
    name = text.strip().lower()
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda", "mps"):
        hint = "for an NVIDIA GPU use cuda (or cuda:N); " if kind in ("gpu", "nvidia", "cude") else ""
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; {hint}use one of {', '.join(_DEVICES)}, or leave --device out for the best "
            "available"
        )
    if index and (kind != "cuda" or not index.isdigit()):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use one of {', '.join(_DEVICES)}")
    if kind == "cpu":
        return name
    import torch

    if kind == "cuda":
        if torch.version.cuda is None:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not available: this torch ({torch.__version__}) is built without CUDA; use --device "
                "cpu, or install a CUDA build of torch (https://pytorch.org/get-started/locally/)"
            )
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not available: torch sees no CUDA device (driver, or CUDA_VISIBLE_DEVICES?); use "
                "--device cpu"
            )
        if index and int(index) >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
        return name
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine; use --device cpu")
    return name


def positive_int(text: str) -> int:
    """A whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def port(text: str) -> int:
    """A TCP port, 1-65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number (1-65535), got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {value}")
    return value


def add_device_dtype(parser: Any, *, dtype_default: str | None = None, dtype_help: str | None = None) -> None:
    """The ``--device`` and ``--dtype`` options, validated the same way in every subcommand."""
    parser.add_argument(
        "--device", type=device, default=None, help="cpu, cuda, cuda:N or mps (default: the best available)"
    )
    parser.add_argument(
        "--dtype",
        type=dtype,
        default=dtype_default,
        help=dtype_help
        or "float32, bfloat16 or float16 (default: bfloat16 on CUDA and on CPUs with bfloat16 matrix units, "
        "else float32)",
    )


def add_long_document_flags(parser: Any, *, default_help: str) -> None:
    """``--long-documents`` and the chunk flags (``serve`` and ``eval``; docs/long_documents.md)."""
    from .chunking import AGGREGATES, BOUNDARIES, STRATEGIES

    group = parser.add_argument_group("long documents (longer than --max-length)")
    group.add_argument("--long-documents", choices=STRATEGIES, default=None, help=default_help)
    group.add_argument(
        "--chunk-tokens", type=positive_int, help="with chunk: document tokens per chunk (default: all that fit)"
    )
    group.add_argument(
        "--chunk-overlap", type=non_negative_int, help="with chunk: tokens a chunk repeats from the one before"
    )
    group.add_argument("--max-chunks", type=positive_int, help="with chunk: most chunks scored per document")
    group.add_argument("--aggregate", choices=AGGREGATES, help="with chunk: how chunk scores combine (default max)")
    group.add_argument("--chunk-boundary", choices=BOUNDARIES, help="with chunk: where chunks end (default token)")


def long_documents_from(args: argparse.Namespace) -> Any:
    """The :class:`~pixie_integrations.LongDocuments` the flags of :func:`add_long_document_flags` ask for.

    Raises:
        ValueError: A chunk flag without ``--long-documents chunk``, or values that do not fit together (the
            message names the flags).
    """
    from .chunking import resolve_long_documents

    try:
        return resolve_long_documents(
            args.long_documents or "truncate",  # a chunk flag alone is a mistake: it would do nothing
            chunk_tokens=args.chunk_tokens,
            chunk_overlap=args.chunk_overlap,
            max_chunks=args.max_chunks,
            aggregate=args.aggregate,
            chunk_boundary=args.chunk_boundary,
        )
    except ValueError as exc:  # the flags' spelling, not the keyword arguments'
        message = str(exc)
        for name in ("long_documents", "chunk_tokens", "chunk_overlap", "max_chunks", "aggregate", "chunk_boundary"):
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise ValueError(message) from None


def non_negative_int(text: str) -> int:
    """argparse ``type=``: a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value
