"""Outputs of a benchmark run: results.jsonl, results.md, the terminal table and the pictures.

- ``results.jsonl``: one record per method x prompt (config tag, settings, machine, metrics,
  per-forward compute trace, MixCache's decision records);
- ``results.md``: the settings, the per-method table (means over prompts; speedup = total
  reference time / total method time), what was unavailable and why;
- ``pareto.png``: speedup vs PSNR, one marker per method, each family's sweep joined, MixCache's
  presets joined as a curve (speedup vs efficiency when the profile has no quality numbers);
- ``grid.png``: the same frames of the first prompt from every method side by side;
- ``trace.png``: MixCache's decision per step and branch, and every method's executed block
  fraction per step.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "clip_image",
    "format_table",
    "interpolate",
    "pareto_check",
    "readme_snippet",
    "summarize",
    "target_check",
    "write_outputs",
]

_ACTION_COLORS = {
    "compute": "#4c4c4c",
    "step": "#1f77b4",
    "cfg": "#ff7f0e",
    "block": "#2ca02c",
}


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    if any(math.isinf(v) for v in vals):
        return math.inf
    return float(np.mean(vals))


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (in run order): means over prompts, speedup from total times."""
    by_method: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for rec in records:
        by_method.setdefault(rec["method"], []).append(rec)
    rows = []
    for name, recs in by_method.items():
        r0 = recs[0]
        row: dict[str, Any] = {
            "method": name,
            "family": r0["family"],
            "knob": r0["knob"],
            "tag": r0["tag"],
            "status": r0["status"],
            "reason": r0["reason"],
            "note": r0.get("note", ""),
            "target_speedup": r0.get("target_speedup"),
        }
        ok = [r for r in recs if "time_s" in r]
        if r0["status"] == "ok" and ok:
            row.update(
                speedup=sum(r["ref_time_s"] for r in ok) / sum(r["time_s"] for r in ok),
                time_s=float(np.mean([r["time_s"] for r in ok])),
                block_fraction=_mean([r["block_fraction"] for r in ok]),
                ideal_speedup=_mean([r["ideal_speedup"] for r in ok]),
                psnr=_mean([r.get("psnr") for r in ok]),
                ssim=_mean([r.get("ssim") for r in ok]),
                ms_ssim=_mean([r.get("ms_ssim") for r in ok]),
                lpips=_mean([r.get("lpips") for r in ok]),
                rel_l2_latent=_mean([r.get("rel_l2_latent") for r in ok]),
                adherence=_mean([r.get("adherence") for r in ok]),
                adherence_ref=_mean([r.get("adherence_ref") for r in ok]),
                adherence_all=_mean([r.get("adherence_all") for r in ok]),
                adherence_all_ref=_mean([r.get("adherence_all_ref") for r in ok]),
                cache_mb=(r0.get("cache_bytes") or 0) / 2**20
                if r0.get("cache_bytes") is not None
                else None,
                peak_rss_mb=r0.get("peak_rss_mb"),
                deterministic=all(r.get("deterministic", False) for r in ok),
            )
            ideal = row["ideal_speedup"]
            row["efficiency"] = row["speedup"] / ideal if ideal else None
        rows.append(row)
    return rows


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of a sweep's (speedup, psnr) curve at speedup ``x``.

    ``None`` outside the measured range ``[min x, max x]``: a sweep is never extrapolated.
    Points at the same ``x`` are taken in sorted order (the first segment that contains ``x``).
    """
    pts = sorted(points)
    if len(pts) == 1 and pts[0][0] == x:
        return pts[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def pareto_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each MixCache method: who dominates it, and each peer sweep's PSNR at its speedup.

    A method *dominates* another when it is at least as fast and at least as accurate (PSNR) and
    strictly better in one. Peer sweeps are compared along their curve (linear interpolation
    between settings), not at one arbitrary setting.
    """
    ok = [
        r
        for r in rows
        if r["status"] == "ok"
        and r["method"] != "none"
        and r["family"] != "diagnostic"
        and r.get("psnr") is not None
    ]
    out = []
    for m in (r for r in ok if r["family"].startswith("mixcache")):
        dominated_by = [
            o["method"]
            for o in ok
            if not o["family"].startswith("mixcache")
            and o["speedup"] >= m["speedup"]
            and o["psnr"] >= m["psnr"]
            and (o["speedup"] > m["speedup"] or o["psnr"] > m["psnr"])
        ]
        at_speed: dict[str, float | None] = {}
        for fam in sorted({o["family"] for o in ok if not o["family"].startswith("mixcache")}):
            pts = [(o["speedup"], min(o["psnr"], 99.0)) for o in ok if o["family"] == fam]
            at_speed[fam] = interpolate(pts, m["speedup"])
        out.append(
            {
                "method": m["method"],
                "speedup": m["speedup"],
                "psnr": m["psnr"],
                "dominated_by": dominated_by,
                "peer_psnr_at_same_speedup": at_speed,
            }
        )
    return out


