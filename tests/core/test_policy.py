"""Pure policy tests on synthetic signals: trigger, hybrid decision, penalty, interval, and one
test per row of the joint-scheduling table (policy/decision.py RULES)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from toy import TIMESTEPS, E, ToyTransformer, full, make_inputs, partial, run_loop

from mixcache import ImpactProfile, MixCacheConfig, apply_mixcache
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
CFG = MixCacheConfig.preset(
    "paper",
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

# Thresholds that never stop a reuse, a fixed interval of 2 and no final boundary: on the toy the
# schedule is driven by the warm-up, the interval and the scores alone.
TOY_FREE = {
    "trigger_threshold": float("inf"),
    "refresh_threshold": float("inf"),
    "warmup_fraction": 0.0,
    "min_warmup_steps": 2,
    "final_steps": 0,
    "interval_init": 2,
    "interval_min": 2,
    "interval_max": 2,
}
H0 = make_inputs()  # the latent run_loop feeds at every step


def toy_run(model, config, force=None):
    """One cond/uncond generation of the toy; ``force`` maps step -> granularity to reuse there
    (the controller's calibration override, bypassing the scores). Returns outputs and records."""
    handle = apply_mixcache(model, config)
    if force:
        handle.controllers["transformer"].force = force.get
    try:
        out = run_loop(model)
    finally:
        handle.remove()
    return out, handle.stats().records


def toy_value(model, action, t, s, e):
    """Analytic output of one toy forward: ``action`` at timestep t, entries computed at timestep s
    (toy blocks 0 | 1..3 | 4, 5 with the default span; step reuse keeps block 0 as its probe)."""
    every = range(6)
    if action == "compute":
        return full(model, H0, t, e)
    if action == "step":
        return H0 + partial(model, [0], t, e) + partial(model, range(1, 6), s, e)
    if action == "block":
        return H0 + partial(model, [0, 4, 5], t, e) + partial(model, [1, 2, 3], s, e)
    # cfg (uncond): fresh cond residual minus the guidance difference of step s
    delta = partial(model, every, s, 1.0) - partial(model, every, s, -1.0)
    return H0 + partial(model, every, t, 1.0) - delta


def check_toy_values(model, out, records):
    """Every output equals the analytic value of its record's action, with entries taken from the
    last step where every branch computed fully."""
    last_full = None
    for step in sorted({r.step for r in records}):
        mine = [r for r in records if r.step == step]
        for r in mine:
            s = TIMESTEPS[last_full] if last_full is not None else None
            expected = toy_value(model, r.action, TIMESTEPS[step], s, E[r.branch])
            got = out[(step, r.branch)]
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-9, msg=f"{step} {r}")
        if all(r.action == "compute" for r in mine):
            last_full = step


def assert_steps_3_4_reuse_step_1(model, out, records, step_3, step_4):
    """Both branches at steps 3 and 4 took the given actions with the entries of step 1."""
    for b, e in E.items():
        assert [r.action for r in records if r.branch == b and r.step in (3, 4)] == [step_3, step_4]
        for step, action in ((3, step_3), (4, step_4)):
            expected = toy_value(model, action, TIMESTEPS[step], TIMESTEPS[1], e)
            torch.testing.assert_close(out[(step, b)], expected, rtol=0, atol=0)


def test_table_rows_are_unique_and_documented():
    assert len(set(RULE_NAMES)) == len(RULE_NAMES)
    assert all(r.text for r in RULES)


