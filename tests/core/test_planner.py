"""The planner (policy/planner.py) on analytic error tables: exact optimum, budget, interpolation
across step counts, guidance scaling, serialisation, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mixcache.errors import ConfigError
from mixcache.policy.planner import (
    ErrorModel,
    PlanOption,
    pack_table,
    plan_schedule,
    predicted_error,
    unpack_table,
)

GAPS = (1, 2, 3, 4, 6, 8)
PREV = (1, 2, 3, 5)


#: A gain curve of the shape measured on the bundled models: deviations made near pure noise
#: grow several-fold by the end, late ones are damped.
GAIN = ((0.02, 0.5), (0.7, 1.0), (1.0, 100.0))


def analytic_model(
    n: int = 30,
    rng_seed: int | None = None,
    with_cfg: bool = True,
    gain=(),
    size=(),
    last_impact: float | None = None,
) -> ErrorModel:
    """Errors of a reuse: plain |e| = (τa − τt)·(1 + τa), linear |e| = (τa − τt)²·(1 + 1/p);
    single-branch Gram terms (e_u = 0, fresh |x|² = 1), impact 1: r is |e| exactly."""
    taus = np.linspace(1.0, 0.02, n)
    plain = np.full((n, len(GAPS), 3), np.nan)
    linear = np.full((n, len(PREV), len(GAPS), 3), np.nan)
    rng = np.random.default_rng(rng_seed) if rng_seed is not None else None
    for a in range(n):
        for i, d in enumerate(GAPS):
            t = a + d
            if t >= n:
                break
            e = (taus[a] - taus[t]) * (1 + taus[a])
            if rng is not None:
                e *= rng.uniform(0.5, 1.5)
            plain[a, i] = (e * e, 0.0, 0.0)
            for j, p in enumerate(PREV):
                if a - p < 0:
                    break
                e2 = (taus[a] - taus[t]) ** 2 * (1 + 1 / p)
                if rng is not None:
                    e2 *= rng.uniform(0.5, 1.5)
                linear[a, j, i] = (e2 * e2, 0.0, 0.0)
    fresh = np.tile([1.0, 0.0, 0.0], (n, 1))
    tables = {"step": plain}
    lin = {"step": linear}
    fr = {"step": fresh}
    impact = {"step": ((0.0, 1.0), (1.0, 1.0))}
    if with_cfg:
        # cfg: the uncond branch errs by a constant 0.01 per step of age; fresh uncond |x|=1.
        cp = np.full((n, len(GAPS), 3), np.nan)
        for a in range(n):
            for i, d in enumerate(GAPS):
                if a + d < n:
                    cp[a, i] = (0.0, (0.01 * d) ** 2, 0.0)
        tables["cfg"] = cp
        lin["cfg"] = np.full((n, len(PREV), len(GAPS), 3), np.nan)
        fr["cfg"] = np.tile([1.0, 1.0, 1.0], (n, 1))  # cond = uncond: |g·c − (g−1)·u| = 1
        impact["cfg"] = ((0.0, 1.0), (1.0, 1.0))
    return ErrorModel(
        tuple(taus), GAPS, PREV, tables, lin, fr, impact, gain=gain, guidance_scale=5.0,
        size_exponent=size, last_impact=last_impact,
    )  # fmt: skip


STEP = [PlanOption("step", "plain", 0.0), PlanOption("step", "linear", 0.0)]


def brute_force(
    model, taus, budget, options, objective="sum", final=1, path_aware=False, scale=None
):
    n = len(taus)
    choices = [("compute", None)] + [(o.granularity, o.form) for o in options]
    cost = {(o.granularity, o.form): o.cost for o in options} | {("compute", None): 1.0}
    best = (math.inf, None)
    for combo in itertools.product(choices, repeat=n - 1 - final):
        steps = [("compute", None), *combo, *[("compute", None)] * final]
        if sum(cost[s] for s in steps) > budget * 1.045 + 1e-9:
            continue
        e = predicted_error(
            model, taus, [a for a, _ in steps], [f for _, f in steps], objective=objective,
            path_aware=path_aware, scale=scale,
        )  # fmt: skip
        if e < best[0] - 1e-15:
            best = (e, steps)
    return best


#: A size exponent of the shape measured on the bundled models: below 1 near pure noise, above 1
#: late in the run.
SIZE = ((0.3, 1.5), (0.9, 1.2), (0.97, 0.5))


@pytest.mark.parametrize("size", [(), SIZE], ids=["linear", "size"])
@pytest.mark.parametrize("gain", [(), GAIN], ids=["no-gain", "gain"])
@pytest.mark.parametrize("objective", ["sum", "max"])
@pytest.mark.parametrize("seed", [0, 1])
def test_plan_is_the_exact_optimum_of_the_model(objective, seed, gain, size):
    model = analytic_model(rng_seed=seed, gain=gain, size=size)
    aware = bool(gain)
    taus = tuple(np.linspace(1.0, 0.02, 9))
    options = [*STEP, PlanOption("cfg", "plain", 0.5)]
    plan = plan_schedule(
        model, taus, 4.5, options, guidance_scale=5.0, objective=objective, path_aware=aware
    )
    want, _steps = brute_force(model, taus, 4.5, options, objective, path_aware=aware)
    got = predicted_error(model, taus, plan.actions, plan.forms, 5.0, objective, aware)
    assert plan.predicted == pytest.approx(want, rel=1e-9)
    assert got == pytest.approx(want, rel=1e-9)
    assert plan.actions[0] == "compute" and plan.actions[-1] == "compute"


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5])
def test_size_exponent_prices_a_reuse_by_its_size(alpha):
    """Exact values on the analytic model (impact 1, r = (τa − τt)(1 + τa)): with a size curve a
    reuse costs r · (h / h_cal) · (r / r_1)^(α − 1), r_1 the error of an entry one calibration
    step old; without one, r whatever the step size."""
    linear = analytic_model(with_cfg=False)
    model = analytic_model(with_cfg=False, size=((0.0, alpha), (1.0, alpha)))
    t = model.taus
    h_cal = t[9] - t[10]
    r = (t[6] - t[10]) * (1 + t[6])
    r1 = (t[9] - t[10]) * (1 + t[9])
    assert model.reuse_error("step", "plain", t[6], t[10]) == pytest.approx(r, rel=1e-12)
    want = r * (0.1 / h_cal) * (r / r1) ** (alpha - 1.0)
    assert model.priced("step", r, t[10], 0.1) == pytest.approx(want, rel=1e-9)
    assert linear.priced("step", r, t[10], 0.1) == pytest.approx(r, rel=1e-12)
    # In a schedule: the run's own step sizes are used (here a 10-step run's).
    taus = tuple(np.linspace(t[0], t[-1], 10))
    acts = ["compute", "compute", "step", "compute", *["compute"] * 6]
    got = predicted_error(model, taus, acts, [None] * 10, 5.0)
    r_run = model.reuse_error("step", "plain", taus[1], taus[2])
    assert got == pytest.approx(model.priced("step", r_run, taus[2], taus[2] - taus[3]))
    assert got != pytest.approx(linear.priced("step", r_run, taus[2], taus[2] - taus[3]))


@pytest.mark.parametrize("alpha", [0.5, 1.5])
def test_an_exponent_below_one_is_not_extrapolated_past_the_size_it_was_measured_at(alpha):
    """With the size ρ each exponent was measured at: where α < 1 a reuse larger than ρ·r_1 is
    priced r · (h / h_cal) · ρ^(α − 1) (in proportion to r beyond ρ), one within ρ as before;
    where α ≥ 1 nothing changes."""
    t = analytic_model(with_cfg=False).taus
    h_cal = t[9] - t[10]
    r1 = (t[9] - t[10]) * (1 + t[9])
    plain = analytic_model(with_cfg=False, size=((0.0, alpha), (1.0, alpha)))
    reach = analytic_model(with_cfg=False, size=((0.0, alpha, 2.0), (1.0, alpha, 2.0)))
    for a in (6, 8):  # r / r_1 = 4.4 and 2.2: beyond ρ = 2 both, but by how much differs
        r = (t[a] - t[10]) * (1 + t[a])
        assert reach.reuse_error("step", "plain", t[a], t[10]) == pytest.approx(r, rel=1e-12)
        assert r / r1 > 2.0
        uncapped = r * (0.1 / h_cal) * (r / r1) ** (alpha - 1.0)
        assert plain.priced("step", r, t[10], 0.1) == pytest.approx(uncapped, rel=1e-9)
        want = r * (0.1 / h_cal) * 2.0 ** (alpha - 1.0) if alpha < 1 else uncapped
        assert reach.priced("step", r, t[10], 0.1) == pytest.approx(want, rel=1e-9)
    # Within ρ: the same price.
    r = 1.5 * r1
    assert reach.priced("step", r, t[10], 0.1) == pytest.approx(
        plain.priced("step", r, t[10], 0.1), rel=1e-12
    )


def test_a_size_exponent_moves_computes_to_where_it_is_above_one():
    """Large errors cost more than in proportion where α > 1 (late here) and less where α < 1
    (early): the plan of the same budget spends more of its computes late than the linear
    model's does, and holds a longer streak early."""
    linear = analytic_model(with_cfg=False)
    steep = analytic_model(with_cfg=False, size=((0.0, 2.5), (0.5, 2.5), (0.6, 0.5), (1.0, 0.5)))
    taus = tuple(np.linspace(1.0, 0.02, 12))
    options = [PlanOption("step", "plain", 0.0)]
    a = plan_schedule(linear, taus, 5.0, options, guidance_scale=5.0)
    b = plan_schedule(steep, taus, 5.0, options, guidance_scale=5.0)

    def late_computes(plan):
        return sum(
            act == "compute" and tau < 0.5 for tau, act in zip(taus, plan.actions, strict=True)
        )

    assert late_computes(b) > late_computes(a), (a.code(), b.code())
    assert b.code().index("C", 1) > a.code().index("C", 1), (a.code(), b.code())


