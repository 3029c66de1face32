"""Pure policy tests on synthetic signals: trigger, hybrid decision, penalty, interval, and one
test per row of the joint-scheduling table (policy/decision.py RULES)."""

from __future__ import annotations

import pytest

from mixcache import MixCacheConfig
from mixcache.policy.decision import (
    RULES,
    PolicyState,
    Situation,
    StepInputs,
    adapt_interval,
    blocked_reasons,
    decide_step,
    follow_decision,
    hybrid_scores,
)
from mixcache.policy.interval import update_interval
from mixcache.policy.trigger import check_trigger, in_final_steps, warmup_steps

IMPACT = {"step": 1.0, "cfg": 1.0, "block": 1.0}
CFG = MixCacheConfig(
    warmup_fraction=0.2,
    min_warmup_steps=2,
    final_steps=2,
    trigger_threshold=0.1,
    refresh_threshold=0.5,
    interval_init=2,
    interval_min=1,
    interval_max=4,
    delta1=0.05,
    delta2=0.2,
)


def ready(at: int, **signal: float | None) -> Situation:
    """A reference-branch situation where every entry exists (computed at step at - 1)."""
    sig = {"step": 0.1, "cfg": 0.2, "block": 0.3, **signal}
    return Situation(
        step=at,
        n_branches=2,
        is_reference=True,
        entry_step={g: at - 1 for g in ("step", "cfg", "block")},
        signal=sig,
    )


def run_schedule(changes: list[float], config=CFG, signal=None, state=None):
    """Decide a whole run from synthetic probe changes; returns the actions."""
    state = state or PolicyState.initial(config)
    actions = []
    for step, change in enumerate(changes):
        inputs = StepInputs(step, len(changes), change, ready(step, **(signal or {})), IMPACT)
        decision, state = decide_step(inputs, state, config)
        actions.append(decision.action)
    return actions, state


# --------------------------------------------------------------------------- trigger
def test_warmup_is_max_of_fraction_and_minimum():
    assert warmup_steps(20, CFG) == 4  # ceil(0.2 * 20)
    assert warmup_steps(5, CFG) == 2  # the minimum wins
    assert warmup_steps(None, CFG) == 2


def test_final_steps_boundary():
    assert [in_final_steps(s, 10, CFG) for s in (7, 8, 9)] == [False, True, True]
    assert not in_final_steps(9, None, CFG)  # unknown length: no boundary


def test_trigger_fires_at_first_small_change_after_warmup_and_latches():
    changes = [0.9, 0.05, 0.5, 0.3, 0.08, 0.5, 0.5, 0.5, 0.5, 0.5]
    results = []
    triggered = False
    for step, c in enumerate(changes):
        r = check_trigger(step, 10, c, triggered, CFG)
        triggered = triggered or r.fired
        results.append((r.may_cache, r.fired))
    # step 1 has a small change but is in warm-up; step 4 is the first small change after it;
    # from then on caching stays enabled until the last two steps.
    assert results[1] == (False, False)
    assert [m for m, _ in results] == [False] * 4 + [True] * 4 + [False] * 2
    assert [s for s, (_, f) in enumerate(results) if f] == [4]


def test_trigger_waits_without_signal_and_records_why():
    r = check_trigger(5, 10, None, False, CFG)
    assert not r.may_cache and "no probe signal" in r.reason
    r = check_trigger(5, 10, 0.2, False, CFG)
    assert not r.may_cache and "0.2 >= 0.1" in r.reason
    r = check_trigger(5, 10, 0.05, False, CFG)
    assert r.may_cache and r.fired and "at step 5" in r.reason


