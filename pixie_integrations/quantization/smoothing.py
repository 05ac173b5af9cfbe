"""SmoothQuant for Qwen3 decoder layers: move activation outliers into the weights, exactly, before rounding.

A few input channels of a transformer's linear layers carry activations tens of times larger than the rest; one int8
scale per token then spends its range on them and rounds everything else to a handful of levels. SmoothQuant (Xiao et
al., 2023) divides each such channel by ``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)`` and multiplies the matching
weight column by ``s_j``: the product is unchanged in exact arithmetic, and both factors become easy to round. The
division is folded into whatever produced the activation, so nothing runs at inference time:

- q/k/v projections: into ``input_layernorm``'s weight (RMSNorm scales each channel);
- gate/up projections: into ``post_attention_layernorm``'s weight;
- down projection: into ``up_proj``'s output rows (its input is ``act(gate) * up``);
- output projection: into ``v_proj``'s output rows (attention mixes positions, never channels), one factor shared by
  the query heads that read the same key/value head.

Statistics are the per-channel absolute maxima of each linear layer's input over the calibration pairs, collected
with forward hooks on whatever path the scorer runs (packed or padded, cached prefix or not).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["ActivationStats", "collect_activation_stats", "decoder_layers", "smooth_model"]


class ActivationStats:
    """Per-channel absolute maxima of the inputs of named linear layers."""

    def __init__(self) -> None:
        self.maxima: dict[str, torch.Tensor] = {}

    def update(self, name: str, x: torch.Tensor) -> None:
        flat = x.detach().reshape(-1, x.shape[-1])
        amax = flat.abs().amax(dim=0).float()
        previous = self.maxima.get(name)
        self.maxima[name] = amax if previous is None else torch.maximum(previous, amax)


def decoder_layers(model: Any) -> list[Any]:
    """The decoder layers of a Qwen3 seq-cls (or causal LM) model."""
    backbone = getattr(model, "model", model)
    layers = getattr(backbone, "layers", None)
    if layers is None:
        raise ValueError(f"{type(model).__name__} has no decoder layers at .model.layers: not a Qwen3-style model")
    return list(layers)


@contextlib.contextmanager
def collect_activation_stats(model: Any) -> Iterator[ActivationStats]:
    """Within the block, every forward pass through ``model`` records its decoder layers' linear inputs."""
    stats = ActivationStats()
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            handles.append(module.register_forward_pre_hook(lambda m, args, name=name: stats.update(name, args[0])))
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


def _factors(x_max: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w_max = torch.stack([w.detach().float().abs().amax(dim=0) for w in weights]).amax(dim=0)
    factors = x_max.clamp(min=1e-5).pow(alpha) / w_max.clamp(min=1e-5).pow(1 - alpha)
    return factors.clamp(min=1e-5)


@torch.no_grad()
def _fold_into_norm(norm: Any, linears: list[torch.nn.Linear], factors: torch.Tensor) -> None:
    norm.weight.div_(factors.to(norm.weight.dtype))
    for linear in linears:
        linear.weight.mul_(factors.to(linear.weight.dtype)[None, :])


@torch.no_grad()
def _fold_into_rows(producer: torch.nn.Linear, consumer: torch.nn.Linear, factors: torch.Tensor) -> None:
    producer.weight.div_(factors.to(producer.weight.dtype)[:, None])
    if producer.bias is not None:
        producer.bias.div_(factors.to(producer.bias.dtype))
    consumer.weight.mul_(factors.to(consumer.weight.dtype)[None, :])


def _grouped_head_factors(
    x_max: torch.Tensor, o_proj: torch.nn.Linear, heads: int, kv_heads: int, head_dim: int, alpha: float
) -> torch.Tensor:
    """One factor per (key/value head, dimension), from the maxima over the query heads that share it."""
    group = heads // kv_heads
    x = x_max.view(kv_heads, group, head_dim).amax(dim=1)
    w = o_proj.weight.detach().float().abs().amax(dim=0).view(kv_heads, group, head_dim).amax(dim=1)
    return (x.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5).reshape(-1)


def smooth_model(model: Any, stats: ActivationStats, alpha: float) -> int:
    """Fold SmoothQuant factors into ``model``'s decoder layers in place; returns how many layer groups moved.

    The model's scores do not change beyond float rounding (tests check it): only how easy each factor is to round.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], not {alpha!r}")
    config = model.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    prefix = {id(m): n for n, m in model.named_modules()}
    moved = 0
    for layer in decoder_layers(model):
        attn, mlp = layer.self_attn, layer.mlp
        name = prefix[id(layer)]

        def seen(module: str, name: str = name) -> torch.Tensor | None:
            return stats.maxima.get(f"{name}.{module}")

        qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
        if (x := seen("self_attn.q_proj")) is not None:
            _fold_into_norm(layer.input_layernorm, qkv, _factors(x, [m.weight for m in qkv], alpha))
            moved += 1
        gate_up = [mlp.gate_proj, mlp.up_proj]
        if (x := seen("mlp.gate_proj")) is not None:
            _fold_into_norm(layer.post_attention_layernorm, gate_up, _factors(x, [m.weight for m in gate_up], alpha))
            moved += 1
        if (x := seen("mlp.down_proj")) is not None:
            _fold_into_rows(mlp.up_proj, mlp.down_proj, _factors(x, [mlp.down_proj.weight], alpha))
            moved += 1
        if (x := seen("self_attn.o_proj")) is not None:
            kv_factors = _grouped_head_factors(x, attn.o_proj, heads, kv_heads, head_dim, alpha)
            group = heads // kv_heads
            per_query_head = kv_factors.view(kv_heads, 1, head_dim).expand(kv_heads, group, head_dim).reshape(-1)
            with torch.no_grad():
                attn.v_proj.weight.div_(kv_factors.to(attn.v_proj.weight.dtype)[:, None])
                if attn.v_proj.bias is not None:
                    attn.v_proj.bias.div_(kv_factors.to(attn.v_proj.bias.dtype))
                attn.o_proj.weight.mul_(per_query_head.to(attn.o_proj.weight.dtype)[None, :])
            moved += 1
    return moved
