"""The speed budget (policy/budget.py and its use in decide_step): pure functions, exact values."""

from __future__ import annotations

import math

import pytest

from mixcache import MixCacheConfig
from mixcache.policy.budget import (
    BUDGET_TOLERANCE,
    Budget,
    choose_priced,
    compute_price,
    keep_reachable,
)
from mixcache.policy.decision import PolicyState, Situation, StepInputs, decide_step

IMPACT = {"step": 1.0, "cfg": 1.0, "block": 1.0}


def test_budget_accounting_reserves_the_final_steps():
    b = Budget(step=10, num_steps=50, block_speedup=2.0, spent=8.0, final_steps=2)
    assert b.total == 25.0
    assert b.free_steps == 38  # steps 10..47
    assert b.free_budget == 25.0 - 8.0 - 2
    assert b.rate == pytest.approx(15.0 / 38)


def test_budget_with_unknown_length_paces_to_the_steps_seen():
    b = Budget(step=9, num_steps=None, block_speedup=2.0, spent=4.0)
    assert b.total == 5.0 and b.free_steps == 1 and b.rate == 1.0


def test_price_gives_the_streak_the_budget_allows():
    # rho = 1/3 with a free step reuse: compute every 3rd step -> reuse while age*eps <= 2.5 eps.
    b = Budget(step=0, num_steps=30, block_speedup=3.0, spent=0.0)
    assert compute_price(b, error_per_step=0.2, reuse_cost=0.0) == pytest.approx(0.2 * 2.5)
    # A reuse that costs c: q = (rho - c)/(1 - c); lambda = eps (1/q - 1/2)/(1 - c).
    b = Budget(step=0, num_steps=10, block_speedup=1.6, spent=0.0)
    rho = 1 / 1.6
    q = (rho - 0.5) / 0.5
    assert compute_price(b, 0.1, 0.5) == pytest.approx(0.1 * (1 / q - 0.5) / 0.5)


def test_price_edges_compute_all_or_reuse_all():
    assert compute_price(Budget(0, 10, 1.0, 0.0), 0.3, 0.0) == 0.0
    assert compute_price(Budget(5, 10, 2.0, 5.0), 0.3, 0.0) == math.inf
    # The cheapest reuse costs more than the budget's share: every step must reuse it.
    assert compute_price(Budget(0, 10, 3.0, 0.0), 0.3, 0.5) == math.inf


def test_choose_priced_is_error_plus_price_times_cost():
    errors = {"step": 0.30, "cfg": 0.05, "block": 0.20}
    costs = {"step": 0.0, "cfg": 0.5, "block": 0.5}
    best, obj = choose_priced(errors, costs, price=0.4)
    assert obj == pytest.approx({"compute": 0.4, "step": 0.30, "cfg": 0.25, "block": 0.40})
    assert best == "cfg"
    # A cheap price makes computing best; an infinite one takes the cheapest reuse.
    assert choose_priced(errors, costs, price=0.01)[0] == "compute"
    assert choose_priced(errors, costs, price=math.inf)[0] == "step"


def _inputs(step: int, spent: float, signal: dict, entry: dict, s: float = 2.0, n: int = 20):
    situation = Situation(
        step=step,
        n_branches=2,
        entry_step=entry,
        signal=signal,
    )
    budget = Budget(step=step, num_steps=n, block_speedup=s, spent=spent, final_steps=1)
    return StepInputs(
        step=step,
        num_steps=n,
        probe_change=0.01,
        situation=situation,
        impact=IMPACT,
        savings={"step": 1.0, "cfg": 0.5, "block": 0.5},
        budget=budget,
    )


def test_budget_decision_picks_the_mixture_member_with_the_lowest_objective():
    cfg = MixCacheConfig.preset("paper", block_speedup=2.0, min_warmup_steps=2)
    state = PolicyState.initial(cfg)
    # Step entry 1 step old with D=0.1; cfg's difference barely drifts (0.01).
    inputs = _inputs(
        3, 3.0, {"step": 0.1, "cfg": 0.01, "block": 0.3}, {"step": 2, "cfg": 2, "block": 2}
    )
    decision, new = decide_step(inputs, state, cfg)
    # rho = (10 - 3 - 1)/16 = 0.375 -> lambda = 0.1 (1/0.375 - 0.5) = 0.2167; objectives:
    # compute 0.2167, step 0.1, cfg 0.01 + 0.108 = 0.118, block 0.3 + 0.108 -> step wins.
    assert decision.action == "step"
    assert decision.scores["compute"] == pytest.approx(0.1 * (1 / 0.375 - 0.5))
    assert decision.scores["cfg"] == pytest.approx(0.01 + 0.5 * decision.scores["compute"])
    assert new.reused_in_a_row == 1 and new.last_cached == "step"
    # The same run, far behind its budget: compute wins.
    behind = _inputs(
        3, 0.0, {"step": 0.5, "cfg": 0.4, "block": 0.4}, {"step": 2, "cfg": 2, "block": 2}, s=1.05
    )
    assert decide_step(behind, state, cfg)[0].action == "compute"


