"""``mixcache calibrate``: measure a model's impact profile I^ψ and write it as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["calibrate"]


def _load_pipeline(model: str, dtype: str) -> Any:
    import torch

    if model in ("tiny-wan", "tiny-hunyuan"):
        from mixcache_lab.tiny import make_tiny_hunyuan_pipeline, make_tiny_wan_pipeline

        return make_tiny_wan_pipeline() if model == "tiny-wan" else make_tiny_hunyuan_pipeline()
    from mixcache_lab.bundled import BUNDLED_MODELS, BUNDLED_PIPELINE_CLASSES, load_bundled_pipeline

    path = Path(model)
    index = path / "model_index.json"
    class_name = json.loads(index.read_text()).get("_class_name") if index.exists() else None
    torch_dtype = getattr(torch, dtype)
    if model in BUNDLED_MODELS or class_name in BUNDLED_PIPELINE_CLASSES:
        try:
            return load_bundled_pipeline(model, torch_dtype=torch_dtype)
        except FileNotFoundError as exc:  # e.g. bundled-hunyuan before it is trained
            raise click.ClickException(str(exc)) from exc
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(model, torch_dtype=torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@click.command("calibrate")
@click.argument("model")
@click.option("--prompt", "prompts", multiple=True, help="Prompt to average over (repeatable).")
@click.option("--steps", default=10, show_default=True, help="Inference steps per run.")
@click.option("--seed", "seeds", multiple=True, type=int, help="Seed (repeatable; default 0).")
@click.option(
    "--noise", "noise_levels", multiple=True, type=float, help="Relative noise size (repeatable)."
)
@click.option("--height", type=int, default=None, help="Frame height passed to the pipeline.")
@click.option("--width", type=int, default=None, help="Frame width passed to the pipeline.")
@click.option("--num-frames", type=int, default=None, help="Frames passed to the pipeline.")
@click.option("--guidance-scale", type=float, default=None, help="CFG scale (> 1 to measure cfg).")
@click.option("--negative-prompt", default=None, help="Negative prompt.")
@click.option("--true-cfg-scale", type=float, default=None, help="HunyuanVideo true CFG scale.")
@click.option("--dtype", default="float32", show_default=True, help="torch dtype of the model.")
@click.option("--measured-on", default=None, help="Description stored in the profile.")
@click.option(
    "--method",
    type=click.Choice(["noise", "reuse"]),
    default="noise",
    show_default=True,
    help="noise: Gaussian noise injection (paper); reuse: one forced real reuse per run.",
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Output JSON file.")
def calibrate(
    model: str,
    prompts: tuple[str, ...],
    steps: int,
    seeds: tuple[int, ...],
    noise_levels: tuple[float, ...],
    height: int | None,
    width: int | None,
    num_frames: int | None,
    guidance_scale: float | None,
    negative_prompt: str | None,
    true_cfg_scale: float | None,
    dtype: str,
    measured_on: str | None,
    method: str,
    out: str,
) -> None:
    """Calibrate MODEL: bundled-wan, bundled-hunyuan, a diffusers pipeline directory, or
    tiny-wan / tiny-hunyuan.

    Injects noise into what each granularity reuses and writes the impact profile, which
    MixCacheConfig(impact=ImpactProfile.load(path)) accepts.
    """
    from mixcache import calibrate_impact
    from mixcache.errors import MixCacheError

    pipe = _load_pipeline(model, dtype)
    call: dict[str, Any] = {}
    for key, value in (
        ("height", height),
        ("width", width),
        ("num_frames", num_frames),
        ("guidance_scale", guidance_scale),
        ("negative_prompt", negative_prompt),
        ("true_cfg_scale", true_cfg_scale),
    ):
        if value is not None:
            call[key] = value
    if model.startswith("tiny-"):
        from mixcache_lab.tiny import tiny_call_kwargs

        family = "wan" if model == "tiny-wan" else "hunyuan"
        defaults = tiny_call_kwargs(family)
        for key in ("num_inference_steps", "output_type"):
            defaults.pop(key)
        call = {**defaults, **call}
    # One bar over the whole calibration (hundreds of generations on a real model), not one
    # per generation from the pipeline.
    from tqdm.auto import tqdm

    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    bar = tqdm(desc="calibrating", unit="run", total=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        profile = calibrate_impact(
            pipe,
            list(prompts) or ["a red circle moving right"],
            num_inference_steps=steps,
            seeds=seeds or (0,),
            noise_levels=noise_levels or (0.05, 0.2),
            call_kwargs=call,
            measured_on=measured_on,
            method=method,
            progress=progress,
        )
    except MixCacheError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bar.close()
    profile.save(out)
    click.echo(json.dumps(profile.to_dict(), indent=2))
