"""Ownership: an applied MixCache owns its transformer (no second cache stacks on it), and two
pipelines with their own MixCache in one process do not see each other."""

from __future__ import annotations

import pytest
import torch
from diffusers.hooks import FirstBlockCacheConfig
from tiny_configs import TINY_FAST
from toy import ToyTransformer, run_loop

from mixcache import apply_mixcache
from mixcache_lab.tiny import make_tiny_wan_pipeline, tiny_call_kwargs

PROMPT = "a red circle moving right"
STEPS = 12
FBC_HOOKS = ("fbc_leader_block_hook", "fbc_block_hook")


def generate(pipe, family: str, seed: int = 0, **kw) -> torch.Tensor:
    kwargs = tiny_call_kwargs(family, num_inference_steps=STEPS, **kw)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def hook_names(module: torch.nn.Module) -> set[str]:
    """Every hook name registered on the module or any submodule."""
    names: set[str] = set()
    for m in module.modules():
        registry = getattr(m, "_diffusers_hook", None)
        if registry is not None:
            names.update(registry.hooks)
    return names


@pytest.fixture(scope="module")
def second_wan_pipe():
    """Another tiny WanPipeline with different weights (seed 1)."""
    return make_tiny_wan_pipeline(seed=1)


def test_enable_cache_refuses_while_applied_and_works_after_remove(tiny_wan_pipe):
    t = tiny_wan_pipe.transformer
    ref = generate(tiny_wan_pipe, "wan")
    # The session fixture may carry an instance ``_cache_config = None`` left by an earlier
    # enable_cache/disable_cache: whatever is there must be there again after remove().
    before = ("_cache_config" in vars(t), vars(t).get("_cache_config"))
    assert not t.is_cache_enabled
    handle = apply_mixcache(tiny_wan_pipe, TINY_FAST)
    try:
        assert t.is_cache_enabled
        with pytest.raises(ValueError, match=r"already been enabled with .*MixCacheConfig"):
            t.enable_cache(FirstBlockCacheConfig(threshold=0.05))
        assert not set(FBC_HOOKS) & hook_names(t)  # the refusal installed nothing
        cached = generate(tiny_wan_pipe, "wan")
        assert handle.stats().compute_fraction < 1  # MixCache itself still reuses
    finally:
        handle.remove()
    # Removal restores exactly what was there.
    assert ("_cache_config" in vars(t), vars(t).get("_cache_config")) == before
    assert not t.is_cache_enabled
    assert torch.equal(generate(tiny_wan_pipe, "wan"), ref)
    assert not torch.equal(cached, ref)
    t.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    try:
        assert set(FBC_HOOKS) <= hook_names(t)
    finally:
        t.disable_cache()
    assert torch.equal(generate(tiny_wan_pipe, "wan"), ref)


def test_disable_cache_removes_mixcache_like_a_diffusers_cache(tiny_wan_pipe):
    # diffusers users turn a cache off with transformer.disable_cache(): it removes MixCache
    # from that transformer, outputs are bit-identical to uncached after, and nothing is left.
    t = tiny_wan_pipe.transformer
    ref = generate(tiny_wan_pipe, "wan")
    before = dict(vars(t))
    handle = apply_mixcache(tiny_wan_pipe, TINY_FAST)
    cached = generate(tiny_wan_pipe, "wan")
    assert handle.stats().compute_fraction < 1 and not torch.equal(cached, ref)
    t.disable_cache()
    assert not handle.active and not t.is_cache_enabled
    assert not {n for n in hook_names(t) if n.startswith("mixcache")}
    assert torch.equal(generate(tiny_wan_pipe, "wan"), ref)
    assert set(vars(t)) - {"_diffusers_hook"} == set(before) - {"_diffusers_hook"}
    assert "disable_cache" not in vars(t)
    handle.remove()  # idempotent after disable_cache
    t.enable_cache(FirstBlockCacheConfig(threshold=0.05))  # the slot is free again
    t.disable_cache()


def test_disable_cache_on_a_bare_transformer():
    m = ToyTransformer()
    ref = run_loop(ToyTransformer())
    handle = apply_mixcache(m)
    m.disable_cache()
    assert not m.is_cache_enabled and not handle.active
    out = run_loop(m)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_removal_restores_an_instance_cache_config_that_was_there():
    m = ToyTransformer()
    m._cache_config = None  # an instance attribute, e.g. left by an earlier disable_cache()
    ref = run_loop(ToyTransformer())
    handle = apply_mixcache(m)
    assert m.is_cache_enabled
    handle.remove()
    assert "_cache_config" in vars(m) and vars(m)["_cache_config"] is None
    out = run_loop(m)
    assert all(torch.equal(out[k], ref[k]) for k in ref)


def test_rolled_back_install_leaves_no_mark(monkeypatch):
    import mixcache.api as api

    claim = api._claim_cache_slot

    def claim_then_fail(inst):
        claim(inst)
        raise RuntimeError("boom")

    monkeypatch.setattr(api, "_claim_cache_slot", claim_then_fail)
    m = ToyTransformer()
    with pytest.raises(RuntimeError, match="boom"):
        apply_mixcache(m)
    assert "_cache_config" not in vars(m) and not m.is_cache_enabled


def test_two_pipelines_nested_each_match_their_run_alone(tiny_wan_pipe, second_wan_pipe):
    a, b = tiny_wan_pipe, second_wan_pipe
    alone = {}
    for name, pipe in (("a", a), ("b", b)):
        with apply_mixcache(pipe, TINY_FAST) as h:
            alone[name] = generate(pipe, "wan", seed=3)
        assert h.stats().compute_fraction < 1
    assert not torch.equal(alone["a"], alone["b"])

    inner: list[torch.Tensor] = []

    def run_b_mid_step(pipe, i, t, callback_kwargs):
        # A whole generation of B runs between two denoising steps of A, while A's caches hold
        # their entries: neither may read or reset the other's state.
        if i in (3, 7):
            inner.append(generate(b, "wan", seed=3))
        return callback_kwargs

    ha = apply_mixcache(a, TINY_FAST)
    hb = apply_mixcache(b, TINY_FAST)
    try:
        out_a = generate(a, "wan", seed=3, callback_on_step_end=run_b_mid_step)
        stats_a, stats_b = ha.stats(), hb.stats()
    finally:
        hb.remove()
        ha.remove()
    assert torch.equal(out_a, alone["a"])
    assert len(inner) == 2 and all(torch.equal(x, alone["b"]) for x in inner)
    assert stats_a.compute_fraction < 1 and stats_b.compute_fraction < 1
    assert len(stats_a.records) == len(stats_b.records) == 2 * STEPS  # one generation each


def test_wan_and_hunyuan_alternating_each_match_their_run_alone(tiny_wan_pipe, tiny_hunyuan_pipe):
    pipes = {"wan": tiny_wan_pipe, "hunyuan": tiny_hunyuan_pipe}
    alone = {}
    for family, pipe in pipes.items():
        with apply_mixcache(pipe, TINY_FAST):
            alone[family] = generate(pipe, family, seed=5)
    handles = {family: apply_mixcache(pipe, TINY_FAST) for family, pipe in pipes.items()}
    try:
        for family in ("wan", "hunyuan", "wan", "hunyuan", "hunyuan", "wan"):
            assert torch.equal(generate(pipes[family], family, seed=5), alone[family])
            assert handles[family].stats().compute_fraction < 1
    finally:
        for h in handles.values():
            h.remove()
