"""Step reuse (docs/method.md, "step"): skip the block stack, hL := h_start + R_b.

With the first-block probe, block 0 always runs and R_b covers blocks 1..L-1 (R_b = hL − h1 at
the last full compute of branch b); without a probe R_b = hL − h0 and no block runs. Patch
embedding, timestep modulation and the output head still run fresh.
"""

from __future__ import annotations

__all__ = ["step_span"]


def step_span(num_blocks: int, step_probe: str) -> tuple[int, int]:
    """Blocks skipped by a step reuse."""
    return (1 if step_probe == "first_block" else 0), num_blocks
