"""``mixcache calibrate``: measure a model's error model and impact profile, written where
``apply_mixcache`` finds it (beside the weights and in the user's profile cache)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["calibrate"]


def _tiny_call(model: str, drop: tuple[str, ...]) -> dict[str, Any]:
    """A tiny model's default call arguments (its small frames and text) without the keys in
    ``drop`` (those the command sets itself); ``{}`` for any other model."""
    if not model.startswith("tiny-"):
        return {}
    from mixcache_lab.tiny import tiny_call_kwargs

    call = tiny_call_kwargs("wan" if model == "tiny-wan" else "hunyuan")
    for key in drop:
        call.pop(key, None)
    return call


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


#: The options of :func:`call_options`.
_CALL_OPTIONS = [
    click.option("--height", type=int, default=None, help="Frame height passed to the pipeline."),
    click.option("--width", type=int, default=None, help="Frame width passed to the pipeline."),
    click.option("--num-frames", type=int, default=None, help="Frames passed to the pipeline."),
    click.option(
        "--image",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Input image of an image-to-video pipeline (Wan I2V, LTX I2V, CogVideoX I2V, ...).",
    ),
    click.option(
        "--video",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="Input video of a video-to-video pipeline (read with diffusers' load_video).",
    ),
    click.option(
        "--call",
        "extra",
        multiple=True,
        metavar="KEY=VALUE",
        help="Any other pipeline argument, e.g. --call max_sequence_length=226 (repeatable; VALUE "
        "is read as a Python literal, else kept as text).",
    ),
]


def call_options(command: Any) -> Any:
    """The options that shape the pipeline call (resolution, frames, input image or video, any
    other argument), shared by the commands that call the pipeline: a schedule or a calibration
    must see the call the user's runs make."""
    for option in reversed(_CALL_OPTIONS):
        command = option(command)
    return command


def pipeline_call(
    pipe: Any,
    model: str,
    drop: tuple[str, ...],
    options: dict[str, Any],
    *,
    require_inputs: bool = True,
) -> dict[str, Any]:
    """The pipeline arguments of :func:`call_options`' values (``options``, popped from the
    command's keyword arguments), over the tiny models' defaults (less ``drop``)."""
    call = {k: options.pop(k) for k in ("height", "width", "num_frames")}
    call = {k: v for k, v in call.items() if v is not None}
    call.update(_call_arguments(options.pop("extra")))
    image, video = options.pop("image"), options.pop("video")
    call.update(_conditioning(pipe, image, video, call, require=require_inputs))
    return {**_tiny_call(model, drop), **call}