def test_decide_records_trigger_reason_and_step():
    _, state = run_schedule([0.5, 0.5, 0.5, 0.05, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert state.triggered and state.trigger_step == 3
    assert "probe change 0.05 < 0.1 at step 3" in state.trigger_reason


# --------------------------------------------------------------------------- hybrid decision
def test_score_is_d_times_i_and_argmin_wins():
    scores = hybrid_scores(
        {"step": 0.1, "cfg": 0.2, "block": 0.3}, {"step": 4.0, "cfg": 1.0, "block": 0.5},
        ("step", "cfg", "block"), None, 5.0,
    )  # fmt: skip
    assert scores == pytest.approx({"step": 0.4, "cfg": 0.2, "block": 0.15})
    inputs = StepInputs(4, 10, 0.01, ready(4), {"step": 4.0, "cfg": 1.0, "block": 0.5})
    decision, _ = decide_step(inputs, PolicyState(interval=2, triggered=True), CFG)
    assert decision.action == "block"


def test_repeat_penalty_times_five_switches_granularity():
    # step has the lowest D, but it was the previous cached step's granularity: 0.1*5 > 0.2.
    state = PolicyState(interval=4, triggered=True, reused_in_a_row=1, last_cached="step")
    decision, new = decide_step(StepInputs(4, 10, 0.01, ready(4), IMPACT), state, CFG)
    assert decision.scores["step"] == pytest.approx(0.5)
    assert decision.action == "cfg" and new.last_cached == "cfg"
    # With the penalty off, step would have been repeated.
    decision, _ = decide_step(
        StepInputs(4, 10, 0.01, ready(4), IMPACT), state, CFG.replace(repeat_penalty=1.0)
    )
    assert decision.action == "step"


def test_per_saving_score_divides_by_the_compute_saved():
    inputs = StepInputs(4, 10, 0.01, ready(4, step=0.1, cfg=0.065, block=0.1), IMPACT,
                        savings={"step": 5 / 6, "cfg": 0.5, "block": 0.5})  # fmt: skip
    state = PolicyState(interval=2, triggered=True)
    assert decide_step(inputs, state, CFG)[0].action == "cfg"  # paper: lowest D*I
    decision, _ = decide_step(inputs, state, CFG.replace(score="per_saving"))
    assert decision.action == "step"  # 0.1 / (5/6) = 0.12 < 0.065 / 0.5 = 0.13
    assert decision.scores["step"] == pytest.approx(0.12)
    assert decision.scores["block"] == pytest.approx(0.2)


def test_time_weight_scales_scores_so_late_steps_refresh():
    early = StepInputs(3, 10, 0.01, ready(3, step=0.2), IMPACT, time_weight=0.4)
    late = StepInputs(7, 10, 0.01, ready(7, step=0.2), IMPACT, time_weight=3.0)
    state = PolicyState(interval=4, triggered=True)
    assert decide_step(early, state, CFG)[0].action == "step"
    decision, _ = decide_step(late, state, CFG)
    assert decision.action == "compute" and decision.reason.startswith("refresh")


def test_refresh_threshold_forces_compute():
    decision, state = decide_step(
        StepInputs(4, 10, 0.01, ready(4, step=0.9, cfg=0.8, block=0.7), IMPACT),
        PolicyState(interval=2, triggered=True),
        CFG,
    )
    assert decision.action == "compute" and decision.reason.startswith("refresh")
    assert state.reused_in_a_row == 0


def test_interval_used_up_forces_compute_and_resets_count():
    actions, _ = run_schedule([0.01] * 10, signal={"step": 0.01, "cfg": 0.01, "block": 0.01})
    # warm-up 2, then N=2 reuses / 1 compute, last 2 steps compute
    assert actions == ["compute", "compute", "step", "cfg", "compute", "step", "cfg", "compute",
                       "compute", "compute"]  # fmt: skip


def test_no_candidate_computes_with_reasons():
    situation = Situation(step=4, n_branches=1, entry_step={}, signal={})
    decision, _ = decide_step(
        StepInputs(4, 10, 0.01, situation, IMPACT), PolicyState(interval=2, triggered=True), CFG
    )
    assert decision.action == "compute"
    assert "cfg: cfg_needs_uncond_branch" in decision.reason


# --------------------------------------------------------------------------- interval
def test_interval_shrinks_above_delta2_and_grows_below_delta1_within_bounds():
    assert update_interval(3, 0.5, CFG)[0] == 2
    assert update_interval(1, 0.5, CFG)[0] == 1  # interval_min
    assert update_interval(3, 0.01, CFG)[0] == 4
    assert update_interval(4, 0.01, CFG)[0] == 4  # interval_max
    assert update_interval(3, 0.1, CFG)[0] == 3  # within [delta1, delta2]


def test_interval_sequence_on_synthetic_deviations():
    state = PolicyState.initial(CFG)
    seen = []
    for dev in (0.01, 0.01, 0.01, 0.3, 0.3, 0.3, 0.3, 0.1):
        state, _ = adapt_interval(state, dev, CFG)
        seen.append(state.interval)
    assert seen == [3, 4, 4, 3, 2, 1, 1, 1]


# --------------------------------------------------------------------------- joint table
RULE_NAMES = [r.name for r in RULES]


def test_table_rows_are_unique_and_documented():
    assert len(set(RULE_NAMES)) == len(RULE_NAMES)
    assert all(r.text for r in RULES)


def test_rule_one_granularity_per_forward():
    # A decision is one action; the cfg decision makes the reference compute (see controller).
    decision, _ = decide_step(StepInputs(4, 10, 0.01, ready(4), IMPACT),
                              PolicyState(interval=2, triggered=True), CFG)  # fmt: skip
    assert decision.action in ("compute", "step", "cfg", "block")
    assert isinstance(decision.action, str)


def test_rule_decision_once_per_step():
    # Later branches follow the step's decision rather than deciding again.
    later = Situation(step=4, n_branches=2, is_reference=False, reference_fresh=True,
                      entry_step={"step": 3, "cfg": 3, "block": 3})  # fmt: skip
    for action in ("compute", "step", "cfg", "block"):
        assert follow_decision(action, later) == (action, "follows step decision")


def test_rule_disabled():
    s = ready(4)
    s = Situation(**{**s.__dict__, "enabled": ("block",)})
    assert blocked_reasons(s) == {"step": "disabled", "cfg": "disabled"}


def test_rule_cfg_needs_uncond_branch():
    s = Situation(**{**ready(4).__dict__, "n_branches": 1})
    assert blocked_reasons(s) == {"cfg": "cfg_needs_uncond_branch"}


def test_rule_cfg_needs_fresh_cond():
    later = Situation(step=4, n_branches=2, is_reference=False, reference_fresh=False,
                      entry_step={"step": 3, "cfg": 3, "block": 3})  # fmt: skip
    assert blocked_reasons(later) == {"cfg": "cfg_needs_fresh_cond"}
    action, reason = follow_decision("cfg", later)
    assert action == "compute" and "cfg_needs_fresh_cond" in reason


def test_rule_entry_missing():
    s = Situation(**{**ready(4).__dict__, "entry_step": {"step": 3, "cfg": None}})
    assert blocked_reasons(s) == {"cfg": "entry_missing", "block": "entry_missing"}
    later = Situation(step=4, n_branches=2, is_reference=False, reference_fresh=True,
                      entry_step={"step": None})  # fmt: skip
    assert follow_decision("step", later) == ("compute", "step decision step, but entry_missing")


def test_rule_entry_too_old():
    s = Situation(**{**ready(9).__dict__, "entry_step": {"step": 8, "cfg": 2, "block": 5},
                     "max_age": 4})  # fmt: skip
    assert blocked_reasons(s) == {"cfg": "entry_too_old"}


def test_rule_span_changed():
    s = Situation(**{**ready(4).__dict__, "span_ok": False})
    assert blocked_reasons(s) == {"block": "span_changed"}


def test_rule_signal_unknown():
    s = ready(4, step=None)
    assert blocked_reasons(s) == {"step": "signal_unknown"}
    # Later branches do not need signals (they follow).
    later = Situation(**{**s.__dict__, "is_reference": False, "reference_fresh": True})
    assert blocked_reasons(later) == {}


def test_rule_reuse_writes_no_entry():
    # Structural row, enforced by the controller: tested on the toy model in
    # test_toy_exact.py::test_step_reuse_writes_no_block_entry. Here: the row exists.
    assert "reuse_writes_no_entry" in RULE_NAMES


def test_rule_entries_share_a_step():
    # Structural row, enforced by the controller: tested on the toy model in
    # test_toy_exact.py::test_cfg_step_does_not_refresh_cond_entries.
    assert "entries_share_a_step" in RULE_NAMES


def test_rule_interval_shared():
    # Reuses of different granularities count against the same interval.
    state = PolicyState(interval=2, triggered=True, reused_in_a_row=1, last_cached="step")
    decision, state = decide_step(StepInputs(4, 10, 0.01, ready(4), IMPACT), state, CFG)
    assert decision.action == "cfg" and state.reused_in_a_row == 2
    decision, _ = decide_step(StepInputs(5, 10, 0.01, ready(5), IMPACT), state, CFG)
    assert decision.action == "compute" and "interval used up" in decision.reason


def test_every_predicate_row_is_tested_above():
    tested = {
        "disabled", "cfg_needs_uncond_branch", "cfg_needs_fresh_cond", "entry_missing",
        "entry_too_old", "span_changed", "signal_unknown",
    }  # fmt: skip
    assert {r.name for r in RULES if r.forbids is not None} == tested
