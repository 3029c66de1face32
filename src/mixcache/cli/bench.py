"""``mixcache bench``: run a benchmark profile and write its results, table and pictures."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import click

__all__ = ["bench"]


@click.command("bench")
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice(["tiny", "bundled", "wan-1.3b-shape"]),
    default="bundled",
    show_default=True,
    help="tiny: random tiny Wan, seconds; bundled: the trained model, 50 steps with CFG; "
    "wan-1.3b-shape: real Wan2.1-1.3B shape, speed and overhead only.",
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
    "--prompts", type=click.IntRange(min=1), default=None, help="Use the first N prompts."
)
@click.option(
    "--repeats", type=click.IntRange(min=1), default=None, help="Timed runs per method x prompt."
)
@click.option(
    "--prompt-set",
    type=click.Choice(["bench", "tuning"]),
    default="bench",
    show_default=True,
    help="tuning: run on the profile's tuning prompts (to tune presets; never report these).",
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
    help="bundled profile: load this save_pretrained directory instead of the shipped model.",
)
@click.option("--list", "list_only", is_flag=True, help="List the profile's methods and exit.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def bench(
    profile_name: str,
    out_dir: Path,
    methods: str | None,
    prompts: int | None,
    repeats: int | None,
    prompt_set: str,
    variants: tuple[str, ...],
    model_dir: str | None,
    list_only: bool,
    quiet: bool,
) -> None:
    """Benchmark MixCache against the caches users would pick instead, side by side.

    Every method runs on the same pipeline, prompts and seeds in one process; speedups are
    against the uncached run of the same process.
    """
    from mixcache.bench.methods import mixcache_variant, select_methods
    from mixcache.bench.profiles import get_profile
    from mixcache.bench.report import format_table, summarize
    from mixcache.bench.runner import run_bench

    profile = get_profile(profile_name)
    try:
        extra = [mixcache_variant(v) for v in variants]
        if prompt_set == "tuning":
            profile = profile.on_tuning_set()
        if model_dir is not None:
            profile = profile.with_model_dir(model_dir)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if list_only:
        for spec in select_methods(profile.methods(profile.steps), methods) + extra:
            click.echo(f"{spec.name:28s} {spec.family:12s} {spec.knob}")
        return
    # Library chatter (cache-dit's and diffusers' info logs, deprecation notes) would bury the
    # progress bar; errors still surface as method statuses in the table.
    logging.getLogger("diffusers").setLevel(logging.ERROR)
    logging.getLogger("cache_dit").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
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
        )
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    rows = summarize(records)
    click.echo("")
    click.echo(f"profile {profile.name}: {profile.description}")
    click.echo(format_table(rows, quality=profile.quality))
    click.echo(f"\nwrote {out_dir}/results.jsonl, results.md, pareto.png, grid.png, trace.png")