def test_budget_decision_respects_the_streak_cap_and_warmup():
    cfg = MixCacheConfig.preset("paper", block_speedup=3.0, interval_max=2, interval_init=1)
    assert PolicyState.initial(cfg).interval == 2  # budget mode: interval_max caps the streak
    capped = PolicyState(interval=2, triggered=True, reused_in_a_row=2)
    inputs = _inputs(6, 1.0, {"step": 0.01}, {"step": 3})
    decision, state = decide_step(inputs, capped, cfg)
    assert decision.action == "compute" and "interval cap" in decision.reason
    assert state.reused_in_a_row == 0
    warm = _inputs(1, 1.0, {"step": 0.01}, {"step": 0})
    assert decide_step(warm, PolicyState.initial(cfg), cfg)[0].reason.startswith("warm-up")


def test_budget_trigger_waits_in_run_units_then_the_budget_forces_it():
    cfg = MixCacheConfig.preset("paper", block_speedup=2.0, trigger_ratio=0.5, min_warmup_steps=2)
    state = PolicyState(interval=5, peak_change=0.4)
    signal, entry = {"step": 0.3}, {"step": 2}
    # Change 0.3 > 0.5 x peak 0.4 and the budget is still easy: wait.
    inputs = _inputs(3, 2.0, signal, entry)
    inputs = StepInputs(**{**inputs.__dict__, "probe_change": 0.3})
    decision, state2 = decide_step(inputs, state, cfg)
    assert decision.action == "compute" and decision.reason.startswith("trigger waiting")
    assert not state2.triggered
    # Same change, but 8 steps spent of 10: the budget cannot wait any longer.
    late = _inputs(8, 8.0, signal, {"step": 7})
    late = StepInputs(**{**late.__dict__, "probe_change": 0.3})
    decision, state3 = decide_step(late, state, cfg)
    assert state3.triggered and "budget needs caching" in state3.trigger_reason

    # Scale-free: the same run with every change 100x smaller takes the same decisions, step by
    # step (the policy state carried from one step to the next).
    def actions(scale: float) -> list[tuple[str, bool]]:
        state, out = PolicyState(interval=5, peak_change=0.4 * scale), []
        for step in range(3, 12):
            spent = 2.0 + 1.2 * (step - 3)  # as above: 2 at step 3 (easy), 8 at step 8 (late)
            inputs = _inputs(step, spent, {"step": 0.3 * scale}, {"step": step - 1})
            inputs = StepInputs(**{**inputs.__dict__, "probe_change": 0.3 * scale})
            decision, state = decide_step(inputs, state, cfg)
            out.append((decision.action, state.triggered))
        return out

    run = actions(1.0)
    assert actions(0.01) == run and actions(100.0) == run
    # Not vacuous: the run waits, then the budget forces the trigger and something is reused.
    assert not run[0][1] and run[-1][1] and any(a != "compute" for a, _ in run), run


def test_block_speedup_is_validated():
    from mixcache.errors import ConfigError

    for bad in (0.5, math.inf, math.nan, "2"):
        with pytest.raises(ConfigError, match="block_speedup"):
            MixCacheConfig.preset("paper", block_speedup=bad)
    assert MixCacheConfig.preset("paper", block_speedup=2).tag().endswith("x2")


@pytest.mark.parametrize("scale", [0.01, 0.1, 10.0, 1000.0])
def test_budget_decisions_do_not_depend_on_the_scale_of_the_signals(scale):
    """A model whose every change is `scale` times larger takes the same decisions."""
    cfg = MixCacheConfig.preset("paper", block_speedup=2.5, min_warmup_steps=2)
    seen = set()
    for spent in (2.0, 3.0, 4.0):
        for made in (1, 2, 3):  # entries 1 to 3 steps old at step 4
            for cfg_d in (0.001, 0.05):
                sig = {"step": 0.02 * (4 - made), "cfg": cfg_d, "block": 0.08}
                entry = {"step": made, "cfg": made, "block": made}
                base = _inputs(4, spent, sig, entry, s=2.5)
                scaled = _inputs(4, spent, {g: v * scale for g, v in sig.items()}, entry, s=2.5)
                d1 = decide_step(base, PolicyState.initial(cfg), cfg)[0]
                d2 = decide_step(scaled, PolicyState.initial(cfg), cfg)[0]
                assert d1.action == d2.action
                assert d2.scores == pytest.approx({g: v * scale for g, v in d1.scores.items()})
                seen.add(d1.action)
    assert seen == {"compute", "step", "cfg"}  # the cases exercise the choice, not one answer


