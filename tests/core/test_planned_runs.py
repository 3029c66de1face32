"""Measured plans on tiny real pipelines: calibration, the run following its plan, the budget,
the profile found automatically, the fallback warning, and delta1/delta2 in budget mode."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.api import run_taus
from mixcache.calibration import calibrate_errors, profile_from_errors
from mixcache.profiles import PROFILE_FILE, ImpactProfile, transformer_fingerprint
from mixcache_lab.tiny import make_tiny_hunyuan_pipeline, make_tiny_wan_pipeline, tiny_call_kwargs

PROMPT = "a red circle moving right"


def _call(steps: int, seed: int = 0) -> dict:
    kw = tiny_call_kwargs("wan", num_inference_steps=steps)
    kw["generator"] = torch.Generator().manual_seed(seed)
    return kw


def _generate(pipe, config, call: dict):
    """One generation with MixCache applied (removed after): its stats."""
    handle = apply_mixcache(pipe, config)
    try:
        pipe(PROMPT, **call)
        return handle.stats()
    finally:
        handle.remove()


@pytest.fixture(scope="module")
def tiny_profile(tiny_wan_pipe) -> ImpactProfile:
    call = tiny_call_kwargs("wan")
    for key in ("num_inference_steps", "output_type"):
        call.pop(key)
    errors = calibrate_errors(
        tiny_wan_pipe,
        [PROMPT],
        num_inference_steps=16,
        call_kwargs=call,
        impact_fractions={"step": (0.3, 0.7), "cfg": (0.5,), "block": (0.5,)},
    )
    return profile_from_errors(tiny_wan_pipe, errors)


def test_calibration_measures_every_granularity(tiny_profile, tiny_wan_pipe):
    errors = tiny_profile.errors
    assert errors.granularities == ("step", "cfg", "block")
    assert tiny_profile.fingerprint == transformer_fingerprint(tiny_wan_pipe.transformer)
    # One exact run + 4 single reuses + one at the last step, whose impact is its own.
    assert "6 generations" in errors.notes and "at the last step (15)" in errors.notes
    assert errors.last_impact is not None and errors.last_impact > 0
    t = errors.taus
    # A reuse further from its entry errs more (the tables are measured, not assumed).
    near = errors.reuse_error("step", "plain", t[4], t[5])
    far = errors.reuse_error("step", "plain", t[4], t[9])
    assert 0 < near < far
    again = ImpactProfile.from_dict(tiny_profile.to_dict())
    assert again.errors.reuse_error("step", "plain", t[4], t[9]) == pytest.approx(far, rel=1e-2)


@pytest.mark.parametrize("steps", [10, 20, 33])
def test_run_follows_its_plan_and_lands_the_budget(tiny_profile, tiny_wan_pipe, steps):
    cfg = MixCacheConfig.preset("balanced", impact=tiny_profile)
    stats = _generate(tiny_wan_pipe, cfg, _call(steps))
    assert stats.plan is not None and len(stats.plan) == steps
    assert stats.replans == 0 and stats.plan_note is None
    ref = [r for r in stats.records if r.branch == "cond"]
    letters = {"compute": "C", "step": "s", "cfg": "C", "block": "b"}
    executed = "".join(letters[r.action] for r in ref)
    # The reference branch of a cfg step computes; the uncond branch reuses.
    assert executed == stats.plan.replace("S", "s").replace("g", "C").replace("G", "C")
    for r in ref:
        assert "plan: " in r.reason
    want = 1 / 2.25
    assert abs(stats.compute_fraction - want) <= 0.05 * want
    assert not stats.warnings


def test_budget_out_of_reach_still_follows_a_measured_plan(tiny_profile, tiny_wan_pipe, caplog):
    # x5 at 10 steps: the first step, the final compute before the last step and the streak
    # cap force more compute than 2 steps. The run follows the plan of least compute (placed by
    # the measured errors) rather than falling back to the step-by-step price, and says so.
    cfg = MixCacheConfig.preset("balanced", impact=tiny_profile, block_speedup=5.0)
    handle = apply_mixcache(tiny_wan_pipe, cfg)
    try:
        with caplog.at_level(logging.INFO, logger="mixcache"):
            tiny_wan_pipe(PROMPT, **_call(10))
        stats = handle.stats()
    finally:
        handle.remove()
    assert stats.plan is not None and len(stats.plan) == 10
    assert stats.plan_note and "out of reach" in stats.plan_note
    assert "out of reach" in str(stats)
    assert any("out of reach" in r.getMessage() for r in caplog.records)
    ref = [r for r in stats.records if r.branch == "cond"]
    assert all(r.reason.startswith("plan: ") for r in ref)
    assert stats.compute_fraction > 1 / 5 * 1.05  # the miss is real and reported
    assert stats.warnings  # the end-of-run budget check says it missed


def test_planned_reuse_reads_entries_in_the_planned_form(tiny_profile, tiny_wan_pipe):
    """plain-only and linear-allowed plans differ, and a plain-only run never extrapolates:
    its outputs equal a run whose entries were never extrapolated (residual_order=0)."""
    plain = MixCacheConfig.preset("balanced", impact=tiny_profile, plan_forms=("plain",))
    order0 = plain.replace(residual_order=0)
    outs = []
    for cfg in (plain, order0):
        handle = apply_mixcache(tiny_wan_pipe, cfg)
        try:
            outs.append(tiny_wan_pipe(PROMPT, **_call(20)).frames)
            plan = handle.stats().plan
        finally:
            handle.remove()
        assert "S" not in plan and "B" not in plan and "G" not in plan
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("last_impact", [1e-9, None])
def test_a_last_step_measured_cheap_is_reused(tiny_profile, tiny_wan_pipe, last_impact):
    """A model whose last step was measured nearly free plans a step reuse there, and the run
    executes it (the final compute before it keeps its entries); without the measurement the
    last step computes. Either way the budget lands."""
    import dataclasses

    errors = dataclasses.replace(tiny_profile.errors, last_impact=last_impact)
    profile = dataclasses.replace(tiny_profile, errors=errors)
    stats = _generate(tiny_wan_pipe, MixCacheConfig.preset("balanced", impact=profile), _call(12))
    last = [r for r in stats.records if r.step == 11]
    assert last and {r.action for r in last} == ({"step"} if last_impact else {"compute"})
    assert stats.plan[-1] in (("s", "S") if last_impact else ("C",)), stats.plan
    assert stats.plan[-2] == "C"  # final_steps=2: the step before it still computes
    want = 1 / 2.25
    assert abs(stats.compute_fraction - want) <= 0.05 * want


def test_profile_found_beside_the_weights_and_in_the_cache(
    tiny_profile, tmp_path, monkeypatch, caplog
):
    pipe = make_tiny_wan_pipeline()  # a fresh one: its config is changed below
    monkeypatch.setenv("MIXCACHE_CACHE_DIR", str(tmp_path / "cache"))
    # Nothing calibrated for this model: a warning naming the command, and the shipped profile.
    with caplog.at_level(logging.WARNING, logger="mixcache"):
        handle = apply_mixcache(pipe, "balanced")
        handle.remove()
    assert "no profile measured on this WanTransformer3DModel" in caplog.text
    assert "mixcache calibrate <pipeline dir>" in caplog.text
    caplog.clear()
    # In the user's cache, by fingerprint.
    cache = tmp_path / "cache"
    cache.mkdir()
    tiny_profile.save(cache / f"{transformer_fingerprint(pipe.transformer)}.json")
    with caplog.at_level(logging.INFO, logger="mixcache"):
        handle = apply_mixcache(pipe, "balanced")
        pipe(PROMPT, **_call(10))
        stats = handle.stats()
        handle.remove()
    assert "no profile measured" not in caplog.text
    assert stats.profile == str(cache / f"{transformer_fingerprint(pipe.transformer)}.json")
    assert stats.plan is not None
    # Beside the weights: the directory the transformer was loaded from wins.
    model_dir = tmp_path / "model" / "transformer"
    model_dir.mkdir(parents=True)
    tiny_profile.save(model_dir / PROFILE_FILE)
    pipe.transformer.register_to_config(_name_or_path=str(model_dir))
    handle = apply_mixcache(pipe, "balanced")
    pipe(PROMPT, **_call(10))
    stats = handle.stats()
    handle.remove()
    assert stats.profile == str(model_dir / PROFILE_FILE)
    assert "profile: " in stats.summary()


def test_profile_without_error_model_falls_back_to_the_price(tiny_wan_pipe):
    plain_profile = ImpactProfile(family="wan", measured_on="test: impacts only")
    stats = _generate(
        tiny_wan_pipe, MixCacheConfig.preset("balanced", impact=plain_profile), _call(20)
    )
    assert stats.plan is None
    assert stats.plan_note and "no error model" in stats.plan_note
    assert abs(stats.compute_fraction - 1 / 2.25) <= 0.05 / 2.25


def test_delta_thresholds_do_not_act_in_budget_mode(tiny_wan_pipe):
    """delta1/delta2 are in one model's units of drift: in budget mode they change nothing."""
    actions = []
    for d1, d2 in ((0.0, 0.0), (50.0, 100.0)):
        cfg = MixCacheConfig.preset("balanced", planner="priced", delta1=d1, delta2=d2)
        handle = apply_mixcache(tiny_wan_pipe, cfg)
        try:
            tiny_wan_pipe(PROMPT, **_call(30))
            actions.append([(r.step, r.branch, r.action) for r in handle.stats().records])
        finally:
            handle.remove()
    assert actions[0] == actions[1]


