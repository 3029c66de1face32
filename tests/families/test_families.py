"""Every registered family on its tiny diffusers pipeline (``mixcache_lab.tiny.TINY_PIPELINES``).

For each: reuse really happens (random weights change a lot per step, so the opened thresholds of
``TINY_FAST``), reuse forbidden is bit-identical to uncached, apply -> remove is bit-exact, and
repeated cached runs are identical.
"""

from __future__ import annotations

import pytest
import torch
from test_pipelines import Applied, rel_err
from tiny_configs import TINY_FAST

from mixcache import MixCacheConfig
from mixcache_lab.tiny import TINY_PIPELINES, tiny_call_kwargs

PROMPT = "a red circle moving right"
NO_REUSE = TINY_FAST.replace(dry_run=True)
FAMILIES = [f for f in TINY_PIPELINES if f not in ("wan", "hunyuan_video")]  # tests/core has them


def generate(pipe, family, steps=10, seed=0, **kw):
    kwargs = tiny_call_kwargs(family, num_inference_steps=steps, **kw)
    # prompt by keyword: image-to-video pipelines take the image first
    out = pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs)
    return out.frames


@pytest.mark.parametrize("family", FAMILIES)
def test_family_reuses_and_is_exact_without_reuse(family_pipe, family):
    pipe = family_pipe(family)
    ref = generate(pipe, family)
    with Applied(pipe, NO_REUSE) as h:
        dry = generate(pipe, family)
    assert torch.equal(dry, ref), "reuse forbidden must be bit-identical to uncached"
    assert h.stats().compute_fraction == 1.0
    with Applied(pipe, TINY_FAST) as h:
        cached = [generate(pipe, family) for _ in range(2)]
    stats = h.stats()
    assert stats.complete and stats.compute_fraction < 1, stats.summary()
    assert torch.equal(cached[0], cached[1]), "repeated cached runs must be identical"
    # Closer to the reference than the simplest speed-up, half the steps uncached (which the
    # bench runs as "half-steps"), though the cached run computes only a share of its blocks.
    half = generate(pipe, family, steps=5)
    assert not torch.equal(cached[0], ref) and rel_err(cached[0], ref) < rel_err(half, ref)
    assert torch.equal(generate(pipe, family), ref), "apply -> remove must be bit-exact"


def test_refused_wan_variants_say_why():
    from diffusers import WanAnimateTransformer3DModel, WanVACETransformer3DModel

    from mixcache import apply_mixcache
    from mixcache.errors import UnsupportedModelError

    small = {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "ffn_dim": 16}
    vace = WanVACETransformer3DModel(**small, vace_layers=[0], text_dim=16, freq_dim=16).eval()
    with pytest.raises(UnsupportedModelError, match="VACE control hints to the hidden states"):
        apply_mixcache(vace, TINY_FAST)
    animate = WanAnimateTransformer3DModel.__new__(WanAnimateTransformer3DModel)  # class check
    torch.nn.Module.__init__(animate)
    with pytest.raises(UnsupportedModelError, match="face-adapter outputs"):
        apply_mixcache(animate, TINY_FAST)
    assert not hasattr(vace, "_diffusers_hook") or not vace._diffusers_hook.hooks


def test_skyreels_diffusion_forcing_is_refused_and_t2v_is_not(family_pipe):
    from diffusers import SkyReelsV2DiffusionForcingPipeline

    from mixcache import apply_mixcache
    from mixcache.errors import UnsupportedModelError

    base = family_pipe("skyreels_v2")
    df = SkyReelsV2DiffusionForcingPipeline(**base.components)
    with pytest.raises(UnsupportedModelError, match="different noise levels in one call"):
        apply_mixcache(df, TINY_FAST)
    registry = getattr(base.transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks  # nothing was installed
    apply_mixcache(base, TINY_FAST).remove()  # the text-to-video pipeline of the same model is fine


def test_unknown_transformer_lists_the_supported_classes():
    from mixcache import apply_mixcache
    from mixcache.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError) as err:
        apply_mixcache(torch.nn.Linear(2, 2), TINY_FAST)
    for name in (
        "CogVideoXTransformer3DModel",
        "LTXVideoTransformer3DModel",
        "HunyuanVideo15Transformer3DModel",
        "SkyReelsV2Transformer3DModel",
        "MochiTransformer3DModel",
        "WanTransformer3DModel",
    ):
        assert name in str(err.value)
    assert "WanVACETransformer3DModel" not in str(err.value)


def test_wan_v2v_strength_runs_the_steps_actually_run(family_pipe):
    # strength 0.8 of 10 steps: the pipeline skips the first 2 timesteps and runs 8.
    pipe = family_pipe("wan_v2v")
    with Applied(pipe, TINY_FAST) as h:
        generate(pipe, "wan_v2v", steps=10, strength=0.8)
    stats = h.stats()
    assert pipe._num_timesteps == 8
    assert sorted({r.step for r in stats.records}) == list(range(8))
    assert stats.complete
    last = [r for r in stats.records if r.step == 7]
    assert last and all(r.action == "compute" for r in last)
    assert last[0].reason.startswith("final steps")


