"""The benchmark's parts on their own: block counting, metrics, method selection, profiles."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig

from mixcache_lab.bench.methods import (
    BenchContext,
    HalfStepsConfig,
    MethodUnavailable,
    NoCacheConfig,
    adapter_for,
    default_methods,
    mag_ratios,
    mixcache_variant,
    select_methods,
    tensor_bytes,
)
from mixcache_lab.bench.metrics import ms_ssim, psnr, quality_metrics, rel_l2, ssim
from mixcache_lab.bench.profiles import PROFILES, TINY, WAN_13B_SHAPE, get_profile
from mixcache_lab.bench.runner import BlockComputeCounter, run_bench
from mixcache_lab.tiny import make_tiny_wan_pipeline, tiny_call_kwargs


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_wan_pipeline(num_layers=4)


def _generate(pipe, steps: int = 6):
    kwargs = tiny_call_kwargs("wan", num_inference_steps=steps)
    return pipe("a red circle moving right", generator=torch.Generator().manual_seed(0), **kwargs)


def test_counter_counts_real_compute_where_block_hooks_do_not(pipe) -> None:
    # diffusers' caches replace the block's forward through HookRegistry: a hook on the block
    # still fires on a skipped step; the probe inside only fires when the block computes.
    counter = BlockComputeCounter(pipe.transformer, lambda: pipe.current_timestep)
    block_calls = []
    handle = pipe.transformer.blocks[2].register_forward_pre_hook(
        lambda m, a: block_calls.append(1)
    )
    counter.attach()
    try:
        counter.begin()
        _generate(pipe)
        full, _ = counter.summarize()
        counter.measure_flops()
        full, trace_none = counter.summarize()
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.3))
        try:
            block_calls.clear()
            counter.begin()
            _generate(pipe)
            cached, trace = counter.summarize()
        finally:
            pipe.transformer.disable_cache()
    finally:
        counter.detach()
        handle.remove()
    assert len(block_calls) == 12  # the block-level hook fired on every forward...
    skipped = [f for f in trace if f["fraction"] < 1.0]
    assert skipped  # ...but FBC skipped blocks 1..3 on some forwards
    # On a skipped forward exactly the first block (1/4 of the uniform blocks) ran.
    assert all(f["fraction"] == pytest.approx(0.25) for f in skipped)
    assert cached < full and all(f["fraction"] == 1.0 for f in trace_none)
    # units are attn1/attn2/ffn of each of the 4 blocks, weighted by measured FLOPs
    assert len(counter.units) == 12
    names = {u.name.split(".")[-1] for u in counter.units}
    assert names == {"attn1", "attn2", "ffn"}
    assert all(u.flops > 1 for u in counter.units)
    assert counter.captured is None and not counter._handles


def test_counter_sees_attention_only_skips(pipe) -> None:
    # PAB replaces attention modules' forwards: the ffn still runs, the attn1 probe does not.
    counter = BlockComputeCounter(pipe.transformer, lambda: pipe.current_timestep)
    counter.attach()
    cfg = PyramidAttentionBroadcastConfig(
        spatial_attention_block_skip_range=2,
        spatial_attention_timestep_skip_range=(-1, 1001),
        current_timestep_callback=lambda: pipe.current_timestep,
    )
    pipe.transformer.enable_cache(cfg)
    try:
        counter.begin()
        _generate(pipe, steps=3)
        _, trace = counter.summarize()
    finally:
        pipe.transformer.disable_cache()
        counter.detach()
    fractions = {f["fraction"] for f in trace}
    assert 1.0 in fractions and min(fractions) > 0.3  # attn1 skipped, attn2 and ffn ran


def test_psnr_ssim_and_rel_l2_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((3, 32, 32, 3)).astype(np.float32)
    assert psnr(a, a) == math.inf
    b = np.clip(a + 0.1, 0, None)
    b[a > 0.9] = a[a > 0.9] + 0.1  # keep a constant offset everywhere (values may exceed 1)
    assert psnr(b, a) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 -> 20 dB
    assert ssim(a, a) == pytest.approx(1.0) and ssim(b, a) < 1.0
    value, note = ms_ssim(a, a)
    assert value == pytest.approx(1.0, abs=1e-5) and note.startswith("scales=")
    assert int(note.split("=")[1]) < 5  # 32-pixel frames cannot carry 5 scales
    x = torch.ones(10)
    assert rel_l2(x * 1.1, x) == pytest.approx(0.1)
    q = quality_metrics(None, None, x, x)
    assert q["rel_l2_latent"] == 0.0 and q["psnr"] is None


def test_select_methods_keeps_reference_and_rejects_typos() -> None:
    specs = default_methods(10)
    names = [s.name for s in select_methods(specs, "fbc-0.1,half-steps")]
    assert names == ["none", "fbc-0.1", "half-steps"]
    fam = [s.name for s in select_methods(specs, "magcache")]
    assert fam == ["none", "magcache-0.06", "magcache-0.12", "magcache-0.24"]
    with pytest.raises(ValueError, match="matches no method"):
        select_methods(specs, "fcb")
    assert len({s.name for s in specs}) == len(specs)


def test_registry_is_keyed_by_config_type() -> None:
    assert adapter_for(NoCacheConfig()).tag(NoCacheConfig()) == "none"
    assert adapter_for(HalfStepsConfig(0.5)).tag(HalfStepsConfig(0.5)) == "steps_x0.5"
    assert adapter_for(FirstBlockCacheConfig(0.1)).tag(FirstBlockCacheConfig(0.1)) == "fbc_t0.1"
    with pytest.raises(TypeError, match="no benchmark adapter"):
        adapter_for(object())


def test_magcache_calibrates_on_the_tuning_run_only(pipe) -> None:
    calls = []

    def calibrate() -> None:
        calls.append(1)
        _generate(pipe, steps=5)

    ctx = BenchContext(pipe=pipe, steps=5, calibrate=calibrate)
    ratios = mag_ratios(ctx)
    assert len(ratios) == 5 and ratios[0] == 1.0 and all(r > 0 for r in ratios)
    assert mag_ratios(ctx) is ratios and calls == [1]  # memoised: one calibration per run
    assert not pipe.transformer.is_cache_enabled
    with pytest.raises(MethodUnavailable):
        mag_ratios(BenchContext(pipe=pipe, steps=5))


def test_tensor_bytes_counts_each_storage_once() -> None:
    t = torch.zeros(10, dtype=torch.float32)

    class Holder:
        def __init__(self) -> None:
            self.a, self.b, self.views = t, t, [t[:5]]
            self.module = torch.nn.Linear(100, 100)  # weights are not cache

    assert tensor_bytes(Holder()) == 40


def test_profiles_state_their_settings() -> None:
    assert set(PROFILES) == {"tiny", "bundled", "bundled-hunyuan", "wan-1.3b-shape"}
    with pytest.raises(ValueError, match="known"):
        get_profile("huge")
    s = TINY.settings()
    assert s["call_kwargs"]["num_inference_steps"] == TINY.steps and s["prompts"]
    assert TINY.tuning_prompt not in TINY.prompts
    assert WAN_13B_SHAPE.tuning_prompt not in WAN_13B_SHAPE.prompts
    json.dumps(WAN_13B_SHAPE.settings())


def test_repeats_interleave_and_reproduce(tmp_path) -> None:
    records = run_bench(
        TINY,
        tmp_path,
        methods="fbc-0.1,taylorseer-attn-i5,half-steps",
        prompts=1,
        repeats=3,
        progress=False,
    )
    assert {r["method"] for r in records} == {"none", "fbc-0.1", "taylorseer-attn-i5", "half-steps"}
    for r in records:
        assert len(r["times_s"]) == 3 and r["deterministic"], r["method"]
        assert r["time_s"] == sorted(r["times_s"])[1]


def test_wan_shape_profile_runs_latent_only(tmp_path, monkeypatch) -> None:
    # The real profile costs ~4 s per forward; the same code path on a 2-block, 80-token model.
    from mixcache_lab.bench import profiles

    monkeypatch.setitem(profiles.WAN_13B_CONFIG, "num_layers", 2)
    monkeypatch.setattr(profiles, "_TEXT_LEN", 16)
    small = dataclasses.replace(
        WAN_13B_SHAPE,
        call_kwargs={
            **WAN_13B_SHAPE.call_kwargs,
            "height": 64,
            "width": 64,
            "num_inference_steps": 3,
        },
    )
    records = run_bench(small, tmp_path, methods="fbc-0.1,half-steps", progress=False)
    assert all(r["status"] == "ok" for r in records)
    assert all(r.get("psnr") is None and r["rel_l2_latent"] is not None for r in records)
    assert records[0]["profile"]["quality"] is False
    for name in ("results.md", "pareto.png", "grid.png", "trace.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_mixcache_variant_parsing() -> None:
    spec = mixcache_variant("long=balanced:interval_max=8,granularities=('step','cfg')")
    assert spec.name == "mixcache-long" and spec.family == "mixcache-variant"
    assert "interval_max=8" in spec.knob and "('step', 'cfg')" in spec.knob
    for bad in ("balanced", "x=balanced:interval_max"):
        with pytest.raises(ValueError):
            mixcache_variant(bad)


def test_mixcache_variant_loads_an_impact_profile_file(tmp_path) -> None:
    from mixcache.errors import ConfigError
    from mixcache.profiles import ImpactProfile

    path = tmp_path / "p.json"
    ImpactProfile("wan", "test", step=2.0, cfg=0.5, block=1.0).save(path)
    spec = mixcache_variant(f"cal=fast:impact={path},interval_max=4")
    assert f"impact={path}" in spec.knob  # the path, not the profile's repr
    config = spec.build(None)
    assert config.impact.step == 2.0 and config.impact.cfg == 0.5 and config.interval_max == 4
    with pytest.raises(ConfigError, match="cannot read impact profile"):
        mixcache_variant(f"bad=fast:impact={tmp_path / 'missing.json'}")


def test_cli_tuning_set_with_variant(tmp_path) -> None:
    from click.testing import CliRunner

    from mixcache_lab.cli.bench import bench

    result = CliRunner().invoke(
        bench,
        [
            "--profile",
            "tiny",
            "--out",
            str(tmp_path),
            "--methods",
            "half-steps",
            "--prompt-set",
            "tuning",
            "--mixcache-variant",
            "short=fast:interval_max=4",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {r["prompt"] for r in records} == set(TINY.tuning_prompts)
    assert not set(TINY.tuning_prompts) & set(TINY.prompts)
    assert records[0]["profile"]["prompt_set"] == "tuning"
    variant = [r for r in records if r["method"] == "mixcache-short"]
    assert len(variant) == 2 and variant[0]["status"] in ("ok", "unavailable")
    assert "readme_snippet.md" in {p.name for p in tmp_path.iterdir()}


def test_cache_dit_is_skipped_with_a_reason_when_missing(pipe, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "cache_dit", None)  # import now raises ImportError
    spec = next(s for s in default_methods(10) if s.name == "dbcache-0.08")
    with pytest.raises(MethodUnavailable, match="cache-dit"):
        spec.build(BenchContext(pipe=pipe, steps=10))


def test_paper_choices_method_is_the_paper_preset() -> None:
    from mixcache import MixCacheConfig

    spec = next(s for s in default_methods(50) if s.name == "mixcache-paper-choices")
    assert spec.build(None) == MixCacheConfig.preset("paper") != MixCacheConfig()


def test_counter_weights_a_half_batch_forward_by_its_share(tmp_path) -> None:
    # Batched CFG's cfg reuse runs every block on half the batch: the counter must count half
    # the FLOPs there, and agree with MixCache's own count of the blocks it computed.
    from mixcache_lab.bench.profiles import tiny_profile

    profile = tiny_profile("cogvideox")
    variant = mixcache_variant("cfgonly=balanced:granularities=cfg")
    records = run_bench(
        profile, tmp_path, methods="none", prompts=1, progress=False, extra_methods=[variant]
    )
    rec = next(r for r in records if r["method"] == "mixcache-cfgonly")
    assert rec["status"] == "ok", rec.get("reason") or rec.get("error")
    assert rec["method_stats"]["action_counts"]["cfg"] > 0
    assert rec["block_fraction"] == pytest.approx(rec["method_stats"]["compute_fraction"], abs=1e-3)
    halves = [f for f in rec["forwards"] if 0.4 < f["fraction"] < 0.6]
    assert len(halves) == rec["method_stats"]["action_counts"]["cfg"]


def test_failure_tracebacks_keep_the_innermost_frames_without_machine_paths() -> None:
    import os
    import sys

    from mixcache_lab.bench.runner import portable_traceback

    def inner() -> None:
        raise TypeError("deep inside a peer")

    def outer(depth: int) -> None:
        if depth:
            outer(depth - 1)
        else:
            inner()

    try:
        outer(20)  # deeper than the frames kept: the raising frame must still be there
    except TypeError:
        text = portable_traceback(frames=4)
    assert "in inner" in text and "deep inside a peer" in text
    assert text.count("in outer") <= 3
    assert os.getcwd() + os.sep not in text and sys.prefix + os.sep not in text


def test_removal_check_undoes_a_reordering_and_fails_a_changed_tree() -> None:
    from mixcache_lab.bench.methods import MethodSpec, module_layout
    from mixcache_lab.bench.runner import _check_removal, _MethodResult

    def model() -> torch.nn.Module:
        m = torch.nn.Module()
        m.transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
        m.single_transformer_blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])
        return m

    spec = MethodSpec("x", "peer", lambda ctx: None)
    m = model()
    layout = module_layout(m)
    # What mock.patch.object's exit does to an nn.Module attribute: delete, then set again.
    blocks = m.transformer_blocks
    del m.transformer_blocks
    m.transformer_blocks = blocks
    assert list(m._modules) == ["single_transformer_blocks", "transformer_blocks"]
    res = _MethodResult(spec)
    _check_removal(res, m, layout)
    assert list(m._modules) == ["transformer_blocks", "single_transformer_blocks"]
    assert res.status == "ok" and "reordered the children of <root>" in res.reason

    m = model()
    layout = module_layout(m)
    m.extra = torch.nn.Linear(2, 2)  # a module a cache forgot to take away
    res = _MethodResult(spec)
    _check_removal(res, m, layout)
    assert res.status == "failed" and "left the transformer's modules changed" in res.reason
