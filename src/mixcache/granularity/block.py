"""Block reuse (docs/method.md, block): compute head (probe) and tail (corrector) blocks, replace a
contiguous middle span by ``in + R_span`` — ONE stored residual per span per branch rather than one
per block (a per-block cache costs a hidden-state tensor per block per branch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..policy.signals import rel_l1_sums
from .base import Entry, Granularity, ReusePlan, span_share, to_cache
from .step import oldest

__all__ = ["BlockReuse", "choose_span", "middle_span", "span_length"]


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


class BlockReuse(Granularity):
    """One residual R_span per branch (slot ``"span"``) for the current span, and the span itself.

    With ``residual_order=1`` it also keeps the one before on the same span (``"span_prev"``)
    and a reuse extrapolates the span residual linearly from the two, as the step granularity
    does with the stack's.

    With ``block_span="lowest_change"`` it keeps a sketch (a few tokens) of every block's residual
    at the reference's full computes; the change of each block's sketch picks the next span
    (:func:`choose_span`), which takes effect at the next full compute of every branch (so no
    step is left without a valid entry).
    """

    name = "block"

    def __init__(
        self,
        pending: Any,
        cache_dtype: torch.dtype | None,
        num_blocks: int,
        head: int,
        tail: int,
        fraction: float,
        switch_margin: float,
        on_drift: Callable[[str, float], None] | None = None,
        residual_order: int = 0,
    ) -> None:
        super().__init__(pending, cache_dtype, on_drift, residual_order)
        self._num_blocks = num_blocks
        self._shape = (head, tail, fraction, switch_margin)
        self._middle = middle_span(num_blocks, head, tail, fraction)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.span: tuple[int, int] = self._middle
        self.next_span: tuple[int, int] | None = None
        self.block_change: list[float | None] = [None] * self._num_blocks

    def release(self) -> None:
        super().release()
        self.sketches: dict[int, torch.Tensor] = {}

    def entry(self, branch: str) -> Entry | None:
        return self.get(branch, "span")

    def oldest(self, branches: Sequence[str]) -> int | None:
        return oldest([self.entry(b) for b in branches])

    def span_ok(self, branches: Sequence[str]) -> bool:
        """Every branch's entry (where there is one) covers the current span."""
        entries = [self.entry(b) for b in branches]
        return all(e is None or e.span == self.span for e in entries)

    def saving(self, n_branches: int) -> float:
        return span_share(self.span, self._num_blocks)

    def plan(self, branch: str, step: int) -> ReusePlan | None:
        entry = self.entry(branch)
        if entry is None:
            return None
        residual = self._at(branch, "span", step)
        # An extrapolated line (an Entry when it carries an encoder part) is built for this reuse.
        fresh = residual is not entry and (
            not isinstance(residual, Entry) or residual.hidden is not entry.hidden
        )
        return ReusePlan(entry.span, residual, fresh=fresh)

    def tensors(self) -> list[torch.Tensor]:
        return list(self.sketches.values())

    def move_span(self) -> None:
        """A full compute of every branch: the span chosen since the last one takes effect."""
        if self.next_span is not None:
            self.span, self.next_span = self.next_span, None

    def store(
        self,
        branch: str,
        step: int,
        residual: torch.Tensor,
        encoder: torch.Tensor | None,
        track: bool,
    ) -> Entry:
        """A full compute of ``branch``: R_span := span output − span input (and its encoder
        part); the drift is tracked only against an entry of the same span."""
        old = self.entry(branch)
        same = old is not None and old.span == self.span
        # Only a residual of the same span extrapolates: a moved span starts a new line.
        new = self._store_line(
            branch, "span", residual, step, track and same, keep_prev=same, span=self.span
        )
        if encoder is not None:
            new.encoder = to_cache(encoder, self._dtype)
        return new

    def sketch(self, index: int, view: torch.Tensor) -> None:
        """Keep a compact copy of block ``index``'s sampled residual tokens; queue its change."""
        sketch = view.to(self._dtype or view.dtype, copy=True)
        prev = self.sketches.get(index)
        if prev is not None and prev.shape == sketch.shape:
            self._pending.add(
                rel_l1_sums(sketch, prev), lambda v, i=index: self._on_block_change(i, v)
            )
        self.sketches[index] = sketch

    def _on_block_change(self, index: int, value: float) -> None:
        self.block_change[index] = value
        head, tail, fraction, margin = self._shape
        span = choose_span(
            self._num_blocks,
            head,
            tail,
            fraction,
            self.block_change,
            current=self.span,
            margin=margin,
        )
        self.next_span = span if span != self.span else None
