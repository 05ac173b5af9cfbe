"""Length-sorted, token-budget batching: few padded tokens, bounded memory, results back in input order."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["plan_batches"]


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
