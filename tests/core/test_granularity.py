"""Span arithmetic of the granularities (pure functions)."""

from __future__ import annotations

import pytest
import torch

from mixcache.granularity import cfg_residual, choose_span, middle_span, step_span
from mixcache.granularity.block import span_length


def test_step_span_with_and_without_probe():
    assert step_span(40, "first_block") == (1, 40)
    assert step_span(40, "none") == (0, 40)


@pytest.mark.parametrize(
    ("n", "head", "tail", "fraction", "span"),
    [
        (6, 1, 1, 0.5, (1, 4)),
        (40, 1, 1, 0.5, (10, 30)),
        (40, 2, 4, 1.0, (2, 36)),  # clipped to the room between head and tail
        (3, 1, 1, 0.1, (1, 2)),  # at least one block
    ],
)
def test_middle_span(n, head, tail, fraction, span):
    assert middle_span(n, head, tail, fraction) == span
    a, b = span
    assert head <= a < b <= n - tail and b - a == span_length(n, head, tail, fraction)


def test_lowest_change_span_picks_the_calmest_window():
    change = [0.9, 0.5, 0.4, 0.01, 0.02, 0.03, 0.6, 0.9]
    assert choose_span(8, 1, 1, 0.375, change) == (3, 6)
    # incomplete measurements fall back to the middle span
    assert choose_span(8, 1, 1, 0.375, [None] * 8) == middle_span(8, 1, 1, 0.375)
    # ties keep the window nearest the middle
    assert choose_span(8, 1, 1, 0.375, [0.1] * 8) == middle_span(8, 1, 1, 0.375)


def test_cfg_residual_reuses_the_guidance_difference():
    r_cond_now = torch.tensor([5.0, 7.0])
    delta = torch.tensor([1.0, -1.0], dtype=torch.bfloat16)
    out = cfg_residual(r_cond_now, delta)
    assert out.dtype == torch.float32 and torch.equal(out, torch.tensor([4.0, 8.0]))


def test_lowest_change_span_has_hysteresis():
    change = [0.9, 0.5, 0.30, 0.01, 0.02, 0.03, 0.6, 0.9]
    calm = (3, 6)  # total 0.06
    # the calmer window must beat the current one by the margin to take over
    assert choose_span(8, 1, 1, 0.375, change, current=(2, 5), margin=0.2) == calm
    near = [0.9, 0.5, 0.05, 0.05, 0.05, 0.04, 0.6, 0.9]  # (2,5): 0.15 vs (3,6): 0.14
    assert choose_span(8, 1, 1, 0.375, near, current=(2, 5), margin=0.2) == (2, 5)
    assert choose_span(8, 1, 1, 0.375, near, current=(2, 5), margin=0.0) == (3, 6)
    assert choose_span(8, 1, 1, 0.375, [None] * 8, current=(2, 5)) == (2, 5)


def test_lowest_change_moves_span_only_at_full_computes(tiny_wan_pipe):
    from tiny_configs import TINY_FAST

    from mixcache import apply_mixcache
    from mixcache_lab.tiny import tiny_call_kwargs

    config = TINY_FAST.replace(
        block_span="lowest_change", granularities=("block",), span_fraction=0.35
    )
    handle = apply_mixcache(tiny_wan_pipe, config)
    try:
        tiny_wan_pipe(
            "a red circle moving right",
            generator=torch.Generator().manual_seed(0),
            **tiny_call_kwargs("wan", num_inference_steps=16),
        )
    finally:
        handle.remove()
    stats = handle.stats()
    assert stats.action_counts["block"] > 0
    assert not any("span_changed" in r.reason for r in stats.records)