def test_rule_one_granularity_per_forward():
    # step, cfg and block all score below the refresh threshold (0.1, 0.2, 0.3 < 0.5): exactly one
    # is chosen (the argmin), the streak grows by one reused step, not one per candidate, and the
    # other scores are kept only as the record of why.
    state = PolicyState(interval=4, triggered=True)
    decision, new = decide_step(StepInputs(4, 10, 0.01, ready(4), IMPACT), state, CFG)
    assert (decision.action, decision.reason) == ("step", "P[step]=0.1 lowest")
    assert decision.scores == pytest.approx({"step": 0.1, "cfg": 0.2, "block": 0.3})
    assert (new.reused_in_a_row, new.last_cached) == (1, "step")
    # Executed on the analytic toy: every forward's output is exactly the value of its one action
    # (no forward adds two stored residuals or skips two spans).
    # The toy's flat default profile gives step/cfg streaks, a cheap block impact block/step.
    seen = set()
    for impact in (None, ImpactProfile("toy", "test", step=1.0, cfg=3.0, block=0.3)):
        m = ToyTransformer()
        out, records = toy_run(m, MixCacheConfig.preset("paper", **TOY_FREE, impact=impact))
        blocks = {(r.action, r.blocks_computed) for r in records}
        assert blocks <= {("compute", 6), ("step", 1), ("block", 3), ("cfg", 0)}
        check_toy_values(m, out, records)
        seen |= {r.action for r in records}
    assert seen == {"compute", "step", "cfg", "block"}


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
    # A measured plan needs no signal: only the price-only rule is dropped, the others hold.
    assert blocked_reasons(s, planned=True) == {}
    aged = Situation(**{**s.__dict__, "max_age": 0})
    assert blocked_reasons(aged, planned=True)["step"] == "entry_too_old"
    # Later branches do not need signals (they follow).
    later = Situation(**{**s.__dict__, "is_reference": False, "reference_fresh": True})
    assert blocked_reasons(later) == {}


def test_rule_reuse_writes_no_entry():
    # Forced schedule on the toy: compute 0, 1; block reuse at 2 (its tail blocks run, so a
    # careless capture could write a step entry), step reuse at 3, block reuse at 4. Both reuses
    # must still add the residuals of step 1, the last full compute.
    m = ToyTransformer()
    out, records = toy_run(
        m, MixCacheConfig.preset("paper", **TOY_FREE), force={2: "block", 3: "step", 4: "block"}
    )
    by = {(r.step, r.branch): (r.action, r.blocks_computed) for r in records}
    assert [by[(s, "uncond")] for s in (2, 3, 4)] == [("block", 3), ("step", 1), ("block", 3)]
    assert_steps_3_4_reuse_step_1(m, out, records, "step", "block")


def test_rule_entries_share_a_step():
    # Forced schedule on the toy: compute 0, 1; cfg at 2 (cond computes fully, uncond reuses ΔR);
    # step reuse at 3, block reuse at 4. The cond branch of the cfg step writes no step or block
    # entry, so at 3 and 4 both branches add residuals of step 1, not cond of 2 / uncond of 1.
    m = ToyTransformer()
    out, records = toy_run(
        m, MixCacheConfig.preset("paper", **TOY_FREE), force={2: "cfg", 3: "step", 4: "block"}
    )
    by = {(r.step, r.branch): r.action for r in records}
    assert [by[(2, "cond")], by[(2, "uncond")], by[(3, "cond")], by[(4, "cond")]] == [
        "compute", "cfg", "step", "block"
    ]  # fmt: skip
    torch.testing.assert_close(out[(2, "cond")], full(m, H0, TIMESTEPS[2], 1.0), rtol=0, atol=0)
    assert_steps_3_4_reuse_step_1(m, out, records, "step", "block")


def test_rule_interval_shared():
    # Reuses of different granularities count against the same interval.
    state = PolicyState(interval=2, triggered=True, reused_in_a_row=1, last_cached="step")
    decision, state = decide_step(StepInputs(4, 10, 0.01, ready(4), IMPACT), state, CFG)
    assert decision.action == "cfg" and state.reused_in_a_row == 2
    decision, _ = decide_step(StepInputs(5, 10, 0.01, ready(5), IMPACT), state, CFG)
    assert decision.action == "compute" and "interval used up" in decision.reason


def test_every_row_has_its_test_and_its_docs_row():
    # Read from RULES, this module and the docs, not from a copied list: a row added to RULES
    # without a test_rule_<name> here, or missing from (or extra in) the table of
    # docs/how-it-works.md, fails.
    untested = [n for n in RULE_NAMES if not callable(globals().get(f"test_rule_{n}"))]
    assert untested == []
    orphans = sorted(
        name.removeprefix("test_rule_")
        for name in globals()
        if name.startswith("test_rule_") and name.removeprefix("test_rule_") not in RULE_NAMES
    )
    assert orphans == []
    docs = (Path(__file__).parents[2] / "docs" / "how-it-works.md").read_text(encoding="utf-8")
    table = docs[docs.index("### Joint scheduling") :]
    table = table[: table.index("\n## ")]
    documented = re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE)
    assert sorted(documented) == sorted(RULE_NAMES)
