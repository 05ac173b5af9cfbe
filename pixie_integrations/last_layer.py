"""The last decoder layer run for the scored tokens only.

A reranker reads one hidden state per pair: its last token's, after the final layer. Every earlier layer needs every
token (its keys and values feed the next layer), but the last layer's queries, attention output, output projection
and MLP matter at the scored tokens alone. Run there, the last layer computes its keys and values for every token and
the rest for one token per pair: it skips ~85% of that layer's matrix work (the same numbers, from fewer rows). On
PIXIE's 28 layers that is ~3% of a forward pass; on a model cut to a few layers, proportionally more.

It applies to packed batches whose attention runs through
:func:`~pixie_integrations.segment_attention.segment_attention` (the CPU path), on the Qwen2/Qwen3 layer shape.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import torch

from .packing import packed_attention

__all__ = ["SCORED_TOKENS", "enable_scored_tokens_only"]

SCORED_TOKENS = "pixie_scored_tokens"
"""The keyword argument carrying the scored tokens' indices (each a segment's last token) down to the last layer."""

_SUPPORTED_MODEL_TYPES = frozenset({"qwen2", "qwen3"})
_READS = frozenset({"position_embeddings", "cu_seq_lens_q", "cu_seq_lens_k"})  # what the layer is called with
_LAYER_PARTS = ("input_layernorm", "post_attention_layernorm", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx")


def enable_scored_tokens_only(backbone: torch.nn.Module) -> bool:
    """Let ``backbone``'s last layer run for the tokens named by the :data:`SCORED_TOKENS` keyword argument only.

    Calls without that argument run the layer as before. Returns False, changing nothing, where the last layer is not
    of the Qwen2/Qwen3 shape this knows.
    """
    config = getattr(backbone, "config", None)
    layers = getattr(backbone, "layers", None)
    if getattr(config, "model_type", None) not in _SUPPORTED_MODEL_TYPES or not layers:
        return False
    layer = layers[-1]
    if getattr(layer.forward, "_pixie_scored_tokens", False):
        return True
    attention = getattr(layer, "self_attn", None)
    rotate_half = getattr(sys.modules.get(type(attention).__module__), "rotate_half", None)
    parts_known = attention is not None and all(hasattr(attention, part) for part in _ATTENTION_PARTS)
    if not parts_known or rotate_half is None or not all(hasattr(layer, part) for part in _LAYER_PARTS):
        return False
    original = layer.forward

    @functools.wraps(original)
    def forward(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        scored = kwargs.pop(SCORED_TOKENS, None)
        if scored is None:
            return original(hidden_states, *args, **kwargs)
        if args or not _READS.issubset(kwargs):  # called another way than this knows: the whole layer, then select
            return original(hidden_states, *args, **kwargs)[:, scored]
        return _scored_tokens_forward(layer, rotate_half, hidden_states, scored, kwargs)

    forward._pixie_scored_tokens = True  # type: ignore[attr-defined]
    layer.forward = forward
    return True


def _scored_tokens_forward(
    layer: torch.nn.Module, rotate_half: Any, hidden_states: torch.Tensor, scored: torch.Tensor, kwargs: dict[str, Any]
) -> torch.Tensor:
    """The decoder layer (pre-norm attention, then pre-norm MLP, each with its residual) on a packed batch, (1, tokens,
    hidden) in, (1, scored tokens, hidden) out."""
    attention = layer.self_attn
    head_dim = attention.head_dim
    normed = layer.input_layernorm(hidden_states)
    # Keys and values from every token; queries from the scored ones.
    query = attention.q_proj(normed[:, scored]).view(1, len(scored), -1, head_dim)
    key = attention.k_proj(normed).view(1, normed.shape[1], -1, head_dim)
    value = attention.v_proj(normed).view(1, normed.shape[1], -1, head_dim)
    if hasattr(attention, "q_norm"):  # Qwen3 normalizes each head's queries and keys
        query, key = attention.q_norm(query), attention.k_norm(key)
    cos, sin = kwargs["position_embeddings"]
    query = _rotate(query, cos[:, scored], sin[:, scored], rotate_half)
    key = _rotate(key, cos, sin, rotate_half)
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (1, heads, tokens, dim), as attention
    # Each scored token is its segment's last: one query per segment (none for a prefix segment), bottom-right
    # aligned against the segment's keys, so it sees them all. The packed attention function does the rest (a cached
    # prefix, an in-batch prefix's repeated keys), as in every other layer.
    cu_k = kwargs["cu_seq_lens_k"]
    segment = torch.searchsorted(kwargs["cu_seq_lens_q"][1:].to(scored.device, torch.long), scored, right=True)
    cu_q = torch.zeros_like(cu_k)
    cu_q[1:] = torch.cumsum(torch.bincount(segment, minlength=len(cu_k) - 1), 0)
    attend = {**kwargs, "cu_seq_lens_q": cu_q, "max_length_q": 1}
    mask = attend.pop("attention_mask", None)
    out, _ = packed_attention(attention, query, key, value, mask, scaling=attention.scaling, **attend)
    hidden = hidden_states[:, scored] + attention.o_proj(out.reshape(1, len(scored), -1))
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))  # type: ignore[no-any-return]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotate_half: Any) -> torch.Tensor:
    """Rotary embeddings on (1, tokens, heads, dim) with (1, tokens, dim) angles, as the model's own function."""
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    return (x * cos) + (rotate_half(x) * sin)