def test_plan_command_prints_and_plots_the_schedule(tmp_path):
    from click.testing import CliRunner

    from mixcache_lab.cli.plan import plan

    png = tmp_path / "plan.png"
    result = CliRunner().invoke(plan, ["tiny-wan", "--steps", "12", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("plan "))
    code = line.split()[1]
    # final_steps=2: the step before the last computes; the last is planned (the shipped Wan
    # profile measured it).
    assert len(code) == 12 and code[0] == "C" and code[-2] == "C"
    assert "measured on another model" in result.output  # tiny-wan has no profile of its own
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(plan, ["tiny-wan", "--steps", "1"])
    assert bad.exit_code != 0 and "--steps" in bad.output


@pytest.mark.parametrize(
    ("model", "steps"), [("tiny-wan", 12), ("tiny-wan", 23), ("tiny-hunyuan", 10)]
)
def test_plan_command_prints_the_plan_a_run_executes(model, steps):
    """`mixcache plan` and a run make the same call (planner.plan_run) on the same times: the
    printed schedule is the one the run makes before its first step, and, uncorrected, the
    executed one, on the same profile (here the family's shipped one; a correction is tested
    below). HunyuanVideo's pipeline passes its own sigmas, so the times of
    ``scheduler.set_timesteps(steps)`` differ from a run's: the command reads the pipeline's."""
    from click.testing import CliRunner

    from mixcache_lab.cli.plan import plan

    result = CliRunner().invoke(plan, [model, "--steps", str(steps)])
    assert result.exit_code == 0, result.output
    assert "normalised time from the pipeline's own schedule" in result.output
    line = next(x for x in result.output.splitlines() if x.strip().startswith("plan "))
    if model == "tiny-wan":
        pipe = make_tiny_wan_pipeline()
        call = _call(steps)
        assert call["guidance_scale"] == 5.0  # the command's default scale
    else:
        pipe = make_tiny_hunyuan_pipeline()
        call = tiny_call_kwargs("hunyuan", num_inference_steps=steps)
        call.update(true_cfg_scale=5.0, negative_prompt="blurry")  # the command's default scale
        pipe.scheduler.set_timesteps(steps)
        assert run_taus(pipe) != _run_taus_of(pipe, call)  # the pitfall is real here
    stats = _generate(pipe, MixCacheConfig.preset("balanced", plan_correction=None), call)
    assert stats.replans == 0
    assert line.split()[1] == stats.plan
    # The summary says where caching started: the plan's first reuse (a plan has no trigger).
    first = next(i for i, c in enumerate(stats.plan) if c != "C")
    assert f"caching started: step {first} (planned)" in stats.summary()


def test_plan_command_makes_the_call_the_runs_make():
    """`--call` (and the resolution / input options shared with `mixcache calibrate`) reach the
    probe call: with the sigmas a run passes, the printed schedule is that run's, and differs
    from the default one; a call the pipeline refuses falls back and says which options to
    pass; a malformed item is refused."""
    from click.testing import CliRunner

    from mixcache_lab.cli.plan import plan

    sigmas = [1.0, 0.97, 0.93, 0.85, 0.7, 0.5, 0.3, 0.1]
    runner = CliRunner()
    result = runner.invoke(plan, ["tiny-hunyuan", "--steps", "8", "--call", f"sigmas={sigmas}"])
    assert result.exit_code == 0, result.output
    assert "normalised time from the pipeline's own schedule" in result.output

    def code(output: str) -> str:
        return next(x for x in output.splitlines() if x.strip().startswith("plan ")).split()[1]

    default = runner.invoke(plan, ["tiny-hunyuan", "--steps", "8"])
    assert code(result.output) != code(default.output)
    call = tiny_call_kwargs("hunyuan", num_inference_steps=8)
    call.update(true_cfg_scale=5.0, negative_prompt="blurry", sigmas=sigmas)
    pipe = make_tiny_hunyuan_pipeline()
    stats = _generate(pipe, MixCacheConfig.preset("balanced", plan_correction=None), call)
    assert code(result.output) == stats.plan
    refused = runner.invoke(plan, ["tiny-wan", "--steps", "8", "--call", "no_such_argument=1"])
    assert refused.exit_code == 0, refused.output
    assert "the pipeline's call failed" in refused.output and "--call" in refused.output
    bad = runner.invoke(plan, ["tiny-wan", "--call", "nope"])
    assert bad.exit_code != 0 and "KEY=VALUE" in bad.output


def _run_taus_of(pipe, call) -> list[float]:
    pipe(PROMPT, **call)
    return run_taus(pipe)


def test_repeated_generations_plan_once(tiny_profile, tiny_wan_pipe, monkeypatch):
    """Plans are remembered per process: repeated generations, and a new handle applied after
    the first is removed (a service applying per request), do not plan again."""
    import mixcache.policy.planner as planner

    calls = []
    real = planner.plan_schedule
    monkeypatch.setattr(planner, "plan_schedule", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(planner, "_PLANS", planner.OrderedDict())  # nothing from other tests
    config = MixCacheConfig.preset("balanced", impact=tiny_profile)
    plans = []
    for _ in range(2):  # two handles, one after the other
        handle = apply_mixcache(tiny_wan_pipe, config)
        try:
            for seed in (0, 1):
                tiny_wan_pipe(PROMPT, **_call(20, seed))
                plans.append(handle.stats().plan)
        finally:
            handle.remove()
    assert len(calls) == 1 and len(set(plans)) == 1
    handle = apply_mixcache(tiny_wan_pipe, config)
    try:
        tiny_wan_pipe(PROMPT, **_call(12))  # another step count: a plan of its own
    finally:
        handle.remove()
    assert len(calls) == 2


def _patched_expectation(monkeypatch, drop: float):
    """The calibration's expected drift (the correction's one call: plain step reuse read at
    CFG 1) as measured for the run's first reading, then ``drop`` times that: from the second
    reading on the run moves 1/drop times more than calibrated, relative to its start."""
    from mixcache.policy.planner import ErrorModel

    real = ErrorModel.reuse_error
    calls = []

    def fake(self, granularity, form, tau_entry, tau_use, tau_prev=None, guidance_scale=None):
        value = real(self, granularity, form, tau_entry, tau_use, tau_prev, guidance_scale)
        if guidance_scale == 1.0 and granularity == "step" and form == "plain":
            calls.append(value)
            return value if len(calls) == 1 else value * drop
        return value

    monkeypatch.setattr(ErrorModel, "reuse_error", fake)
    return calls


@pytest.mark.parametrize(("correction", "drop"), [(2.0, 0.02), (None, 0.02), (2.0, 50.0)])
def test_a_prompt_moving_faster_than_calibrated_moves_a_compute(
    tiny_profile, tiny_wan_pipe, monkeypatch, correction, drop
):
    """The run compares its stack residual's drift with the calibration's: when the ratio grows
    (here 50x, relative to the run's first reading) it re-plans the rest of the run with the next
    steps' errors scaled, so a compute moves there; the budget still lands, the record and the
    stats say why. plan_correction=None never re-plans; a prompt moving 50x slower than
    calibrated is not discounted (no re-plan)."""
    cfg = MixCacheConfig.preset("balanced", impact=tiny_profile, plan_correction=correction)
    handle = apply_mixcache(tiny_wan_pipe, cfg)
    try:
        tiny_wan_pipe(PROMPT, **_call(24))
        plain = handle.stats()
        calls = _patched_expectation(monkeypatch, drop=drop)
        tiny_wan_pipe(PROMPT, **_call(24))
        moved = handle.stats()
    finally:
        handle.remove()
    ref = [r for r in moved.records if r.branch == "cond"]
    executed = "".join("C" if r.action == "compute" else "s" for r in ref)
    planned = moved.plan.replace("S", "s").replace("g", "C").replace("G", "C").replace("b", "s")
    assert moved.plan == plain.plan  # the plan made before the run is the same
    if correction is None:
        assert not calls  # never consulted
        assert moved.replans == 0 and executed == planned and moved.plan_note is None
        return
    assert len(calls) >= 2
    if drop > 1:  # slower than calibrated: consulted, never acted on
        assert moved.replans == 0 and executed == planned and moved.plan_note is None
        return
    assert moved.replans >= 1 and executed != planned
    why = [r for r in ref if "re-planned at step" in r.reason]
    assert why and why[0].step >= 2
    # The measured ratio is the forced 50x times the tiny model's own variation of its drift.
    phi = float(re.search(r"moved x([0-9.]+)", moved.plan_note).group(1))
    assert 25 <= phi <= 100
    # The steps the correction scaled compute more often than the plan made before the run.
    lo, hi = (int(x) for x in re.search(r"errors of steps (\d+)-(\d+)", moved.plan_note).groups())
    assert lo == why[0].step
    assert executed[lo : hi + 1].count("C") > planned[lo : hi + 1].count("C")
    want = 1 / 2.25
    assert abs(moved.compute_fraction - want) <= 0.05 * want
    assert not moved.warnings


@pytest.mark.parametrize("scale", [3.0, 7.0])
def test_a_hunyuan_run_is_planned_at_its_true_cfg_scale(monkeypatch, scale):
    """HunyuanVideo keeps its true-CFG scale only as a local of the running call (its
    ``_guidance_scale`` is the embedded guidance): the plan is made at the scale the run uses,
    not at the calibration's; outside a call the scale is unknown."""
    import mixcache.controller.core as core
    from mixcache.api import _guidance_scale

    seen = []
    real = core.plan_run

    def spy(*args, **kwargs):
        seen.append(kwargs.get("guidance_scale"))
        return real(*args, **kwargs)

    monkeypatch.setattr(core, "plan_run", spy)
    pipe = make_tiny_hunyuan_pipeline()
    call = tiny_call_kwargs("hunyuan", num_inference_steps=12)
    call.update(true_cfg_scale=scale, negative_prompt="blurry")
    stats = _generate(pipe, MixCacheConfig.preset("balanced", plan_correction=None), call)
    assert len(stats.plan) == 12
    assert seen and set(seen) == {scale}
    assert _guidance_scale(pipe) is None
