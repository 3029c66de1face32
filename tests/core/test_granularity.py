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
