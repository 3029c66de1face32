"""Block reuse (method.md, "block"): compute head (probe) and tail (corrector) blocks, replace a
contiguous middle span by ``in + R_span`` — ONE stored residual per span per branch rather than one
per block (a per-block cache costs a hidden-state tensor per block per branch).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["choose_span", "middle_span", "span_length"]


def span_length(num_blocks: int, head: int, tail: int, fraction: float) -> int:
    """Blocks in the reused span: ``round(fraction * L)`` clipped to ``[1, L − head − tail]``."""
    room = num_blocks - head - tail
    return max(1, min(room, round(fraction * num_blocks)))


def middle_span(num_blocks: int, head: int, tail: int, fraction: float) -> tuple[int, int]:
    """The span centred between the head and the tail blocks."""
    length = span_length(num_blocks, head, tail, fraction)
    room = num_blocks - head - tail
    start = head + (room - length) // 2
    return start, start + length


def choose_span(
    num_blocks: int,
    head: int,
    tail: int,
    fraction: float,
    block_change: Sequence[float | None] | None,
) -> tuple[int, int]:
    """The contiguous window of the span's length whose blocks changed least (``lowest_change``).

    ``block_change[i]`` is block i's relative residual change between its last two full
    computes; without a complete measurement the middle span is used. Ties keep the window
    nearest the middle.
    """
    middle = middle_span(num_blocks, head, tail, fraction)
    if block_change is None or any(c is None for c in block_change[head : num_blocks - tail]):
        return middle
    length = middle[1] - middle[0]
    best, best_key = middle, None
    for start in range(head, num_blocks - tail - length + 1):
        total = sum(block_change[i] or 0.0 for i in range(start, start + length))
        key = (total, abs(start - middle[0]))
        if best_key is None or key < best_key:
            best, best_key = (start, start + length), key
    return best
