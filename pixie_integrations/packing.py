"""Packed batches: every pair of a batch in one row, no padding, attention kept within each pair.

A padded batch spends compute on pad tokens and its shape changes with every batch. A packed batch concatenates the
pairs into one sequence (positions restart at 0 for each pair, so rotary embeddings see what they see alone) and
runs attention per pair through a variable-length kernel: PyTorch's ``varlen_attn`` (its FlashAttention kernel; CUDA,
bf16/fp16), else the ``flash-attn`` package's ``flash_attn_varlen_func`` where installed. Elsewhere (CPU, MPS, float32)
:func:`~pixie_integrations.segment_attention.segment_attention` runs each pair's attention as blocked matrix
multiplies: on a CPU that is faster than SDPA; :func:`fast_kernel` names the CUDA kernels only.

A query's prefix shared by a batch's pairs either runs as a segment of the batch that the others attend to
(:func:`pack_with_prefix`, the CUDA layout) or comes as its cached keys and values (:data:`PREFIX_KV`, the CPU one:
the prefix then runs once per query, not once per batch).

The model keeps its own attention for every unpacked call: the attention function registered here hands those to
transformers' SDPA function, with SDPA's masks.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .segment_attention import segment_attention

__all__ = [
    "PACKED_ATTENTION",
    "PREFIX_KV",
    "PackedBatch",
    "enable_packed_attention",
    "fast_kernel",
    "pack",
    "pack_with_prefix",
]

PACKED_ATTENTION = "pixie_packed"
"""The attention implementation name this module registers with transformers."""

_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class _Kernels:
    varlen: Callable[..., torch.Tensor] | None
    """torch's ``varlen_attn`` (torch >= 2.9), if its causal flag is one we know."""
    varlen_params: frozenset[str]
    flash_attn: Callable[..., torch.Tensor] | None
    """The flash-attn package's ``flash_attn_varlen_func``, if installed."""


_KERNELS: _Kernels | None = None


def _kernels() -> _Kernels:
    """The variable-length kernels this environment has, looked up once (importing flash-attn is slow), before any
    forward pass: traced code then reads a plain module constant."""
    global _KERNELS
    if _KERNELS is None:
        varlen: Callable[..., torch.Tensor] | None = None
        params: frozenset[str] = frozenset()
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            pass
        else:
            params = frozenset(inspect.signature(varlen_attn).parameters)
            # Causal is spelled `is_causal=True` in the first releases and `window_size=(-1, 0)` in later ones.
            if "window_size" in params or "is_causal" in params:
                varlen = varlen_attn
        try:
            from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]
        except ImportError:
            flash_attn_varlen_func = None
        _KERNELS = _Kernels(varlen, params, flash_attn_varlen_func)
    return _KERNELS


def fast_kernel(device: torch.device, dtype: torch.dtype) -> str | None:
    """The variable-length attention kernel packed batches would use on ``device`` in ``dtype``, or ``None``."""
    if device.type != "cuda" or dtype not in _HALF:
        return None
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:  # FlashAttention 2 needs Ampere or newer
        return None
    kernels = _kernels()
    if kernels.varlen is not None:
        return "torch varlen_attn"
    if kernels.flash_attn is not None:
        return "flash_attn_varlen_func"
    return None


