"""``mixcache bench``: run a benchmark profile and write its results, table and pictures."""

from __future__ import annotations

import logging
import shlex
import warnings
from pathlib import Path

import click

__all__ = ["bench"]


@click.command("bench")
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice(["tiny", "bundled", "bundled-hunyuan", "wan-1.3b-shape", "matrix"]),
    default="bundled",
    show_default=True,
    help="tiny: random tiny Wan (or --family), seconds; bundled: the trained Wan model, 50 "
    "steps with CFG; bundled-hunyuan: the trained HunyuanVideo model, 50 steps with true CFG; "
    "wan-1.3b-shape: real Wan2.1-1.3B shape, speed and overhead only; matrix: same "
    "as --matrix.",
)
@click.option(
    "--matrix",
    is_flag=True,
    help="Run the held-out matrix: each model (--models) x steps {10,20,30,50} x CFG {3,5,7} "
    "(or --cells) on training prompts and seeds no preset was tuned on; writes matrix.md, "
    "matrix.png, readme_snippet.md.",
)
@click.option(
    "--models",
    default=None,
    help="--matrix: comma-separated profiles ('bundled', 'bundled-hunyuan', 'tiny', "
    "'tiny:FAMILY'). Default: every bundled model that is trained.",
)
@click.option(
    "--cells",
    default=None,
    metavar="STEPSxCFG,...",
    help="--matrix: run only these cells, e.g. '20x5,50x7' (keep tuning and reported cells "
    "apart). Default: all 12.",
)
@click.option(
    "--family",
    default=None,
    help="tiny profile: the tiny pipeline family to build (mixcache_lab.tiny.TINY_PIPELINES).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=None,
    help="Override the profile's num_inference_steps.",
)
@click.option(
    "--guidance",
    type=click.FloatRange(min=0.0),
    default=None,
    help="Override the profile's CFG scale (guidance_scale; true_cfg_scale on HunyuanVideo).",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=None,
    help="Override the seed base (prompt i uses seed + i). --matrix default: 2000000.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench-results"),
    show_default=True,
    help="Folder for results.jsonl, results.md, pareto.png, grid.png, trace.png.",
)
@click.option(
    "--methods",
    default=None,
    help="Comma-separated method names, families or globs (e.g. 'mixcache*,fbc'); "
    "`none` always runs. Default: all.",
)
@click.option(
    "--prompts",
    type=click.IntRange(min=1),
    default=None,
    help="Use the first N prompts (--matrix default: 2 a cell).",
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=None, help="Timed runs per method x prompt."
)
@click.option(
    "--prompt-set",
    type=click.Choice(["bench", "tuning", "training"]),
    default=None,
    help="bench (default; --matrix: training): the benchmark prompts; tuning: the tuning "
    "prompts (to tune presets; never report these); training: prompts that are neither "
    "(for the bundled model: 8 of its training prompts).",
)
@click.option(
    "--mixcache-variant",
    "variants",
    multiple=True,
    metavar="NAME=PRESET[:field=value,...]",
    help="Add a MixCache config, e.g. 'long=balanced:interval_max=8' (repeatable).",
)
@click.option(
    "--model-dir",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="bundled profiles: load this save_pretrained directory instead of the shipped model.",
)
@click.option("--list", "list_only", is_flag=True, help="List the profile's methods and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench(
    profile_name: str,
    matrix: bool,
    models: str | None,
    cells: str | None,
    family: str | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    out_dir: Path,
    methods: str | None,
    prompts: int | None,
    repeats: int | None,
    prompt_set: str | None,
    variants: tuple[str, ...],
    model_dir: str | None,
    list_only: bool,
    quiet: bool,
) -> None:
    """Benchmark MixCache against the caches users would pick instead, side by side.

    Every method runs on the same pipeline, prompts and seeds in one process; speedups are
    against the uncached run of the same process.
    """
    from mixcache_lab.bench.methods import mixcache_variant, select_methods
    from mixcache_lab.bench.profiles import get_profile

    matrix = matrix or profile_name == "matrix"
    try:
        extra = [mixcache_variant(v) for v in variants]
        if matrix:
            if repeats is not None or model_dir is not None:
                raise ValueError("--matrix runs one timed repeat on its models' own weights")
            _matrix(
                models,
                cells,
                family,
                steps,
                guidance,
                seed,
                prompt_set,
                out_dir,
                methods,
                prompts,
                extra,
                list_only,
                quiet,
            )
            return
        if models or cells:
            raise ValueError("--models and --cells apply to --matrix only")
        profile = get_profile(profile_name, family)
        profile = profile.on_prompt_set(prompt_set or "bench")
        profile = profile.with_call(steps, guidance, seed)
        if model_dir is not None:
            profile = profile.with_model_dir(model_dir)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if list_only:
        for spec in select_methods(profile.methods(profile.steps), methods) + extra:
            click.echo(f"{spec.name:28s} {spec.family:12s} {spec.knob}")
        return
    from mixcache_lab.bench.report import format_table, summarize
    from mixcache_lab.bench.runner import run_bench

    _quiet_libraries()
    try:
        records = run_bench(
            profile,
            out_dir,
            methods=methods,
            prompts=prompts,
            repeats=repeats,
            progress=not quiet,
            log=lambda s: click.echo(s, err=True) if not quiet else None,
            extra_methods=extra,
            command=_command_line(),
        )
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    rows = summarize(records)
    click.echo("")
    click.echo(f"profile {profile.name}: {profile.description}")
    click.echo(format_table(rows, quality=profile.quality))
    click.echo(f"\nwrote {out_dir}/results.jsonl, results.md, pareto.png, grid.png, trace.png")


