"""Block reuse (docs/method.md, block): compute head (probe) and tail (corrector) blocks, replace a
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
    current: tuple[int, int] | None = None,
    margin: float = 0.0,
) -> tuple[int, int]:
    """The contiguous window of the span's length whose blocks changed least (``lowest_change``).

    ``block_change[i]`` is block i's relative residual change between its last two full
    computes; without a complete measurement the middle span is used. Ties keep the window
    nearest the middle. With ``current``, the span only moves when the best window's change is
    below ``(1 - margin)`` times the current one's (hysteresis: every move invalidates the stored
    span residuals, so noise must not make the span jump back and forth).
    """
    middle = middle_span(num_blocks, head, tail, fraction)
    if block_change is None or any(c is None for c in block_change[head : num_blocks - tail]):
        return current or middle
    length = middle[1] - middle[0]

    def total(start: int) -> float:
        return sum(block_change[i] or 0.0 for i in range(start, start + length))

    best, best_key = middle, None
    for start in range(head, num_blocks - tail - length + 1):
        key = (total(start), abs(start - middle[0]))
        if best_key is None or key < best_key:
            best, best_key = (start, start + length), key
    keep = (
        current is not None
        and current[1] - current[0] == length
        and current != best
        and not total(best[0]) < (1.0 - margin) * total(current[0])
    )
    return current if keep and current is not None else best