@dataclass(frozen=True)
class PackedBatch:
    """Model inputs of one packed batch, and where each scored pair's last token sits in it.

    Plain packing: every pair is one segment. With a shared prefix (:func:`pack_with_prefix`), the query's prefix is
    a segment of its own, run once, and each document segment's keys are the prefix's followed by its own.
    """

    input_ids: torch.Tensor
    """(1, total tokens): the segments one after another."""
    position_ids: torch.Tensor
    """(1, total tokens): each pair's positions, as if it ran alone."""
    cu_seq_lens_q: torch.Tensor
    """(segments + 1,) int32: where each segment's tokens start, then the total."""
    cu_seq_lens_k: torch.Tensor
    """(segments + 1,) int32: the same for the keys each segment attends to."""
    max_length_q: int
    max_length_k: int
    last: torch.Tensor
    """(pairs,): the index of each pair's last token."""
    kv_index: torch.Tensor | None = None
    """With a shared prefix: which token's key/value fills each key slot (prefix tokens repeat per document)."""

    def model_kwargs(self, device: torch.device) -> dict[str, Any]:
        """Keyword arguments for the backbone's forward: ids, positions, and the layout its attention reads."""
        cu_q = self.cu_seq_lens_q.to(device)
        kwargs: dict[str, Any] = {
            "input_ids": self.input_ids.to(device),
            "position_ids": self.position_ids.to(device),
            # A prepared mask mapping: transformers then builds no mask (packed attention needs none).
            "attention_mask": {"full_attention": None},
            "use_cache": False,
            # transformers' own names for a packed layout (FlashAttentionKwargs), passed down to attention.
            "cu_seq_lens_q": cu_q,
            "cu_seq_lens_k": cu_q if self.kv_index is None else self.cu_seq_lens_k.to(device),
            "max_length_q": self.max_length_q,
            "max_length_k": self.max_length_k,
        }
        if self.kv_index is not None:
            kwargs[KV_INDEX] = self.kv_index.to(device)
        return kwargs


KV_INDEX = "pixie_kv_index"
"""The keyword argument carrying :attr:`PackedBatch.kv_index` down to attention."""
PREFIX_KV = "pixie_prefix_kv"
"""The keyword argument carrying a query's cached prefix (per layer: keys, values) down to attention."""


def _cumulative(lengths: torch.Tensor) -> torch.Tensor:
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0).to(torch.int32)
    return cu


def _concat(rows: Sequence[Sequence[int]], lengths: torch.Tensor) -> torch.Tensor:
    ids = torch.empty(int(lengths.sum()), dtype=torch.long)
    start = 0
    for row in rows:
        ids[start : start + len(row)] = torch.as_tensor(row, dtype=torch.long)
        start += len(row)
    return ids


