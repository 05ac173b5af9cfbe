"""Causal attention over the segments of a packed batch as blocked matrix multiplies: the kernel for CPUs.

On a CPU, torch's SDPA kernels run attention far below the speed of its matrix multiplies, and once a cached prefix
makes the causal mask explicit they compute the masked half as well. Here each segment (one pair) is plain matrix
multiplies over blocks of its queries: a block reads only the keys before its own end (of the masked half, only the
block's diagonal is computed), and the query heads that share a key/value head are stacked as rows so grouped-query
keys are never repeated. The softmax accumulates in float32; in bfloat16 the scores and probabilities are bfloat16
tensors, as in SDPA's own math kernel. It works on any device and dtype, as exact as SDPA in float32.

Measured on an AMD EPYC (Zen 4, 2 threads, PIXIE's attention shape): 1.5-2.1x faster than SDPA with the prefix mask in
bfloat16, 1.1-1.5x in float32.
"""

from __future__ import annotations

import torch

__all__ = ["segment_attention"]


def segment_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    scale: float | None = None,
    prefix_key: torch.Tensor | None = None,
    prefix_value: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention within each segment of a packed batch.

    Args:
        query: (heads, tokens, dim): the segments end to end.
        key: (kv heads, key tokens, dim); ``value`` likewise. ``heads`` must be a multiple of ``kv heads``.
        cu_q: (segments + 1,): where each segment's queries start, then the total.
        cu_k: the same for each segment's keys. Where a segment has more keys than queries, its queries are its last
            tokens (bottom-right alignment).
        scale: the softmax scale (default ``dim ** -0.5``).
        prefix_key: (kv heads, prefix tokens, dim): keys every segment attends to before its own (a query's cached
            prefix); ``prefix_value`` likewise.

    Returns:
        (tokens, heads, dim), the layout transformers' attention functions return (batch dimension aside).
    """
    return _segment_attention_op(query, key, value, cu_q, cu_k, scale, prefix_key, prefix_value)


# An opaque operator to torch.compile: a compiled packed model stays one graph.
@torch.library.custom_op("pixie_integrations::segment_attention", mutates_args=())
def _segment_attention_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    scale: float | None,
    prefix_key: torch.Tensor | None,
    prefix_value: torch.Tensor | None,
) -> torch.Tensor:
    heads, tokens, dim = query.shape
    scale = dim**-0.5 if scale is None else scale
    out = query.new_empty(tokens, heads, dim)
    bounds_q, bounds_k = cu_q.tolist(), cu_k.tolist()
    for i in range(len(bounds_q) - 1):
        q0, q1, k0, k1 = bounds_q[i], bounds_q[i + 1], bounds_k[i], bounds_k[i + 1]
        keys, values = key[:, k0:k1], value[:, k0:k1]
        if prefix_key is not None and prefix_value is not None:
            keys, values = torch.cat([prefix_key, keys], 1), torch.cat([prefix_value, values], 1)
        _attend(query[:, q0:q1], keys, values, out[q0:q1], scale)
    return out


@_segment_attention_op.register_fake
def _(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_q: torch.Tensor,
    cu_k: torch.Tensor,
    scale: float | None,
    prefix_key: torch.Tensor | None,
    prefix_value: torch.Tensor | None,
) -> torch.Tensor:
    heads, tokens, dim = query.shape
    return query.new_empty(tokens, heads, dim)


def _block_rows(n_queries: int) -> int:
    """Queries per block: smaller blocks skip more of the masked half, larger ones make bigger matrix multiplies
    (measured on PIXIE's shape: 64 wins for long segments, 128 up to a few hundred tokens)."""
    return 64 if n_queries > 512 else 128


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, scale: float) -> None:
    """One segment: q (heads, n_q, dim), k/v (kv heads, n_k, dim) with n_k >= n_q; writes out (n_q, heads, dim)."""
    heads, n_q, dim = q.shape
    kv_heads, n_k = k.shape[0], k.shape[1]
    group = heads // kv_heads
    offset = n_k - n_q  # keys before the first query (a prefix): every query sees them
    grouped = q.unflatten(0, (kv_heads, group))
    block = _block_rows(n_q)
    # Above a block's diagonal: its top-left corner masks a shorter last block the same way.
    above = torch.ones(block, block, dtype=torch.bool, device=q.device).triu_(1)
    for start in range(0, n_q, block):
        end = min(n_q, start + block)
        rows, seen = end - start, offset + end
        # The block's queries, scaled (where SDPA's math kernel scales them too), as (kv heads, group * rows, dim):
        # the heads sharing a key head make one matrix against that head's keys.
        queries = torch.mul(grouped[:, :, start:end], scale).reshape(kv_heads, group * rows, dim)
        scores = torch.matmul(queries, k[:, :seen].mT)
        scores.view(kv_heads, group, rows, seen)[..., offset + start :].masked_fill_(above[:rows, :rows], float("-inf"))
        # Softmax accumulates in float32 for bf16/fp16 inputs; its output, in the input dtype, meets the values.
        probs = torch.softmax(scores, dim=-1)
        block_out = torch.matmul(probs, v[:, :seen]).view(heads, rows, dim)
        out[start:end] = block_out.transpose(0, 1)
