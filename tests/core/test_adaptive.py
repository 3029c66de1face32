"""Budget mode on real tiny pipelines, scale-freedom, the no-op warning, guards and the bugs of
the adaptive-MixCache work (each test here failed before its fix)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from toy import TIMESTEPS, E, ToyTransformer, full, run_loop

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.api import _num_steps_hint, _step_index_hint
from mixcache.controller import Controller
from mixcache.controller.probe import InputChangeProbe
from mixcache_lab.tiny import tiny_call_kwargs

PROMPT = "a red circle moving right"


def generate(pipe, family, steps, seed=0, **kw):
    kwargs = tiny_call_kwargs(family, num_inference_steps=steps, **kw)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs).frames


@pytest.mark.parametrize("steps", [12, 20, 30])
@pytest.mark.parametrize("target", [1.5, 2.0, 2.5, 3.0])
def test_budget_lands_within_5_percent_on_random_weights(tiny_wan_pipe, steps, target):
    cfg = MixCacheConfig.preset("balanced", block_speedup=target)
    with apply_mixcache(tiny_wan_pipe, cfg) as handle:
        generate(tiny_wan_pipe, "wan", steps)
    stats = handle.stats()
    want = 1.0 / target
    assert abs(stats.compute_fraction - want) <= 0.05 * want, stats.summary()
    assert not stats.warnings


def test_budget_without_cfg_branch_and_on_hunyuan(tiny_wan_pipe, tiny_hunyuan_pipe):
    for pipe, family, kw in (
        (tiny_wan_pipe, "wan", {"guidance_scale": 1.0}),
        (tiny_hunyuan_pipe, "hunyuan", {}),
        (
            tiny_hunyuan_pipe,
            "hunyuan",
            {"true_cfg_scale": 3.0, "negative_prompt": "blurry low quality video"},
        ),
    ):
        with apply_mixcache(pipe, MixCacheConfig.preset("balanced", block_speedup=2.0)) as h:
            generate(pipe, family, 20, **kw)
        assert abs(h.stats().compute_fraction - 0.5) <= 0.025, h.stats().summary()


def _median_output_change(pipe, run):
    """Median relative L1 change of the prediction from step to step (``run`` without CFG)."""
    outs = []

    def keep(module, args, kwargs, output):
        sample = output.sample if hasattr(output, "sample") else output[0]
        outs.append(sample.detach().clone())

    hook = pipe.transformer.register_forward_hook(keep, with_kwargs=True)
    try:
        run()
    finally:
        hook.remove()
    pairs = zip(outs[1:], outs[:-1], strict=True)
    changes = sorted(((a - b).abs().mean() / b.abs().mean()).item() for a, b in pairs)
    return changes[len(changes) // 2]


@pytest.mark.slow
def test_same_budget_meaning_on_two_models_whose_change_differs_tenfold(tiny_wan_pipe):
    """The old thresholds were in units of one model's change; a budget is not."""
    from mixcache_lab.bundled import load_bundled_pipeline

    bundled = load_bundled_pipeline()

    def run_tiny(**kw):
        generate(tiny_wan_pipe, "wan", 12, **kw)

    def run_bundled(**kw):
        bundled(
            PROMPT,
            num_inference_steps=50,
            generator=torch.Generator().manual_seed(0),
            output_type="latent",
            **kw,
        )

    tiny_change = _median_output_change(tiny_wan_pipe, lambda: run_tiny(guidance_scale=1.0))
    bundled_change = _median_output_change(bundled, lambda: run_bundled(guidance_scale=1.0))
    assert tiny_change > 10 * bundled_change  # the two scales really differ tenfold
    for target in (2.0, 3.0):
        cfg = MixCacheConfig.preset("fast", block_speedup=target)
        for pipe, run in ((tiny_wan_pipe, run_tiny), (bundled, run_bundled)):
            with apply_mixcache(pipe, cfg) as handle:
                run()
            fraction = handle.stats().compute_fraction
            assert abs(fraction - 1 / target) <= 0.05 / target, (target, fraction)


def test_a_run_that_reuses_nothing_warns_and_says_so(tiny_wan_pipe, caplog):
    never = MixCacheConfig.preset(
        "paper", trigger_threshold=0.0
    )  # the probe change is never below 0
    with (
        caplog.at_level(logging.WARNING, logger="mixcache"),
        apply_mixcache(tiny_wan_pipe, never) as handle,
    ):
        generate(tiny_wan_pipe, "wan", 8)
    stats = handle.stats()
    assert stats.compute_fraction == 1.0
    assert any("reused nothing" in r.message for r in caplog.records)
    assert "warning: this generation reused nothing (caching never started)" in stats.summary()
    # A dry run reuses nothing on purpose: no warning, but the summary says what it measures.
    caplog.clear()
    with (
        caplog.at_level(logging.WARNING, logger="mixcache"),
        apply_mixcache(tiny_wan_pipe, MixCacheConfig.preset("paper", dry_run=True)) as handle,
    ):
        generate(tiny_wan_pipe, "wan", 8)
    assert not any("reused nothing" in r.message for r in caplog.records)
    assert "not to tune thresholds" in handle.stats().summary()


