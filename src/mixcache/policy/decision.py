"""Adaptive hybrid cache decision and joint-scheduling rules (docs/method.md, "Step 2", "Step 4").

Once per step, at the first branch of the step (the *reference*, normally "cond"):

1. the trigger says whether caching may be used at all (:mod:`.trigger`);
2. the interval caps the number of reused steps in a row (:mod:`.interval`);
3. every granularity ψ that the joint-scheduling table allows gets the score
   P^ψ = D^ψ · I^ψ, multiplied by ``repeat_penalty`` (×5) if ψ was the granularity of the previous
   cached step (consecutive reuse of one kind compounds error);
4. the smallest P wins, unless it exceeds ``refresh_threshold``: then compute fully.

Later branches of the same step follow that decision, each checked against the same table (a
branch whose entry is missing or too old computes instead). Everything here is pure: small
frozen values in, a decision with a reason out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from ..config import MixCacheConfig
from ..profiles import GRANULARITIES
from .budget import Budget, choose_priced, compute_price, keep_reachable
from .interval import update_interval
from .trigger import TriggerResult, TriggerState, check_trigger

__all__ = [
    "RULES",
    "PolicyState",
    "Rule",
    "Situation",
    "StepDecision",
    "StepInputs",
    "blocked_reasons",
    "decide_step",
    "follow_decision",
    "hybrid_scores",
]

ACTIONS: tuple[str, ...] = ("compute", *GRANULARITIES)


@dataclass(frozen=True)
class Situation:
    """What the joint-scheduling rules look at for one branch of one step.

    Attributes:
        step: current step index.
        enabled: granularities allowed by the config.
        n_branches: distinct branches (cache-context names) seen in this generation so far.
        is_reference: this forward is the first branch of the step (where the decision is made).
        reference_fresh: the reference branch of this step was fully computed.
        entry_step: per ψ, the step this branch's cache entry for ψ was computed at (None: none).
        max_age: the config's ``max_age``.
        span_ok: the block entry covers the span currently chosen.
        signal: per ψ, D^ψ (None: not measurable yet); only consulted at the reference.
    """

    step: int
    enabled: tuple[str, ...] = GRANULARITIES
    n_branches: int = 1
    is_reference: bool = True
    reference_fresh: bool = False
    entry_step: Mapping[str, int | None] = field(default_factory=dict)
    max_age: int | None = None
    span_ok: bool = True
    signal: Mapping[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    """One row of the joint-scheduling table.

    ``forbids(ψ, situation)`` is True when the rule excludes ψ; rows without a predicate are
    structural (enforced by how the controller executes a decision) and are tested there.
    ``price_only``: the rule serves the step-by-step price only (a plan made from measured
    errors needs no runtime signal).
    """

    name: str
    text: str
    forbids: Callable[[str, Situation], bool] | None = None
    price_only: bool = False


def _age_exceeded(g: str, s: Situation) -> bool:
    made = s.entry_step.get(g)
    return made is not None and s.max_age is not None and s.step - made > s.max_age


#: THE joint-scheduling table (docs/method.md, "Joint scheduling"). One test per row in
#: tests/core/test_policy.py.
RULES: tuple[Rule, ...] = (
    Rule(
        "one_granularity_per_forward",
        "a forward takes exactly one action: compute, step, cfg or block (never two at once)",
    ),
    Rule(
        "decision_once_per_step",
        "the decision is made once per step at its first branch; later branches and every batch "
        "item follow it (same decision on every rank)",
    ),
    Rule(
        "disabled",
        "a granularity not listed in config.granularities is never used",
        lambda g, s: g not in s.enabled,
    ),
    Rule(
        "cfg_needs_uncond_branch",
        "cfg reuse needs a second branch: impossible without CFG (one cache context per step)",
        lambda g, s: g == "cfg" and s.n_branches < 2,
    ),
    Rule(
        "cfg_needs_fresh_cond",
        "cfg reuse needs the reference (cond) output of the same step, fully computed",
        lambda g, s: g == "cfg" and not s.is_reference and not s.reference_fresh,
    ),
    Rule(
        "entry_missing",
        "a granularity whose cache entry does not exist for this branch cannot be reused",
        lambda g, s: s.entry_step.get(g) is None,
    ),
    Rule(
        "entry_too_old",
        "every entry carries the step it was computed at; older than max_age steps: not reused",
        _age_exceeded,
    ),
    Rule(
        "span_changed",
        "a block entry is only valid for the span it was measured on",
        lambda g, s: g == "block" and not s.span_ok,
    ),
    Rule(
        "signal_unknown",
        "the decision needs D^ψ: a granularity without a measured signal is not a candidate",
        lambda g, s: s.is_reference and s.signal.get(g) is None,
        price_only=True,
    ),
    Rule(
        "reuse_writes_no_entry",
        "only a full compute writes cache entries: a step reuse makes the block entries of that "
        "step stale (none are written; ages keep counting from the last full compute)",
    ),
    Rule(
        "entries_share_a_step",
        "step and block entries are written only at steps where every branch computes fully (not "
        "by the cond branch of a cfg step), so all branches reuse residuals of the same step: "
        "their errors stay correlated and largely cancel in g*cond - (g-1)*uncond",
    ),
    Rule(
        "interval_shared",
        "every reused step, whatever its granularity, counts against the one cache interval",
    ),
)


def blocked_reasons(situation: Situation, planned: bool = False) -> dict[str, str]:
    """For each ψ excluded by the table, the name of the first rule that excludes it
    (``planned``: for a measured plan, without the price-only rules)."""
    out: dict[str, str] = {}
    for g in GRANULARITIES:
        for rule in RULES:
            if planned and rule.price_only:
                continue
            if rule.forbids is not None and rule.forbids(g, situation):
                out[g] = rule.name
                break
    return out


@dataclass(frozen=True)
class PolicyState:
    """Decision state carried from step to step within one generation (reset per generation)."""

    interval: int
    triggered: bool = False
    trigger_reason: str | None = None
    trigger_step: int | None = None
    reused_in_a_row: int = 0
    last_cached: str | None = None
    peak_change: float | None = None
    rate_sum: float = 0.0
    rate_count: int = 0

    @classmethod
    def initial(cls, config: MixCacheConfig) -> PolicyState:
        # Budget mode: the interval only caps the reuse streak (the price paces the run).
        budget = config.block_speedup is not None
        return cls(interval=config.interval_max if budget else config.interval_init)


@dataclass(frozen=True)
class StepInputs:
    """Everything measured before the decision of one step."""

    step: int
    num_steps: int | None
    probe_change: float | None
    situation: Situation
    impact: Mapping[str, float]
    savings: Mapping[str, float] = field(default_factory=dict)
    time_weight: float = 1.0
    budget: Budget | None = None


@dataclass(frozen=True)
class StepDecision:
    """The action of a step with its reason and the scores it was based on."""

    action: str
    reason: str
    scores: Mapping[str, float] = field(default_factory=dict)
    blocked: Mapping[str, str] = field(default_factory=dict)


def hybrid_scores(
    signal: Mapping[str, float | None],
    impact: Mapping[str, float],
    candidates: tuple[str, ...],
    last_cached: str | None,
    repeat_penalty: float,
) -> dict[str, float]:
    """P^ψ = D^ψ · I^ψ, × ``repeat_penalty`` for the previous cached step's granularity."""
    scores: dict[str, float] = {}
    for g in candidates:
        d = signal.get(g)
        if d is None:  # the signal_unknown rule excludes these; keep the function total
            continue
        p = d * impact[g]
        if g == last_cached:
            p *= repeat_penalty
        scores[g] = p
    return scores