@pytest.mark.parametrize("family", ["cogvideox", "ltx", "mochi"])
def test_batched_cfg_pipelines_say_why_cfg_is_unavailable(family_pipe, family):
    # One "cond_uncond" forward per step: cond and uncond are the two halves of the batch, so
    # "no CFG pass (guidance_scale <= 1)" would be wrong; without guidance it is right.
    pipe = family_pipe(family)
    with Applied(pipe, TINY_FAST) as h:
        generate(pipe, family, steps=4)
        batched = h.stats().unavailable["cfg"]
        generate(pipe, family, steps=4, guidance_scale=1.0)
        plain = h.stats().unavailable["cfg"]
    # TINY_FAST probes block 0 first, which decides too late to split the batch.
    assert "one batched forward" in batched and "step_probe='first_block'" in batched
    assert "guidance_scale <= 1" in plain and "batched" not in plain


def test_a_family_without_a_profile_says_how_to_calibrate(family_pipe, caplog):
    import logging

    from mixcache import ImpactProfile

    with (
        caplog.at_level(logging.WARNING, logger="mixcache"),
        Applied(family_pipe("cogvideox"), TINY_FAST),
    ):
        pass
    assert "no impact profile is shipped for 'cogvideox'" in caplog.text
    assert "mixcache calibrate" in caplog.text
    caplog.clear()
    own = TINY_FAST.replace(impact=ImpactProfile("cogvideox", "measured by me", step=2.0))
    pipes = (family_pipe("cogvideox"), family_pipe("wan_i2v"))
    with (
        caplog.at_level(logging.WARNING, logger="mixcache"),
        Applied(pipes[0], own),
        Applied(pipes[1], TINY_FAST),
    ):
        pass
    assert "no impact profile" not in caplog.text  # Wan has one; a given profile is used


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", [2.0, 3.0])
def test_the_speed_budget_lands_on_every_family(family_pipe, family, target):
    """The budget of a preset is met on every family (random weights, 20 steps): within 5 %."""
    pipe = family_pipe(family)
    config = MixCacheConfig.preset("balanced", block_speedup=target)
    with Applied(pipe, config) as h:
        generate(pipe, family, steps=20)
    stats = h.stats()
    want = 1.0 / target
    assert abs(stats.compute_fraction - want) <= 0.05 * want, stats.summary()
    assert stats.complete and not stats.warnings, stats.summary()


def test_run_taus_of_a_truncated_run_are_the_steps_it_ran(family_pipe):
    """strength 0.8 of 10 steps runs the schedule's last 8 timesteps: the planner reads the
    error model at those (not at 10 even steps, nor at the first 8 of the schedule)."""
    from mixcache.api import run_taus

    pipe = family_pipe("wan_v2v")
    generate(pipe, "wan_v2v", steps=10, strength=0.8)
    train = pipe.scheduler.config.num_train_timesteps
    full = [float(t) / train for t in pipe.scheduler.timesteps]
    assert len(full) == 10 and run_taus(pipe) == full[2:]


def test_calibrating_image_and_video_conditioned_pipelines(family_pipe):
    """The calibration passes its prompt by keyword (an image-to-video pipeline takes its image
    first), so Wan I2V calibrates and plans; a truncated video-to-video run is refused with the
    setting to use instead."""
    from mixcache import ConfigError, apply_mixcache
    from mixcache.calibration import calibrate_errors, profile_from_errors

    pipe = family_pipe("wan_i2v")
    kw = tiny_call_kwargs("wan_i2v", num_inference_steps=8)
    steps = kw.pop("num_inference_steps")
    errors = calibrate_errors(pipe, [PROMPT], num_inference_steps=steps, call_kwargs=kw)
    assert errors.granularities == ("step", "cfg", "block")
    config = MixCacheConfig.preset("balanced", impact=profile_from_errors(pipe, errors))
    handle = apply_mixcache(pipe, config)
    try:
        pipe(
            prompt=PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=12, **kw
        )
    finally:
        handle.remove()
    stats = handle.stats()
    assert stats.plan is not None and len(stats.plan) == 12 and stats.plan_note is None
    v2v = family_pipe("wan_v2v")
    kw = tiny_call_kwargs("wan_v2v", num_inference_steps=8, strength=0.8)
    kw.pop("num_inference_steps")
    with pytest.raises(ConfigError, match=r"ran 6 of the 8 steps.*strength=1\.0"):
        calibrate_errors(v2v, [PROMPT], num_inference_steps=8, call_kwargs=kw)


def test_calibrate_command_asks_for_the_input_an_i2v_pipeline_needs(family_pipe, tmp_path):
    import click
    from PIL import Image

    from mixcache_lab.cli.calibrate import _conditioning

    pipe = family_pipe("wan_i2v")
    with pytest.raises(click.UsageError, match="needs an input image: pass --image PATH"):
        _conditioning(pipe, None, None, {})
    path = tmp_path / "first_frame.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(path)
    loaded = _conditioning(pipe, str(path), None, {})
    assert loaded["image"].size == (32, 32) and loaded["image"].getpixel((0, 0)) == (200, 30, 30)
    with pytest.raises(click.UsageError, match="takes no 'video' argument"):
        _conditioning(pipe, str(path), str(path), {})
    assert _conditioning(family_pipe("wan"), None, None, {}) == {}  # text-to-video needs none
