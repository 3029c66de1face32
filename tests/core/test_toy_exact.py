"""Exact values on the analytic toy transformer (tests/core/toy.py), one granularity at a time.

With thresholds that always allow reuse, warm-up 2, no final boundary and a fixed interval of 2,
the schedule is: compute at steps 0, 1, 4, 7; reuse at 2, 3 (entries from step 1), 5, 6 (from
step 4), 8, 9 (from step 7). Each reuse gives a different exact number than a compute would.
"""

from __future__ import annotations

import pytest
import torch
from toy import TIMESTEPS, E, ToyTransformer, ToyTransformerWithEncoder, full, partial, run_loop

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.granularity import middle_span

FREE = {
    "trigger_threshold": float("inf"),
    "refresh_threshold": float("inf"),
    "warmup_fraction": 0.0,
    "min_warmup_steps": 2,
    "final_steps": 0,
    "interval_init": 2,
    "interval_min": 2,
    "interval_max": 2,
}
REUSED_FROM = {2: 1, 3: 1, 5: 4, 6: 4, 8: 7, 9: 7}


def only(granularity: str, **kw) -> MixCacheConfig:
    return MixCacheConfig.preset("paper", granularities=(granularity,), **{**FREE, **kw})


def run(model, config, **kw):
    handle = apply_mixcache(model, config)
    try:
        out = run_loop(model, **kw)
    finally:
        handle.remove()
    return out, handle.stats()


def h0_of(step: int) -> torch.Tensor:
    return torch.arange(12, dtype=torch.float64).view(1, 4, 3) / 8 + step


def test_uncached_toy_is_analytic():
    m = ToyTransformer()
    h0 = h0_of(0)
    out = run_loop(m, h0=h0)
    for (i, b), v in out.items():
        torch.testing.assert_close(v, full(m, h0, TIMESTEPS[i], E[b]), rtol=0, atol=0)


def test_step_reuse_exact_with_first_block_probe():
    m = ToyTransformer()
    h0 = h0_of(0)
    out, stats = run(m, only("step"), h0=h0)
    for (i, b), v in out.items():
        t, e = TIMESTEPS[i], E[b]
        if i in REUSED_FROM:
            s = REUSED_FROM[i]
            # block 0 fresh (probe), blocks 1..5 as computed at step s
            expected = h0 + partial(m, [0], t, e) + partial(m, range(1, 6), TIMESTEPS[s], e)
        else:
            expected = full(m, h0, t, e)
        torch.testing.assert_close(v, expected, rtol=0, atol=0)
    actions = [(r.step, r.branch, r.action, r.blocks_computed) for r in stats.records]
    assert (2, "cond", "step", 1) in actions and (4, "uncond", "compute", 6) in actions
    assert stats.compute_fraction == pytest.approx((8 * 6 + 12 * 1) / (20 * 6))


def _run_moving(m, config):
    """Like WanPipeline: a new latent every step (step_probe="none" predicts from its change)."""
    h0s = {i: h0_of(i) for i in range(10)}
    handle = apply_mixcache(m, config)
    out = {}
    try:
        for i, t in enumerate(TIMESTEPS):
            for b in ("cond", "uncond"):
                enc = torch.full((1, 2, 3), E[b], dtype=torch.float64)
                with m.cache_context(b, step_index=i, num_inference_steps=10):
                    out[(i, b)] = m(h0s[i], torch.tensor([t], dtype=torch.float64), enc)[0]
        m._reset_stateful_cache()
    finally:
        handle.remove()
    return out, handle.stats(), h0s


def test_step_reuse_exact_without_probe():
    m = ToyTransformer()
    out, stats, h0s = _run_moving(m, only("step", step_probe="none"))
    reused = {r.step for r in stats.records if r.action == "step"}
    assert reused == set(REUSED_FROM)
    for (i, b), v in out.items():
        t, e = TIMESTEPS[i], E[b]
        if i in REUSED_FROM:
            s = REUSED_FROM[i]
            expected = h0s[i] + partial(m, range(6), TIMESTEPS[s], e)  # no block runs at all
        else:
            expected = full(m, h0s[i], t, e)
        torch.testing.assert_close(v, expected, rtol=0, atol=0)
    assert all(r.blocks_computed == 0 for r in stats.records if r.action == "step")