@pytest.mark.parametrize("last_impact", [0.01, 1e3])
def test_a_measured_last_step_is_planned_at_its_own_price(last_impact):
    """With ``last_impact`` the last step is a step like the others, priced ``last_impact · r ·
    h / h_cal``: cheap, the exact optimum reuses it and spends the compute earlier; dear, it
    computes. Without it the last step always computes."""
    model = analytic_model(rng_seed=3, with_cfg=False, last_impact=last_impact)
    taus = tuple(np.linspace(1.0, 0.02, 9))
    plan = plan_schedule(model, taus, 4.0, STEP, guidance_scale=5.0)
    want, _steps = brute_force(model, taus, 4.0, STEP, final=0)
    assert plan.predicted == pytest.approx(want, rel=1e-9)
    assert (plan.actions[-1] == "step") == (last_impact < 1.0), plan.code()
    # Exact price of the last step's reuse.
    r = model.reuse_error("step", "plain", taus[6], taus[8])
    h_cal = model.taus[-1]
    assert model.priced_last(r, taus[8]) == pytest.approx(last_impact * r * taus[8] / h_cal)
    acts = ["compute"] * 7 + ["step", "step"]
    got = predicted_error(model, taus, acts, [None] * 7 + ["plain", "plain"], 5.0)
    r7 = model.reuse_error("step", "plain", taus[6], taus[7])
    assert got == pytest.approx(model.priced("step", r7, taus[7]) + model.priced_last(r, taus[8]))
    unmeasured = analytic_model(rng_seed=3, with_cfg=False)
    assert plan_schedule(unmeasured, taus, 4.0, STEP, guidance_scale=5.0).actions[-1] == "compute"