def test_keep_reachable_overrides_a_choice_that_would_break_the_budget():
    # 16 steps at x3: 5.33 steps of compute; 2 final steps reserved. At step 11, with 0.33 of
    # the free budget left for 3 free steps, a full compute would overshoot by 0.67 step.
    b = Budget(step=11, num_steps=16, block_speedup=3.0, spent=3.0, final_steps=2)
    assert b.free_steps == 3 and b.free_budget == pytest.approx(1 / 3)
    objective = {"compute": 0.5, "step": 0.6, "cfg": 0.55}
    costs = {"step": 0.0, "cfg": 0.5}
    action, missed = keep_reachable(b, "compute", objective, costs)
    # cfg (0.5) still overshoots (by 0.17, more than the 0.107 slack); step reuse does not.
    assert action == "step" and missed == pytest.approx(2 / 3 - BUDGET_TOLERANCE * 16 / 3)
    # An in-range choice is kept as priced.
    assert keep_reachable(b, "step", objective, costs) == ("step", 0.0)


def test_keep_reachable_spends_what_the_last_free_steps_cannot_spend_later():
    # Last free step with half a step of budget left: reusing for free would underspend by
    # 0.5, computing would overspend by 0.5; a block reuse costing 0.5 lands exactly.
    b = Budget(step=17, num_steps=20, block_speedup=2.0, spent=7.5, final_steps=2)
    assert b.free_steps == 1 and b.free_budget == pytest.approx(0.5)
    objective = {"compute": 0.3, "step": 0.1, "block": 0.2}
    costs = {"step": 0.0, "block": 0.5}
    assert keep_reachable(b, "step", objective, costs)[0] == "block"
    assert keep_reachable(b, "compute", objective, costs)[0] == "block"
    # Nothing lands in range: the action that misses least wins (ties: lowest objective).
    assert keep_reachable(b, "compute", objective, {"step": 0.0})[0] == "step"


def test_keep_reachable_leaves_runs_of_unknown_length_alone():
    b = Budget(step=5, num_steps=None, block_speedup=2.0, spent=5.0)
    assert keep_reachable(b, "compute", {"compute": 1.0}, {"step": 0.0}) == ("compute", 0.0)


def _simulate_step_only(cfg: MixCacheConfig, rates: list[float]) -> list[str]:
    """A step-only budget run on a synthetic per-step change: D = change accumulated since the
    last compute; the decision is all that runs (pure policy)."""
    n, state, spent, made, actions = len(rates), PolicyState.initial(cfg), 0.0, None, []
    for step in range(n):
        d = None if made is None else sum(rates[made + 1 : step + 1])
        situation = Situation(
            step=step,
            enabled=("step",),
            n_branches=2,
            entry_step={"step": made},
            signal={"step": d},
        )
        budget = Budget(step, n, cfg.block_speedup, spent, final_steps=cfg.final_steps)
        inputs = StepInputs(step, n, rates[step], situation, IMPACT, {"step": 1.0}, 1.0, budget)
        decision, state = decide_step(inputs, state, cfg)
        if decision.action == "compute":
            spent, made = spent + 1.0, step
        actions.append(decision.action)
    return actions


def test_pace_cadence_ignores_the_shape_of_the_signal_and_pace_signal_follows_it():
    # Powers of two: sums and means are exact, so a flat signal gives the same rates both ways.
    flat = [0.25] * 30
    bumpy = [1.0 if 15 <= i < 23 else 0.25 for i in range(30)]
    base = {
        "block_speedup": 2.5,
        "granularities": ("step",),
        "warmup_fraction": 0.0,
        "repeat_penalty": 1.0,
    }
    cadence = MixCacheConfig.preset("paper", **base)
    signal = MixCacheConfig.preset("paper", **base, pace="signal")
    # "cadence": the entry's own error rate cancels out of the decision (e < lambda), so only
    # the budget sets the streaks: the same schedule whatever the signal's shape.
    assert _simulate_step_only(cadence, bumpy) == _simulate_step_only(cadence, flat)
    # "signal": against the run's mean rate, the fast-changing stretch gets more computes.
    a_flat, a_bumpy = _simulate_step_only(signal, flat), _simulate_step_only(signal, bumpy)
    assert _simulate_step_only(signal, flat) == _simulate_step_only(cadence, flat)
    assert a_bumpy[15:23].count("compute") > a_flat[15:23].count("compute")
    # Both keep the budget: 30 / 2.5 = 12 computes, within the 2 % slack plus one step.
    for actions in (a_flat, a_bumpy):
        assert abs(actions.count("compute") - 12) <= 1