@pytest.mark.parametrize("probe", ["none", "first_block"])
def test_step_reuse_with_residual_order_1_extrapolates_exactly(probe):
    # The toy's stack residual is linear in t and the toy timesteps are linear in the step index,
    # so the residual extrapolated from the last two computes is the exact one: every reused
    # step gives the fully computed value, where residual_order=0 gives a stale one.
    m = ToyTransformer()
    out, stats, h0s = _run_moving(m, only("step", step_probe=probe, residual_order=1))
    assert {r.step for r in stats.records if r.action == "step"} == set(REUSED_FROM)
    for (i, b), v in out.items():
        expected = full(m, h0s[i], TIMESTEPS[i], E[b])
        torch.testing.assert_close(v, expected, rtol=1e-12, atol=1e-9)
    stale, _, _ = _run_moving(m, only("step", step_probe=probe))
    assert not torch.allclose(stale[(2, "cond")], out[(2, "cond")])


@pytest.mark.parametrize(
    ("granularity", "kw"),
    [
        ("block", {}),
        ("cfg", {"cfg_mode": "residual_diff"}),
        ("cfg", {"cfg_mode": "output"}),
    ],
)
def test_block_and_cfg_reuse_with_residual_order_1_extrapolate_exactly(granularity, kw):
    # As for step reuse: the span residual and the guidance difference are linear in t on the
    # toy, so extrapolating them from the last two computes reproduces the full compute, where
    # residual_order=0 reuses a stale one.
    m = ToyTransformer()
    h0 = h0_of(0)
    out, stats = run(m, only(granularity, residual_order=1, **kw), h0=h0)
    assert stats.action_counts[granularity] == (6 if granularity == "cfg" else 12)
    for (i, b), v in out.items():
        torch.testing.assert_close(v, full(m, h0, TIMESTEPS[i], E[b]), rtol=1e-12, atol=1e-9)
    stale, _ = run(m, only(granularity, **kw), h0=h0)
    assert not torch.allclose(stale[(2, "uncond")], out[(2, "uncond")])


def test_extrapolation_values_and_single_entry_fallback():
    from mixcache.granularity import Entry
    from mixcache.granularity import extrapolate as _extrapolate

    r0, r1 = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 3.0])
    # computed at steps 2 and 4; at step 5: r1 + (r1 - r0) * (5 - 4) / (4 - 2)
    got = _extrapolate(Entry(r1, 4), Entry(r0, 2), 5)
    torch.testing.assert_close(got, torch.tensor([4.0, 3.5]), rtol=0, atol=0)
    # nothing to extrapolate from (one computed step, or a stale pair): the entry as it is
    only_one = Entry(r1, 4)
    assert _extrapolate(only_one, None, 5) is only_one
    assert _extrapolate(only_one, Entry(r0, 4), 5) is only_one
    # a bfloat16 cache is extrapolated in float32, not in bfloat16
    low = _extrapolate(Entry(r1.bfloat16(), 4), Entry(r0.bfloat16(), 2), 5)
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, torch.tensor([4.0, 3.5]), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["residual_diff", "output"])
def test_cfg_reuse_exact(mode):
    m = ToyTransformer()
    h0 = h0_of(0)
    out, stats = run(m, only("cfg", cfg_mode=mode), h0=h0)
    for (i, b), v in out.items():
        t, e = TIMESTEPS[i], E[b]
        if i in REUSED_FROM and b == "uncond":
            s = REUSED_FROM[i]
            # R_uncond(t) = R_cond(t) - [R_cond(s) - R_uncond(s)]: the guidance difference of
            # step s is reused, the cond part is fresh.
            delta = partial(m, range(6), TIMESTEPS[s], 1.0) - partial(
                m, range(6), TIMESTEPS[s], -1.0
            )
            expected = h0 + partial(m, range(6), t, 1.0) - delta
        else:
            expected = full(m, h0, t, e)  # cond always fresh
        torch.testing.assert_close(v, expected, rtol=0, atol=1e-12)
    by = {(r.step, r.branch): r for r in stats.records}
    assert by[(2, "cond")].action == "compute" and by[(2, "uncond")].action == "cfg"
    assert by[(2, "uncond")].blocks_computed == 0