@pytest.mark.parametrize("final_steps", [1, 2, 3])
def test_final_steps_before_a_measured_last_step_compute(final_steps):
    """With the last step measured, ``final_steps=k`` forces the ``k - 1`` steps before it and
    plans the last one: ``final_steps=1`` forces nothing (steps n-2 and n-1 both planned). The
    plan is the exact optimum over the schedules that compute those steps."""
    model = analytic_model(rng_seed=3, with_cfg=False, last_impact=0.01)
    taus = tuple(np.linspace(1.0, 0.02, 9))
    n = len(taus)
    plan = plan_schedule(model, taus, 4.0, STEP, guidance_scale=5.0, final_steps=final_steps)
    forced = range(n - final_steps, n - 1)
    assert all(plan.actions[t] == "compute" for t in forced), plan.code()
    assert plan.actions[-1] == "step", plan.code()  # cheap at the last step: reused
    choices = [("compute", None), ("step", "plain"), ("step", "linear")]
    best = math.inf
    for combo in itertools.product(choices, repeat=n - 1):
        steps = [("compute", None), *combo]
        if any(steps[t][0] != "compute" for t in forced):
            continue
        if sum(1.0 if a == "compute" else 0.0 for a, _ in steps) > 4.0 * 1.045 + 1e-9:
            continue
        acts, forms = [a for a, _ in steps], [f for _, f in steps]
        best = min(best, predicted_error(model, taus, acts, forms, 5.0))
    assert plan.predicted == pytest.approx(best, rel=1e-9)
    if final_steps == 1:  # nothing forced: the unconstrained optimum
        assert plan.predicted == pytest.approx(brute_force(model, taus, 4.0, STEP, final=0)[0])