def target_check(rows: list[dict[str, Any]], profile: str) -> list[tuple[str, bool | None, str]]:
    """The issue's performance targets, evaluated on this run: (target, met, evidence)."""
    by = {r["method"]: r for r in rows if r["status"] == "ok"}
    out: list[tuple[str, bool | None, str]] = []

    def add(name: str, met: bool | None, evidence: str) -> None:
        out.append((name, met, evidence))

    bal, fast, half = by.get("mixcache-balanced"), by.get("mixcache-fast"), by.get("half-steps")
    if bal:
        add("balanced >= 2x", bal["speedup"] >= 2.0, f"{bal['speedup']:.2f}x")
        if bal.get("adherence") is not None and bal.get("adherence_ref") is not None:
            drop = 100 * (bal["adherence_ref"] - bal["adherence"])
            drop_all = 100 * ((bal.get("adherence_all_ref") or 0) - (bal.get("adherence_all") or 0))
            add(
                "balanced loses <= 2 adherence points",
                drop <= 2.0 and drop_all <= 2.0,
                f"attributes {drop:+.1f} pts lost, all-correct {drop_all:+.1f} pts lost",
            )
        if half and bal.get("psnr") is not None and half.get("psnr") is not None:
            add(
                "balanced beats half-steps",
                bal["psnr"] > half["psnr"] and bal["speedup"] >= 0.9 * half["speedup"],
                f"balanced {bal['speedup']:.2f}x / {_fmt(bal['psnr'])} dB vs half-steps "
                f"{half['speedup']:.2f}x / {_fmt(half['psnr'])} dB",
            )
    if fast:
        add("fast >= 2.5x", fast["speedup"] >= 2.5, f"{fast['speedup']:.2f}x")
    for c in pareto_check(rows):
        if c["method"] in ("mixcache-quality", "mixcache-balanced", "mixcache-fast"):
            add(
                f"{c['method']} not dominated by any peer",
                not c["dominated_by"],
                "dominated by " + ", ".join(c["dominated_by"]) if c["dominated_by"] else "-",
            )
    for name in ("mixcache-balanced", "mixcache-fast"):
        r = by.get(name)
        if r and r.get("efficiency") is not None:
            add(f"{name} efficiency >= 0.95", r["efficiency"] >= 0.95, f"{r['efficiency']:.2f}")
    return out


def _fmt(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:{spec}}{suffix}"
    return str(value)


_COLUMNS = (
    ("method", "method", None),
    ("speedup", "speedup", ".2f"),
    ("ideal", "ideal_speedup", ".2f"),
    ("eff", "efficiency", ".2f"),
    ("blocks", "block_fraction", ".3f"),
    ("PSNR", "psnr", ".2f"),
    ("SSIM", "ssim", ".3f"),
    ("MS-SSIM", "ms_ssim", ".3f"),
    ("relL2", "rel_l2_latent", ".4f"),
    ("adher.", "adherence", ".3f"),
    ("all-ok", "adherence_all", ".3f"),
    ("cache MB", "cache_mb", ".2f"),
    ("RSS MB", "peak_rss_mb", ".1f"),
    ("time s", "time_s", ".3f"),
)


def _table_rows(rows: list[dict[str, Any]], quality: bool) -> tuple[list[str], list[list[str]]]:
    hidden = ("psnr", "ssim", "ms_ssim", "adherence", "adherence_all")
    cols = [c for c in _COLUMNS if quality or c[1] not in hidden]
    if not any(r.get("adherence") is not None for r in rows):
        cols = [c for c in cols if c[1] not in ("adherence", "adherence_all")]
    header = [c[0] for c in cols]
    body = []
    for r in rows:
        if r["status"] != "ok":
            continue
        body.append([_fmt(r.get(key), spec) if spec else str(r[key]) for _, key, spec in cols])
    return header, body