@click.command("calibrate")
@click.argument("model")
@click.option(
    "--prompt",
    "prompts",
    multiple=True,
    help="Prompt to average over (repeatable; default: 4 generic prompts, a bundled model: 4 of "
    "its tuning prompts).",
)
@click.option(
    "--steps",
    type=int,
    default=None,
    help="Inference steps per run (default: 50 for --method errors, 10 otherwise).",
)
@click.option("--seed", "seeds", multiple=True, type=int, help="Seed (repeatable; default 0).")
@click.option(
    "--noise", "noise_levels", multiple=True, type=float, help="Relative noise size (repeatable)."
)
@click.option("--guidance-scale", type=float, default=None, help="CFG scale (> 1 to measure cfg).")
@click.option("--negative-prompt", default=None, help="Negative prompt.")
@click.option("--true-cfg-scale", type=float, default=None, help="HunyuanVideo true CFG scale.")
@call_options
@click.option("--dtype", default="float32", show_default=True, help="torch dtype of the model.")
@click.option("--measured-on", default=None, help="Description stored in the profile.")
@click.option(
    "--method",
    type=click.Choice(["errors", "noise", "reuse"]),
    default="errors",
    show_default=True,
    help="errors: the error model the planner plans from (11 runs a prompt and 6 runs of 10 "
    "steps, sharing the exact run's prefix: 8.7 generations' worth a prompt, 4 prompts by "
    "default); noise: "
    "Gaussian noise injection (paper's impact only); reuse: one forced real reuse per run.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output JSON file (default: mixcache_profile.json in MODEL's directory, and the "
    "user's profile cache, where apply_mixcache finds it).",
)
def calibrate(
    model: str,
    prompts: tuple[str, ...],
    steps: int | None,
    seeds: tuple[int, ...],
    noise_levels: tuple[float, ...],
    guidance_scale: float | None,
    negative_prompt: str | None,
    true_cfg_scale: float | None,
    dtype: str,
    measured_on: str | None,
    method: str,
    out: str | None,
    **call_opts: Any,
) -> None:
    """Calibrate MODEL: bundled-wan, bundled-hunyuan, a diffusers pipeline directory, or
    tiny-wan / tiny-hunyuan.

    With no other argument: measures the error model (how much each granularity's reuse, plain
    or extrapolated, adds to the final output at every point of a run; 4 prompts x 11 runs at
    50 steps, CFG 5, and 6 runs of 10 steps a prompt for how the error grows with a reuse's
    size; each single reuse computes only from two steps before it: 34.7 generations' worth,
    half with two --prompt)
    and writes the profile where apply_mixcache(pipe, "balanced") and `mixcache bench
    --model-dir` find it.
    """
    from mixcache import calibrate_impact
    from mixcache.errors import MixCacheError

    pipe = _load_pipeline(model, dtype)
    call = pipeline_call(pipe, model, ("num_inference_steps", "output_type"), call_opts)
    for key, value in (
        ("guidance_scale", guidance_scale),
        ("negative_prompt", negative_prompt),
        ("true_cfg_scale", true_cfg_scale),
    ):
        if value is not None:
            call[key] = value
    if method == "errors" and "guidance_scale" not in call and "true_cfg_scale" not in call:
        call.update(_default_guidance(pipe))
    steps = steps or (50 if method == "errors" else 10)
    prompts = tuple(prompts) or _default_prompts(pipe)
    # One bar over the whole calibration (hundreds of generations on a real model), not one
    # per generation from the pipeline.
    from tqdm.auto import tqdm

    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    bar = tqdm(desc="calibrating", unit="run", total=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    if method == "errors":
        try:
            written = _calibrate_errors(
                pipe, model, prompts, steps, seeds or (0,), call, measured_on, progress, out
            )
        except MixCacheError as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            bar.close()
        for path in written:
            click.echo(f"wrote {path}")
        return
    if out is None:
        raise click.UsageError("--out is required with --method noise or reuse")
    try:
        profile = calibrate_impact(
            pipe,
            list(prompts),
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


def _conditioning(
    pipe: Any, image: str | None, video: str | None, call: dict[str, Any], require: bool = True
) -> dict[str, Any]:
    """The input image / video, loaded as diffusers loads them; with ``require``, a pipeline
    that needs one and got none is refused here, before any generation, with the option to
    pass."""
    import inspect

    from diffusers.utils import load_image, load_video

    params = inspect.signature(pipe.__call__).parameters
    given = {"image": image, "video": video}
    out: dict[str, Any] = {}
    for name, path in given.items():
        if path is None:
            continue
        if name not in params:
            raise click.UsageError(
                f"--{name} was given but {type(pipe).__name__} takes no {name!r} argument"
            )
        out[name] = load_image(path) if name == "image" else load_video(path)
    for name in given:
        param = params.get(name)
        # Some take it as optional in the signature and fail later without it (LTX I2V).
        kind = "ImageToVideo" if name == "image" else "VideoToVideo"
        required = param is not None and (
            param.default is inspect.Parameter.empty or kind in type(pipe).__name__
        )
        if require and required and name not in out and name not in call:
            raise click.UsageError(
                f"{type(pipe).__name__} needs an input {name}: pass --{name} PATH (one like "
                "those you will generate from)"
            )
    return out


def _call_arguments(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs for the pipeline call; VALUE a Python literal where it parses."""
    import ast

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--call")
        try:
            out[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            out[key.strip()] = text
    return out


#: Prompts of a calibration when none are given: not the benchmark's. Four, because how much a
#: reuse's error grows by the end differs several-fold between prompts (up to sixteen-fold at
#: the first steps on the bundled Wan model), and two under-priced the early steps of prompts
#: the calibration did not see (docs/bench/tuning/r23-four-prompts.md). The bundled models only
#: know their own words, so they use four of their tuning prompts (held out from training and
#: bench), leaving the tuning prompts 2 and 3 unseen by it for checking.
GENERIC_PROMPTS: tuple[str, ...] = (
    "a dog running along a beach at sunset, waves in the background",
    "a busy city street at night, cars passing, neon signs reflecting on wet asphalt",
    "a close-up of a woman's face, she turns her head and smiles, soft window light",
    "a drone shot flying over a green forest valley with a river, morning mist",
)
#: Which of the bundled models' tuning prompts a default calibration runs.
BUNDLED_CALIBRATION_PROMPTS: tuple[int, ...] = (0, 1, 4, 5)


def _default_prompts(pipe: Any) -> tuple[str, ...]:
    from mixcache_lab.bundled import BUNDLED_PIPELINE_CLASSES, TUNING_PROMPTS

    if type(pipe).__name__ in BUNDLED_PIPELINE_CLASSES:
        return tuple(TUNING_PROMPTS[i] for i in BUNDLED_CALIBRATION_PROMPTS)
    return GENERIC_PROMPTS


def _default_guidance(pipe: Any) -> dict[str, Any]:
    """CFG on, at 5 (the scale the error model is read at when a run's is unknown): true CFG
    with an empty negative prompt where the pipeline's guidance_scale is an embedded one."""
    import inspect

    params = inspect.signature(pipe.__call__).parameters
    if "true_cfg_scale" in params:
        return {"true_cfg_scale": 5.0, "negative_prompt": ""}
    if "guidance_scale" in params:
        return {"guidance_scale": 5.0}
    return {}


def _calibrate_errors(
    pipe: Any,
    model: str,
    prompts: tuple[str, ...],
    steps: int,
    seeds: tuple[int, ...],
    call: dict[str, Any],
    measured_on: str | None,
    progress: Any,
    out: str | None,
) -> list[Path]:
    """Measure the error model, build the profile, write it; returns the paths written."""
    from mixcache.calibration import calibrate_errors, profile_from_errors
    from mixcache.profiles import PROFILE_FILE, profile_cache_dir, transformer_fingerprint

    errors = calibrate_errors(
        pipe,
        prompts,
        num_inference_steps=steps,
        seeds=seeds,
        call_kwargs=call,
        guidance_scale=call.get("true_cfg_scale"),
        progress=progress,
    )
    profile = profile_from_errors(pipe, errors, measured_on=measured_on)
    targets: list[Path] = []
    if out is not None:
        targets.append(Path(out))
    else:
        path = Path(model)
        if path.is_dir():
            targets.append(path / PROFILE_FILE)
        fp = transformer_fingerprint(pipe.transformer)
        targets.append(profile_cache_dir() / f"{fp}.json")
    written = []
    for target in targets:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            profile.save(target)
            written.append(target)
        except OSError as exc:
            click.echo(f"could not write {target}: {exc}", err=True)
    if not written:
        raise click.ClickException("the profile could not be written anywhere; pass --out")
    return written
