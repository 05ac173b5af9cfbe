"""Loading a checkpoint once per process: device and dtype resolution, clear load errors, the shared-model registry."""

from __future__ import annotations

import logging
import os
import socket
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch

from .cpu import cpu_defaults, cpu_info
from .families import ModelFamily, detect_family
from .quantization.recipe import (
    QUANTIZATION_FILE,
    QuantizedFolder,
    apply_quantization,
    int8_fallback_reason,
    read_quantized_folder,
)

__all__ = ["LoadedModel", "ModelLoadError", "NotARerankerError", "load_model", "resolve_device", "resolve_dtype"]

logger = logging.getLogger(__name__)

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


class ModelLoadError(OSError):
    """A checkpoint could not be loaded; the message says why and how to point ``model`` at a local copy."""


class NotARerankerError(ModelLoadError, ValueError):
    """The checkpoint loads, but is no reranker this package scores (a classifier with several labels, a causal LM
    other than a Qwen3-Reranker). A ``ValueError`` as well, as it was before: code catching either keeps working."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` picks cuda, then mps, then cpu. ``"cuda"`` becomes ``"cuda:N"`` so both name one shared model."""
    if device is not None:
        resolved = torch.device(device)
        if resolved.type == "cuda" and resolved.index is None and torch.cuda.is_available():
            resolved = torch.device("cuda", torch.cuda.current_device())
        return resolved
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_bf16_matmul() -> bool:
    """Whether this CPU has native bfloat16 matrix units (AMX or AVX512-BF16), where bf16 beats float32."""
    return cpu_info().has_bf16_matmul


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` picks bfloat16 on CUDA and on CPUs with bf16 matrix units (AMX, AVX512-BF16), float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key == "auto":
            dtype = None
        elif key in _DTYPE_NAMES:
            return _DTYPE_NAMES[key]
        else:
            raise ValueError(f"Unknown dtype {dtype!r}; use one of 'float32', 'bfloat16', 'float16' or a torch.dtype.")
    if dtype is not None:
        raise TypeError(f"dtype must be a torch.dtype, a str or None, not {type(dtype).__name__}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return _DTYPE_NAMES[cpu_defaults().dtype]  # per CPU class: bf16 only where the CPU has bf16 matrix units
    return torch.float32


@dataclass(eq=False)
class LoadedModel:
    """A model and tokenizer in memory, shared by every scorer that asked for the same checkpoint and settings."""

    name: str
    model: Any
    tokenizer: Any
    family: ModelFamily
    device: torch.device
    dtype: torch.dtype
    # HF fast tokenizers keep truncation/padding state on the Rust side and raise "Already borrowed" when two
    # threads use one at once: tokenization takes this lock, forward passes do not need it.
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while a scorer changes the shared model (its attention function, its compiled forms)."""
    compiled: dict[str, Any] = field(default_factory=dict)
    """The ``torch.compile``-d backbone ("static" or "dynamic" shapes), made on first use by a scorer asking for it."""
    engine: Any = field(default=None, repr=False, compare=False)
    """The model's batching engine (:func:`pixie_integrations.engine.get_engine`), made on first use."""
    __weakref__: Any = field(default=None, init=False, repr=False, compare=False)


_registry: weakref.WeakValueDictionary[tuple[Any, ...], LoadedModel] = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else (``./x``, ``/x``, ``a/b/c``, ``C:\\x``) is a path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model or ":" in model


def _load_error(model: str, exc: Exception, stage: str) -> ModelLoadError:
    """An error that names the real cause: a missing checkpoint, no network, or a checkpoint that fails to load."""
    cause = f"{type(exc).__name__}: {exc}"
    local = Path(model).expanduser()
    if looks_like_path(model) or local.exists():
        if not (local / "config.json").is_file():
            return ModelLoadError(
                f"Model path {model!r} holds no transformers checkpoint: it has no config.json (a checkpoint folder "
                f"holds config.json, weights and tokenizer files). {cause}"
            )
        return ModelLoadError(f"The checkpoint in {model!r} was found, but loading its {stage} failed: {cause}")
    if stage != "config" and not isinstance(exc, OSError):
        # The config came through, so the Hub (or the cache) answered: the network is not the problem.
        return ModelLoadError(f"{model!r} was found, but loading its {stage} failed: {cause}")
    return ModelLoadError(
        f"Could not load {model!r} from the Hugging Face Hub ({cause}). If this machine has "
        "no network, download the model where there is one "
        f"(`hf download {model} --local-dir ./{model.split('/')[-1]}`), copy the folder here and pass its path as "
        f"model='./{model.split('/')[-1]}'; or set HF_HUB_OFFLINE=1 with a filled Hugging Face cache."
    )


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub is out of reach: offline mode, or no TCP connection to its endpoint.

    Without network, huggingface_hub retries each request five times with backoff (about 25 s of warnings) before
    transformers gives up. One quick connection attempt first lets a load go straight to the local cache instead:
    it succeeds at once when the model is cached, and fails at once, with our message, when it is not.
    """
    from huggingface_hub import constants

    offline = getattr(constants, "is_offline_mode", None)
    if (offline() if offline is not None else constants.HF_HUB_OFFLINE) is True:
        return True
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return False  # only the hub client knows how to go through the proxy
    endpoint = urlsplit(constants.ENDPOINT)
    if endpoint.hostname is None:
        return False
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return False
    except OSError as exc:
        logger.info("Cannot connect to %s (%s): using the local Hugging Face cache only.", constants.ENDPOINT, exc)
        return True


def _quantization_stamp(model: str) -> int | None:
    """When a folder's quantization file last changed (part of the load key: adding one makes a new model)."""
    try:
        return (Path(model) / QUANTIZATION_FILE).stat().st_mtime_ns
    except OSError:
        return None


def _quantize_on_load(
    name: str, hf_model: Any, quantized: QuantizedFolder, device: torch.device, dtype: torch.dtype
) -> None:
    """Round a quantized folder's layers to int8 where this machine runs int8; otherwise say what runs instead."""
    reason = int8_fallback_reason(device)
    if reason is not None:
        logger.warning(
            "%s is an int8 model, but %s: running its float weights in %s instead (the unquantized model's scores, "
            "at its speed).",
            name,
            reason,
            str(dtype).removeprefix("torch."),
        )
        return
    count = apply_quantization(hf_model, quantized.recipe)
    kept = ", ".join(quantized.recipe.keep) or "none"
    logger.info("%s: %d linear layers in int8 (kept in float: %s); %s.", name, count, kept, quantized.summary())
    if quantized.report.get("gate", {}).get("passed") is False:
        logger.warning("%s was written with --force although it failed its quality gate: %s", name, quantized.summary())


def load_model(
    model: str,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    family: ModelFamily | str | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    trust_remote_code: bool = False,
    local_files_only: bool = False,
    attn_implementation: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    tokenizer_kwargs: dict[str, Any] | None = None,
    config_kwargs: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load (or reuse) a reranker checkpoint. The same arguments in any thread give the same :class:`LoadedModel`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    model_kwargs = dict(model_kwargs or {})
    model = os.fspath(model)
    if model.startswith("~"):
        model = os.path.expanduser(model)
    resolved_device = resolve_device(device)
    for key in ("dtype", "torch_dtype"):
        # A dtype in model_kwargs (the transformers habit) would clash with ours; treat it as the dtype argument.
        if key in model_kwargs:
            value = model_kwargs.pop(key)
            if dtype is not None and resolve_dtype(value, resolved_device) != resolve_dtype(dtype, resolved_device):
                raise ValueError(f"dtype={dtype!r} and model_kwargs[{key!r}]={value!r} disagree; set only dtype")
            dtype = value
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    forced = ModelFamily(family) if family is not None else None
    key = (
        model,
        str(resolved_device),
        resolved_dtype,
        forced,
        revision,
        trust_remote_code,
        attn_implementation,
        repr(sorted(model_kwargs.items())),
        repr(sorted((tokenizer_kwargs or {}).items())),
        repr(sorted((config_kwargs or {}).items())),
        _quantization_stamp(model),
    )
    with _registry_lock:
        loaded = _registry.get(key)
        if loaded is not None:
            return loaded
        if looks_like_path(model) and not Path(model).exists():
            raise ModelLoadError(
                f"Model path {model!r} does not exist. Point model= at a folder holding a downloaded checkpoint "
                "(config.json, weights and tokenizer files), or at a Hugging Face Hub id such as "
                "'telepix/PIXIE-Spell-Reranker-Preview-0.6B'."
            )
        if not local_files_only and not Path(model).exists() and hub_unreachable():
            # No network: the local cache or nothing, decided now rather than after the hub client's retries.
            local_files_only = True
        hub_kwargs: dict[str, Any] = {
            "revision": revision,
            "token": token,
            "cache_dir": cache_dir,
            "trust_remote_code": trust_remote_code,
            "local_files_only": local_files_only,
        }
        stage = "config"
        try:
            config = AutoConfig.from_pretrained(model, **hub_kwargs, **(config_kwargs or {}))
            try:
                resolved_family = forced or detect_family(config)
            except ValueError as exc:
                raise NotARerankerError(f"{model!r} is not a reranker: {exc}") from exc
            stage = "tokenizer"
            tokenizer = AutoTokenizer.from_pretrained(model, **hub_kwargs, **(tokenizer_kwargs or {}))
            stage = "weights"
            extra = dict(model_kwargs)
            if attn_implementation is not None:
                extra["attn_implementation"] = attn_implementation
            auto_cls = (
                AutoModelForCausalLM
                if resolved_family is ModelFamily.QWEN3_CAUSAL_LM
                else AutoModelForSequenceClassification
            )
            quantized = read_quantized_folder(model) if Path(model).is_dir() else None
            # A quantized folder's int8 layers are rounded from its float32 weights: load those, round, then cast.
            load_dtype = torch.float32 if quantized is not None else resolved_dtype
            hf_model = auto_cls.from_pretrained(model, config=config, dtype=load_dtype, **hub_kwargs, **extra)
        except ModelLoadError:
            raise
        except (OSError, ValueError) as exc:
            raise _load_error(model, exc, stage) from exc
        if quantized is not None:
            _quantize_on_load(model, hf_model, quantized, resolved_device, resolved_dtype)
        hf_model.to(resolved_device)
        if quantized is not None:
            hf_model.to(dtype=resolved_dtype)  # the float layers; int8 weights and their scales stay as they are
        hf_model.eval()
        hf_model.requires_grad_(False)
        loaded = LoadedModel(
            name=model,
            model=hf_model,
            tokenizer=tokenizer,
            family=resolved_family,
            device=resolved_device,
            dtype=resolved_dtype,
        )
        _registry[key] = loaded
        logger.info("Loaded %s (%s) on %s in %s", model, resolved_family.value, resolved_device, resolved_dtype)
        return loaded