def _command_line() -> str:
    """The invoking command, rebuilt from the parsed options (records and README show it)."""
    ctx = click.get_current_context()
    parts = ["mixcache", "bench"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if not isinstance(param, click.Option) or value in (None, False, ()):
            continue
        if value == param.default and not param.multiple:
            continue
        opt = max(param.opts, key=len)
        if param.is_flag:
            parts.append(opt)
            continue
        for v in value if param.multiple else (value,):
            parts += [opt, shlex.quote(str(v))]
    return " ".join(parts)


def _quiet_libraries() -> None:
    # Library chatter (cache-dit's and diffusers' info logs, deprecation notes) would bury the
    # progress bar; errors still surface as method statuses in the table.
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("cache_dit").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _matrix(
    models: str | None,
    cells: str | None,
    family: str | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    prompt_set: str | None,
    out_dir: Path,
    methods: str | None,
    prompts: int | None,
    extra: list,
    list_only: bool,
    quiet: bool,
) -> None:
    """``--matrix``: resolve the models and cells, run, print where the summary is."""
    from mixcache_lab.bench.matrix import MATRIX_PROMPTS, parse_cells, run_matrix
    from mixcache_lab.bench.methods import select_methods
    from mixcache_lab.bench.profiles import MATRIX_SEED, matrix_models

    if steps is not None or guidance is not None:
        raise ValueError("--matrix takes its step counts and guidance scales from --cells")
    if family is not None:
        raise ValueError("--matrix takes its models from --models (e.g. 'tiny:hunyuan')")
    profiles = matrix_models(models)
    if prompt_set not in (None, "training"):
        profiles = [p.on_prompt_set(prompt_set) for p in profiles]
    cell_list = parse_cells(cells)
    if list_only:
        for p in profiles:
            click.echo(f"model {p.name}: {p.description}")
        click.echo("cells: " + ", ".join(c.label for c in cell_list))
        for spec in select_methods(profiles[0].methods(cell_list[0].steps), methods) + extra:
            click.echo(f"{spec.name:28s} {spec.family:12s} {spec.knob}")
        return
    _quiet_libraries()
    try:
        run_matrix(
            profiles,
            out_dir,
            cells=cell_list,
            methods=methods,
            prompts=prompts or MATRIX_PROMPTS,
            seed=MATRIX_SEED if seed is None else seed,
            progress=not quiet,
            log=lambda s: click.echo(s, err=True) if not quiet else None,
            extra_methods=extra,
            command=_command_line(),
        )
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo((out_dir / "matrix.md").read_text())
    click.echo(f"wrote {out_dir}/results.jsonl, matrix.md, matrix.png, readme_snippet.md, cells/")
