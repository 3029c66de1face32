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
    block = BlockReuse(pending, None, 8, 1, 1, 0.5, 0.2, lambda g, v: seen.append((g, v)))
    assert block.span == (2, 6) and block.saving(2) == 0.5
    block.store("cond", 1, torch.full((4,), 2.0), None, track=True)
    block.store("cond", 3, torch.full((4,), 3.0), None, track=True)  # |2 - 3| / |3| over 2 steps
    assert block.rate is None and len(pending) == 1
    pending.flush()
    assert block.rate == pytest.approx(1 / 3 / 2) and seen == [("block", pytest.approx(1 / 3))]
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
