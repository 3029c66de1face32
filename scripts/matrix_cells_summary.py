"""Summarise a matrix run's per-cell tables (``cells/MODEL/CELL/results.md``) in one table.

For runs stopped before the matrix wrote its own summary: per cell, the balanced preset, the
budget curve at half-steps' compute (``mixcache-x2``, 0.5 of the blocks) against half-steps and
the best peer setting at no more compute, the LeMiCa-style planner, the step-only ablation,
and every setting that dominates balanced on the deterministic axes (no more block compute, no
less PSNR). The per-cell "verdicts" sections of a matrix's cells compare wall clock.

    python scripts/matrix_cells_summary.py docs/bench/matrix-planner-10-20
"""

from __future__ import annotations

import sys
from pathlib import Path

_NOT_PEERS = {"none", "half-steps"}


def _rows(path: Path) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    head: list[str] | None = None
    for line in path.read_text().splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == "method":
            head = cells
            continue
        if head is None:
            continue
        rec = dict(zip(head, cells, strict=False))
        try:
            rows[rec["method"]] = {"blocks": float(rec["blocks"]), "psnr": float(rec["PSNR"])}
        except (KeyError, ValueError):
            continue  # unavailable methods
    return rows


def main(root: str) -> None:
    print(
        "| model | cell | balanced: blocks / PSNR | x2 (0.5 blocks) | half-steps | x2 - half-steps"
        " | best peer at <= 0.5 blocks | LeMiCa-style (blocks / PSNR) | step-only |"
        " balanced dominated by (blocks <=, PSNR >=) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(Path(root).glob("cells/*/*/results.md")):
        model, cell = path.parent.parent.name, path.parent.name
        r = _rows(path)
        peers = [
            (v["psnr"], k)
            for k, v in r.items()
            if not k.startswith("mixcache")
            and k not in _NOT_PEERS
            and k != "lemica-style"
            and v["blocks"] <= 0.5 + 1e-9
        ]
        best = max(peers) if peers else None
        b, x2, half = r["mixcache-balanced"], r["mixcache-x2"], r["half-steps"]
        dominated = [
            k
            for k, v in r.items()
            if (not k.startswith("mixcache") and k != "none")
            and v["blocks"] <= b["blocks"] + 1e-9
            and v["psnr"] >= b["psnr"]
            and (v["blocks"] < b["blocks"] - 1e-9 or v["psnr"] > b["psnr"])
        ]
        lem, so = r.get("lemica-style"), r.get("mixcache-step-only")
        print(
            f"| {model} | {cell} | {b['blocks']:.3f} / {b['psnr']:.2f} | {x2['psnr']:.2f} | "
            f"{half['psnr']:.2f} | {x2['psnr'] - half['psnr']:+.2f} | "
            + (f"{best[0]:.2f} ({best[1]})" if best else "none that fast")
            + " | "
            + (f"{lem['blocks']:.3f} / {lem['psnr']:.2f}" if lem else "-")
            + " | "
            + (f"{so['blocks']:.3f} / {so['psnr']:.2f}" if so else "-")
            + " | "
            + (", ".join(dominated) or "none")
            + " |"
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/bench/matrix")