def decide_step(
    inputs: StepInputs, state: PolicyState, config: MixCacheConfig
) -> tuple[StepDecision, PolicyState]:
    """Decide the action of one step (at its reference branch). Pure."""
    if inputs.budget is not None:
        return _decide_budgeted(inputs, state, config, inputs.budget)
    trig = check_trigger(
        inputs.step, inputs.num_steps, inputs.probe_change, state.triggered, config
    )
    if trig.fired:
        state = replace(state, triggered=True, trigger_reason=trig.reason, trigger_step=inputs.step)
    if not trig.may_cache:
        return StepDecision("compute", trig.reason), replace(state, reused_in_a_row=0)
    blocked = blocked_reasons(inputs.situation)
    if state.reused_in_a_row >= state.interval:
        reason = f"interval used up ({state.reused_in_a_row} reused in a row, N={state.interval})"
        return StepDecision("compute", reason, blocked=blocked), replace(state, reused_in_a_row=0)
    candidates = _candidates(inputs, blocked)
    if not candidates:
        return _no_candidate(blocked, state, config)
    scores = hybrid_scores(
        inputs.situation.signal, inputs.impact, candidates, state.last_cached, config.repeat_penalty
    )
    if inputs.time_weight != 1.0:
        # [ours] calibrated: an error made late in the run has less denoising left to fix it.
        scores = {g: p * inputs.time_weight for g, p in scores.items()}
    if config.score == "per_saving":
        # [ours] error per unit of compute saved: a granularity that skips more blocks may
        # cost proportionally more error (the paper's P ignores the saving).
        scores = {g: p / max(inputs.savings.get(g, 1.0), 1e-6) for g, p in scores.items()}
    best = min(candidates, key=lambda g: (scores[g], GRANULARITIES.index(g)))
    if scores[best] > config.refresh_threshold:
        reason = f"refresh: best P[{best}]={scores[best]:.3g} > {config.refresh_threshold:g}"
        return StepDecision("compute", reason, scores, blocked), replace(state, reused_in_a_row=0)
    reason = f"P[{best}]={scores[best]:.3g} lowest" + (f" ({trig.reason})" if trig.fired else "")
    new_state = replace(state, reused_in_a_row=state.reused_in_a_row + 1, last_cached=best)
    return StepDecision(best, reason, scores, blocked), new_state