def test_steps_differing_from_the_plan_warn(tiny_wan_pipe, caplog):
    def stop_at_3(pipe, i, t, kw):
        if i == 3:
            pipe._interrupt = True
        return kw

    cfg = MixCacheConfig.preset("balanced", block_speedup=2.0)
    with (
        caplog.at_level(logging.WARNING, logger="mixcache"),
        apply_mixcache(tiny_wan_pipe, cfg) as handle,
    ):
        generate(tiny_wan_pipe, "wan", 10, callback_on_step_end=stop_at_3)
    assert "ran 4 steps but 10 were planned" in " ".join(handle.stats().warnings)


def test_num_steps_come_from_the_pipeline_not_the_scheduler_length():
    # Video-to-video with strength 0.8: the scheduler holds 10 timesteps, 8 are run.
    pipe = SimpleNamespace(scheduler=SimpleNamespace(timesteps=list(range(10))), _num_timesteps=8)
    assert _num_steps_hint(pipe)() == 8
    del pipe._num_timesteps
    assert _num_steps_hint(pipe)() == 10  # before the pipeline set it: the scheduler


def test_step_index_from_the_scheduler_counts_from_its_begin_index():
    sched = SimpleNamespace(step_index=None, begin_index=None)
    hint = _step_index_hint(SimpleNamespace(scheduler=sched))
    assert hint() == 0
    sched.step_index, sched.begin_index = 12, 10  # a run truncated by strength, third step
    assert hint() == 2
    # Truncated without begin_index (WanVideoToVideoPipeline): 10 scheduled, 8 run.
    pipe = SimpleNamespace(
        scheduler=SimpleNamespace(step_index=3, begin_index=None, timesteps=list(range(10))),
        _num_timesteps=8,
    )
    assert _step_index_hint(pipe)() == 1


def test_hunyuan_steps_are_found_without_reading_the_timestep(tiny_hunyuan_pipe, monkeypatch):
    """HunyuanVideo's contexts carry no step_index: steps come from the scheduler, with no host
    synchronisation on the timestep tensor (reading it used to sync once per forward)."""

    def no_sync(self, args, kwargs):
        raise AssertionError("the timestep tensor was read")

    monkeypatch.setattr(Controller, "_timestep", no_sync)
    kw = {"true_cfg_scale": 3.0, "negative_prompt": "blurry low quality video"}
    with apply_mixcache(
        tiny_hunyuan_pipe, MixCacheConfig.preset("balanced", block_speedup=2.0)
    ) as h:
        generate(tiny_hunyuan_pipe, "hunyuan", 10, **kw)
    steps = [r.step for r in h.stats().records]
    assert steps == [s for s in range(10) for _ in ("cond", "uncond")]


def test_easycache_ratio_updates_at_every_full_compute(tiny_wan_pipe, monkeypatch):
    """k = output change / input change must follow the run even when full computes are not
    adjacent (it used to keep its first value once the cadence left gaps)."""
    seen = []
    original = InputChangeProbe.output_measured

    def spy(self, per_item, since, now):  # one video: one item
        original(self, per_item, since, now)
        moved = sum(v[0] for j, v in self.input_hist.items() if since < j <= now)
        seen.append((now - since, self.ratio_k[0], per_item[0] / moved))

    monkeypatch.setattr(InputChangeProbe, "output_measured", spy)
    cfg = MixCacheConfig.preset("balanced", block_speedup=3.0, granularities=("step",))
    with apply_mixcache(tiny_wan_pipe, cfg):
        generate(tiny_wan_pipe, "wan", 20)
    gapped = [(k, want) for gap, k, want in seen if gap > 1]
    assert gapped, seen
    # k is the output change over the input change accumulated across the gap, every time.
    for k, want in gapped:
        assert k == pytest.approx(want)
    assert len({round(k, 9) for k, _ in gapped}) > 1  # it follows the run


