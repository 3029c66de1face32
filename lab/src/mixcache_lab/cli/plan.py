"""``mixcache plan``: print (and plot) the schedule a preset would run, without running it."""

from __future__ import annotations

from typing import Any

import click

from .calibrate import call_options

__all__ = ["plan"]


class _Stop(Exception):
    """Raised at the transformer's first forward: the schedule is set, nothing is denoised."""


def _taus(pipe: Any, steps: int, call: dict[str, Any]) -> tuple[list[float], str]:
    """The run's normalised time at ``steps`` steps, and where it came from.

    A pipeline sets its own schedule in its call, often not as ``set_timesteps(steps)`` would
    (HunyuanVideo passes its own sigmas, LTX a resolution-dependent shift), so the pipeline is
    called and stopped at the transformer's first forward: the prompt is encoded and the
    latents prepared, no step is run. When that call fails, the scheduler's
    ``set_timesteps(steps)``; when that fails too, an even grid (both said in the output).
    """
    from mixcache.api import run_taus

    def stop(*_: Any, **__: Any) -> None:
        raise _Stop

    handle = pipe.transformer.register_forward_pre_hook(stop, with_kwargs=True)
    try:
        pipe(prompt="a", num_inference_steps=steps, output_type="latent", **call)
    except _Stop:
        taus = run_taus(pipe)
        if taus is not None and len(taus) == steps:
            return taus, "the pipeline's own schedule"
    except Exception:  # any failure of the probe falls back, and says so
        pass
    finally:
        handle.remove()
    try:
        pipe.scheduler.set_timesteps(steps)
        taus = run_taus(pipe)
    except (TypeError, ValueError, AttributeError):  # e.g. a scheduler that needs `mu`
        taus = None
    if taus is not None and len(taus) == steps:
        return taus, (
            "scheduler.set_timesteps (the pipeline's call failed: may differ from a run; pass "
            "its arguments with --image, --height/--width/--num-frames or --call)"
        )
    return [1.0 - i / steps for i in range(steps)], "an even grid (the scheduler gave none)"


@click.command("plan")
@click.argument("model")
@click.option("--steps", default=20, show_default=True, help="Inference steps of the run.")
@click.option("--preset", default="balanced", show_default=True, help="Preset to plan.")
@click.option(
    "--block-speedup", type=float, default=None, help="Block-compute budget (overrides preset)."
)
@click.option(
    "--guidance-scale", type=float, default=5.0, show_default=True, help="CFG scale (1: no CFG)."
)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG.")
@click.option("--dtype", default="float32", show_default=True, help="torch dtype of the model.")
@call_options
def plan(
    model: str,
    steps: int,
    preset: str,
    block_speedup: float | None,
    guidance_scale: float,
    plot: str | None,
    dtype: str,
    **call_opts: Any,
) -> None:
    """Show the schedule PRESET plans for MODEL (bundled-wan, bundled-hunyuan, a pipeline
    directory, tiny-wan / tiny-hunyuan) at --steps: which steps compute and which granularity
    and form reuses at every other step, with the predicted error of each reuse.

    The run's step times are read by calling the pipeline (stopped before its first step):
    pass the arguments your runs use that change them (resolution on LTX, the input image of
    an image-to-video pipeline) with --height/--width/--num-frames, --image or --call."""
    from mixcache import MixCacheConfig
    from mixcache.errors import MixCacheError
    from mixcache.granularity import reuse_costs
    from mixcache.models import find_spec
    from mixcache.policy.planner import plan_options, plan_run, predicted_error
    from mixcache.profiles import find_profile

    from .calibrate import _load_pipeline, pipeline_call

    if steps < 2:
        raise click.BadParameter("must be >= 2", param_hint="--steps")
    try:
        cfg = MixCacheConfig.preset(preset)
        if block_speedup is not None:
            cfg = cfg.replace(block_speedup=block_speedup)
    except MixCacheError as exc:
        raise click.ClickException(str(exc)) from exc
    if cfg.block_speedup is None:
        raise click.ClickException(f"preset {preset!r} has no compute budget: nothing to plan")
    pipe = _load_pipeline(model, dtype)
    transformer = pipe.transformer
    spec = find_spec(transformer)
    profile, source, own = find_profile(transformer, spec.family, pipe)
    click.echo(f"profile: {source}" + ("" if own else " -- measured on another model"))
    if profile.errors is None:
        raise click.ClickException(
            "this profile has no error model: run `mixcache calibrate` on the model first"
        )
    costs = reuse_costs(cfg, len(spec.blocks(transformer)), 2 if guidance_scale > 1 else 1)
    forms = [f for f in cfg.plan_forms if f == "plain" or cfg.residual_order]
    options = plan_options(profile.errors, cfg.granularities, forms, costs)
    # The schedule is all the probe needs: no guidance (the command's scale is an argument).
    call = pipeline_call(
        pipe,
        model,
        ("num_inference_steps", "output_type", "guidance_scale", "true_cfg_scale"),
        call_opts,
        require_inputs=False,
    )
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    taus, where = _taus(pipe, steps, call)
    click.echo(f"steps: {steps}, normalised time from {where}")
    g = guidance_scale if guidance_scale > 1 else 1.0
    # The run's own call: step 0 computes, the plan covers the rest with the budget left.
    schedule = plan_run(
        profile.errors,
        taus,
        steps / cfg.block_speedup,
        1.0,
        options,
        start=1,
        computes=[0],
        guidance_scale=g,
        objective=cfg.plan_objective,
        max_streak=cfg.interval_max,
        final_steps=cfg.final_steps,
    )
    actions = ("compute", *schedule.actions)
    forms_ = (None, *schedule.forms)
    code = "C" + schedule.code()
    cost = 1.0 + schedule.cost
    click.echo(
        f"{preset} (x{cfg.block_speedup:g} block compute) at {steps} steps, CFG {guidance_scale:g}:"
    )
    click.echo(
        f"  plan      {code}   (C compute, s/S step, g/G cfg, b/B block; capitals extrapolate)"
    )
    click.echo(f"  compute   {cost / steps:.3f} of the uncached block compute ({cost:.2f} steps)")
    click.echo(f"  predicted final error {schedule.predicted:.4g} (relative, model units)")
    per_step = []
    for t in range(steps):
        if actions[t] != "compute":
            # The error of this reuse alone in the schedule's own context.
            per_step.append(
                predicted_error(profile.errors, taus, actions[: t + 1], forms_[: t + 1], g)
                - predicted_error(profile.errors, taus, actions[:t], forms_[:t], g)
            )
        else:
            per_step.append(0.0)
    if plot:
        _plot(plot, code, taus, per_step, f"{model}: {preset} at {steps} steps")
        click.echo(f"wrote {plot}")


def _plot(path: str, code: str, taus: list[float], errors: list[float], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"C": "#444444", "s": "#4c9be8", "S": "#1f5fa8", "g": "#f0a830", "G": "#b06f00"}
    colours |= {"b": "#6cc070", "B": "#2e7d32"}
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, len(code) * 0.25), 3.6), sharex=True)
    for i, ch in enumerate(code):
        top.bar(i, 1, color=colours.get(ch, "#999999"), width=0.9)
        top.text(i, 0.5, ch, ha="center", va="center", color="white", fontsize=8)
    top.set_yticks([])
    top.set_title(title)
    bottom.bar(range(len(code)), errors, color="#c0392b")
    bottom.set_ylabel("predicted error")
    bottom.set_xlabel("step (τ = " + f"{taus[0]:.2f} … {taus[-1]:.2f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
