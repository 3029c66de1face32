"""The presets on the model they were tuned on: the bundled trained model at 50 steps with CFG."""

from __future__ import annotations

import torch

from mixcache import MixCacheConfig, apply_mixcache
from mixcache_lab.bundled import TUNING_PROMPTS, load_bundled_pipeline


def _latents(pipe, config=None):
    handle = apply_mixcache(pipe, config) if config is not None else None
    try:
        out = pipe(
            TUNING_PROMPTS[0],
            num_inference_steps=50,
            output_type="latent",
            generator=torch.Generator().manual_seed(7),
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
        # the first step (no entry yet) and the final steps always compute
        cond = [r for r in stats.records if r.branch == "cond"]
        assert all(r.action == "compute" for r in cond[:1] + cond[-2:]), name
        assert stats.plan is not None and stats.replans == 0, name  # a measured plan, followed
    assert fractions["quality"] > fractions["balanced"] > fractions["fast"]
    # quality, with the most compute, errs least. balanced against fast is not ordered at 50
    # steps on this model: over the first four tuning prompts both average 0.0093 (relative L1
    # of the final latent), and the held-out matrix has fast above balanced at Wan 50 steps too
    # (docs/benchmarks.md): the plan of x2.25 at 50 steps spends its budget early.
    assert 0 < errors["quality"] < min(errors["balanced"], errors["fast"])
    assert max(errors["balanced"], errors["fast"]) < 0.2
    # Every preset is a speed budget: its block compute lands within 5 % of 1 / block_speedup
    # (the tolerance CacheStats warns beyond).
    for name, fraction in fractions.items():
        want = 1 / MixCacheConfig.preset(name).block_speedup
        assert abs(fraction - want) <= 0.05 * want, (name, fraction, want)