def test_step_reuse_errors_are_carried_to_the_end_of_their_streak():
    """Exact values: a step reuse's error is divided by the gain after it and multiplied by the
    gain where its streak ends; a cfg reuse ends a streak and is priced as measured."""
    model = analytic_model(gain=GAIN)
    taus = tuple(np.linspace(1.0, 0.02, 7))
    e = {
        t: model.impact_at("step", taus[t]) * model.reuse_error("step", "plain", taus[0], taus[t])
        for t in (1, 2)
    }
    g = model.gain_at
    acts = ["compute", "step", "step", "compute", "compute", "compute", "compute"]
    forms = [None, "plain", "plain", None, None, None, None]
    got = predicted_error(model, taus, acts, forms, path_aware=True)
    want = e[1] * g(taus[3]) / g(taus[2]) + e[2] * g(taus[3]) / g(taus[3])
    assert got == pytest.approx(want, rel=1e-12)
    # Not path-aware (the default), or without a gain curve, the errors add as measured.
    flat = analytic_model()
    assert predicted_error(model, taus, acts, forms) == pytest.approx(e[1] + e[2], rel=1e-12)
    assert predicted_error(flat, taus, acts, forms, path_aware=True) == (
        pytest.approx(e[1] + e[2], rel=1e-12)
    )
    # A cfg reuse closes the streak before it: step 1's error is carried to step 2 only.
    e_cfg = model.impact_at("cfg", taus[2]) * model.reuse_error(
        "cfg", "plain", taus[0], taus[2], None, 5.0
    )
    acts = ["compute", "step", "cfg", "compute", "compute", "compute", "compute"]
    got = predicted_error(
        model, taus, acts, [None, "plain", "plain", *[None] * 4], 5.0, path_aware=True
    )
    assert got == pytest.approx(e[1] * g(taus[2]) / g(taus[2]) + e_cfg, rel=1e-12)
    # Log-linear between the measured points, flat beyond them.
    assert g(0.85) == pytest.approx(math.sqrt(1.0 * 100.0), rel=1e-9)
    assert g(0.0) == pytest.approx(0.5) and g(1.0) == pytest.approx(100.0)


def test_path_aware_plan_moves_streaks_to_where_the_run_amplifies():
    """Same errors, same budget: path-aware, with deviations growing near pure noise, the plan
    puts its longest streak first (the streak holds its deviations back from the run's
    amplification); by default the gain is not read."""
    model = analytic_model(gain=GAIN)
    taus = tuple(np.linspace(1.0, 0.02, 10))
    plain = STEP[:1]
    a = plan_schedule(model, taus, 5.0, plain)
    b = plan_schedule(model, taus, 5.0, plain, path_aware=True)
    assert a.code() == "CsCsCsCssC"  # the longest streak last, where errors are smallest
    assert b.code() == "CssCsCsCsC"  # ... first, where the run would amplify a deviation
    assert plan_schedule(analytic_model(), taus, 5.0, plain, path_aware=True).code() == a.code()
    # Each is the better plan under its own pricing.
    for plan, other, aware in ((b, a, True), (a, b, False)):
        mine = predicted_error(model, taus, plan.actions, plan.forms, path_aware=aware)
        assert mine < predicted_error(model, taus, other.actions, other.forms, path_aware=aware)