def format_table(rows: list[dict[str, Any]], quality: bool = True) -> str:
    """A plain-text table for the terminal (ok methods), then the skipped ones with reasons."""
    header, body = _table_rows(rows, quality)
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(
            h.rjust(w) if i else h.ljust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append(
            "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(b, widths, strict=True))
            )
        )
    skipped = [r for r in rows if r["status"] != "ok"]
    for r in skipped:
        lines.append(f"{r['method']}: {r['status']} - {r['reason']}")
    return "\n".join(lines)


def _markdown(rows: list[dict[str, Any]], settings: dict[str, Any], machine: dict[str, Any]) -> str:
    quality = bool(settings.get("quality"))
    header, body = _table_rows(rows, quality)
    command = settings.get("command") or f"mixcache bench --profile {settings['profile']}"
    out = [
        f"# mixcache bench — profile `{settings['profile']}`",
        "",
        f"- command: `{command}`",
        f"- date: {machine.get('date_utc')}; wall time of the whole run: "
        f"{settings.get('wall_seconds', 0):.0f} s",
        f"- machine: {machine.get('cpu')}, {machine.get('cores')} cores, "
        f"{machine.get('torch_threads')} torch threads, torch {machine.get('torch')}, "
        f"diffusers {machine.get('diffusers')}"
        + (f", cache-dit {machine['cache_dit']}" if machine.get("cache_dit") else ""),
        f"- profile: {settings.get('description')}",
        f"- call settings: `{json.dumps(settings.get('call_kwargs'))}`; prompts: "
        f"{len(settings.get('prompts', []))} (seeds from {settings.get('seed_base')}); "
        f"timed repeats: {settings.get('repeats')} (median), warm-up: {settings.get('warmup')}",
        f"- tuning/calibration prompt (not benchmarked): `{settings.get('tuning_prompt')}`",
        "- all methods removed -> uncached output reproduced exactly: "
        f"{_fmt(settings.get('restored_exactly_after_all_methods'))}",
    ]
    out += [f"- note: {n}" for n in settings.get("notes", [])]
    out += [
        "",
        "speedup = reference time / method time (same run); blocks = fraction of transformer-block "
        "FLOPs executed (counted by hooks, all methods); ideal = speedup that fraction implies "
        "given the reference's share of time in blocks; eff = speedup / ideal; quality against "
        "the uncached output of the same prompt and seed; means over prompts.",
        "",
        "| " + " | ".join(header) + " | setting |",
        "|" + "---|" * (len(header) + 1),
    ]
    ok_rows = [r for r in rows if r["status"] == "ok"]
    for r, b in zip(ok_rows, body, strict=True):
        out.append("| " + " | ".join(b) + f" | {r['knob']} |")
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        out += ["", "## Not run", ""]
        out += [f"- `{r['method']}`: {r['status']} — {r['reason']}" for r in skipped]
    notes = [r for r in ok_rows if r.get("note")]
    if notes:
        out += ["", "## How each method is configured", ""]
        out += [f"- `{r['method']}` (`{r['tag']}`): {r['note']}" for r in notes]
    checks = target_check(rows, settings["profile"])
    if checks:
        out += ["", "## Targets (issue 4), evaluated on this run", ""]
        out += ["| target | met | evidence |", "|---|---|---|"]
        out += [f"| {n} | {_fmt(m)} | {e} |" for n, m, e in checks]
    pc = pareto_check(rows)
    if pc:
        fams = sorted({f for c in pc for f in c["peer_psnr_at_same_speedup"]})
        out += ["", "## Pareto check: each peer sweep's PSNR at MixCache's speedup", ""]
        out += ["(interpolated along the sweep; `-` = the sweep does not reach that speedup)", ""]
        out += ["| method | speedup | PSNR | " + " | ".join(fams) + " | dominated by |"]
        out += ["|" + "---|" * (len(fams) + 4)]
        for c in pc:
            cells = [_fmt(c["peer_psnr_at_same_speedup"].get(f)) for f in fams]
            out.append(
                f"| {c['method']} | {c['speedup']:.2f} | {_fmt(c['psnr'])} | "
                + " | ".join(cells)
                + f" | {', '.join(c['dominated_by']) or '-'} |"
            )
    lp = next((r for r in rows if r.get("lpips") is not None), None)
    if quality and lp is None:
        out += ["", "LPIPS: unavailable here (needs torchvision + downloaded weights)."]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pareto(rows: list[dict[str, Any]], path: Path, quality: bool) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ok = [
        r
        for r in rows
        if r["status"] == "ok" and r["method"] != "none" and r["family"] != "diagnostic"
    ]
    ykey, ylabel = ("psnr", "PSNR vs uncached (dB)") if quality else ("efficiency", "efficiency")
    finite = [r[ykey] for r in ok if r.get(ykey) is not None and math.isfinite(r[ykey])]
    cap = (max(finite) + 3.0) if finite else 1.0
    families: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
    for r in ok:
        if r.get(ykey) is not None:
            families.setdefault(r["family"], []).append(r)
    cmap = plt.get_cmap("tab10")
    for i, (fam, rs) in enumerate(families.items()):
        color = cmap(i % 10)
        is_mix = fam == "mixcache"
        rs = sorted(rs, key=lambda r: r["speedup"])
        xs = [r["speedup"] for r in rs]
        ys = [min(r[ykey], cap) for r in rs]
        if len(rs) > 1 and fam != "mixcache-1g":
            ax.plot(xs, ys, "-", color=color, lw=2.5 if is_mix else 1, alpha=0.8)
        ax.scatter(
            xs,
            ys,
            color=color,
            s=90 if is_mix else 45,
            marker="*" if is_mix else "o",
            label=fam,
            zorder=3,
            edgecolor="black" if is_mix else None,
        )
        for r, x, y in zip(rs, xs, ys, strict=True):
            label = r["method"].replace(f"{fam}-", "") if fam != "half-steps" else "half-steps"
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(1.0, color="grey", lw=0.5)
    ax.set_xlabel("speedup vs uncached (measured, same run)")
    ax.set_ylabel(ylabel + (f" (capped at {cap:.0f})" if quality else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title("speedup vs quality — up and right is better")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def clip_image(frames: np.ndarray | None, latents: Any) -> np.ndarray | None:
    if frames is not None:
        return frames
    if latents is None:
        return None
    lat = np.asarray(latents[0].float().numpy())  # (C, F, H, W)
    img = lat[:3].transpose(1, 2, 3, 0)
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    return np.clip((img - lo) / (hi - lo + 1e-8), 0, 1)


def _grid(samples: OrderedDict[str, Any], path: Path, prompt: str, ncols: int = 4) -> None:
    """Each method's first, middle and last frame side by side; methods in a grid of cells."""
    plt = _plt()
    images = OrderedDict((k, v) for k, v in samples.items() if v is not None)
    if not images:
        return
    n_frames = next(iter(images.values())).shape[0]
    picks = sorted({0, n_frames // 2, n_frames - 1})
    ncols = min(ncols, len(images))
    nrows = math.ceil(len(images) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 1.35 * nrows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (name, clip) in zip(axes.flat, images.items(), strict=False):
        h = clip.shape[1]
        gap = np.ones((h, max(1, h // 16), 3), dtype=np.float32)
        strip = [np.clip(clip[f], 0, 1) for f in picks]
        strip = [x for f in strip for x in (f, gap)][:-1]
        ax.imshow(np.concatenate(strip, axis=1), interpolation="nearest")
        ax.set_title(name, fontsize=8)
    fig.suptitle(
        f"frames {', '.join(map(str, picks))} of {prompt!r} (same seed for every method)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _trace(records: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    first = [r for r in records if r.get("prompt_index") == 0 and r.get("forwards")]
    mix = [r for r in first if r.get("mixcache_records")]
    n_rows = len(mix) + 1
    fig, axes = plt.subplots(
        n_rows,
        1,
        figsize=(10, 1.0 * len(mix) + 0.28 * len(first) + 1.5),
        squeeze=False,
        gridspec_kw={"height_ratios": [1.0] * len(mix) + [max(1.0, 0.28 * len(first))]},
    )
    for ax, rec in zip(axes[:, 0], mix, strict=False):
        lanes = {"cond": 1, "uncond": 0}
        for d in rec["mixcache_records"]:
            action = str(d.get("action", "compute"))
            y = lanes.get(str(d.get("branch", "cond")), 0)
            frac = 1.0
            if d.get("blocks_total"):
                frac = float(d.get("blocks_computed", 0)) / float(d["blocks_total"])
            ax.broken_barh(
                [(int(d.get("step", 0)), 0.95)],
                (y, 0.9),
                facecolors=_ACTION_COLORS.get(action, "#bbbbbb"),
                alpha=0.35 + 0.65 * (1 - frac) if action != "compute" else 1.0,
            )
        ax.set_yticks([0.45, 1.45], ["uncond", "cond"], fontsize=7)
        ax.set_ylim(0, 2)
        ax.set_title(f"{rec['method']} ({rec['tag']}): decision per step", fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
    if mix:
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _ACTION_COLORS.values()]
        axes[0][0].legend(handles, list(_ACTION_COLORS), ncol=4, fontsize=7, loc="upper right")
    ax = axes[-1][0]
    steps = max((f["step"] for r in first for f in r["forwards"]), default=0) + 1
    grid = np.full((len(first), steps), np.nan)
    for i, r in enumerate(first):
        per_step: dict[int, list[float]] = {}
        for f in r["forwards"]:
            per_step.setdefault(f["step"], []).append(f["fraction"])
        for s, fr in per_step.items():
            grid[i, s] = float(np.mean(fr))
    im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(first)), [r["method"] for r in first], fontsize=6)
    ax.set_xlabel("denoising step")
    ax.set_title("executed block-compute fraction per step (mean over branches)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def readme_snippet(
    rows: list[dict[str, Any]], settings: dict[str, Any], machine: dict[str, Any], out_dir: Path
) -> str:
    """The README's benchmark section, generated from this run (nothing typed by hand)."""
    quality = bool(settings.get("quality"))
    header, body = _table_rows(rows, quality)
    keep = [i for i, h in enumerate(header) if h not in ("RSS MB", "time s", "ideal")]
    command = settings.get("command") or f"mixcache bench --profile {settings['profile']}"
    lines = [
        f"Profile `{settings['profile']}`: {settings.get('description')}.",
        "",
        f"Command: `{command}` — run on {machine.get('date_utc')}, {machine.get('cpu')} "
        f"({machine.get('cores')} cores, {machine.get('torch_threads')} torch threads, no GPU), "
        f"torch {machine.get('torch')}, diffusers {machine.get('diffusers')}"
        + (f", cache-dit {machine['cache_dit']}" if machine.get("cache_dit") else "")
        + f"; whole run {settings.get('wall_seconds', 0) / 60:.1f} min.",
        "",
        "| " + " | ".join(header[i] for i in keep) + " |",
        "|" + "---|" * len(keep),
    ]
    lines += ["| " + " | ".join(b[i] for i in keep) + " |" for b in body]
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        lines += ["", "Not run: " + "; ".join(f"`{r['method']}` ({r['reason']})" for r in skipped)]
    checks = target_check(rows, settings["profile"])
    if checks:
        lines += ["", "| target | met | evidence |", "|---|---|---|"]
        lines += [f"| {n} | {_fmt(m)} | {e} |" for n, m, e in checks]
    lines += ["", f"![speedup vs PSNR]({out_dir.as_posix()}/pareto.png)", ""]
    return "\n".join(lines)


def write_outputs(
    records: list[dict[str, Any]],
    out_dir: Path,
    settings: dict[str, Any],
    machine: dict[str, Any],
    samples: OrderedDict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Write results.jsonl, results.md, readme_snippet.md and the pictures into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "results.jsonl", "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=_json_default, allow_nan=True) + "\n")
    rows = summarize(records)
    (out_dir / "results.md").write_text(_markdown(rows, settings, machine))
    (out_dir / "readme_snippet.md").write_text(readme_snippet(rows, settings, machine, out_dir))
    quality = bool(settings.get("quality"))
    _pareto(rows, out_dir / "pareto.png", quality)
    if samples:
        prompts = settings.get("prompts") or [""]
        _grid(samples, out_dir / "grid.png", prompts[0])
    _trace(records, out_dir / "trace.png")
    return rows


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
