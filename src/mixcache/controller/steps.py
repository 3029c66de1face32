"""Step and branch bookkeeping of one generation (docs/method.md, "Run boundaries")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..policy.decision import StepDecision

__all__ = ["Located", "StepTracker"]


@dataclass(frozen=True)
class Located:
    """Where a forward falls: its branch, its step, and whether it starts a step or a generation."""

    branch: str
    step: int
    new_step: bool
    new_generation: bool


@dataclass
class StepTracker:
    """The current step, the branches seen, and which branch is the step's reference.

    ``reference`` is the first branch of the step (it takes the step's decision, ``decision``);
    ``reference_fresh`` says it ran every block at this step. ``batched``: the one branch of
    each step is a batched-CFG forward whose two halves are the two CFG branches.
    """

    step: int = -1
    timestep: float | None = None
    num_steps: int | None = None
    window: tuple[int, int] | None = None  # steps this transformer runs (None: all)
    branches: list[str] = field(default_factory=list)
    step_branches: set[str] = field(default_factory=set)
    reference: str | None = None
    reference_fresh: bool = False
    decision: StepDecision | None = None
    batched: bool = False
    last_full_step: int | None = None

    @property
    def n_branches(self) -> int:
        """CFG passes per step: the cache contexts seen, or the two halves of a batched one."""
        return 2 if self.batched else len(self.branches)

    def others(self) -> list[str]:
        """The branches other than the reference, in order of appearance."""
        return [b for b in self.branches if b != self.reference]

    def locate(
        self,
        branch: str,
        context: Any,
        step_index: int | None,
        timestep: Callable[[], float | None],
    ) -> Located:
        """Place a forward of ``branch`` (``step_index`` from the context or the scheduler).

        Outside any cache context (``context is None``) every call is branch ``"default"``, except
        that further calls at the same step get their own cache slot (``"default#2"``, ...):
        pipelines that run CFG without cache contexts (``WanVideoToVideoPipeline``,
        HunyuanVideo image-to-video) would otherwise mix the residuals of their two passes.
        Nothing is inferred from the order (no cond/uncond semantics). Without a step index the
        timestep tells steps apart (read only then: it may cost a host sync); a timestep that
        goes up, or a named branch repeated at the first step, starts a new generation.
        """
        if step_index is not None:
            repeat = step_index == self.step and branch in self.step_branches
            if repeat and context is None:
                branch, repeat = self._extra_slot(branch), False
            new_gen = self.step >= 0 and (step_index < self.step or repeat)
            return Located(branch, step_index, step_index != self.step, new_gen)
        t = timestep()
        new_gen = False
        new_step = self.timestep is None or t != self.timestep
        if self.timestep is not None and t is not None and t > self.timestep:
            new_gen = True
        elif not new_step and branch in self.step_branches:
            if context is None:
                branch = self._extra_slot(branch)
            else:
                # Same timestep, same named branch again: a new generation if still at the
                # first step (restart after an interruption), else a repeated timestep.
                new_gen = self.step == 0
                new_step = True
        index = self.step + 1 if new_step else self.step
        self.timestep = t
        return Located(branch, 0 if new_gen else index, new_step, new_gen)

    def _extra_slot(self, branch: str) -> str:
        n = 2
        while f"{branch}#{n}" in self.step_branches:
            n += 1
        return f"{branch}#{n}"

    def enter(self, where: Located) -> None:
        """Record the forward ``where`` describes (after a new generation has been started)."""
        if where.new_step or where.new_generation:
            self.step = where.step
            self.step_branches = set()
            self.reference = None
            self.reference_fresh = False
            self.decision = None
        self.step_branches.add(where.branch)
        if where.branch not in self.branches:
            self.branches.append(where.branch)