def test_block_reuse_exact_middle_span():
    m = ToyTransformer()
    h0 = h0_of(0)
    a, b_ = middle_span(6, 1, 1, 0.5)
    assert (a, b_) == (1, 4)
    out, stats = run(m, only("block"), h0=h0)
    fresh_blocks = [0, 4, 5]
    for (i, b), v in out.items():
        t, e = TIMESTEPS[i], E[b]
        if i in REUSED_FROM:
            s = REUSED_FROM[i]
            expected = (
                h0 + partial(m, fresh_blocks, t, e) + partial(m, range(1, 4), TIMESTEPS[s], e)
            )
        else:
            expected = full(m, h0, t, e)
        torch.testing.assert_close(v, expected, rtol=0, atol=0)
    assert {r.blocks_computed for r in stats.records if r.action == "block"} == {3}


def test_block_reuse_carries_encoder_residual():
    # Blocks that also update encoder states (HunyuanVideo-like): the span's encoder residual
    # is stored with the hidden one, so tail blocks see the right encoder state.
    m = ToyTransformerWithEncoder()
    h0 = h0_of(0)
    ref = run_loop(m, h0=h0)
    out, stats = run(m, only("block"), h0=h0)
    # The encoder update (+c per block) does not depend on t, so the only difference from the
    # uncached output is the span's timestep: hL - ref = (t_s - t) * sum over the span of (c+d e').
    for (i, b), v in out.items():
        if i not in REUSED_FROM:
            torch.testing.assert_close(v, ref[(i, b)], rtol=0, atol=0)
            continue
        s, t = REUSED_FROM[i], TIMESTEPS[i]
        e_in = E[b] + sum(m.cs[:1])  # encoder mean entering block 1
        span = sum(m.cs[j] + m.ds[j] * (e_in + sum(m.cs[1:j])) for j in range(1, 4))
        torch.testing.assert_close(v - ref[(i, b)], torch.full_like(v, (TIMESTEPS[s] - t) * span))
    assert stats.action_counts["block"] == 12


def test_step_reuse_writes_no_block_entry():
    # Joint-scheduling row reuse_writes_no_entry: after step reuses, block entries keep the step
    # of the last full compute.
    m = ToyTransformer()
    config = MixCacheConfig.preset(
        "paper", **{**FREE, "repeat_penalty": 1.0, "granularities": ("step", "block")}
    )
    handle = apply_mixcache(m, config)
    ctrl = handle.controllers["transformer"]
    h0 = h0_of(0)
    seen = []
    for i, t in enumerate(TIMESTEPS[:4]):
        for b in ("cond", "uncond"):
            enc = torch.full((1, 2, 3), E[b], dtype=torch.float64)
            with m.cache_context(b, step_index=i, num_inference_steps=10):
                m(h0, torch.tensor([t], dtype=torch.float64), enc)
        for b in ("cond", "uncond"):
            span, step = ctrl.block.entry(b), ctrl.step.entry(b)
            seen.append((ctrl.run.records[-1].action, span.step, step.step))
    handle.remove()
    reused = [(a, span_step, step_step) for a, span_step, step_step in seen if a != "compute"]
    assert [a for a, _, _ in reused][:2] == ["step", "step"] and len(reused) == 4
    assert all(span_step == 1 and step_step == 1 for _, span_step, step_step in reused)


def test_cfg_never_used_with_one_branch_and_stats_say_why():
    m = ToyTransformer()
    _, stats = run(m, MixCacheConfig.preset("paper", **FREE), branches=("cond",))
    assert stats.action_counts["cfg"] == 0
    assert "only one branch" in stats.unavailable["cfg"]
    assert "n/a cfg" in stats.summary()


def test_forward_outside_any_context_is_one_branch():
    m = ToyTransformer()
    handle = apply_mixcache(m, only("step"))
    h0 = h0_of(0)
    enc = torch.ones(1, 2, 3, dtype=torch.float64)
    outs = [m(h0, torch.tensor([t], dtype=torch.float64), enc)[0] for t in TIMESTEPS]
    stats = handle.stats(current=True)
    handle.remove()
    assert {r.branch for r in stats.records} == {"default"}
    assert [r.step for r in stats.records] == list(range(10))  # steps from the timestep
    assert stats.action_counts["step"] == 6
    torch.testing.assert_close(outs[0], full(m, h0, 1000.0, 1.0), rtol=0, atol=0)


def test_steps_from_timestep_when_context_has_no_step_index():
    m = ToyTransformer()
    h0 = h0_of(0)
    with_index, _ = run(m, only("step"), h0=h0)
    without, stats = run(m, only("step"), h0=h0, use_step_index=False)
    assert [r.step for r in stats.records] == [i for i in range(10) for _ in range(2)]
    for key, v in with_index.items():
        torch.testing.assert_close(without[key], v, rtol=0, atol=0)