def _candidates(inputs: StepInputs, blocked: Mapping[str, str]) -> tuple[str, ...]:
    """Granularities the table allows at this step and whose signal D^ψ is measured."""
    signal = inputs.situation.signal
    return tuple(g for g in GRANULARITIES if g not in blocked and signal.get(g) is not None)


def _no_candidate(
    blocked: Mapping[str, str], state: PolicyState, config: MixCacheConfig
) -> tuple[StepDecision, PolicyState]:
    why = ", ".join(f"{g}: {r}" for g, r in blocked.items() if g in config.granularities)
    return (
        StepDecision("compute", f"no candidate ({why})", blocked=blocked),
        replace(state, reused_in_a_row=0),
    )


def _reuse_errors(
    inputs: StepInputs, candidates: tuple[str, ...], state: PolicyState, config: MixCacheConfig
) -> dict[str, float]:
    """Predicted error of each candidate reuse: D^ψ·I^ψ·w(t) (× the repeat penalty)."""
    errors = hybrid_scores(
        inputs.situation.signal, inputs.impact, candidates, state.last_cached, config.repeat_penalty
    )
    return {g: p * inputs.time_weight for g, p in errors.items()}


def _decide_budgeted(
    inputs: StepInputs, state: PolicyState, config: MixCacheConfig, budget: Budget
) -> tuple[StepDecision, PolicyState]:
    """Budget mode (:mod:`.budget`): the lowest ``error + λ·cost`` wins. Pure."""
    s = budget.block_speedup
    if inputs.probe_change is not None:
        peak = max(state.peak_change or 0.0, inputs.probe_change)
        state = replace(state, peak_change=peak)
    trig = check_trigger(inputs.step, inputs.num_steps, None, state.triggered, config)
    if trig.waiting:  # warm-up and final steps compute whatever the budget says
        trig = _budget_trigger(inputs, state, config, budget)
    if trig.fired:
        state = replace(state, triggered=True, trigger_reason=trig.reason, trigger_step=inputs.step)
    if not trig.may_cache:
        return StepDecision("compute", trig.reason), replace(state, reused_in_a_row=0)
    blocked = blocked_reasons(inputs.situation)
    candidates = _candidates(inputs, blocked)
    if not candidates:
        return _no_candidate(blocked, state, config)
    errors = _reuse_errors(inputs, candidates, state, config)
    costs = {g: 1.0 - inputs.savings.get(g, 1.0) for g in candidates}
    # The pacer is the reuse that saves the most: its error per step of entry age is
    # the run's own unit of error (scale-free), see policy/budget.py.
    pacer = min(candidates, key=lambda g: (costs[g], errors[g], GRANULARITIES.index(g)))
    made = inputs.situation.entry_step.get(pacer)
    age = max(1, inputs.step - made) if made is not None else 1
    rate = errors[pacer] / age
    if config.pace == "signal":
        # The run's mean error per step (pace="signal"): against a run-level unit, a step whose
        # error grows faster than usual ends its streak sooner. Against the streak's own rate
        # ("cadence") the rate cancels out of e < lambda*(1-c) and only the budget sets the
        # streak length.
        state = replace(state, rate_sum=state.rate_sum + rate, rate_count=state.rate_count + 1)
        rate = state.rate_sum / state.rate_count
    price = compute_price(budget, rate, costs[pacer])
    # The streak cap guards quality while the budget can afford it: once the budget needs
    # streaks longer than the cap (it allows less than one compute every N + 1 steps), or has
    # less than one whole compute left, a compute would break the budget, so the cap yields.
    affordable = (
        budget.free_budget >= 1.0
        and budget.rate >= 1.0 / (state.interval + 1)
        and not math.isinf(price)
    )
    if state.reused_in_a_row >= state.interval and affordable:
        reason = f"interval cap ({state.reused_in_a_row} reused in a row, N={state.interval})"
        return StepDecision("compute", reason, blocked=blocked), replace(state, reused_in_a_row=0)
    priced, objective = choose_priced(errors, costs, price)
    where = f"x{s:g} budget: rho={budget.rate:.2f}, lambda={price:.3g}"
    best, missed = keep_reachable(budget, priced, objective, costs)
    if missed:
        reason = (
            f"{best}: keeps the budget reachable ({priced} would miss it by {missed:.2f} "
            f"step(s); {where})"
        )
    elif best == "compute":
        reason = f"compute: a full compute is cheaper than any reuse ({where})"
    else:
        reason = f"{best}: lowest error+lambda*cost {objective[best]:.3g} ({where})"
    if best == "compute":
        return StepDecision("compute", reason, objective, blocked), replace(
            state, reused_in_a_row=0
        )
    if trig.fired:
        reason += f" ({trig.reason})"
    new_state = replace(state, reused_in_a_row=state.reused_in_a_row + 1, last_cached=best)
    return StepDecision(best, reason, objective, blocked), new_state


