"""How each reuse is carried out: residual bookkeeping per granularity (docs/method.md).

All three reuse kinds are the same operation on the block stack — blocks ``[a, b)`` are not run
and the hidden state entering block ``a`` gets a stored residual added — with a different span
and residual: step ``[probe, L)`` with R_b, cfg ``[0, L)`` with R_cond(t) − ΔR, block a middle span
with R_span. The controller executes that; these modules say which span and which residual.
"""

from .base import Entry, to_cache
from .block import choose_span, middle_span
from .cfg import cfg_residual, cond_half_inputs, rebuild_batch, split_halves
from .step import step_span

__all__ = [
    "Entry",
    "cfg_residual",
    "choose_span",
    "cond_half_inputs",
    "middle_span",
    "rebuild_batch",
    "split_halves",
    "step_span",
    "to_cache",
]
