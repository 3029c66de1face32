"""The fast part of the soak (the long one is ``make soak``): ten generations in one process
over tiny Wan, tiny HunyuanVideo and the bundled model, one of them interrupted, each equal to its
fresh reference bit for bit, no cache left behind, no growth of live tensors."""

from __future__ import annotations

import pytest

from mixcache_lab.soak import SoakFailure, plan, run_soak


def test_plan_alternates_everything_and_interrupts_once():
    settings = plan(100)
    assert len(settings) == 100
    assert [s.interrupt_at is not None for s in settings].count(True) == 1
    for field in ("pipeline", "config", "steps", "guidance", "batch"):
        assert len({getattr(s, field) for s in settings}) >= 3, field
    k = next(i for i, s in enumerate(settings) if s.interrupt_at is not None)
    after = next(s for s in settings[k + 1 :] if s.pipeline == settings[k].pipeline)
    assert after.config == settings[k].config  # the interrupted controller serves the next run


def test_ten_generations_match_fresh_references():
    result = run_soak(10, cycle=3)
    assert result.generations == 10 and result.interrupted == 1
    assert len(result.live_tensors) == 4
    assert max(result.live_tensors[1:]) <= result.live_tensors[1]


def test_soak_detects_state_kept_across_generations(monkeypatch):
    # The check can fail: granularities that keep their entries when a generation ends (as if
    # they were never freed: neither at the final steps nor by the reset at a generation's end,
    # which both go through ``release``) are caught after the first run.
    from mixcache.granularity import Granularity

    monkeypatch.setattr(Granularity, "release", lambda self: None)
    with pytest.raises(SoakFailure, match=r"differ|still cached"):
        run_soak(3, pipelines=("tiny_wan",), cycle=3)
