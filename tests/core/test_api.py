"""apply/remove: every error and its message, atomic install, exact removal, reduction point."""

from __future__ import annotations

import pytest
import torch
from toy import ToyTransformer, run_loop

import mixcache
from mixcache import (
    AlreadyAppliedError,
    ConfigError,
    MixCacheConfig,
    NotAppliedError,
    UnsupportedModelError,
    apply_mixcache,
    remove_mixcache,
)
from mixcache.errors import ConflictingCacheError, MixCacheError


def test_public_api_names():
    for name in ("apply_mixcache", "remove_mixcache", "MixCacheConfig", "MixCacheHandle",
                 "CacheStats", "ConfigError", "UnsupportedModelError", "ImpactProfile",
                 "calibrate_impact"):  # fmt: skip
        assert getattr(mixcache, name) is not None
    assert issubclass(ConfigError, ValueError) and issubclass(ConfigError, MixCacheError)
    assert issubclass(UnsupportedModelError, TypeError)


def test_unsupported_module_raises_before_any_hook():
    lin = torch.nn.Linear(2, 2)
    with pytest.raises(UnsupportedModelError) as info:
        apply_mixcache(lin)
    msg = str(info.value)
    assert "Linear is not supported" in msg
    assert "WanTransformer3DModel" in msg and "HunyuanVideoTransformer3DModel" in msg
    assert not hasattr(lin, "_diffusers_hook")


def test_object_without_transformer_raises():
    class NotAPipeline:
        scheduler = None

    with pytest.raises(UnsupportedModelError, match="has no 'transformer'"):
        apply_mixcache(NotAPipeline())


def test_applying_twice_raises_and_remove_then_apply_works():
    m = ToyTransformer()
    h = apply_mixcache(m)
    with pytest.raises(AlreadyAppliedError, match="already applied"):
        apply_mixcache(m, "fast")
    h.remove()
    h.remove()  # idempotent
    apply_mixcache(m).remove()


def test_handle_is_a_context_manager_and_config_may_be_a_dict():
    m = ToyTransformer()
    ref = run_loop(ToyTransformer())
    with apply_mixcache(m, MixCacheConfig.preset("fast").to_dict()) as h:
        assert h.active and h.config.preset_name == "fast"
        run_loop(m)
    assert not h.active and h.stats().records
    assert all(torch.equal(run_loop(m)[k], v) for k, v in ref.items())


def test_remove_when_not_applied_raises():
    with pytest.raises(NotAppliedError, match="not applied"):
        remove_mixcache(ToyTransformer())


def test_config_errors_at_apply_time_install_nothing():
    m = ToyTransformer()  # 6 blocks
    with pytest.raises(ConfigError, match="unknown preset 'medium'"):
        apply_mixcache(m, "medium")
    with pytest.raises(ConfigError, match=r"head_blocks \+ tail_blocks = 6 is out of range"):
        apply_mixcache(
            m,
            MixCacheConfig.preset("paper", head_blocks=3, tail_blocks=3, granularities=("block",)),
        )
    assert not hasattr(m.blocks[0], "_diffusers_hook")
    # Next to other granularities, block reuse is only n/a on such a model, and says why.
    handle = apply_mixcache(m, MixCacheConfig.preset("paper", head_blocks=3, tail_blocks=3))
    run_loop(m)
    handle.remove()
    stats = handle.stats()
    assert "leave no span" in stats.unavailable["block"]
    assert stats.action_counts["block"] == 0


def test_config_is_not_mutated():
    config = MixCacheConfig.preset("fast")
    before = config.to_dict()
    m = ToyTransformer()
    h = apply_mixcache(m, config)
    run_loop(m)
    h.remove()
    assert config.to_dict() == before and h.config is config


