"""Speed budget: price block compute so that a run spends what was asked (docs/method.md,
"Speed budget and scale-free decisions"). Pure functions, no tensors.

Budget mode turns the hybrid decision into one comparison per step. Every action has a *cost*
(the share of the step's block compute it runs: 1 for a full compute, 1/B for a cfg reuse with
B branches, the unskipped share for a block reuse, 0 or 1/L for a step reuse) and a predicted
*error* (``D^ψ·I^ψ·w(t)``, 0 for a full compute). The action with the lowest
``error + λ·cost`` wins. ``λ`` — the price of one step of compute, in units of error — is set
at every step from two things the run knows:

- how much compute is left: the number of steps is known before the first step, so the
  budget left after the mandatory final steps, divided by the free steps left, is the share
  ``ρ`` of the remaining steps that may still compute;
- the run's own recent error per step of reuse, ``ε``: the predicted error of the cheapest
  reuse divided by the age of its entry.

If reusing the cheapest granularity ``g`` (cost ``c``) adds about ``ε`` of error per step of
age, computing once every ``1/q`` steps with ``q = (ρ − c)/(1 − c)`` spends exactly ``ρ``; the
streak stops at the age ``a`` where ``a·ε`` passes ``(1/q − 1/2)·ε`` (the half centres the
threshold between two whole streak lengths). Solving for the price gives
``λ = ε·(1/q − 1/2)/(1 − c)``. Because ``λ`` is recomputed from the budget *left* at every
step, a run that spent more than planned early (fast-changing prompts, a late trigger) reuses
more later and vice versa: the plan is made from the step count and corrected by the signals.
Nothing here is in units of a model's raw change — both ``ε`` and the errors it is compared with
come from the same run.

The price steers; :func:`keep_reachable` guarantees. An action after which the budget can no
longer be met — the free steps left could not spend what is left even by computing every one
of them, or what is left is already below what the cheapest reuse of each of them costs — by
more than ``BUDGET_TOLERANCE`` of the run's compute is replaced by the action of lowest
objective that keeps it reachable (near the end of a run, a streak the price allowed can
otherwise overshoot by a whole step).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BUDGET_TOLERANCE", "Budget", "choose_priced", "compute_price", "keep_reachable"]

#: Share of a run's planned compute by which :func:`keep_reachable` lets the plan drift before it
#: overrides the price (well inside the ±5 % the budget promises).
BUDGET_TOLERANCE = 0.02


@dataclass(frozen=True)
class Budget:
    """Where a run stands against its compute budget at one step.

    Compute is counted in units of one step's full block compute (every branch, every block).

    Attributes:
        step: current step index (0-based).
        num_steps: steps of the run (known before the first step in every diffusers pipeline;
            ``None`` paces the run to ``1/s`` of the steps seen so far).
        block_speedup: requested speedup ``s``: the run may spend ``num_steps / s``.
        spent: compute spent on the steps before ``step``.
        final_steps: trailing steps that always compute (reserved in the plan).
        reserved: other future steps that must compute (Wan2.2: the second expert's first
            steps), reserved in the plan too.
    """

    step: int
    num_steps: int | None
    block_speedup: float
    spent: float
    final_steps: int = 0
    reserved: int = 0

    @property
    def total(self) -> float:
        """Compute the whole run may spend (unknown length: what the steps so far may spend)."""
        steps = self.num_steps if self.num_steps is not None else self.step + 1
        return steps / self.block_speedup

    @property
    def free_steps(self) -> int:
        """Steps from this one up to the mandatory final steps (this one included).

        With an unknown number of steps the run is paced step by step: one free step.
        """
        if self.num_steps is None:
            return 1
        return max(0, self.num_steps - self.final_steps - self.reserved - self.step)

    @property
    def free_budget(self) -> float:
        """Compute left for the free steps once the final steps are reserved."""
        if self.num_steps is None:
            return self.total - self.spent
        reserved = min(self.final_steps + self.reserved, self.num_steps - self.step)
        return self.total - self.spent - reserved

    @property
    def rate(self) -> float:
        """Share of a full compute the remaining free steps may spend on average (``ρ``)."""
        if self.free_steps == 0:
            return 1.0
        return self.free_budget / self.free_steps


def compute_price(budget: Budget, error_per_step: float, reuse_cost: float) -> float:
    """``λ``: the error a full compute must save to be worth its cost at this step.

    Args:
        budget: where the run stands.
        error_per_step: ``ε``, predicted error of the cheapest reuse divided by its entry's age.
        reuse_cost: cost ``c`` of that cheapest reuse (0 for a step reuse without probe).

    Returns ``0.0`` when the budget allows computing every remaining step, ``math.inf`` when it
    is used up (reuse whatever can be reused), else ``ε·(1/q − 1/2)/(1 − c)``.
    """
    rho = budget.rate
    c = min(max(reuse_cost, 0.0), 1.0)
    if c >= 1.0:
        return 0.0
    q = (rho - c) / (1.0 - c)
    if q >= 1.0:
        return 0.0
    if q <= 0.0:
        return math.inf
    eps = max(error_per_step, 0.0)
    return eps * (1.0 / q - 0.5) / (1.0 - c)


def choose_priced(
    errors: Mapping[str, float], costs: Mapping[str, float], price: float
) -> tuple[str, dict[str, float]]:
    """The action with the lowest ``error + price·cost`` ("compute": error 0, cost 1).

    Returns the action and every candidate's objective (``inf`` price: the cheapest reuse wins,
    ties broken by error, and the objectives are the costs). Ties prefer compute, then the
    order of ``errors``.
    """
    if math.isinf(price):
        if not errors:
            return "compute", {"compute": math.inf}
        best = min(errors, key=lambda g: (costs[g], errors[g]))
        return best, {g: costs[g] for g in errors} | {"compute": 1.0}
    objective = {"compute": price}
    for g, e in errors.items():
        objective[g] = e + price * costs[g]
    best = "compute"
    for g in errors:
        if objective[g] < objective[best]:
            best = g
    return best, objective


def keep_reachable(
    budget: Budget,
    best: str,
    objective: Mapping[str, float],
    costs: Mapping[str, float],
    tolerance: float = BUDGET_TOLERANCE,
) -> tuple[str, float]:
    """``best``, or the action of lowest objective that keeps the budget reachable.

    After an action of cost ``c`` the free steps after this one must spend ``B' = B − c``
    (``B``: the free budget). They can spend between ``c_min`` (the cheapest action now) and 1
    each, so ``B'`` must lie in ``[c_min·(f − 1) − slack, (f − 1) + slack]`` with ``f`` free steps
    and ``slack = tolerance × total``. Returns the action and by how much (in steps of compute)
    ``best`` would have missed that range (0.0: ``best`` is kept). When no action is in range,
    the one that misses least wins. With an unknown number of steps nothing is overridden.
    """
    f = budget.free_steps
    if budget.num_steps is None or f == 0:
        return best, 0.0
    all_costs = {"compute": 1.0, **costs}
    left = budget.free_budget
    slack = tolerance * budget.total
    lo = min(all_costs.values()) * (f - 1) - slack
    hi = (f - 1) + slack

    def miss(action: str) -> float:
        after = left - all_costs[action]
        return max(lo - after, after - hi, 0.0)

    if miss(best) == 0.0:
        return best, 0.0
    choice = min(all_costs, key=lambda a: (miss(a), objective.get(a, math.inf)))
    return (best, 0.0) if choice == best else (choice, miss(best))