@pytest.mark.parametrize("aware", [False, True])
def test_a_plan_over_part_of_a_run_may_end_on_a_reuse(aware):
    """``last_computes=False`` (Wan2.2's first expert: the next step is another transformer's):
    the exact optimum over schedules whose last step may reuse; an open streak at the end
    reaches the output as it is."""
    model = analytic_model(rng_seed=0, gain=GAIN)
    taus = tuple(np.linspace(1.0, 0.02, 8))
    plain = STEP[:1]
    plan = plan_schedule(
        model, taus, 4.0, plain, final_steps=0, last_computes=False, path_aware=aware
    )
    assert plan.actions[-1] == "step" and not plan.out_of_reach
    best = math.inf
    for combo in itertools.product(("compute", "step"), repeat=len(taus) - 1):
        acts = ("compute", *combo)
        if acts.count("compute") <= 4.0 * 1.045:
            forms = [None if a == "compute" else "plain" for a in acts]
            best = min(best, predicted_error(model, taus, acts, forms, path_aware=aware))
    assert plan.predicted == pytest.approx(best, rel=1e-9)
    assert predicted_error(model, taus, plan.actions, plan.forms, path_aware=aware) == (
        pytest.approx(best, rel=1e-9)
    )
    # By default the last step computes.
    assert plan_schedule(model, taus, 4.0, plain, final_steps=0).actions[-1] == "compute"


def test_a_scaled_stretch_is_planned_with_more_computes():
    """``scale`` multiplies the errors of reuses at some steps (a run's correction): the exact
    optimum under it, and reuses move out of the scaled stretch."""
    model = analytic_model(rng_seed=1)
    taus = tuple(np.linspace(1.0, 0.02, 9))
    scale = (1.0, 1.0, 1.0, 50.0, 50.0, 50.0, 1.0, 1.0, 1.0)
    plain = plan_schedule(model, taus, 4.5, STEP)
    scaled = plan_schedule(model, taus, 4.5, STEP, scale=scale)
    want, _ = brute_force(model, taus, 4.5, STEP, scale=scale)
    assert scaled.predicted == pytest.approx(want, rel=1e-9)
    inside = slice(3, 6)
    count = lambda p: p.actions[inside].count("compute")  # noqa: E731
    assert count(scaled) > count(plain)
    assert sum(a == "compute" for a in scaled.actions) == sum(a == "compute" for a in plain.actions)


def test_plan_spends_the_budget_and_no_more():
    model = analytic_model()
    for n in (20, 30, 50):
        taus = tuple(np.linspace(1.0, 0.02, n))
        for speedup in (1.5, 2.0, 2.25, 3.0):
            budget = n / speedup
            plan = plan_schedule(model, taus, budget, STEP)
            assert plan.cost <= budget * 1.045 + 1e-9
            # It spends within one step of what it may (more compute never hurts the model).
            assert plan.cost >= budget - 1.0
            computes = sum(a == "compute" for a in plan.actions)
            assert computes == pytest.approx(plan.cost)


def test_a_budget_between_reachable_computes_takes_the_nearest():
    """With step reuses only, whole steps are all a plan can spend: 4.6 steps (±4.5 %) has none
    in its window; the nearest, 5 (+8.7 %), is planned rather than 4 (-13 %), and said to be
    out of reach. A budget within 5 % of a reachable compute is not out of reach."""
    from mixcache.policy.planner import plan_run

    model = analytic_model(rng_seed=2, with_cfg=False)
    taus = tuple(np.linspace(1.0, 0.02, 10))
    plan = plan_run(model, taus, 4.6, 0.0, STEP, start=0, computes=[], guidance_scale=5.0)
    assert plan.cost == pytest.approx(5.0) and plan.out_of_reach, plan.code()
    near = plan_run(model, taus, 4.21, 0.0, STEP, start=0, computes=[], guidance_scale=5.0)
    assert near.cost == pytest.approx(4.0) and not near.out_of_reach, near.code()
    # Below everything reachable (the toy needs 4 computes): the least, out of reach.
    far = plan_run(model, taus, 1.25, 0.0, STEP, start=0, computes=[], guidance_scale=5.0)
    assert far.out_of_reach and far.cost == pytest.approx(4.0)


def test_budget_out_of_reach_plans_the_least_compute():
    # 10 steps of this model span ~3 calibration steps each; reuses reach 8 of them, so x3
    # (3.3 computes) would need reuses further from their entry than anything measured: the
    # plan is then the one of least compute any schedule can have, lowest error among those,
    # and says it is out of reach (not a fall back to something unplanned).
    model = analytic_model()
    taus = tuple(np.linspace(1.0, 0.02, 10))
    plan = plan_schedule(model, taus, 10 / 3, STEP)
    assert plan.out_of_reach
    # The brute force at every budget: the least compute that has any finite schedule.
    least = next(b for b in range(1, 11) if math.isfinite(brute_force(model, taus, b, STEP)[0]))
    assert least > (10 / 3) * 1.045
    assert plan.cost == pytest.approx(least)
    want, _ = brute_force(model, taus, least / 1.045, STEP)
    assert plan.predicted == pytest.approx(want, rel=1e-9)
    # Within reach, the flag is off.
    assert not plan_schedule(model, taus, 5.0, STEP).out_of_reach


