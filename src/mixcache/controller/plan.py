"""The per-forward plan: what one transformer forward does, set at its start, read by the hooks."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..granularity import Entry

__all__ = ["DEFAULT_BRANCH", "ForwardPlan"]

DEFAULT_BRANCH = "default"


@dataclass
class ForwardPlan:
    """One forward's plan and the tensors it captures on the way (replaced at every forward).

    Attributes:
        branch: the cache-context name (or ``"default"``, ``"default#2"``, ...).
        action: ``"compute"``, ``"step"``, ``"cfg"`` or ``"block"`` as executed.
        reason: why (the decision's reason, or why the branch computes instead).
        is_reference: the first branch of the step, which takes the step's decision.
        decide_at_probe: the decision waits for block 0's residual (first-block probe).
        skip: blocks ``[a, b)`` not run; ``(L, L)`` runs every block.
        residual: added to the hidden state entering block ``a``.
        fresh: ``residual`` was built for this forward (an extrapolation), so the hidden state
            is added into it in place; a stored entry is never written.
        capture: a full compute that refreshes entries on its way through the stack.
        writes: the full compute writes step and block entries (not on a cfg step's reference).
        half: batched CFG: this forward runs the cond half of the batch only.
        h0, h1: hidden state entering block 0 and leaving block 0 (captures).
        h0_owned: ``h0`` is a copy in a buffer taken from the cache (the step entry the store
            will discard), not the model's tensor: the step residual is written into it.
        span_in: hidden (and encoder) state entering the block span (capture).
        span_owned: ``span_in``'s hidden state is a copy in a cache buffer (as ``h0_owned``).
        block_in: hidden state entering the running block, for its sketch (lowest_change).
        computed: blocks run so far.
        scores: the decision's scores, for the record.
    """

    skip: tuple[int, int]
    branch: str = DEFAULT_BRANCH
    action: str = "compute"
    reason: str = ""
    is_reference: bool = False
    decide_at_probe: bool = False
    residual: Entry | torch.Tensor | None = None
    fresh: bool = False
    capture: bool = False
    writes: bool = True
    half: bool = False
    h0: torch.Tensor | None = None
    h1: torch.Tensor | None = None
    h0_owned: bool = False
    span_in: tuple[torch.Tensor, torch.Tensor | None] | None = None
    span_owned: bool = False
    block_in: torch.Tensor | None = None
    computed: int = 0
    scores: dict[str, float] = field(default_factory=dict)
