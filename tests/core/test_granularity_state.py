"""Each granularity owns its entries, signal, saving, plan and reset (no controller needed)."""

from __future__ import annotations

import pytest
import torch

from mixcache.granularity import BlockReuse, CfgReuse, StepReuse
from mixcache.policy.signals import PendingSignals


def make_step(order=0, probe="first_block", signal=lambda made: 0.5):
    return StepReuse(PendingSignals(), None, 8, probe, order, signal)


def test_step_reuse_entries_plan_saving_and_reset():
    step = make_step()
    assert step.plan("cond", 3) is None and step.entry("cond") is None
    r = torch.ones(2, 3)
    step.store("cond", 2, r, track=False)
    plan = step.plan("cond", 3)
    assert plan.skip == (1, 8) and torch.equal(plan.residual.hidden, r) and plan.output is None
    assert step.saving(2) == pytest.approx(7 / 8)  # block 0 (the probe) still runs
    assert make_step(probe="none").saving(2) == 1.0
    assert step.nbytes == r.numel() * r.element_size()
    assert step.oldest(["cond"]) == 2 and step.oldest(["cond", "uncond"]) is None
    assert step.signal(None, 5) is None and step.signal(2, 5) == 0.5  # the probe's signal
    step.reset()
    assert step.entry("cond") is None and step.nbytes == 0 and step.rate is None


def test_step_reuse_order_1_keeps_the_previous_entry_and_extrapolates():
    step = make_step(order=1)
    step.store("cond", 2, torch.full((2,), 1.0), track=False)
    step.store("cond", 4, torch.full((2,), 3.0), track=False)
    assert step.get("cond", "step_prev").step == 2
    plan = step.plan("cond", 5)  # 3 + (3 - 1) * (5 - 4) / (4 - 2) = 4
    assert torch.allclose(plan.residual, torch.full((2,), 4.0))


def test_drift_rate_is_measured_at_the_next_reduction_and_drives_the_signal():
    pending, seen = PendingSignals(), []
    block = BlockReuse(pending, None, 8, 1, 1, 0.5, 0.2, lambda g, v, age: seen.append((g, v, age)))
    assert block.span == (2, 6) and block.saving(2) == 0.5
    block.store("cond", 1, torch.full((4,), 2.0), None, track=True)
    block.store("cond", 3, torch.full((4,), 3.0), None, track=True)  # |2 - 3| / |3| over 2 steps
    assert block.rate is None and len(pending) == 1
    pending.flush()
    assert block.rate == pytest.approx(1 / 3 / 2) and seen == [("block", pytest.approx(1 / 3), 2)]
    assert block.signal(3, 7) == pytest.approx(4 / 6)
    assert block.signal(None, 7) is None


def test_block_span_moves_only_when_asked_and_entries_of_another_span_do_not_count():
    block = BlockReuse(PendingSignals(), None, 8, 1, 1, 0.25, 0.0)
    block.store("cond", 1, torch.ones(3), None, track=False)
    assert block.span_ok(["cond"]) and block.plan("cond", 2).skip == (3, 5)
    for i, change in enumerate([0.9, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9]):
        block._on_block_change(i, change)
    assert block.next_span == (2, 4) and block.span == (3, 5)  # not before a full compute
    block.move_span()
    assert block.span == (2, 4) and not block.span_ok(["cond"])
    block.reset()
    assert block.span == (3, 5) and block.sketches == {} and block.entry("cond") is None


def test_cfg_reuse_rebuilds_from_the_fresh_reference_in_both_modes():
    for mode, slot in (("residual_diff", "delta"), ("output", "delta_out")):
        cfg = CfgReuse(PendingSignals(), None, 8, mode)
        cfg.store("uncond", slot, torch.full((2,), 0.5), 3, track=False)
        assert cfg.plan("uncond", 4) is None  # no reference at this step yet
        cfg.reference_now = torch.full((2,), 2.0)
        plan = cfg.plan("uncond", 4)
        rebuilt = plan.output if mode == "output" else plan.residual
        assert torch.equal(rebuilt, torch.full((2,), 1.5)) and plan.skip == (0, 8)
        assert (plan.output is None) == (mode == "residual_diff")
        assert cfg.saving(2) == 0.5 and cfg.saving(1) == 0.0
        cfg.new_step()
        assert cfg.reference_now is None and cfg.entry("uncond") is not None


