"""The README's summary table and plot of the held-out matrix, from its committed results.

Reads the preset table that ``mixcache bench --matrix --out DIR`` wrote into
``DIR/readme_snippet.md`` (one row per model, cell and preset; DIR defaults to
``docs/bench/matrix-planner``) and prints one Markdown table (per model and preset, the mean
over the cells) and writes one PNG (``docs/matrix_summary.png``: per cell, the PSNR margin over
the best peer at the same block-compute speedup). Nothing is re-run; run it from the
repository root::

    python scripts/matrix_summary.py [DIR]

``--compare OLD`` prints, instead, what changed against an earlier run's snippet (e.g. from the
history: ``--compare <(git show 8b883fb:docs/bench/matrix-planner/readme_snippet.md)``): per
model and preset the PSNR change summed over the cells, and the moonshot count (balanced at
least 1 dB over the best peer as fast) of both runs.
"""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATRIX = ROOT / "docs" / "bench" / "matrix-planner"
PLOT = ROOT / "docs" / "matrix_summary.png"
PRESETS = ("quality", "balanced", "fast")
HEADER = "| model | cell (steps x CFG) | preset | block speedup | wall speedup | PSNR |"


@dataclass(frozen=True)
class Row:
    model: str
    cell: str
    preset: str
    block: float  # block-compute speedup
    wall: float  # wall-clock speedup
    psnr: float
    # PSNR minus the best peer's at the same block-compute speedup (dB); None where no peer's
    # threshold sweep reaches that speedup (the snippet's "-").
    margin: float | None


def read_rows(path: Path = MATRIX / "readme_snippet.md") -> list[Row]:
    """The rows of the snippet's preset table (the one whose header starts with ``HEADER``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(HEADER)), None)
    if start is None:
        raise SystemExit(f"{path}: no preset table (header {HEADER!r})")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append(Row(cells[0], cells[1], cells[2], float(cells[3]), float(cells[4]),
                        float(cells[5]), None if cells[7] == "-" else float(cells[7])))  # fmt: skip
    return rows


def summary_table(rows: list[Row]) -> str:
    """Per model and preset: means over the cells, and the cells ahead of the best peer."""
    out = [
        "| model | preset | block-compute speedup | wall-clock speedup | PSNR (dB) "
        "| margin over best peer (dB) | cells ahead of the best peer |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in dict.fromkeys(r.model for r in rows):
        for preset in PRESETS:
            sel = [r for r in rows if r.model == model and r.preset == preset]
            if not sel:
                continue
            margins = [r.margin for r in sel if r.margin is not None]
            ahead = sum(m > 0 for m in margins)
            mean_margin = f"{statistics.mean(margins):+.2f}" if margins else "-"
            compared = f"{ahead} of {len(margins)}" + (
                f" ({len(sel) - len(margins)} with no peer that fast)"
                if len(margins) < len(sel)
                else ""
            )
            out.append(
                f"| {model} | {preset} | x{statistics.mean(r.block for r in sel):.2f} "
                f"| x{statistics.mean(r.wall for r in sel):.2f} "
                f"| {statistics.mean(r.psnr for r in sel):.2f} "
                f"| {mean_margin} | {compared} |"
            )
    return "\n".join(out)


def compare_table(old: list[Row], new: list[Row]) -> str:
    """Per model and preset, the PSNR change (new − old) summed over the cells both runs have,
    and the largest changes; then the moonshot count of each run."""
    before = {(r.model, r.cell, r.preset): r for r in old}
    out = [
        "| model | preset | PSNR change summed over cells (dB) | largest changes |",
        "|---|---|---|---|",
    ]
    for model in dict.fromkeys(r.model for r in new):
        for preset in PRESETS:
            diffs = sorted(
                ((r.psnr - before[(model, r.cell, preset)].psnr, r.cell) for r in new
                 if r.model == model and r.preset == preset and (model, r.cell, preset) in before),
                key=lambda d: -abs(d[0]),
            )  # fmt: skip
            if diffs:
                top = ", ".join(f"{c} {d:+.2f}" for d, c in diffs[:3])
                out.append(f"| {model} | {preset} | {sum(d for d, _ in diffs):+.2f} | {top} |")

    def moonshot(rows: list[Row]) -> str:
        margins = [r.margin for r in rows if r.preset == "balanced" and r.margin is not None]
        return f"{sum(m >= 1.0 for m in margins)} of {len(margins)}"

    out.append(f"\nmoonshot (balanced >= +1 dB over the best peer as fast): {moonshot(old)} "
               f"before, {moonshot(new)} now")  # fmt: skip
    return "\n".join(out)


def plot(rows: list[Row], out: Path = PLOT) -> None:
    """One panel per model: each cell's margin over the best peer, per preset, and the mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.4), sharey=True)
    axes = [axes] if len(models) == 1 else list(axes)
    for ax, model in zip(axes, models, strict=True):
        for x, preset in enumerate(PRESETS):
            sel = [r for r in rows if r.model == model and r.preset == preset]
            margins = [r.margin for r in sel if r.margin is not None]
            if not margins:
                ax.text(x, 0.5, "no peer\nthat fast", ha="center", fontsize=7)
                continue
            ax.scatter([x] * len(margins), margins, s=14, alpha=0.6, color="C0")
            ax.hlines(statistics.mean(margins), x - 0.25, x + 0.25, color="C3", linewidth=2)
        ax.axhline(0.0, color="grey", linewidth=0.8, linestyle="--")
        labels = []
        for preset in PRESETS:
            sel = [r for r in rows if r.model == model and r.preset == preset]
            n = sum(r.margin is not None for r in sel)
            labels.append(
                f"{preset}\nblock x{statistics.mean(r.block for r in sel):.2f}\n"
                f"{n} of {len(sel)} cells with a peer"
            )
        ax.set_xticks(range(len(PRESETS)), labels, fontsize=8)
        cells = list(dict.fromkeys(r.cell for r in rows if r.model == model))
        steps = "/".join(dict.fromkeys(c.split("x")[0] for c in cells))
        cfgs = "/".join(sorted(set(c.split("x")[1] for c in cells), key=float))
        ax.set_title(f"{model} ({len(cells)} cells: {steps} steps x CFG {cfgs})", fontsize=9)
    axes[0].set_ylabel("PSNR - best peer at same\nblock-compute speedup (dB)", fontsize=8)
    fig.suptitle("Held-out matrix: MixCache presets vs the best peer (red: mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    args = sys.argv[1:]
    old = None
    if "--compare" in args:
        i = args.index("--compare")
        if i + 1 >= len(args):
            raise SystemExit("--compare needs the earlier run's readme_snippet.md")
        old = read_rows(Path(args[i + 1]))
        del args[i : i + 2]
    folder = Path(args[0]) if args else MATRIX
    rows = read_rows(folder / "readme_snippet.md")
    if old is not None:
        print(compare_table(old, rows))
        return
    print(summary_table(rows))
    plot(rows)
    print(f"wrote {PLOT.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
