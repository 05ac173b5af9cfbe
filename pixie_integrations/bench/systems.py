"""The systems the bench times: the model card's code, PixieScorer presets and settings, and the peer runtimes.

A system is named on the command line (``card-fp32``, ``pixie:token_budget=8192``, ``openvino-bf16:batch_size=8``);
:func:`parse_system` reads a name and :func:`build_systems` turns names into factories, each loading its system
when called (so the bench times the load).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..install import install_hint
from ..template import DEFAULT_INSTRUCTION, format_document, format_query
from .peers import DEFAULT_CALIBRATION_PAIRS, PEERS, missing_peer_modules

__all__ = [
    "CARD_SYSTEMS",
    "INT8_SYSTEMS",
    "PEER_SETTINGS",
    "PEER_SYSTEMS",
    "PIXIE_PRESETS",
    "SCORE_SETTINGS",
    "SETTINGS",
    "CardReference",
    "ScoreFn",
    "build_systems",
    "calibration_size",
    "missing_bench_extra",
    "parse_system",
    "peer_settings",
    "system_arg",
]

logger = logging.getLogger(__name__)

ScoreFn = Callable[[str, list[str]], list[float]]
"""A loaded system: (query, documents) -> one score per document."""


class CardReference:
    """The model card's code: its ``format_queries``/``format_document`` and sentence-transformers ``CrossEncoder``.

    The card's sentence-transformers tokenized each pair as a plain text pair
    (``tokenizer(text_a, text_b, padding=True, truncation=True)``). From 5.4 on, sentence-transformers routes a pair
    through the tokenizer's chat template when the tokenizer has one, and a PIXIE / Qwen3 checkpoint may ship Qwen3's
    template: ``CrossEncoder.predict`` then no longer gives the card's numbers. So a tokenizer with a chat template
    gets the card's tokenization here, on the ``CrossEncoder``'s own model and tokenizer; one without goes through
    ``CrossEncoder.predict`` itself. Either way the scores are what the card printed, whatever sentence-transformers
    is installed.

    Args:
        path: Checkpoint folder or hub id, as ``CrossEncoder`` takes it.
        device: Where ``CrossEncoder`` puts the model.
        dtype: Weight dtype name (``"float32"``, ``"bfloat16"``); ``None``: the ``CrossEncoder``'s default.
        batch_size: Pairs per forward pass (the card's ``predict`` default, 32).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, device: str = "cpu", dtype: str | None = None, batch_size: int = 32
    ) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        kwargs: dict[str, Any] = {"model_kwargs": {"dtype": getattr(torch, dtype)}} if dtype else {}
        self.cross_encoder = CrossEncoder(os.fspath(path), device=device, **kwargs)
        self.batch_size = batch_size
        self.uses_chat_template = bool(getattr(self.cross_encoder.tokenizer, "chat_template", None))

    def predict(self, pairs: Sequence[tuple[str, str] | Sequence[str]]) -> list[float]:
        """Scores of already formatted (text A, text B) pairs, as the card's ``model.predict(pairs)``."""
        if not self.uses_chat_template:
            batch = [[a, b] for a, b in pairs]
            return [
                float(s) for s in self.cross_encoder.predict(batch, batch_size=self.batch_size, show_progress_bar=False)
            ]
        return self._predict_as_pairs([(a, b) for a, b in pairs])

    def score(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """The card's recipe for one query: format each pair, then :meth:`predict`."""
        instruction = instruction if instruction is not None else DEFAULT_INSTRUCTION
        return self.predict([(format_query(query, instruction), format_document(d)) for d in documents])

    def _predict_as_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        import torch

        tokenizer = self.cross_encoder.tokenizer
        model = self.cross_encoder.model
        device = next(model.parameters()).device
        out: list[float] = []
        for start in range(0, len(pairs), self.batch_size):
            batch = pairs[start : start + self.batch_size]
            features = tokenizer(
                [a for a, _ in batch], [b for _, b in batch], padding=True, truncation=True, return_tensors="pt"
            ).to(device)
            with torch.inference_mode():
                logits = model(**features).logits
            # The card's head has one logit and CrossEncoder's activation for it is the sigmoid.
            out += [float(s) for s in torch.sigmoid(logits).reshape(-1).float().cpu().tolist()]
        return out


CARD_SYSTEMS = ("card-fp32", "card-bf16")
"""The model card's code as is (float32 and bfloat16 weights); they take no settings."""
# OpenVINO and ONNX Runtime on the same weights (their runtimes are imported only when one is asked for).
PEER_SYSTEMS = tuple(PEERS)
PEER_SETTINGS = ("batch_size",)
"""The settings every peer name may carry (``openvino-bf16:batch_size=8``)."""
_CALIBRATION_SETTINGS = ("calibration_pairs",)
PIXIE_PRESETS: dict[str, dict[str, Any]] = {
    "pixie": {},
    "pixie-fp32": {"dtype": "float32"},
    "pixie-noprefix": {"reuse_prefix": False},
    "pixie-compile": {"compile": True},
    "pixie-padded": {"pack": False},
    "pixie-chunk": {"long_documents": "chunk", "chunk_tokens": 512, "aggregate": "max"},
}
# PixieScorer settings a system name may set (pixie:key=value,...), by the kind of value each takes.
_INT_SETTINGS = ("token_budget", "batch_size", "max_length")
_BOOL_SETTINGS = ("reuse_prefix", "compile", "pack", "trust_remote_code")
_STR_SETTINGS = ("dtype", "attn_implementation", "family", "revision", "instruction")
# Settings of each score() call rather than of the scorer: how long documents are read (docs/long_documents.md).
_SCORE_INT_SETTINGS = ("chunk_tokens", "chunk_overlap", "max_chunks", "max_doc_tokens")
_SCORE_STR_SETTINGS = ("long_documents", "aggregate", "chunk_boundary")
SCORE_SETTINGS = _SCORE_INT_SETTINGS + _SCORE_STR_SETTINGS
"""The settings a ``pixie``-family name may carry that go to each ``score`` call."""
SETTINGS = tuple(sorted(_INT_SETTINGS + _BOOL_SETTINGS + _STR_SETTINGS + SCORE_SETTINGS))
"""The PixieScorer settings a ``pixie``-family name may carry."""


INT8_SYSTEMS = ("pixie-int8",)
"""PixieScorer on an int8 folder that ``pixie-rerank quantize``'s recipe builds in the bench's process, calibrated on
the workload's calibration pairs (no quality gate: random weights cannot pass or fail one meaningfully)."""


def peer_settings(base: str) -> tuple[str, ...]:
    """The settings peer ``base`` takes: ``batch_size``, and ``calibration_pairs`` for a calibrated one."""
    return PEER_SETTINGS + (_CALIBRATION_SETTINGS if PEERS[base].static_int8 else ())


def parse_system(name: str) -> tuple[str, dict[str, Any]]:
    """``"pixie:token_budget=8192,compile=true"`` -> ``("pixie", {"token_budget": 8192, "compile": True})``.

    Raises:
        ValueError: An unknown system, an unknown setting (the message lists the valid ones) or a bad value.
    """
    base, colon, params = name.partition(":")
    if base in CARD_SYSTEMS:
        if colon:
            raise ValueError(f"{base} is the model card's code as is and takes no settings (got {name!r})")
        return base, {}
    if base not in PIXIE_PRESETS and base not in PEER_SYSTEMS and base not in INT8_SYSTEMS:
        known = CARD_SYSTEMS + tuple(PIXIE_PRESETS) + INT8_SYSTEMS + PEER_SYSTEMS
        raise ValueError(f"Unknown system {base!r}; choose from {', '.join(known)}")
    settings = dict(PIXIE_PRESETS.get(base, {}))
    allowed = peer_settings(base) if base in PEER_SYSTEMS else SETTINGS
    if base in INT8_SYSTEMS:
        allowed = tuple(sorted(SETTINGS + _CALIBRATION_SETTINGS))
    for item in params.split(",") if colon else []:
        key, equals, value = (part.strip() for part in item.partition("="))
        if key not in allowed or not equals:
            what = f"unknown setting {key!r}" if key not in allowed else f"no value for {key!r}"
            raise ValueError(f"{what} in {name!r}; settings are key=value pairs of {', '.join(allowed)}")
        try:
            settings[key] = _setting_value(key, value)
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise ValueError(f"{key} in {name!r}: {exc}") from None
    chunking = {k: v for k, v in settings.items() if k in SCORE_SETTINGS and k != "max_doc_tokens"}
    if chunking:
        from ..chunking import resolve_long_documents

        try:
            resolve_long_documents(chunking.pop("long_documents", None), **chunking)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name!r}: {exc}") from None
    return base, settings