def _budget_trigger(
    inputs: StepInputs, state: PolicyState, config: MixCacheConfig, budget: Budget
) -> TriggerResult:
    """The trigger in budget mode, in the run's own units (scale-free).

    Caching may start once the probe's per-step change is at most ``trigger_ratio`` times the
    largest change seen so far in this run (``None``: right after the warm-up), and must start
    when waiting longer would leave less than 3/4 of the planned compute share for the rest of
    the run (the budget stays reachable).
    """
    s = budget.block_speedup
    change = inputs.probe_change
    if change is None:
        return TriggerResult(False, "trigger waiting: no probe signal yet", TriggerState.WAITING)
    ratio = config.trigger_ratio
    peak = state.peak_change or change
    if ratio is None or change <= ratio * peak:
        why = "after warm-up" if ratio is None else f"probe change {change:.3g} <= {ratio:g} x peak"
        return TriggerResult(True, f"trigger: {why} at step {inputs.step}", TriggerState.FIRED)
    if budget.rate <= 0.75 / s:
        return TriggerResult(
            True,
            f"trigger: the x{s:g} budget needs caching from step {inputs.step} "
            f"(probe change {change:.3g} > {ratio:g} x peak)",
            TriggerState.FIRED,
        )
    return TriggerResult(
        False,
        f"trigger waiting: probe change {change:.3g} > {ratio:g} x peak {peak:.3g}",
        TriggerState.WAITING,
    )


def follow_decision(step_action: str, situation: Situation) -> tuple[str, str]:
    """Action of a later branch of a step, given the step's decision. Pure.

    The branch follows the step's action when the table allows it for this branch; otherwise
    it computes (e.g. its entry is missing, or cfg without a fresh reference).
    """
    if step_action == "compute":
        return "compute", "follows step decision"
    blocked = blocked_reasons(situation)
    if step_action in blocked:
        return "compute", f"step decision {step_action}, but {blocked[step_action]}"
    return step_action, "follows step decision"


def adapt_interval(
    state: PolicyState, deviation: float, config: MixCacheConfig
) -> tuple[PolicyState, str]:
    """Apply :func:`update_interval` to the state (called at a full compute). Pure."""
    new, reason = update_interval(state.interval, deviation, config)
    return replace(state, interval=new), reason
