"""Length-sorted, token-budget batching: few padded tokens, bounded memory, results back in input order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .encoding import EncodedPair

__all__ = ["bucket_shape", "bucket_width", "plan_batches", "plan_pair_batches"]

# A query with at least this many pairs in one plan runs its prompt prefix once, through the KV cache.
MIN_SHARED_PREFIX = 2


def plan_batches(lengths: Sequence[int], token_budget: int, max_batch_size: int | None = None) -> list[list[int]]:
    """Group item indices into batches whose padded size (rows x longest row) stays within ``token_budget``.

    Items are taken longest first, so the first batch is the largest one (an out-of-memory error shows up at once)
    and each batch holds rows of similar length. An item longer than the budget gets a batch of its own.
    """
    if token_budget <= 0:
        raise ValueError(f"token_budget must be positive, got {token_budget}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        row = max(lengths[i], 1)
        if not current:
            current, longest = [i], row
            continue
        full = max_batch_size is not None and len(current) >= max_batch_size
        if full or (len(current) + 1) * longest > token_budget:
            batches.append(current)
            current, longest = [i], row
        else:
            current.append(i)
    if current:
        batches.append(current)
    return batches


def plan_pair_batches(
    encoded: Sequence[EncodedPair], token_budget: int, max_batch_size: int | None, *, reuse_prefix: bool
) -> list[tuple[list[int], bool]]:
    """Batches of indices into ``encoded``, each flagged whether its pairs share one prefix (run once, via its cache).

    With ``reuse_prefix``, the pairs of each query that has several form batches of their own, and only their
    documents' tokens count against the budget; the batches of one query follow each other.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    if reuse_prefix:
        for i, pair in enumerate(encoded):
            groups.setdefault(pair.prefix, []).append(i)
    shared = [members for members in groups.values() if len(members) >= MIN_SHARED_PREFIX]
    in_shared = {i for members in shared for i in members}
    plain = [i for i in range(len(encoded)) if i not in in_shared]
    plan: list[tuple[list[int], bool]] = []
    for members in shared:
        lengths = [len(encoded[i].rest) for i in members]
        plan += [([members[j] for j in batch], True) for batch in plan_batches(lengths, token_budget, max_batch_size)]
    if plain:
        lengths = [len(encoded[i]) for i in plain]
        plan += [([plain[j] for j in batch], False) for batch in plan_batches(lengths, token_budget, max_batch_size)]
    return plan


# Bucketed shapes, for a compiled model: every batch is padded up to one of a few (rows, width) shapes, so the model
# compiles once per bucket instead of once per batch. Widths step by powers of two and their midpoints (at most a
# third of a row is padding); rows go up in powers of two, never past what the token budget allows.
MIN_BUCKET_WIDTH = 16


def bucket_width(width: int) -> int:
    """The bucketed width of a batch whose longest row has ``width`` tokens: 16, 24, 32, 48, 64, 96, 128, ..."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    bucket = MIN_BUCKET_WIDTH
    while bucket < width:
        # 2^k -> 1.5 * 2^k -> 2^(k+1)
        bucket = bucket + bucket // 2 if bucket & (bucket - 1) == 0 else bucket + bucket // 3
    return bucket


def bucket_shape(rows: int, width: int, token_budget: int) -> tuple[int, int]:
    """(rows, width) a batch of ``rows`` rows up to ``width`` tokens long is padded to before a compiled forward.

    Padding rows and right-padded columns never change a real row's score (the model is causal and each row's head
    reads its own last real token), so only speed depends on the bucket.
    """
    if rows <= 0:
        raise ValueError(f"rows must be positive, got {rows}")
    width = bucket_width(width)
    bucket = 1 << (rows - 1).bit_length()
    # Never pad past the budget with empty rows: cap at what the budget holds at this width (one value per width).
    return max(rows, min(bucket, token_budget // width)), width
