"""The presets on the models they were tuned on: the bundled trained models with CFG."""

from __future__ import annotations

import pytest
import torch

from mixcache import MixCacheConfig, apply_mixcache
from mixcache_lab.bundled import TUNING_PROMPTS, load_bundled_pipeline
from mixcache_lab.bundled.pipeline import cfg_call_kwargs


def _latents(pipe, config=None, call=None):
    handle = apply_mixcache(pipe, config) if config is not None else None
    try:
        out = pipe(
            TUNING_PROMPTS[0],
            output_type="latent",
            generator=torch.Generator().manual_seed(7),
            **(call or {"num_inference_steps": 50}),
        ).frames
    finally:
        if handle is not None:
            handle.remove()
    return out, (handle.stats() if handle is not None else None)


def test_presets_order_compute_and_error_on_the_trained_model() -> None:
    pipe = load_bundled_pipeline()
    ref, _ = _latents(pipe)
    fractions, errors = {}, {}
    for name in ("quality", "balanced", "fast"):
        out, stats = _latents(pipe, name)
        fractions[name] = stats.compute_fraction
        errors[name] = ((out - ref).abs().mean() / ref.abs().mean()).item()
        assert stats.action_counts["step"] > 0, name
        # The first step (no entry yet) and the final step before the last always compute; the
        # last one is planned from its own measurement (the profile's last_impact).
        cond = [r for r in stats.records if r.branch == "cond"]
        assert all(r.action == "compute" for r in cond[:1] + cond[-2:-1]), name
        assert stats.plan is not None and stats.replans == 0, name  # a measured plan, followed
    assert fractions["quality"] > fractions["balanced"] > fractions["fast"]
    # More compute, less error: on the four-prompt profile the order is strict at 50 steps too
    # (relative L1 of the final latent 0.0045 / 0.0116 / 0.0188 on this prompt, fast with its
    # streak cap of 3; the two-prompt profile had balanced and fast level here).
    assert 0 < errors["quality"] < errors["balanced"] < errors["fast"] < 0.2, errors
    # Every preset is a speed budget: its block compute lands within 5 % of 1 / block_speedup
    # (the tolerance CacheStats warns beyond).
    for name, fraction in fractions.items():
        want = 1 / MixCacheConfig.preset(name).block_speedup
        assert abs(fraction - want) <= 0.05 * want, (name, fraction, want)


@pytest.mark.parametrize("steps", [20, 30])
@pytest.mark.parametrize("model", ["bundled-wan", "bundled-hunyuan"])
def test_presets_order_error_at_20_and_30_steps(model, steps) -> None:
    """Where a user runs 20-30 steps the three presets keep their order on both trained models:
    more compute, less error (relative L1 of the final latent, tuning prompt, CFG 5), and each
    lands its budget (50 steps on the Wan model: above)."""
    pipe = load_bundled_pipeline(model)
    call = {"num_inference_steps": steps, **cfg_call_kwargs(pipe, 5.0)}
    ref, _ = _latents(pipe, call=call)
    errors, fractions = [], []
    for name in ("quality", "balanced", "fast"):
        out, stats = _latents(pipe, name, call=call)
        errors.append(((out - ref).abs().mean() / ref.abs().mean()).item())
        fractions.append(stats.compute_fraction)
        want = 1 / MixCacheConfig.preset(name).block_speedup
        assert abs(stats.compute_fraction - want) <= 0.05 * want, (name, stats.compute_fraction)
    assert fractions[0] > fractions[1] > fractions[2]
    assert 0 < errors[0] < errors[1] < errors[2], errors