def _lengths(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    if not rows:
        raise ValueError("cannot pack an empty batch")
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    if int(lengths.min()) <= 0:
        raise ValueError("cannot pack an empty row")
    return lengths


def pack(rows: Sequence[Sequence[int]], *, first_position: int = 0) -> PackedBatch:
    """Concatenate rows of token ids into one packed batch. ``first_position``: where each row's positions start
    (after a cached prefix of that many tokens; 0 for whole pairs)."""
    lengths = _lengths(rows)
    cu = _cumulative(lengths)
    starts = cu[:-1].long()
    positions = torch.arange(int(cu[-1])) - torch.repeat_interleave(starts, lengths) + first_position
    longest = int(lengths.max())
    return PackedBatch(
        input_ids=_concat(rows, lengths).unsqueeze(0),
        position_ids=positions.unsqueeze(0),
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=longest,
        max_length_k=longest,
        last=cu[1:].long() - 1,
    )


def pack_with_prefix(prefix: Sequence[int], rests: Sequence[Sequence[int]]) -> PackedBatch:
    """One query's prefix once, then each document's tokens (``rests``), which attend to the prefix and to
    themselves: the scores of ``prefix + rest`` for each rest, with the prefix computed once per batch."""
    n_prefix = len(prefix)
    if n_prefix == 0:
        raise ValueError("cannot share an empty prefix")
    rest_lengths = _lengths(rests)
    q_lengths = torch.cat([torch.tensor([n_prefix]), rest_lengths])
    cu_q = _cumulative(q_lengths)
    cu_k = _cumulative(torch.cat([torch.tensor([n_prefix]), rest_lengths + n_prefix]))
    rest_starts = cu_q[1:-1].long()
    # Each document's positions continue after the prefix, as in the unshared input.
    offsets = torch.repeat_interleave(rest_starts - n_prefix, rest_lengths)
    rest_positions = torch.arange(int(rest_lengths.sum())) - offsets + n_prefix
    prefix_index = torch.arange(n_prefix)
    index = [prefix_index]
    for start, length in zip(rest_starts.tolist(), rest_lengths.tolist()):
        index += [prefix_index, torch.arange(start, start + length)]
    return PackedBatch(
        input_ids=torch.cat([torch.as_tensor(prefix, dtype=torch.long), _concat(rests, rest_lengths)]).unsqueeze(0),
        position_ids=torch.cat([prefix_index, rest_positions]).unsqueeze(0),
        cu_seq_lens_q=cu_q,
        cu_seq_lens_k=cu_k,
        max_length_q=int(q_lengths.max()),
        max_length_k=n_prefix + int(rest_lengths.max()),
        last=cu_q[2:].long() - 1,
        kv_index=torch.cat(index),
    )


def enable_packed_attention(model: Any) -> bool:
    """Switch ``model`` (an SDPA model) to the attention function that also runs packed batches.

    Unpacked calls behave exactly as before (the same SDPA function and masks). Returns False, changing nothing,
    where the model does not use SDPA or has sliding-window layers (their windows would need a mask per pair).
    """
    _kernels()  # before any packed forward: attention reads the result as a constant
    config = model.config
    current = getattr(config, "_attn_implementation", None)
    if current == PACKED_ATTENTION:
        return True
    if current != "sdpa":
        return False
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    model.set_attn_implementation(PACKED_ATTENTION)
    return config._attn_implementation == PACKED_ATTENTION  # type: ignore[no-any-return]


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: packed batches (``cu_seq_lens_q`` given) per pair, anything else as SDPA."""
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    prefix = kwargs.get(PREFIX_KV)
    if prefix is not None:  # a query's cached prefix: every segment's keys are the prefix's, then its own
        prefix_key, prefix_value = prefix[module.layer_idx]  # type: ignore[index]
        out = segment_attention(
            query[0], key[0], value[0], cu_q, kwargs["cu_seq_lens_k"], scaling, prefix_key[0], prefix_value[0]
        )
        return out.unsqueeze(0), None
    # (1, heads, tokens, dim) -> (tokens, heads, dim), the varlen layout.
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))
    kv_index = kwargs.get(KV_INDEX)
    if kv_index is not None:  # a shared prefix: its keys and values repeat before each document's own
        k, v = k.index_select(0, kv_index), v.index_select(0, kv_index)
    out = varlen_causal(q, k, v, cu_q, kwargs["cu_seq_lens_k"], kwargs["max_length_q"], kwargs["max_length_k"], scaling)
    return out.unsqueeze(0), None


def varlen_causal(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    max_q: int,
    max_k: int,
    scale: float | None,
) -> torch.Tensor:
    """Causal attention within each packed sequence; (tokens, heads, dim) in and out. Where a sequence has more keys
    than queries, its queries are its last tokens (bottom-right alignment, as FlashAttention)."""
    if q.is_cuda and q.dtype in _HALF:
        assert _KERNELS is not None  # looked up by enable_packed_attention
        varlen, params = _KERNELS.varlen, _KERNELS.varlen_params
        if varlen is not None:
            extra: dict[str, Any] = {}
            if "window_size" in params:
                extra["window_size"] = (-1, 0)
            else:
                extra["is_causal"] = True
            if scale is not None and "scale" in params:
                extra["scale"] = scale
            if k.shape[1] != q.shape[1]:
                if "enable_gqa" in params:
                    extra["enable_gqa"] = True
                else:
                    k, v = (_repeat_heads(t, q.shape[1]) for t in (k, v))
            return varlen(q, k, v, cu_q, cu_k, max_q, max_k, **extra)
        flash = _KERNELS.flash_attn
        if flash is not None:  # handles grouped-query heads natively
            return flash(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale, causal=True)
    return segment_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), cu_q, cu_k, scale)


def _repeat_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.repeat_interleave(heads // t.shape[1], dim=1)