def test_non_finite_cache_entry_is_dropped_never_reused(caplog):
    """A float16 cache overflows where the model (float64) does not: the inf entry must not be
    reused; those steps compute, a warning is logged once, the stats count it."""
    m = ToyTransformer(cs=(2e2,) * 6, ds=(0.0,) * 6)  # residual 1200 * t: inf in float16
    cfg = MixCacheConfig.preset(
        "paper",
        granularities=("step",),
        trigger_threshold=float("inf"),
        refresh_threshold=float("inf"),
        warmup_fraction=0.0,
        min_warmup_steps=2,
        final_steps=0,
        interval_init=2,
        interval_min=2,
        interval_max=2,
        cache_dtype="float16",
    )
    h0 = torch.arange(12, dtype=torch.float64).view(1, 4, 3) / 8
    with caplog.at_level(logging.WARNING, logger="mixcache"):
        handle = apply_mixcache(m, cfg)
        out = run_loop(m, h0=h0)
        handle.remove()
    for (i, b), v in out.items():
        assert torch.isfinite(v).all()
        torch.testing.assert_close(v, full(m, h0, TIMESTEPS[i], E[b]), rtol=0, atol=0)
    stats = handle.stats()
    assert stats.compute_fraction == 1.0 and stats.nonfinite_dropped > 0
    assert sum("non-finite" in r.message for r in caplog.records) == 1
    # The same config with a cache that fits in float16 does reuse (the guard is not a no-op).
    small = ToyTransformer(cs=(1e-3,) * 6, ds=(0.0,) * 6)
    handle = apply_mixcache(small, cfg)
    run_loop(small, h0=h0)
    handle.remove()
    assert handle.stats().compute_fraction < 1.0 and handle.stats().nonfinite_dropped == 0


def _two_expert_pipe(tiny_wan_pipe):
    import copy

    from diffusers import WanPipeline

    parts = {k: v for k, v in tiny_wan_pipe.components.items() if k != "transformer_2"}
    expert = copy.deepcopy(tiny_wan_pipe.transformer)
    pipe = WanPipeline(**{**parts, "transformer_2": expert}, boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_wan22_expert_entries_are_freed_at_its_phase_end_and_the_run_meets_the_budget(
    tiny_wan_pipe,
):
    pipe = _two_expert_pipe(tiny_wan_pipe)
    kw = tiny_call_kwargs("wan", num_inference_steps=20, height=16, width=16, num_frames=1)
    held_at_switch = []

    def watch(p, i, t, cb_kwargs):
        if i == len(high) + 1:  # the low-noise expert has run one step
            held_at_switch.append(handle.controllers["transformer"]._held_bytes())
        return cb_kwargs

    cfg = MixCacheConfig.preset("balanced", block_speedup=2.0)
    handle = apply_mixcache(pipe, cfg)
    pipe.scheduler.set_timesteps(20)
    high = [i for i, t in enumerate(pipe.scheduler.timesteps) if t >= 500]
    pipe("a red cat", generator=torch.Generator().manual_seed(0), callback_on_step_end=watch, **kw)
    handle.remove()
    assert held_at_switch == [0]  # the high-noise expert holds nothing in the low-noise phase
    stats = handle.stats()
    # One budget for the whole generation: the first expert leaves room for the second one's
    # start-up steps (no entries yet) and final steps.
    assert abs(stats.compute_fraction - 0.5) <= 0.025 + 1e-9, stats.summary()
    assert not stats.warnings


@pytest.mark.parametrize("speedup", [1.8, 2.25, 2.8])
def test_wan22_experts_each_plan_their_steps_within_one_budget(tiny_wan_pipe, speedup):
    """Two experts plan from measured errors too: the first over its own steps with its share of
    the budget (leaving the second what it must compute), the second over the rest with what is
    left; the merged plan covers the run, step by step, and the whole run lands its budget."""
    pipe = _two_expert_pipe(tiny_wan_pipe)
    kw = tiny_call_kwargs("wan", num_inference_steps=20, height=16, width=16, num_frames=1)
    # plan_correction off: the executed steps are compared with the plans made before the run.
    cfg = MixCacheConfig.preset("balanced", block_speedup=speedup, plan_correction=None)
    handle = apply_mixcache(pipe, cfg)
    pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw)
    handle.remove()
    stop = handle.controllers["transformer"].window_hint()[0:2][1]
    first = handle.controllers["transformer"].last_stats
    second = handle.controllers["transformer_2"].last_stats
    stats = handle.stats()
    assert stats.plan_note is None and stats.replans == 0
    assert len(first.plan) == stop and len(second.plan) == 20 - stop
    assert stats.plan == first.plan + second.plan
    # What each step did is what the merged plan says.
    letters = {"compute": "C", "step": "s", "cfg": "g", "block": "b"}
    done = "".join(letters[r.action] for r in stats.records if r.branch == "cond")
    assert done == stats.plan.lower().replace("c", "C")
    assert second.plan[0] == "C"  # the second expert has no entries at its first step
    assert abs(stats.compute_fraction - 1 / speedup) <= 0.05 / speedup + 1e-9, stats.summary()
    assert not stats.warnings


