"""How each reuse is carried out (docs/method.md): each granularity owns its entries, signal,
saving and plan.

All three reuse kinds are the same operation on the block stack — blocks ``[a, b)`` are not run
and the hidden state entering block ``a`` gets a stored residual added — with a different span
and residual: step ``[probe, L)`` with R_b, cfg ``[0, L)`` with R_cond(t) − ΔR, block a middle span
with R_span. :class:`StepReuse`, :class:`CfgReuse` and :class:`BlockReuse` keep the entries and say
which span and which residual (a :class:`ReusePlan`); the controller runs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Entry, Granularity, ReusePlan, extrapolate, span_share, to_cache
from .block import BlockReuse, choose_span, middle_span
from .cfg import CfgReuse, cfg_residual, cfg_saving, cond_half_inputs, rebuild_batch, split_halves
from .step import StepReuse, oldest, step_span

if TYPE_CHECKING:
    from ..config import MixCacheConfig

__all__ = [
    "BlockReuse",
    "CfgReuse",
    "Entry",
    "Granularity",
    "ReusePlan",
    "StepReuse",
    "cfg_residual",
    "cfg_saving",
    "choose_span",
    "cond_half_inputs",
    "extrapolate",
    "middle_span",
    "oldest",
    "rebuild_batch",
    "reuse_costs",
    "span_share",
    "split_halves",
    "step_span",
    "to_cache",
]


def reuse_costs(config: MixCacheConfig, num_blocks: int, n_branches: int) -> dict[str, float]:
    """What a reuse of each granularity of ``config`` still runs, as a share of a full step
    (``1 - saving``, the planner's price), on a model of ``num_blocks`` blocks with
    ``n_branches`` CFG branches, before a run: the same arithmetic as the granularities'
    ``saving()`` (cfg only with two branches or more; block only where the head and tail leave
    a span).
    """
    costs = {}
    if "step" in config.granularities:
        costs["step"] = 1.0 - span_share(step_span(num_blocks, config.step_probe), num_blocks)
    if "cfg" in config.granularities and n_branches > 1:
        costs["cfg"] = 1.0 - cfg_saving(n_branches)
    if "block" in config.granularities and config.head_blocks + config.tail_blocks < num_blocks:
        span = middle_span(num_blocks, config.head_blocks, config.tail_blocks, config.span_fraction)
        costs["block"] = 1.0 - span_share(span, num_blocks)
    return costs