def test_install_rolls_back_on_failure(monkeypatch):
    from mixcache import api

    m = ToyTransformer()
    calls = {"n": 0}
    real = api.BlockHook

    def failing(controller, index):
        calls["n"] += 1
        if index == 3:
            raise RuntimeError("boom")
        return real(controller, index)

    monkeypatch.setattr(api, "BlockHook", failing)
    with pytest.raises(RuntimeError, match="boom"):
        apply_mixcache(m)
    assert calls["n"] == 4
    for block in m.blocks:
        assert not hasattr(block, "_diffusers_hook") and "forward" not in vars(block)
    ref = run_loop(ToyTransformer())
    out = run_loop(m)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_conflicting_diffusers_cache_is_refused(tiny_wan_pipe):
    from diffusers.hooks import FirstBlockCacheConfig

    t = tiny_wan_pipe.transformer
    t.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    try:
        with pytest.raises(ConflictingCacheError, match="disable_cache"):
            apply_mixcache(tiny_wan_pipe)
    finally:
        t.disable_cache()
    assert "mixcache_transformer" not in t._diffusers_hook.hooks


def test_pipeline_with_two_transformers_gets_two_controllers(tiny_wan_pipe):
    # A Wan2.2-style pipeline (boundary_ratio): transformer runs the steps with t >= boundary,
    # transformer_2 the others. Each controller sees exactly its expert's forwards, merged stats
    # list both by step, and the cached run equals caching each expert on its own (two handles):
    # nothing is shared between the controllers. remove() makes both uncached again.
    import copy

    from diffusers import WanPipeline

    from mixcache_lab.tiny import tiny_call_kwargs

    parts = {k: v for k, v in tiny_wan_pipe.components.items() if k != "transformer_2"}
    pipe = WanPipeline(**{**parts, "transformer_2": copy.deepcopy(tiny_wan_pipe.transformer)},
                       boundary_ratio=0.5)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    kw = tiny_call_kwargs("wan", num_inference_steps=8, height=16, width=16, num_frames=1)
    config = MixCacheConfig.preset("paper", trigger_threshold=1e9, refresh_threshold=1e9,
                                   warmup_fraction=0.0, min_warmup_steps=1,
                                   final_steps=0)  # fmt: skip

    def latent():
        return pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw).frames

    uncached = latent()
    high = [i for i, t in enumerate(pipe.scheduler.timesteps) if t >= 500]
    assert 0 < len(high) < 8
    h = apply_mixcache(pipe, config)
    cached = latent()
    stats = h.stats()
    h.remove()
    assert set(h.controllers) == {"transformer", "transformer_2"}
    by_model = {m: sorted({r.step for r in stats.records if r.model == m}) for m in h.controllers}
    assert by_model == {"transformer": high, "transformer_2": list(range(len(high), 8))}
    assert [r.step for r in stats.records] == sorted(r.step for r in stats.records)
    assert stats.action_counts["compute"] < len(stats.records)  # something was reused
    separate = [apply_mixcache(t, config) for t in (pipe.transformer, pipe.transformer_2)]
    alone = latent()
    for handle in separate:
        handle.remove()
    assert torch.equal(cached, alone)
    assert not torch.equal(cached, uncached)
    assert torch.equal(latent(), uncached)


def test_one_all_reduce_per_decision_with_a_process_group(monkeypatch):
    import torch.distributed as dist

    calls = []

    def fake_all_reduce(tensor, group=None):
        calls.append((tensor.numel(), group))
        tensor.mul_(1.0)  # a single rank: the sums are already global

    monkeypatch.setattr(dist, "all_reduce", fake_all_reduce)
    group = object()
    m = ToyTransformer()
    h = apply_mixcache(m, MixCacheConfig.preset("fast", process_group=group))
    ref_h = apply_mixcache(n := ToyTransformer(), "fast")
    out, ref = run_loop(m), run_loop(n)
    h.remove()
    ref_h.remove()
    decisions = len({r.step for r in h.stats().records})
    assert 0 < len(calls) <= decisions  # at most one reduction per step, at its decision
    assert all(g is group for _, g in calls)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    assert "process_group" not in MixCacheConfig.preset("fast", process_group=group).to_dict()