@pytest.mark.parametrize(("speedup", "lands"), [(None, True), (20.0, False)])
def test_wan22_budget_is_checked_once_on_the_whole_generation(
    tiny_wan_pipe, caplog, speedup, lands
):
    """Two experts, one budget: the warning comes from the merged whole-generation stats, once,
    and only when the run really misses it (balanced's x2.25 lands; x20 cannot: every step
    computes block 0 at least, and the warm-up and final steps compute)."""
    pipe = _two_expert_pipe(tiny_wan_pipe)
    kw = tiny_call_kwargs("wan", num_inference_steps=20, height=16, width=16, num_frames=1)
    cfg = MixCacheConfig.preset("balanced")
    cfg = cfg.replace(block_speedup=speedup) if speedup else cfg
    with caplog.at_level(logging.WARNING, logger="mixcache"):
        handle = apply_mixcache(pipe, cfg)
        pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw)
        handle.remove()
    stats = handle.stats()
    want = 1 / cfg.block_speedup
    assert (abs(stats.compute_fraction - want) <= 0.05 * want) is lands, stats.summary()
    logged = [r.getMessage() for r in caplog.records if "budget x" in r.getMessage()]
    expected = [f"mixcache[transformer+transformer_2]: {w}" for w in stats.warnings]
    assert logged == expected and len(logged) == (0 if lands else 1)


def test_cache_byte_budget_is_respected_and_reported(tiny_wan_pipe):
    cfg = MixCacheConfig.preset("balanced", block_speedup=2.0)

    def run(config):
        peaks = []

        def watch(p, i, t, cb_kwargs):
            peaks.append(handle.controllers["transformer"]._entry_bytes())
            return cb_kwargs

        handle = apply_mixcache(tiny_wan_pipe, config)
        generate(tiny_wan_pipe, "wan", 12, callback_on_step_end=watch)
        handle.remove()
        return handle.stats(), max(peaks)

    free, free_peak = run(cfg)
    limit = free_peak // 2
    capped, capped_peak = run(cfg.replace(max_cache_bytes=limit))
    assert capped_peak <= limit < free_peak  # the entries never held more than the limit
    assert capped.over_byte_budget > 0 and free.over_byte_budget == 0
    assert any("max_cache_bytes" in w for w in capped.warnings)
    nothing, _ = run(cfg.replace(max_cache_bytes=0))
    assert nothing.compute_fraction == 1.0  # no entry kept: nothing can be reused


def _actions_of_batch(items: list[str], probe: str) -> list[str]:
    """Actions per step of one-branch toy runs on a batch of ``items``: ``"slow"`` is large and
    barely changes (timestep 5000 - 10 i, latent 100 + 0.1 i), ``"fast"`` is small and follows
    the schedule (timestep t_i, latent t_i / 100): summed over the batch, the slow item's
    magnitude would hide the fast one's change."""
    model = ToyTransformer()
    cfg = MixCacheConfig.preset("paper", granularities=("step",), step_probe=probe,
                         trigger_threshold=0.3,
                         refresh_threshold=0.3, warmup_fraction=0.0, min_warmup_steps=1,
                         final_steps=0)  # fmt: skip
    handle = apply_mixcache(model, cfg)
    n = len(TIMESTEPS)
    for i, t in enumerate(TIMESTEPS):
        latent = {"slow": 100 + 0.1 * i, "fast": t / 100}
        timestep = {"slow": 5000.0 - 10 * i, "fast": t}
        x = torch.cat([torch.full((1, 4, 3), latent[k], dtype=torch.float64) for k in items])
        ts = torch.tensor([timestep[k] for k in items], dtype=torch.float64)
        enc = torch.ones(len(items), 2, 3, dtype=torch.float64)
        with model.cache_context("cond", step_index=i, num_inference_steps=n):
            model(hidden_states=x, timestep=ts, encoder_hidden_states=enc)
    model._reset_stateful_cache()
    handle.remove()
    return [r.action for r in handle.stats().records]


@pytest.mark.parametrize("probe", ["first_block", "none"])
def test_a_batch_is_decided_by_its_fastest_item(probe):
    """One decision covers the batch: the step signal is the largest per-item change, so a
    batch decides exactly as its fast item alone would, whatever the slow item weighs."""
    slow, fast = _actions_of_batch(["slow"], probe), _actions_of_batch(["fast"], probe)
    assert slow.count("step") > fast.count("step")  # the two items alone decide differently
    assert _actions_of_batch(["slow", "fast"], probe) == fast
    assert _actions_of_batch(["fast", "slow"], probe) == fast