def test_discard_forgets_an_entry_wherever_it_is_kept():
    step = make_step(order=1)
    first = step.store("cond", 1, torch.ones(2), track=False)
    step.store("cond", 2, torch.ones(2), track=False)  # first is now step_prev
    assert step.discard(first) == ["step_prev"]
    assert step.get("cond", "step_prev") is None and step.entry("cond") is not None


def test_block_reuse_order_1_extrapolates_on_one_span_and_restarts_after_a_move():
    block = BlockReuse(PendingSignals(), None, 8, 1, 1, 0.25, 0.0, residual_order=1)
    block.store("cond", 2, torch.full((2,), 1.0), torch.full((3,), 10.0), track=False)
    block.store("cond", 4, torch.full((2,), 3.0), torch.full((3,), 20.0), track=False)
    plan = block.plan("cond", 5)  # 3 + (3 - 1) * (5 - 4) / (4 - 2) = 4; encoder 20 + 5 = 25
    assert plan.skip == (3, 5)
    assert torch.equal(plan.residual.hidden, torch.full((2,), 4.0))
    assert torch.equal(plan.residual.encoder, torch.full((3,), 25.0))
    # Order 0 reuses the last residual as it is.
    flat = BlockReuse(PendingSignals(), None, 8, 1, 1, 0.25, 0.0)
    flat.store("cond", 2, torch.full((2,), 1.0), None, track=False)
    flat.store("cond", 4, torch.full((2,), 3.0), None, track=False)
    assert torch.equal(flat.plan("cond", 5).residual.hidden, torch.full((2,), 3.0))
    # A moved span's first residual has no predecessor on that span: plain reuse.
    block.span = (2, 4)
    block.store("cond", 6, torch.full((2,), 7.0), None, track=False)
    assert block.get("cond", "span_prev") is None
    assert torch.equal(block.plan("cond", 7).residual.hidden, torch.full((2,), 7.0))


def test_cfg_reuse_order_1_extrapolates_the_guidance_difference():
    cfg = CfgReuse(PendingSignals(), None, 8, "residual_diff", residual_order=1)
    cfg.store("uncond", "delta", torch.full((2,), 0.5), 2, track=False)
    cfg.store("uncond", "delta", torch.full((2,), 1.5), 4, track=False)
    cfg.reference_now = torch.full((2,), 10.0)
    # dR(6) = 1.5 + (1.5 - 0.5) * (6 - 4) / (4 - 2) = 2.5; R_uncond = 10 - 2.5
    assert torch.equal(cfg.plan("uncond", 6).residual, torch.full((2,), 7.5))
    plain = CfgReuse(PendingSignals(), None, 8, "residual_diff")
    plain.store("uncond", "delta", torch.full((2,), 0.5), 2, track=False)
    plain.store("uncond", "delta", torch.full((2,), 1.5), 4, track=False)
    plain.reference_now = torch.full((2,), 10.0)
    assert torch.equal(plain.plan("uncond", 6).residual, torch.full((2,), 8.5))
    assert plain.get("uncond", "delta_prev") is None


@pytest.mark.parametrize(
    "overrides, n_branches, expected",
    [
        ({}, 2, {"step": 0.0, "cfg": 0.5, "block": 0.5}),  # the presets: no probe, half span
        ({"step_probe": "first_block"}, 2, {"step": 1 / 8, "cfg": 0.5, "block": 0.5}),
        ({}, 1, {"step": 0.0, "block": 0.5}),  # no CFG: nothing for cfg to save
        ({"granularities": ("step",)}, 2, {"step": 0.0}),
    ],
)
def test_reuse_costs_before_a_run_are_the_granularities_savings(overrides, n_branches, expected):
    """``reuse_costs`` (what ``mixcache plan`` prices) is 1 - saving() of the granularities a
    run builds from the same config, on 8 blocks."""
    from mixcache import MixCacheConfig
    from mixcache.granularity import reuse_costs

    cfg = MixCacheConfig.preset("balanced", **overrides)
    costs = reuse_costs(cfg, 8, n_branches)
    assert costs == pytest.approx(expected)
    live = {
        "step": make_step(probe=cfg.step_probe),
        "cfg": CfgReuse(PendingSignals(), None, 8, cfg.cfg_mode),
        "block": BlockReuse(
            PendingSignals(), None, 8, cfg.head_blocks, cfg.tail_blocks, cfg.span_fraction, 0.0
        ),
    }
    assert costs == pytest.approx({g: 1.0 - live[g].saving(n_branches) for g in costs})
