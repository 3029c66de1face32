"""Step reuse (docs/method.md, "step"): skip the block stack, hL := h_start + R_b.

With the first-block probe, block 0 always runs and R_b covers blocks 1..L-1 (R_b = hL − h1 at
the last full compute of branch b); without a probe R_b = hL − h0 and no block runs. Patch
embedding, timestep modulation and the output head still run fresh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Entry, Granularity, ReusePlan, span_share

__all__ = ["StepReuse", "oldest", "step_span"]


def step_span(num_blocks: int, step_probe: str) -> tuple[int, int]:
    """Blocks skipped by a step reuse."""
    return (1 if step_probe == "first_block" else 0), num_blocks


def oldest(entries: Sequence[Entry | None]) -> int | None:
    """Step of the oldest entry; None if any is missing (or there are none)."""
    if not entries or any(e is None for e in entries):
        return None
    return min(e.step for e in entries if e is not None)


class StepReuse(Granularity):
    """Entries R_b per branch (slot ``"step"``; ``"step_prev"`` with ``residual_order=1``).

    Its signal is the accumulated step change since the entry was made, which the step probe
    measures (``step_signal(made)``: the first block's residual change, or EasyCache's
    input-change prediction).
    """

    name = "step"

    def __init__(
        self,
        pending: Any,
        cache_dtype: torch.dtype | None,
        num_blocks: int,
        step_probe: str,
        residual_order: int,
        step_signal: Callable[[int], float | None],
        on_drift: Callable[[str, float], None] | None = None,
    ) -> None:
        super().__init__(pending, cache_dtype, on_drift, residual_order)
        self.span = step_span(num_blocks, step_probe)
        self._num_blocks = num_blocks
        self._step_signal = step_signal

    def entry(self, branch: str) -> Entry | None:
        return self.get(branch, "step")

    def oldest(self, branches: Sequence[str]) -> int | None:
        return oldest([self.entry(b) for b in branches])

    def signal(self, made: int | None, step: int) -> float | None:
        return None if made is None else self._step_signal(made)

    def saving(self, n_branches: int) -> float:
        return span_share(self.span, self._num_blocks)

    def plan(self, branch: str, step: int) -> ReusePlan | None:
        residual = self._at(branch, "step", step)
        if residual is None:
            return None
        return ReusePlan(self.span, residual, fresh=residual is not self.entry(branch))

    def store(self, branch: str, step: int, residual: torch.Tensor, track: bool) -> Entry:
        """A full compute of ``branch``: R_b := ``residual`` (hL − h_start)."""
        return self._store_line(branch, "step", residual, step, track)
