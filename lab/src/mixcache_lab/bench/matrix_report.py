"""The held-out matrix's summary: pure functions over result records, then the files.

Everything is computed per *cell* (one model at one step count and guidance scale) from the
per-method rows of :func:`mixcache_lab.bench.report.summarize` (means over the cell's prompts).
The speed axis is the **block-compute speedup** ``1 / block_fraction`` (deterministic: FLOPs
the hooks counted, relative to the uncached run); wall-clock speedups are reported next to it.
PSNR is over decoded frames against the uncached output of the same prompt and seed; an
identical output (``inf``) is capped at :data:`PSNR_CAP` on curves.

What each number is:

- **best peer at the same speedup**: each peer family's sweep is a curve of points
  (block speedup, PSNR); it is interpolated linearly at the MixCache row's speedup, only inside
  the sweep's measured range (:func:`mixcache_lab.bench.report.interpolate`); the best family wins.
  ``margin`` = MixCache PSNR - that value (``None`` when no sweep reaches the speedup).
- **vs half-steps**: half-steps is one point ``(s_h, p_h)``. ``budget_at_half`` interpolates
  MixCache's own budget curve (``mixcache-x1.5`` .. ``x3``) at ``s_h`` and subtracts ``p_h``;
  per preset, ``vs_half`` = preset PSNR - ``p_h``, reported only when the preset is at least as
  fast as half-steps (otherwise it would compare a slower method).
- **dominated**: a peer point (any peer setting, half-steps included) with block speedup and
  PSNR both ``>=`` the preset's, and one of them ``>``.
- **budget error**: ``(achieved block fraction - 1/target) / (1/target)`` in percent.
- **hybrid gap**: for each single-granularity ablation at block speedup ``s_g``, the hybrid's
  curve interpolated at ``s_g`` minus the ablation's PSNR (``None`` outside the curve's range).
  The hybrid's curve is every all-granularity budget run of the cell: ``mixcache-x1.5`` ..
  ``x3`` and the presets (which are budgets too). Each ablation runs a budget it can reach
  (step-only balanced's x2.25, cfg-only and block-only x1.5), so it is compared with the
  hybrid's own run at that budget, not with a line between two budgets that no run took.
- **granularity usage**: per MixCache method, forwards that reused at each granularity per
  quarter of the run (``step / num_steps``), summed over the cell's prompts, and the most
  frequent reasons of the steps' decisions (one per step: its first branch's).
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from .report import _fmt, _plt, interpolate, summarize

__all__ = [
    "HYBRID_FAMILIES",
    "PRESETS",
    "PSNR_CAP",
    "best_peer_at",
    "budget_errors",
    "cell_summary",
    "dominated_by",
    "granularity_usage",
    "group_cells",
    "hybrid_gaps",
    "matrix_markdown",
    "matrix_plot",
    "matrix_snippet",
    "peer_points",
    "write_matrix_outputs",
]

PSNR_CAP = 99.0
PRESETS = ("mixcache-quality", "mixcache-balanced", "mixcache-fast")
HYBRID_FAMILIES = ("mixcache", "mixcache-budget")
_NOT_PEERS = ("none", "diagnostic", "half-steps")
_REUSES = ("step", "cfg", "block")


def _psnr(row: dict[str, Any]) -> float | None:
    p = row.get("psnr")
    return None if p is None else min(float(p), PSNR_CAP)


def _ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that ran, with a block fraction and a PSNR; each gets ``block_speedup``."""
    out = []
    for r in rows:
        if r.get("status") == "ok" and r.get("block_fraction") and _psnr(r) is not None:
            out.append({**r, "block_speedup": 1.0 / float(r["block_fraction"])})
    return out


def _is_peer(row: dict[str, Any]) -> bool:
    return not row["family"].startswith("mixcache") and row["family"] not in _NOT_PEERS