def _setting_value(key: str, value: str) -> Any:
    """One setting's value, read as the kind of value ``key`` takes."""
    from ..cli_args import dtype as parse_dtype
    from ..cli_args import positive_int

    if key == "chunk_overlap":
        if not value.isdigit():
            raise ValueError(f"expected a whole number of tokens, got {value!r}")
        return int(value)
    if key in _INT_SETTINGS + _CALIBRATION_SETTINGS + _SCORE_INT_SETTINGS:
        return positive_int(value)
    if key in _BOOL_SETTINGS:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"expected true or false, got {value!r}")
        return value.lower() == "true"
    if key == "dtype":
        return parse_dtype(value)
    return value


def system_arg(text: str) -> str:
    """argparse ``type=`` of ``--systems``: refuse a bad system name before anything loads."""
    try:
        parse_system(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _crossencoder_system(path: str, device: str, dtype: str) -> ScoreFn:
    """The model card's code (:class:`CardReference`), batch 32."""
    reference = CardReference(path, device=device, dtype=dtype)
    return reference.score


def _pixie_system(path: str, device: str, **kwargs: Any) -> ScoreFn:
    from ..chunking import resolve_long_documents
    from ..scorer import PixieScorer

    per_call = {key: kwargs.pop(key) for key in SCORE_SETTINGS if key in kwargs}
    max_doc_tokens = per_call.pop("max_doc_tokens", None)
    long_documents = resolve_long_documents(per_call.pop("long_documents", None), **per_call)  # fails before loading
    scorer = PixieScorer(path, device=device, show_progress_bar=False, **kwargs)
    logger.info("%s, %s", scorer, long_documents)
    return lambda query, documents: scorer.score(
        query, documents, max_doc_tokens=max_doc_tokens, long_documents=long_documents
    )


def _pixie_int8_system(
    path: str,
    device: str,
    calibration: Sequence[tuple[str, str]],
    *,
    calibration_pairs: int = DEFAULT_CALIBRATION_PAIRS,
    **kwargs: Any,
) -> ScoreFn:
    """The quantize command's recipe (SmoothQuant, sensitivity pass, int8 GEMMs) built here, then PixieScorer on it."""
    import tempfile

    from ..quantization import build_int8_folder
    from ..scorer import PixieScorer

    if device != "cpu":
        raise ValueError(f"pixie-int8 runs on the CPU only (got --device {device})")
    by_query: dict[str, list[str]] = {}
    for query, document in list(calibration)[:calibration_pairs]:
        by_query.setdefault(query, []).append(document)
    with tempfile.TemporaryDirectory(prefix="pixie-bench-int8-") as folder:
        recipe, _ = build_int8_folder(
            path,
            list(by_query.items()),
            folder,
            sensitivity_pairs=8,
            show_progress=False,
            max_length=kwargs.get("max_length"),
            instruction=kwargs.get("instruction", DEFAULT_INSTRUCTION),
        )
        scorer = PixieScorer(folder, device=device, show_progress_bar=False, **kwargs)  # in memory once loaded
    logger.info("%s (int8; kept in float: %s)", scorer, ", ".join(recipe.keep) or "none")
    return lambda query, documents: scorer.score(query, documents)


def _peer_system(name: str, path: str, device: str, calibration: Sequence[tuple[str, str]], **settings: Any) -> ScoreFn:
    """OpenVINO or ONNX Runtime on the same weights (CPU only), scored as the card's code scores."""
    from .peers import PeerScorer

    if device != "cpu":
        raise ValueError(f"{name} runs on the CPU only (got --device {device})")
    return PeerScorer(path, name=name, calibration=calibration, **settings).score


def calibration_size(names: Sequence[str]) -> int:
    """The most calibration pairs any of the named systems uses (0: none calibrates)."""
    sizes = [0]
    for name in names:
        base, settings = parse_system(name)
        if (base in PEER_SYSTEMS and PEERS[base].static_int8) or base in INT8_SYSTEMS:
            sizes.append(settings.get("calibration_pairs", DEFAULT_CALIBRATION_PAIRS))
    return max(sizes)


def build_systems(
    names: Sequence[str], path: str, device: str, *, calibration: Sequence[tuple[str, str]] = ()
) -> dict[str, Callable[[], ScoreFn]]:
    """Factories for named systems; ``pixie:key=value,...`` passes settings to PixieScorer.

    ``calibration``: (query, document) pairs a calibrated peer calibrates on (the first ``calibration_pairs``).
    """
    factories: dict[str, Callable[[], ScoreFn]] = {}
    for name in names:
        base, settings = parse_system(name)
        if base in PEER_SYSTEMS:
            factories[name] = lambda base=base, settings=settings: _peer_system(  # type: ignore[misc]
                base, path, device, calibration, **settings
            )
        elif base in INT8_SYSTEMS:
            factories[name] = lambda settings=settings: _pixie_int8_system(  # type: ignore[misc]
                path, device, calibration, **settings
            )
        elif base in CARD_SYSTEMS:
            dtype = "float32" if base == "card-fp32" else "bfloat16"
            factories[name] = lambda dtype=dtype: _crossencoder_system(path, device, dtype)  # type: ignore[misc]
        else:
            factories[name] = lambda settings=settings: _pixie_system(path, device, **settings)  # type: ignore[misc]
    return factories


def missing_bench_extra(systems: Sequence[str]) -> str | None:
    """What to install when a card-* system is asked for without sentence-transformers (or a peer without its
    runtime), else ``None``."""
    card = [name for name in systems if name.partition(":")[0] in CARD_SYSTEMS]
    if card and importlib.util.find_spec("sentence_transformers") is None:
        return (
            f"{', '.join(card)} run the model card's code, which needs sentence-transformers: "
            f"{install_hint('bench')}; or time PixieScorer alone: --systems pixie pixie-fp32"
        )
    peers = [name for name in systems if name.partition(":")[0] in PEER_SYSTEMS]
    missing = sorted({module for name in peers for module in missing_peer_modules(name.partition(":")[0])})
    if missing:
        return f"{', '.join(peers)} need {', '.join(missing)}, not installed here: {install_hint('bench-peers')}"
    return None
