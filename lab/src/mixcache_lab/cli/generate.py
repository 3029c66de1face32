"""``mixcache generate`` and ``mixcache adherence``: the main job and its quality check.

``generate`` runs a text-to-video pipeline (the bundled Wan model by default; ``--model
bundled-hunyuan`` for the bundled HunyuanVideo one, or any Wan / HunyuanVideo pipeline directory
or hub id) with MixCache on, writes the clip, prints the time and the cache summary, and with
``--compare`` also runs the same seed uncached and writes both clips side by side with their
times and the PSNR. ``adherence`` prints a bundled model's prompt-adherence numbers (ground truth
and generated).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

CACHE_CHOICES = ("none", "quality", "balanced", "fast")
VIDEO_EXTS = (".mp4", ".gif")
# Diffusers pipeline classes that MixCache supports through --model.
SUPPORTED_PIPELINES = (
    "MixCacheT2VPipeline",
    "MixCacheHunyuanT2VPipeline",
    "WanPipeline",
    "HunyuanVideoPipeline",
)


# -- helpers (pure where possible, so tests can call them) -------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two clips with values in [0, 1] (inf when identical)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(1.0 / mse))


def to_uint8(frames: np.ndarray, upscale: int = 1) -> np.ndarray:
    """(F, H, W, 3) floats in [0, 1] -> uint8, optionally enlarged by nearest neighbour."""
    out = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if upscale > 1:
        out = out.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return out


def write_video(path: Path, frames: np.ndarray, fps: int) -> None:
    """Write uint8 frames (F, H, W, 3) as mp4 (ffmpeg via imageio) or gif, by extension."""
    import imageio.v3 as iio

    ext = path.suffix.lower()
    if ext == ".mp4":
        # macro_block_size=1: keep the exact size (ffmpeg would otherwise pad to 16).
        iio.imwrite(path, frames, plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)
    elif ext == ".gif":
        iio.imwrite(path, frames, plugin="pillow", duration=int(1000 / fps), loop=0)
    else:  # pragma: no cover - validated earlier
        raise ValueError(f"unsupported video extension {ext!r}")


def check_writable(path: Path) -> None:
    """Fail early (before any generation) if ``path`` cannot be written as a video."""
    if path.suffix.lower() not in VIDEO_EXTS:
        raise click.BadParameter(
            f"{path}: the output must end in {' or '.join(VIDEO_EXTS)}", param_hint="--out"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "ab"):
            pass
        if not existed:
            path.unlink()
    except OSError as e:
        raise click.BadParameter(
            f"cannot write {path}: {e.strerror or e}", param_hint="--out"
        ) from e


def label_frames(frames: np.ndarray, text: str) -> np.ndarray:
    """Draw ``text`` on a strip above uint8 frames (F, H, W, 3)."""
    from PIL import Image, ImageDraw

    f, h, w, _ = frames.shape
    strip = 14
    out = np.zeros((f, h + strip, w, 3), dtype=np.uint8)
    out[:, strip:] = frames
    img = Image.new("RGB", (w, strip), (0, 0, 0))
    ImageDraw.Draw(img).text((2, 1), text, fill=(255, 255, 255))
    out[:, :strip] = np.asarray(img)[None]
    return out


def side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 4) -> np.ndarray:
    """Concatenate two uint8 clips of equal shape horizontally with a grey gap."""
    f, h, _, _ = left.shape
    sep = np.full((f, h, gap, 3), 128, dtype=np.uint8)
    return np.concatenate([left, sep, right], axis=2)


def _is_local_path(model: str) -> bool:
    return (
        model.startswith((".", "/", "~"))
        or os.sep in model.strip("/").split("/", 1)[-1]
        or (Path(model).expanduser().exists())
    )


def is_bundled_name(model: str | None) -> bool:
    """Whether ``model`` names a bundled model (None is the default one)."""
    from mixcache_lab.bundled import BUNDLED_MODELS

    return model is None or model in BUNDLED_MODELS


def load_pipeline(model: str | None) -> tuple[Any, bool]:
    """Load a bundled pipeline (by name, or the default for ``None``), a directory or a hub id.

    Returns ``(pipe, is_bundled)``. Raises :class:`click.ClickException` with a clear message
    for a bundled model not trained yet (naming the command that trains it), a missing
    directory or an unsupported pipeline class.
    """
    from mixcache_lab.bundled import BUNDLED_PIPELINE_CLASSES, load_bundled_pipeline

    if is_bundled_name(model):
        try:
            return load_bundled_pipeline(model), True
        except FileNotFoundError as e:
            raise click.ClickException(str(e)) from e
    path = Path(model).expanduser()
    if path.exists() or _is_local_path(model):
        if not path.is_dir():
            raise click.ClickException(f"model directory not found: {model}")
        index = path / "model_index.json"
        if not index.is_file():
            raise click.ClickException(
                f"{model} is not a diffusers pipeline directory (no model_index.json)"
            )
        cls_name = json.loads(index.read_text()).get("_class_name", "?")
        if cls_name not in SUPPORTED_PIPELINES:
            raise click.ClickException(
                f"{model} holds a {cls_name}; supported: {', '.join(SUPPORTED_PIPELINES)}"
            )
        if cls_name in BUNDLED_PIPELINE_CLASSES:
            return load_bundled_pipeline(path), True
    import torch
    from diffusers import DiffusionPipeline

    try:
        pipe = DiffusionPipeline.from_pretrained(str(path) if path.exists() else model)
    except Exception as e:  # hub or loading errors come in many types; report them plainly
        raise click.ClickException(f"could not load model {model!r}: {e}") from e
    if type(pipe).__name__ not in SUPPORTED_PIPELINES:
        raise click.ClickException(
            f"{model} is a {type(pipe).__name__}; supported: {', '.join(SUPPORTED_PIPELINES)}"
        )
    for name in ("transformer", "transformer_2", "text_encoder", "vae"):
        comp = getattr(pipe, name, None)
        if isinstance(comp, torch.nn.Module):
            comp.eval()
    return pipe, False


def run_pipeline(
    pipe: Any,
    prompt: str,
    steps: int,
    seed: int,
    guidance: float | None,
    extra: dict[str, Any],
) -> tuple[np.ndarray, float]:
    """One generation: returns (frames (F, H, W, 3) in [0, 1], seconds)."""
    import torch

    kwargs: dict[str, Any] = {
        "prompt": prompt,
        "num_inference_steps": steps,
        "generator": torch.Generator("cpu").manual_seed(seed),
        "output_type": "np",
        **extra,
    }
    if guidance is not None:
        from mixcache_lab.bundled.pipeline import cfg_call_kwargs

        kwargs.update(cfg_call_kwargs(pipe, guidance))
    t0 = time.perf_counter()
    frames = pipe(**kwargs).frames
    seconds = time.perf_counter() - t0
    frames = np.asarray(frames[0] if isinstance(frames, (list, tuple)) else frames)
    if frames.ndim == 5:
        frames = frames[0]
    return frames.astype(np.float32), seconds


# -- commands ----------------------------------------------------------------------------------


@click.command("generate")
@click.argument("prompt")
@click.option(
    "--model",
    default=None,
    help="bundled-wan (the default), bundled-hunyuan, or a local diffusers directory or hub id "
    "of a Wan / HunyuanVideo pipeline.",
)
@click.option(
    "--cache",
    type=click.Choice(CACHE_CHOICES),
    default="balanced",
    show_default=True,
    help="MixCache preset, or none.",
)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--guidance",
    type=float,
    default=None,
    help="CFG scale (default: the pipeline's; true_cfg_scale for bundled-hunyuan).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("mixcache.mp4"),
    show_default=True,
    help="Output video, .mp4 or .gif.",
)
@click.option("--compare", is_flag=True, help="Also run uncached; write both side by side.")
@click.option("--frames", "num_frames", type=int, default=None, help="Frames (pipeline default).")
@click.option("--height", type=int, default=None, help="Height in px (pipeline default).")
@click.option("--width", type=int, default=None, help="Width in px (pipeline default).")
@click.option("--fps", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--upscale",
    type=click.IntRange(min=1),
    default=None,
    help="Enlarge the written video (nearest neighbour); default 8 for the bundled model.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
def generate(
    prompt: str,
    model: str | None,
    cache: str,
    steps: int,
    seed: int,
    guidance: float | None,
    out: Path,
    compare: bool,
    num_frames: int | None,
    height: int | None,
    width: int | None,
    fps: int,
    upscale: int | None,
    threads: int | None,
) -> None:
    """Generate a video for PROMPT with MixCache on (the bundled Wan model by default)."""
    check_writable(out)
    bundled_name = is_bundled_name(model)
    if bundled_name:
        from mixcache_lab.bundled import UnknownPromptError, parse_prompt

        try:
            parse_prompt(prompt)
        except UnknownPromptError as e:
            raise click.BadParameter(str(e), param_hint="PROMPT") from e
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    pipe, is_bundled = load_pipeline(model)
    if is_bundled and not bundled_name:
        from mixcache_lab.bundled import UnknownPromptError, parse_prompt

        try:
            parse_prompt(prompt)
        except UnknownPromptError as e:
            raise click.BadParameter(str(e), param_hint="PROMPT") from e
    pipe.set_progress_bar_config(disable=False, leave=False, desc="denoising")
    extra = {
        k: v
        for k, v in (("num_frames", num_frames), ("height", height), ("width", width))
        if v is not None
    }
    scale = upscale if upscale is not None else (8 if is_bundled else 1)
    name = "bundled model" if model is None else model
    click.echo(f"model: {name}; prompt: {prompt!r}; {steps} steps; seed {seed}; cache {cache}")

    handle = None
    summary = None
    if cache != "none":
        from mixcache import MixCacheError, apply_mixcache

        try:
            handle = apply_mixcache(pipe, cache)
        except MixCacheError as e:
            raise click.ClickException(f"cannot apply MixCache: {e}") from e
    try:
        frames, seconds = run_pipeline(pipe, prompt, steps, seed, guidance, extra)
        if handle is not None:
            summary = handle.stats().summary(per_step=True)
    finally:
        if handle is not None:
            handle.remove()
    write_video(out, to_uint8(frames, scale), fps)
    click.echo(f"cache {cache}: {seconds:.2f} s -> {out}")
    if summary is not None:
        click.echo(summary)

    if compare:
        ref, ref_seconds = run_pipeline(pipe, prompt, steps, seed, guidance, extra)
        quality = psnr(frames, ref)
        speedup = ref_seconds / seconds if seconds > 0 else float("nan")
        left = label_frames(to_uint8(frames, scale), f"{cache} {seconds:.2f}s")
        right = label_frames(to_uint8(ref, scale), f"none {ref_seconds:.2f}s")
        cmp_path = out.with_name(f"{out.stem}_compare{out.suffix}")
        write_video(cmp_path, side_by_side(left, right), fps)
        click.echo(
            f"uncached: {ref_seconds:.2f} s; speedup {speedup:.2f}x; "
            f"PSNR(cached, uncached) = {quality:.2f} dB -> {cmp_path}"
        )


@click.command("adherence")
@click.option(
    "--model",
    default=None,
    help="bundled-wan (the default), bundled-hunyuan, or a saved bundled-model directory.",
)
@click.option(
    "--prompts",
    "prompt_set",
    type=click.Choice(["heldout", "bench", "tuning", "train"]),
    default="heldout",
    show_default=True,
)
@click.option("--seeds", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--guidance", type=float, default=None, help="CFG scale (default: the pipeline's).")
@click.option(
    "--cache",
    type=click.Choice(CACHE_CHOICES),
    default="none",
    show_default=True,
    help="Score generations with a MixCache preset on.",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def adherence(
    model: str | None,
    prompt_set: str,
    seeds: int,
    steps: int,
    guidance: float | None,
    cache: str,
    json_out: Path | None,
) -> None:
    """Print a bundled model's prompt adherence: ground-truth clips, then generations."""
    from mixcache_lab.bundled import evaluator
    from mixcache_lab.bundled.dataset import (
        BENCH_PROMPTS,
        HELDOUT_PROMPTS,
        TRAIN_PROMPTS,
        TUNING_PROMPTS,
    )

    prompts = {
        "heldout": HELDOUT_PROMPTS,
        "bench": BENCH_PROMPTS,
        "tuning": TUNING_PROMPTS,
        "train": TRAIN_PROMPTS,
    }[prompt_set]
    gt = evaluator.ground_truth_adherence(prompts, seeds)
    pipe, is_bundled = load_pipeline(model)
    if not is_bundled:
        raise click.ClickException(
            f"{model} is not a bundled model: adherence reads clips of the bundled dataset only"
        )
    handle = None
    if cache != "none":
        from mixcache import apply_mixcache

        handle = apply_mixcache(pipe, cache)
    t0 = time.perf_counter()
    try:
        gen = evaluator.generated_adherence(pipe, prompts, seeds, steps, guidance)
    finally:
        if handle is not None:
            handle.remove()
    seconds = time.perf_counter() - t0
    n = len(prompts) * seeds
    click.echo(f"{prompt_set} prompts: {len(prompts)} x {seeds} seeds (held-out seeds)")
    click.echo(f"{'':12s} {'colour':>7s} {'shape':>7s} {'direction':>9s} {'all':>7s}")
    for label, a in (("ground truth", gt), ("generated", gen)):
        click.echo(
            f"{label:12s} {a.color:7.1%} {a.shape:7.1%} {a.direction:9.1%} {a.all_correct:7.1%}"
        )
    click.echo(
        f"generation: {steps} steps, CFG, cache {cache}; {seconds:.1f} s for {n} clips "
        f"({seconds / n:.2f} s per clip, batched)"
    )
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                {
                    "model": model or "bundled-wan",
                    "prompts": prompt_set,
                    "seeds": seeds,
                    "steps": steps,
                    "guidance": guidance,
                    "cache": cache,
                    "ground_truth": gt.as_dict(),
                    "generated": gen.as_dict(),
                },
                indent=2,
            )
            + "\n"
        )