def peer_points(rows: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Each peer family's sweep as ``(block speedup, PSNR)`` points."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in _ok(rows):
        if _is_peer(r):
            out.setdefault(r["family"], []).append((r["block_speedup"], _psnr(r)))
    return out


def best_peer_at(rows: list[dict[str, Any]], speedup: float) -> tuple[float | None, str | None]:
    """(best interpolated peer PSNR at ``speedup``, its family), or ``(None, None)``."""
    best: tuple[float | None, str | None] = (None, None)
    for fam, pts in sorted(peer_points(rows).items()):
        y = interpolate(pts, speedup)
        if y is not None and (best[0] is None or y > best[0]):
            best = (y, fam)
    return best


def dominated_by(row: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Peer settings (half-steps included) at least as fast and accurate, better in one."""
    me = _ok([row])
    if not me:
        return []
    s, p = me[0]["block_speedup"], _psnr(me[0])
    return [
        o["method"]
        for o in _ok(rows)
        if (_is_peer(o) or o["family"] == "half-steps")
        and o["block_speedup"] >= s
        and _psnr(o) >= p
        and (o["block_speedup"] > s or _psnr(o) > p)
    ]


def _budget_curve(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return [(r["block_speedup"], _psnr(r)) for r in _ok(rows) if r["family"] == "mixcache-budget"]


def budget_errors(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per budget method: target, achieved block fraction and its error in percent."""
    out = []
    for r in rows:
        target = r.get("target_speedup")
        if target is None or r.get("status") != "ok" or not r.get("block_fraction"):
            continue
        frac = float(r["block_fraction"])
        out.append(
            {
                "method": r["method"],
                "target": float(target),
                "block_fraction": frac,
                "error_pct": 100.0 * (frac * float(target) - 1.0),
            }
        )
    return out


def hybrid_gaps(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per single-granularity ablation: the hybrid's curve at its speedup minus its PSNR."""
    curve = [
        (r["block_speedup"], _psnr(r))
        for r in _ok(rows)
        if r["family"] == "mixcache-budget" or r["method"] in PRESETS
    ]
    out = []
    for r in _ok(rows):
        if r["family"] != "mixcache-1g":
            continue
        hybrid = interpolate(curve, r["block_speedup"])
        out.append(
            {
                "method": r["method"],
                "block_speedup": r["block_speedup"],
                "psnr": _psnr(r),
                "hybrid_psnr": hybrid,
                "gap": None if hybrid is None else hybrid - _psnr(r),
            }
        )
    return out


def cell_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Everything the matrix reports for one cell (see the module docstring)."""
    ok = {r["method"]: r for r in _ok(rows)}
    half = ok.get("half-steps")
    presets = []
    for name in PRESETS:
        r = ok.get(name)
        if r is None:
            continue
        peer, fam = best_peer_at(rows, r["block_speedup"])
        vs_half = None
        if half is not None and r["block_speedup"] >= half["block_speedup"]:
            vs_half = _psnr(r) - _psnr(half)
        presets.append(
            {
                "method": name,
                "block_speedup": r["block_speedup"],
                "wall_speedup": r.get("speedup"),
                "psnr": _psnr(r),
                "best_peer_psnr": peer,
                "best_peer": fam,
                "margin": None if peer is None else _psnr(r) - peer,
                "vs_half": vs_half,
                "dominated_by": dominated_by(r, rows),
            }
        )
    budget_at_half = None
    if half is not None:
        at = interpolate(_budget_curve(rows), half["block_speedup"])
        budget_at_half = None if at is None else at - _psnr(half)
    gaps = hybrid_gaps(rows)
    known = [g["gap"] for g in gaps if g["gap"] is not None]
    return {
        "presets": presets,
        "half_steps": None
        if half is None
        else {"block_speedup": half["block_speedup"], "psnr": _psnr(half)},
        "budget_at_half": budget_at_half,
        "budget": budget_errors(rows),
        "hybrid_gaps": gaps,
        # The hybrid against its best ablation: the smallest gap over ablations.
        "hybrid_vs_best_single": min(known) if known else None,
        "any_dominated": any(p["dominated_by"] for p in presets),
    }


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?")


def _reason_kind(reason: str) -> str:
    """A reason with its numbers replaced by ``#``, so reasons of one kind count together."""
    return _NUMBER.sub("#", reason)


def granularity_usage(
    records: list[dict[str, Any]], bins: int = 4, top: int = 3
) -> OrderedDict[str, dict[str, Any]]:
    """Per MixCache method: reuses per granularity per step-fraction bin, and top reasons.

    ``records``: result records of one cell (any number of prompts). A forward counts once, so
    a step reuse on a two-branch step counts 2. Bin ``i`` holds steps with
    ``i/bins <= step/num_steps < (i+1)/bins``. Reasons are counted once per step: the first
    branch's (the step's decision; the other branches follow it), numbers replaced by ``#``.
    """
    out: OrderedDict[str, dict[str, Any]] = OrderedDict()
    for rec in records:
        decisions = rec.get("mixcache_records")
        if not decisions or rec.get("status") != "ok":
            continue
        steps = int(rec["profile"]["call_kwargs"]["num_inference_steps"])
        entry = out.setdefault(
            rec["method"],
            {"bins": [dict.fromkeys(_REUSES, 0) for _ in range(bins)], "reasons": Counter()},
        )
        decided: set[int] = set()
        for d in decisions:
            step = int(d.get("step", 0))
            action = str(d.get("action", "compute"))
            if action in _REUSES:
                b = min(bins - 1, int(bins * step / steps))
                entry["bins"][b][action] += 1
            # A step's reason is the one its first branch gave: later branches follow it.
            if step not in decided:
                decided.add(step)
                entry["reasons"][_reason_kind(str(d.get("reason", "")))] += 1
    for entry in out.values():
        entry["top_reasons"] = entry.pop("reasons").most_common(top)
    return out


def group_cells(records: list[dict[str, Any]]) -> OrderedDict[tuple[str, str], list[dict]]:
    """Records grouped by ``(model, cell)`` in run order."""
    out: OrderedDict[tuple[str, str], list[dict]] = OrderedDict()
    for rec in records:
        out.setdefault((rec["model"], rec["cell"]), []).append(rec)
    return out


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def _dominated_text(names: list[str]) -> str:
    return ", ".join(names) if names else "-"


def _summaries(records: list[dict[str, Any]]) -> list[tuple[str, str, list[dict], dict]]:
    return [
        (model, cell, recs, cell_summary(summarize(recs)))
        for (model, cell), recs in group_cells(records).items()
    ]


def _tables(records: list[dict[str, Any]]) -> list[str]:
    summaries = _summaries(records)
    out = [
        "| model | cell (steps x CFG) | preset | block speedup | wall speedup | PSNR | "
        "best peer @ same speedup | margin | vs half-steps | dominated by |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, cell, _, s in summaries:
        for p in s["presets"]:
            peer = f"{_fmt(p['best_peer_psnr'])} ({p['best_peer']})" if p["best_peer"] else "-"
            out.append(
                f"| {model} | {cell} | {p['method'].removeprefix('mixcache-')} | "
                f"{p['block_speedup']:.2f} | {_fmt(p['wall_speedup'])} | {_fmt(p['psnr'])} | "
                f"{peer} | {_fmt(p['margin'], '+.2f')} | {_fmt(p['vs_half'], '+.2f')} | "
                f"{_dominated_text(p['dominated_by'])} |"
            )
    out += [
        "",
        "| model | cell | budget error x1.5 / x2 / x2.5 / x3 (%) | budget curve @ half-steps "
        "- half-steps (dB) | hybrid - best ablation (dB) | no preset dominated |",
        "|---|---|---|---|---|---|",
    ]
    for model, cell, _, s in summaries:
        errs = {round(b["target"], 3): b["error_pct"] for b in s["budget"]}
        err_text = " / ".join(_fmt(errs.get(t), "+.1f") for t in (1.5, 2.0, 2.5, 3.0))
        out.append(
            f"| {model} | {cell} | {err_text} | {_fmt(s['budget_at_half'], '+.2f')} | "
            f"{_fmt(s['hybrid_vs_best_single'], '+.2f')} | {_fmt(not s['any_dominated'])} |"
        )
    return out


def _usage_tables(records: list[dict[str, Any]], bins: int = 4) -> list[str]:
    head = " | ".join(f"{100 * i // bins}-{100 * (i + 1) // bins}% s/c/b" for i in range(bins))
    out = [f"| model | cell | method | {head} | most frequent reasons |"]
    out.append("|" + "---|" * (bins + 4))
    for (model, cell), recs in group_cells(records).items():
        for method, u in granularity_usage(recs, bins).items():
            if not any(method.startswith(f"{f}-") for f in ("mixcache",)) or "dry-run" in method:
                continue
            cells = " | ".join(f"{b['step']}/{b['cfg']}/{b['block']}" for b in u["bins"])
            reasons = "; ".join(f"{r} ({n})" for r, n in u["top_reasons"])
            out.append(
                f"| {model} | {cell} | {method.removeprefix('mixcache-')} | {cells} | {reasons} |"
            )
    return out


def _header(meta: dict[str, Any]) -> list[str]:
    m = meta.get("machine", {})
    return [
        f"Command: `{meta.get('command')}` — run on {m.get('date_utc')}, {m.get('cpu')} "
        f"({m.get('cores')} cores, {m.get('torch_threads')} torch threads"
        + (", CUDA" if m.get("cuda") else ", no GPU")
        + f"), torch {m.get('torch')}, diffusers {m.get('diffusers')}"
        + (f", cache-dit {m['cache_dit']}" if m.get("cache_dit") else "")
        + f"; whole run {meta.get('wall_seconds', 0) / 60:.1f} min.",
        "",
        f"Models: {', '.join(meta.get('models', []))}; cells (steps x CFG): "
        f"{', '.join(meta.get('cells', []))}; {meta.get('prompts')} training prompts per cell "
        f"(neither benchmark nor tuning prompts), seeds from {meta.get('seed_base')}, "
        f"1 timed run each. Speed = block-compute speedup (1 / executed block-FLOP fraction); "
        "PSNR of decoded frames against the uncached output of the same prompt and seed.",
    ]


def matrix_markdown(records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """``matrix.md``: the header, the summary tables, what each number means, usage."""
    out = ["# mixcache bench — held-out matrix", "", *_header(meta), ""]
    out += _tables(records)
    out += ["", "## Which granularity was chosen where", ""]
    out += [
        "Forwards that reused at each granularity (step / cfg / block) per quarter of the run, "
        "summed over the cell's prompts; the most frequent decision reasons with counts.",
        "",
    ]
    out += _usage_tables(records)
    doc = (__doc__ or "").split("What each number is:", 1)[-1].strip()
    out += ["", "## What each number is", "", doc, ""]
    return "\n".join(out)


def matrix_snippet(records: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> str:
    """``readme_snippet.md``: the README's matrix section, generated from this run."""
    out = [*_header(meta), "", *_tables(records), ""]
    out += [f"![held-out matrix]({out_dir.as_posix()}/matrix.png)", ""]
    return "\n".join(out)


def matrix_plot(records: list[dict[str, Any]], path: Path) -> None:
    """One picture: a panel per cell, block speedup vs PSNR for every method family."""
    plt = _plt()
    groups = list(group_cells(records).items())
    if not groups:
        return
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.axis("off")
    cmap = plt.get_cmap("tab10")
    for ax, ((model, cell), recs) in zip(axes.flat, groups, strict=False):
        rows = _ok(summarize(recs))
        fams: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        for r in rows:
            if r["family"] not in ("none", "diagnostic"):
                fams.setdefault(r["family"], []).append(r)
        # Peers take tab10's colours except red (index 3), which marks MixCache's hybrid.
        peer_colors = iter(cmap(j) for j in itertools.cycle((0, 1, 2, 4, 5, 6, 7, 8, 9)))
        for fam, rs in fams.items():
            rs.sort(key=lambda r: r["block_speedup"])
            xs, ys = [r["block_speedup"] for r in rs], [_psnr(r) for r in rs]
            hybrid = fam in HYBRID_FAMILIES
            style = {
                "mixcache": dict(marker="*", s=110, edgecolor="black", zorder=4),
                "mixcache-budget": dict(marker="D", s=40, zorder=4),
                "mixcache-1g": dict(marker="^", s=40, zorder=3),
                "half-steps": dict(marker="X", s=70, zorder=3),
            }.get(fam, dict(marker="o", s=18, zorder=2))
            color = "crimson" if hybrid else "black" if fam == "half-steps" else next(peer_colors)
            if len(rs) > 1 and fam not in ("mixcache-1g", "mixcache", "mixcache-alt"):
                ax.plot(xs, ys, "-", color=color, lw=2 if hybrid else 0.8, alpha=0.8)
            ax.scatter(xs, ys, color=color, label=fam, **style)
        ax.set_title(f"{model} {cell}", fontsize=9)
        ax.set_xlabel("block-compute speedup", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    legend: dict[str, Any] = {}  # every family of every panel, once
    for ax in axes.flat:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, h)
    handles, labels = list(legend.values()), list(legend)
    fig.tight_layout()
    # Outside the panels on the right; bbox_inches="tight" grows the canvas to fit it.
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_matrix_outputs(
    records: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]
) -> None:
    """Write matrix.md, readme_snippet.md and matrix.png (results.jsonl is the runner's)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "matrix.md").write_text(matrix_markdown(records, meta))
    (out_dir / "readme_snippet.md").write_text(matrix_snippet(records, meta, out_dir))
    matrix_plot(records, out_dir / "matrix.png")
