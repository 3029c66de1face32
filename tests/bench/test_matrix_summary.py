"""The held-out matrix's summary functions on synthetic rows and records: exact values."""

from __future__ import annotations

import math

import pytest

from mixcache_lab.bench.matrix import Cell, default_cells, parse_cells
from mixcache_lab.bench.matrix_report import (
    best_peer_at,
    budget_errors,
    cell_summary,
    dominated_by,
    granularity_usage,
    hybrid_gaps,
    matrix_markdown,
)
from mixcache_lab.bench.report import interpolate


def _row(method: str, family: str, fraction: float, psnr: float, **extra) -> dict:
    return {
        "method": method,
        "family": family,
        "status": "ok",
        "block_fraction": fraction,
        "psnr": psnr,
        "speedup": 1.0 / fraction,
        **extra,
    }


# Block speedups: 1/0.5 = 2, 1/0.25 = 4, 1/0.4 = 2.5 ... chosen so interpolation is exact.
ROWS = [
    _row("none", "none", 1.0, math.inf),
    _row("fbc-a", "fbc", 0.5, 30.0),  # (2, 30)
    _row("fbc-b", "fbc", 0.25, 20.0),  # (4, 20)
    _row("sea-a", "seacache", 1 / 3, 28.0),  # (3, 28)
    _row("sea-b", "seacache", 0.2, 18.0),  # (5, 18)
    _row("half-steps", "half-steps", 0.5, 26.0),  # (2, 26)
    _row("mixcache-balanced", "mixcache", 0.4, 27.0),  # (2.5, 27)
    _row("mixcache-fast", "mixcache", 0.25, 26.0),  # (4, 26)
    _row("mixcache-x1.5", "mixcache-budget", 0.7, 34.0, target_speedup=1.5),  # 5 % over
    _row("mixcache-x2", "mixcache-budget", 0.5, 31.0, target_speedup=2.0),  # exact
    _row("mixcache-x3", "mixcache-budget", 0.3, 25.0, target_speedup=3.0),  # 10 % under
    _row("mixcache-step-only", "mixcache-1g", 0.4, 26.5),  # (2.5, 26.5)
    _row("mixcache-block-only", "mixcache-1g", 0.9, 40.0),  # (1.11, outside the curve)
    _row("mixcache-dry-run", "diagnostic", 1.0, math.inf),
    {"method": "fastercache", "family": "fastercache", "status": "unavailable"},
]


def test_interpolate_inside_the_range_only() -> None:
    pts = [(2.0, 30.0), (4.0, 20.0)]
    assert interpolate(pts, 3.0) == 25.0
    assert interpolate(pts, 2.0) == 30.0 and interpolate(pts, 4.0) == 20.0
    assert interpolate(pts, 1.9) is None and interpolate(pts, 4.1) is None
    assert interpolate([(2.0, 5.0)], 2.0) == 5.0 and interpolate([(2.0, 5.0)], 2.1) is None


def test_best_peer_is_the_best_interpolated_family() -> None:
    # At 2.5x: fbc gives 27.5, seacache does not reach 2.5 (its range is 3..5).
    assert best_peer_at(ROWS, 2.5) == (27.5, "fbc")
    # At 3.5x: fbc 22.5, seacache 28 - 10 * 0.5 / 2 = 25.5 -> seacache wins.
    assert best_peer_at(ROWS, 3.5) == (25.5, "seacache")
    assert best_peer_at(ROWS, 6.0) == (None, None)


def test_domination_needs_both_axes_and_one_strict() -> None:
    fast = next(r for r in ROWS if r["method"] == "mixcache-fast")
    assert dominated_by(fast, ROWS) == []  # fbc-b is as fast but 6 dB worse
    slow = _row("mixcache-quality", "mixcache", 0.5, 29.0)
    assert dominated_by(slow, ROWS) == ["fbc-a"]  # same speed, 1 dB better
    tie = _row("mixcache-quality", "mixcache", 0.5, 30.0)
    assert dominated_by(tie, ROWS) == []  # equal on both axes is not domination
    behind_half = _row("mixcache-quality", "mixcache", 0.5, 25.0)
    # sea-a (3x, 28 dB) is faster and better too.
    assert dominated_by(behind_half, ROWS) == ["fbc-a", "sea-a", "half-steps"]


def test_budget_error_in_percent_of_the_target_fraction() -> None:
    errs = {b["method"]: b["error_pct"] for b in budget_errors(ROWS)}
    assert errs["mixcache-x1.5"] == pytest.approx(5.0)
    assert errs["mixcache-x2"] == pytest.approx(0.0)
    assert errs["mixcache-x3"] == pytest.approx(-10.0)
    assert set(errs) == {"mixcache-x1.5", "mixcache-x2", "mixcache-x3"}