def test_more_budget_never_predicts_more_error():
    model = analytic_model(rng_seed=3)
    taus = tuple(np.linspace(1.0, 0.02, 20))
    errors = [plan_schedule(model, taus, b, STEP).predicted for b in (5, 7, 9, 11, 14)]
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > errors[-1]


def test_interpolation_reads_other_step_counts_between_grid_points():
    model = analytic_model()
    taus = model.taus
    # On a grid point: exact.
    assert model.reuse_error("step", "plain", taus[4], taus[6]) == pytest.approx(
        (taus[4] - taus[6]) * (1 + taus[4])
    )
    # Between grid points (a 12-step run's τ): the analytic value, to interpolation accuracy.
    run = np.linspace(1.0, 0.02, 12)
    for a, t in ((1, 2), (3, 5), (6, 7)):
        want = (run[a] - run[t]) * (1 + run[a])
        got = model.reuse_error("step", "plain", run[a], run[t])
        assert got == pytest.approx(want, rel=0.05)
    # Beyond the measured gaps: not allowed.
    assert model.reuse_error("step", "plain", taus[0], taus[20]) == math.inf


def test_cfg_and_block_impact_take_the_step_curves_shape():
    """A granularity measured at few points is read as its ratio to the step curve: exact at its
    own points, the step curve's shape between and beyond them (not flat from its nearest
    point, which under-prices an early reuse where the impact rises steeply)."""
    base = analytic_model()
    step = ((0.3, 2.0), (0.8, 1.0), (0.95, 4.0), (0.99, 20.0))
    cfg = ((0.5, 0.8), (0.9, 1.5))  # the step curve is 1.6 at 0.5 and 3.0 at 0.9: ratio 0.5
    model = ErrorModel(
        base.taus, GAPS, PREV, base.plain, base.linear, base.fresh,
        {"step": step, "cfg": cfg}, guidance_scale=5.0,
    )  # fmt: skip
    assert model.impact_at("step", 0.97) == pytest.approx(12.0)
    for tau, want in ((0.5, 0.8), (0.9, 1.5), (0.97, 6.0), (0.99, 10.0), (0.3, 1.0)):
        assert model.impact_at("cfg", tau) == pytest.approx(want)
    # The ratio itself is interpolated: 0.5 at 0.5 and at 0.9, so 0.5 at 0.7 as well.
    assert model.impact_at("cfg", 0.7) == pytest.approx(0.5 * np.interp(0.7, [0.3, 0.8], [2, 1]))
    # Without a step curve each granularity is read on its own.
    alone = ErrorModel(
        base.taus, GAPS, PREV, {"cfg": base.plain["cfg"]}, {}, {"cfg": base.fresh["cfg"]},
        {"cfg": cfg}, guidance_scale=5.0,
    )  # fmt: skip
    assert alone.impact_at("cfg", 0.99) == pytest.approx(1.5)


def test_cfg_error_follows_the_run_guidance_scale():
    model = analytic_model()
    t = model.taus
    r3 = model.reuse_error("cfg", "plain", t[5], t[7], guidance_scale=3.0)
    r7 = model.reuse_error("cfg", "plain", t[5], t[7], guidance_scale=7.0)
    # |−(g−1)·e_u| / |g·c − (g−1)·u| with c = u: (g − 1)·0.02 / 1.
    assert r3 == pytest.approx(2 * 0.02)
    assert r7 == pytest.approx(6 * 0.02)
    # No CFG in the run: a cfg reuse errs by nothing the guided output sees... and is never
    # offered by the controller; step errors are read at g = 1 (cond only).
    assert model.reuse_error("step", "plain", t[5], t[7], guidance_scale=1.0) == pytest.approx(
        model.reuse_error("step", "plain", t[5], t[7], guidance_scale=5.0)
    )


def test_linear_needs_a_previous_compute():
    model = analytic_model()
    plan = plan_schedule(model, tuple(np.linspace(1, 0.02, 10)), 6, [STEP[1]])
    first_reuse = next(i for i, a in enumerate(plan.actions) if a != "compute")
    assert sum(a == "compute" for a in plan.actions[:first_reuse]) >= 2