def test_generations_in_a_row_are_identical_and_reset():
    m = ToyTransformer()
    handle = apply_mixcache(m, MixCacheConfig.preset("paper", **FREE))
    first = run_loop(m)
    stats1 = handle.stats()
    second = run_loop(m)
    stats2 = handle.stats()
    handle.remove()
    for k, v in first.items():
        assert torch.equal(v, second[k])
    assert stats1.to_dict() == stats2.to_dict()


def test_new_generation_detected_without_reset():
    # No _reset_stateful_cache between runs (a hand-written loop): step_index 0 again starts a
    # new generation, and the previous one becomes the completed stats.
    m = ToyTransformer()
    handle = apply_mixcache(m, MixCacheConfig.preset("paper", **FREE))
    ref = run_loop(m)
    h0 = torch.arange(12, dtype=torch.float64).view(1, 4, 3) / 8
    for i, t in enumerate(TIMESTEPS[:5]):  # an interrupted generation
        with m.cache_context("cond", step_index=i, num_inference_steps=10):
            m(h0, torch.tensor([t], dtype=torch.float64), torch.ones(1, 2, 3, dtype=torch.float64))
    again = run_loop(m)
    handle.remove()
    for k, v in ref.items():
        assert torch.equal(v, again[k])


@pytest.mark.parametrize(
    ("deltas", "reused"),
    [
        # deviation at step 4 = |900 - 600| / 600 = 0.5 > delta2: N 2 -> 1, and stays 1
        ((0.1, 0.4), {2, 3, 5, 7, 9}),
        # 0.5 < delta1: N 2 -> 3; at step 8 deviation |600 - 200| / 200 = 2 > delta2: N -> 2
        ((0.6, 0.7), {2, 3, 5, 6, 7, 9}),
    ],
)
def test_adaptive_interval_wired_to_measured_deviation(deltas, reused):
    m = ToyTransformer()
    config = only("step", interval_init=2, interval_min=1, interval_max=4, repeat_penalty=1.0,
                  delta1=deltas[0], delta2=deltas[1])  # fmt: skip
    _, stats = run(m, config)
    assert {r.step for r in stats.records if r.action == "step"} == reused


def test_cfg_step_does_not_refresh_cond_entries():
    # Joint-scheduling row entries_share_a_step: at a cfg step the cond branch computes fully but
    # keeps its step/block entries of the last step where both branches computed.
    m = ToyTransformer()
    handle = apply_mixcache(m, only("cfg").replace(granularities=("cfg", "block")))
    ctrl = handle.controllers["transformer"]
    h0 = h0_of(0)
    for i, t in enumerate(TIMESTEPS[:3]):
        for b in ("cond", "uncond"):
            enc = torch.full((1, 2, 3), E[b], dtype=torch.float64)
            with m.cache_context(b, step_index=i, num_inference_steps=10):
                m(h0, torch.tensor([t], dtype=torch.float64), enc)
    records, cond, uncond = ctrl.run.records, ctrl.block.entry("cond"), ctrl.block.entry("uncond")
    handle.remove()
    assert [r.action for r in records[-2:]] == ["compute", "cfg"]
    assert cond.step == uncond.step == 1


def test_contextless_cfg_calls_get_their_own_slots():
    # A pipeline that runs cond and uncond without cache contexts (WanVideoToVideoPipeline):
    # the second call at a timestep gets its own cache slot, so results equal the named run.
    m = ToyTransformer()
    h0 = h0_of(0)
    named, _ = run(m, MixCacheConfig.preset("paper", **FREE), h0=h0)
    handle = apply_mixcache(m, MixCacheConfig.preset("paper", **FREE))
    out = {}
    for i, t in enumerate(TIMESTEPS):
        for b in ("cond", "uncond"):
            enc = torch.full((1, 2, 3), E[b], dtype=torch.float64)
            out[(i, b)] = m(h0, torch.tensor([t], dtype=torch.float64), enc)[0]
    m._reset_stateful_cache()
    handle.remove()
    stats = handle.stats()
    assert [r.branch for r in stats.records[:4]] == ["default", "default#2"] * 2
    assert [r.step for r in stats.records] == [i for i in range(10) for _ in range(2)]
    assert stats.action_counts["compute"] < 20
    for key, v in named.items():
        assert torch.equal(out[key], v)
