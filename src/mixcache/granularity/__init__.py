"""How each reuse is carried out (docs/method.md): each granularity owns its entries, signal,
saving and plan.

All three reuse kinds are the same operation on the block stack — blocks ``[a, b)`` are not run
and the hidden state entering block ``a`` gets a stored residual added — with a different span
and residual: step ``[probe, L)`` with R_b, cfg ``[0, L)`` with R_cond(t) − ΔR, block a middle span
with R_span. :class:`StepReuse`, :class:`CfgReuse` and :class:`BlockReuse` keep the entries and say
which span and which residual (a :class:`ReusePlan`); the controller runs it.
"""

from .base import Entry, Granularity, ReusePlan, extrapolate, to_cache
from .block import BlockReuse, choose_span, middle_span
from .cfg import CfgReuse, cfg_residual, cond_half_inputs, rebuild_batch, split_halves
from .step import StepReuse, oldest, step_span

__all__ = [
    "BlockReuse",
    "CfgReuse",
    "Entry",
    "Granularity",
    "ReusePlan",
    "StepReuse",
    "cfg_residual",
    "choose_span",
    "cond_half_inputs",
    "extrapolate",
    "middle_span",
    "oldest",
    "rebuild_batch",
    "split_halves",
    "step_span",
    "to_cache",
]
