"""The held-out matrix: every model x step count x guidance scale, on prompts and seeds that no
preset was tuned on (``mixcache bench --matrix``).

Per model the pipeline is built once (:class:`~mixcache_lab.bench.runner.BenchSession`); every cell
runs the profile's whole method list with that cell's ``num_inference_steps`` and
``guidance_scale``, on the model's ``training`` prompt set with seeds from
:data:`~mixcache_lab.bench.profiles.MATRIX_SEED`, one timed run per prompt, and one warm-up for the
whole run (the primary speed axis is the deterministic block-compute count, so per-method timing
warm-ups would cost a fifth of the run for a secondary number). Calibrating peers calibrate per
cell on the tuning prompt (MagCache's ratios are per step count). Outputs:

- ``results.jsonl``: every record, with ``model`` and ``cell`` (``"20x5"``: steps x CFG);
- ``cells/<model>/<cell>/results.md``: the usual per-method table of each cell;
- ``matrix.md``, ``matrix.png``, ``readme_snippet.md``: :mod:`.matrix_report`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .methods import MethodSpec, select_methods
from .profiles import MATRIX_GUIDANCE, MATRIX_SEED, MATRIX_STEPS, Profile

__all__ = [
    "MATRIX_PROMPTS",
    "MATRIX_SKIP_FAMILIES",
    "Cell",
    "default_cells",
    "matrix_methods",
    "parse_cells",
    "run_matrix",
]

# Prompts per cell by default (of the model's 8 training prompts). Two keep the whole matrix (24
# cells, ~35 runs each) under 75 minutes on 2 CPU cores (52.8 min measured); a cell's time grows
# with its prompts, so four take about twice that. `--prompts 4` or more gives a tighter estimate
# per cell.
MATRIX_PROMPTS = 2

#: Method families a matrix run leaves out unless ``--methods`` names them: the dry run measures
#: overhead (a wall-clock question the per-model bench answers) and the paper's threshold mode
#: is no preset; neither enters a claim of the matrix, and together they cost a tenth of a run.
MATRIX_SKIP_FAMILIES: tuple[str, ...] = ("diagnostic", "mixcache-alt")


@dataclass(frozen=True)
class Cell:
    """One setting of the matrix: a step count and a guidance scale."""

    steps: int
    guidance: float

    @property
    def label(self) -> str:
        """``"<steps>x<guidance>"``, e.g. ``"20x5"`` (what ``--cells`` takes)."""
        return f"{self.steps}x{self.guidance:g}"


def default_cells() -> list[Cell]:
    """Every step count x guidance scale of the matrix, steps first."""
    return [Cell(s, g) for s in MATRIX_STEPS for g in MATRIX_GUIDANCE]


_CELL = re.compile(r"^\s*(\d+)\s*x\s*(\d+(?:\.\d*)?|\.\d+)\s*$")


def parse_cells(text: str | None) -> list[Cell]:
    """Cells from ``"20x5,50x7"`` (steps x guidance); every default cell when empty."""
    if not text or not text.strip():
        return default_cells()
    cells = []
    for item in text.split(","):
        if not item.strip():
            continue
        m = _CELL.match(item)
        if m is None or int(m.group(1)) < 1:
            raise ValueError(
                f"--cells: {item.strip()!r} is not STEPSxCFG (e.g. 20x5, 50x7.5; steps >= 1)"
            )
        cell = Cell(int(m.group(1)), float(m.group(2)))
        if cell not in cells:
            cells.append(cell)
    if not cells:
        raise ValueError("--cells: no cell given")
    return cells


def _cell_profile(model: Profile, cell: Cell, seed: int) -> Profile:
    profile = model.with_call(cell.steps, cell.guidance, seed)
    return dataclasses.replace(profile, repeats=1, warmup="once")


def matrix_methods(profile: Profile, methods: str | None = None) -> list[MethodSpec]:
    """The methods a cell runs: ``--methods`` as given, else the profile's whole list without
    :data:`MATRIX_SKIP_FAMILIES`."""
    specs = select_methods(profile.methods(profile.steps), methods)
    if methods is None:
        specs = [sp for sp in specs if sp.family not in MATRIX_SKIP_FAMILIES]
    return specs


def run_matrix(
    models: list[Profile],
    out_dir: str | Path,
    cells: list[Cell] | None = None,
    methods: str | None = None,
    prompts: int | None = MATRIX_PROMPTS,
    seed: int = MATRIX_SEED,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
    extra_methods: list[MethodSpec] | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Run every cell of every model and write the matrix outputs; returns every record.

    Args:
        models: profiles on the prompt set to report on (see
            :func:`~mixcache_lab.bench.profiles.matrix_models`).
        out_dir: output folder (created).
        cells: the cells to run (default: :func:`default_cells`); keep tuning cells apart from
            reported cells by running them into different folders.
        methods: ``--methods`` filter (``none`` always runs).
        prompts: prompts per cell (the first N of the model's prompt set).
        seed: seed base (prompt ``i`` uses ``seed + i`` in every cell).
        progress: one tqdm bar over every generation of every cell.
        log: where to send short status lines.
        extra_methods: more methods for every cell (e.g. ``--mixcache-variant``).
        command: the command line to record (default: this process's).
    """
    from tqdm.auto import tqdm

    from .matrix_report import write_matrix_outputs
    from .report import _json_default, _markdown, summarize
    from .runner import BenchSession, command_line, progress_total, run_methods

    command = command if command is not None else command_line()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cells = list(cells or default_cells())
    if not models:
        raise ValueError("run_matrix needs at least one model")
    plan = []
    for model in models:
        for cell in cells:
            profile = _cell_profile(model, cell, seed)
            specs = matrix_methods(profile, methods) + list(extra_methods or [])
            n_prompts = len(profile.prompts[: prompts or len(profile.prompts)])
            plan.append((model, cell, profile, specs, n_prompts))
    total = sum(progress_total(len(sp), n, 1) for _, _, _, sp, n in plan)
    wall0 = time.perf_counter()
    records: list[dict[str, Any]] = []
    bar = tqdm(total=total, disable=not progress, desc="matrix", unit="run")
    try:
        for model in models:
            session = BenchSession(_cell_profile(model, cells[0], seed), log)
            try:
                for m, cell, profile, specs, _ in plan:
                    if m is not model:
                        continue

                    def tick(name: str, n: int, label: str = f"{model.name} {cell.label}") -> None:
                        bar.set_postfix_str(f"{label} {name}")
                        bar.update(n)

                    recs, settings, _ = run_methods(
                        profile, session, specs, prompts, 1, tick, log, command
                    )
                    settings.update(model=model.name, cell=cell.label)
                    for rec in recs:
                        rec["model"], rec["cell"] = model.name, cell.label
                    cell_dir = out_dir / "cells" / model.name / cell.label
                    cell_dir.mkdir(parents=True, exist_ok=True)
                    (cell_dir / "results.md").write_text(
                        _markdown(summarize(recs), settings, recs[0]["machine"])
                    )
                    records += recs
            finally:
                session.close()
    finally:
        bar.close()
    meta = {
        "command": command,
        "machine": records[0]["machine"] if records else {},
        "wall_seconds": time.perf_counter() - wall0,
        "models": [m.name for m in models],
        "cells": [c.label for c in cells],
        "prompts": plan[0][4],
        "seed_base": seed,
    }
    for rec in records:
        rec["matrix"] = meta
    with open(out_dir / "results.jsonl", "w") as fh:
        for rec in records:
            fh.write(json.dumps(rec, default=_json_default, allow_nan=True) + "\n")
    write_matrix_outputs(records, out_dir, meta)
    return records