def test_replan_from_the_middle_of_a_run():
    model = analytic_model()
    taus = tuple(np.linspace(1, 0.02, 20))
    plan = plan_schedule(model, taus, 5.0, STEP, start=8, last_compute=6, prev_compute=3)
    assert len(plan.actions) == 12 and plan.start == 8
    assert plan.action_at(19) == ("compute", None)
    assert plan.action_at(3) == ("compute", None)  # outside the plan: compute


def test_round_trip_and_packing():
    model = analytic_model(rng_seed=5)
    again = ErrorModel.from_dict(model.to_dict())
    t = model.taus
    for g, f, p in (("step", "plain", None), ("step", "linear", t[2]), ("cfg", "plain", None)):
        a = model.reuse_error(g, f, t[4], t[7], p)
        assert again.reuse_error(g, f, t[4], t[7], p) == pytest.approx(a, rel=2e-3)
    sized = analytic_model(rng_seed=5, size=SIZE, last_impact=0.25)
    again = ErrorModel.from_dict(sized.to_dict())
    assert again.size_exponent == SIZE and again.last_impact == 0.25
    reach = tuple((*p, 4.0) for p in SIZE)
    assert ErrorModel.from_dict(analytic_model(size=reach).to_dict()).size_exponent == reach
    assert ErrorModel.from_dict(model.to_dict()).last_impact is None
    table = np.array([[1.0, np.nan], [1e-3, -2.5]])
    back = unpack_table(pack_table(table))
    assert np.isnan(back[0, 1])
    assert np.allclose(np.nan_to_num(back), np.nan_to_num(table), rtol=1e-3)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"taus": (0.1, 0.5, 0.9)}, "decreasing"),
        ({"gaps": (0, 1)}, "gaps"),
        ({"impact": {}}, "impact"),
        ({"plain": {"warp": np.zeros((30, 6, 3))}}, "unknown granularity"),
        ({"size_exponent": ((0.5, -1.0),)}, "size_exponent"),
        ({"size_exponent": ((0.5, 0.8, 0.0),)}, "size_exponent"),
        ({"size_exponent": ((0.5, 0.8, 2.0, 1.0),)}, "size_exponent"),
        ({"size_exponent": ((0.5, 0.8, 2.0), (0.9, 0.6))}, "all alike"),
        ({"last_impact": math.nan}, "last_impact"),
    ],
)
def test_malformed_error_model_is_refused(change, message):
    good = analytic_model(with_cfg=False)
    fields = {
        "taus": good.taus,
        "gaps": good.gaps,
        "prev_gaps": good.prev_gaps,
        "plain": good.plain,
        "linear": good.linear,
        "fresh": good.fresh,
        "impact": good.impact,
    }
    fields.update(change)
    with pytest.raises(ConfigError, match=message):
        ErrorModel(**fields)
    with pytest.raises(ConfigError, match="malformed"):
        ErrorModel.from_dict({"taus": [1.0]})


def test_bad_plan_arguments():
    model = analytic_model()
    taus = tuple(np.linspace(1, 0.02, 10))
    with pytest.raises(ConfigError, match="objective"):
        plan_schedule(model, taus, 5, STEP, objective="median")
    with pytest.raises(ConfigError, match="start"):
        plan_schedule(model, taus, 5, STEP, start=10)


def test_planned_remembers_per_model_and_arguments(monkeypatch):
    """``planned`` returns the plan made before for an identical call, and plans again for
    another budget or another model object (whose tables may differ)."""
    import mixcache.policy.planner as planner

    monkeypatch.setattr(planner, "_PLANS", planner.OrderedDict())
    calls = []
    real = planner.plan_schedule
    monkeypatch.setattr(planner, "plan_schedule", lambda *a, **k: calls.append(1) or real(*a, **k))
    taus = tuple(np.linspace(1, 0.02, 12))
    model = analytic_model(12)
    first = planner.planned(model, taus, 6.0, STEP, final_steps=1)
    assert planner.planned(model, taus, 6.0, STEP, final_steps=1) is first and len(calls) == 1
    planner.planned(model, taus, 7.0, STEP, final_steps=1)
    planner.planned(analytic_model(12), taus, 6.0, STEP, final_steps=1)
    assert len(calls) == 3
    assert planner.planned(model, taus, 6.0, STEP, final_steps=1) == real(model, taus, 6.0, STEP)