def test_hybrid_gap_interpolates_the_hybrid_curve_at_each_ablation() -> None:
    gaps = {g["method"]: g for g in hybrid_gaps(ROWS)}
    # step-only ran balanced's budget and landed at balanced's 2.5x: compared with balanced's
    # own point (27), not with the x2-x3 line through it (31 - 6 * 0.5 / (4/3) = 28.75).
    assert gaps["mixcache-step-only"]["hybrid_psnr"] == pytest.approx(27.0)
    assert gaps["mixcache-step-only"]["gap"] == pytest.approx(0.5)
    assert gaps["mixcache-block-only"]["gap"] is None  # 1.11x is below the curve's 1.43x
    # Between hybrid points it interpolates: at 3x, between balanced (2.5, 27) and x3 (3.33, 25).
    at3 = hybrid_gaps([*ROWS, _row("mixcache-cfg-only", "mixcache-1g", 1 / 3, 20.0)])[-1]
    assert at3["hybrid_psnr"] == pytest.approx(27.0 + (25.0 - 27.0) * (3.0 - 2.5) / (10 / 3 - 2.5))


def test_cell_summary_margins_and_half_steps() -> None:
    s = cell_summary(ROWS)
    bal, fast = s["presets"]
    assert bal["method"] == "mixcache-balanced" and bal["block_speedup"] == pytest.approx(2.5)
    assert bal["margin"] == pytest.approx(27.0 - 27.5)
    assert bal["vs_half"] == pytest.approx(1.0)  # 2.5x >= 2x: a fair comparison
    assert fast["margin"] == pytest.approx(26.0 - 23.0)  # fbc at 4x: 20; seacache at 4x: 23
    assert fast["best_peer"] == "seacache" and fast["best_peer_psnr"] == pytest.approx(23.0)
    assert s["budget_at_half"] == pytest.approx(31.0 - 26.0)  # the x2 point sits at 2x
    assert s["hybrid_vs_best_single"] == pytest.approx(0.5)
    # sea-a (3x, 28 dB) is faster and better than balanced (2.5x, 27 dB).
    assert bal["dominated_by"] == ["sea-a"] and fast["dominated_by"] == []
    assert s["any_dominated"]
    slower = cell_summary([*ROWS[:6], _row("mixcache-quality", "mixcache", 0.8, 40.0)])
    assert slower["presets"][0]["vs_half"] is None  # slower than half-steps: not compared


def test_granularity_usage_counts_per_step_fraction_bin_and_reasons() -> None:
    def rec(decisions: list[tuple[int, str, str]]) -> dict:
        return {
            "method": "mixcache-balanced",
            "status": "ok",
            "profile": {"call_kwargs": {"num_inference_steps": 8}},
            "mixcache_records": [{"step": s, "action": a, "reason": r} for s, a, r in decisions],
        }

    recs = [
        rec([(0, "compute", "warm-up"), (2, "step", "low P 0.1"), (5, "cfg", "low P 2")]),
        rec([(3, "block", "low P 1e-3"), (7, "step", "low P .5"), (7, "compute", "final")]),
        {"method": "fbc-a", "status": "ok", "mixcache_records": None},
    ]
    usage = granularity_usage(recs, bins=4)
    assert list(usage) == ["mixcache-balanced"]
    bins = usage["mixcache-balanced"]["bins"]
    assert bins == [
        {"step": 0, "cfg": 0, "block": 0},  # steps 0, 1
        {"step": 1, "cfg": 0, "block": 1},  # steps 2, 3
        {"step": 0, "cfg": 1, "block": 0},  # steps 4, 5
        {"step": 1, "cfg": 0, "block": 0},  # steps 6, 7
    ]
    # One reason per step (its first branch's): the second record of step 7 is not counted.
    assert usage["mixcache-balanced"]["top_reasons"] == [("low P #", 4), ("warm-up", 1)]


def test_markdown_has_one_row_per_cell_and_preset() -> None:
    machine = {"date_utc": "2026-01-01 00:00 UTC", "cpu": "cpu", "cores": 2}
    base = {"knob": "", "tag": "", "reason": "", "machine": machine}
    timing = {"time_s": 1.0, "ref_time_s": 2.0, "ideal_speedup": None}
    records = []
    for cell in ("20x5", "50x7"):
        for r in ROWS:
            extra = timing if r["status"] == "ok" else {}
            records.append({**base, **r, **extra, "model": "m", "cell": cell})
    meta = {"command": "mixcache bench --matrix", "machine": machine, "wall_seconds": 60.0}
    md = matrix_markdown(records, meta)
    assert md.count("| m | 20x5 | balanced | 2.50 |") == 1
    assert md.count("| m | 50x7 | fast | 4.00 |") == 1
    assert "| m | 20x5 | +5.0 / +0.0 / - / -10.0 | +5.00 | +0.50 | NO |" in md
    assert "whole run 1.0 min" in md


def test_parse_cells() -> None:
    assert parse_cells("20x5, 50x7.5,20x5") == [Cell(20, 5.0), Cell(50, 7.5)]
    assert parse_cells(None) == default_cells() and len(default_cells()) == 12
    assert Cell(30, 3.0).label == "30x3"
    for bad in ("20", "x5", "0x5", "20x", "20*5"):
        with pytest.raises(ValueError, match="STEPSxCFG"):
            parse_cells(bad)
