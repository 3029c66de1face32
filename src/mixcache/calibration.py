"""Impact calibration (docs/method.md, "Impact I"): how much does an error in what ψ reuses cost?

For each granularity ψ, at a spread of steps, relative Gaussian noise of a few sizes is injected
into exactly what ψ would reuse — the block stack's residual for ``step``, the non-reference
(uncond) residual scaled by the guidance difference ΔR for ``cfg``, the span residual R_span for
``block`` — the generation runs to the end, and the relative L1 deviation of the final latent from
the clean run is measured. I^ψ = mean deviation per unit of injected relative error, normalised so
the measured granularities average 1. The noise is scaled by the same quantity each D^ψ is
relative to, so P^ψ = D^ψ·I^ψ predicts a final-latent deviation in comparable units.

Deterministic given the seeds: the noise comes from a ``torch.Generator`` seeded per injection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .api import _guidance_scale, apply_mixcache
from .config import MixCacheConfig
from .controller import Perturbation
from .errors import ConfigError, UnsupportedModelError
from .models import find_spec
from .policy.signals import rel_l1
from .profiles import GRANULARITIES, ImpactProfile

logger = logging.getLogger("mixcache")

__all__ = ["calibrate_impact"]


class _Noise(Perturbation):
    """Adds σ·mean|scale_of|·ε to the tensor of one (kind, step); ε is shared by the branches."""

    def __init__(self, kind: str, step: int, sigma: float, seed: int) -> None:
        self.kind, self.step, self.sigma, self.seed = kind, step, sigma, seed
        self.applied = 0

    def apply(
        self, kind: str, step: int, branch: str, tensor: torch.Tensor, scale_of: torch.Tensor
    ) -> torch.Tensor:
        if kind != self.kind or step != self.step:
            return tensor
        # The same noise pattern for every branch of the step: the error of a stale residual is
        # nearly the same in the cond and uncond branches, so it largely cancels in the guidance
        # combination g*cond - (g-1)*uncond; independent noise per branch would be amplified
        # ~g-fold there and overstate the impact of step and block reuse under CFG.
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        self.applied += 1
        eps = torch.randn(tensor.shape, generator=gen, dtype=torch.float32).to(tensor.device)
        scale = scale_of.abs().float().mean()
        return (tensor.float() + self.sigma * scale * eps).to(tensor.dtype)


def _final_latent(pipe: Any, prompt: str, seed: int, steps: int, kwargs: dict[str, Any]) -> Any:
    call = {"num_inference_steps": steps, "output_type": "latent", **kwargs, "return_dict": False}
    out = pipe(prompt, generator=torch.Generator(device="cpu").manual_seed(seed), **call)
    return out[0]


def _time_weights(
    by_step: dict[str, dict[int, list[float]]], measured: dict[str, float], num_steps: int
) -> tuple[tuple[float, float], ...]:
    """Per perturbed step: each granularity's deviation relative to its own mean, averaged over
    granularities, normalised to mean 1 ([ours]: one shared time profile; its shape was nearly the
    same for step, cfg and block in our measurements)."""
    steps = sorted({s for per in by_step.values() for s in per})
    points = []
    for s in steps:
        ratios = [
            (sum(v) / len(v)) / measured[g]
            for g, per in by_step.items()
            if g in measured and (v := per.get(s))
        ]
        if ratios:
            points.append((s / max(num_steps - 1, 1), sum(ratios) / len(ratios)))
    if len(points) < 2:
        return ()
    mean = sum(w for _, w in points) / len(points)
    return tuple((f, w / mean) for f, w in points)


def calibrate_impact(
    pipe: Any,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 10,
    seeds: Sequence[int] = (0,),
    noise_levels: Sequence[float] = (0.05, 0.2),
    step_fractions: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
    call_kwargs: dict[str, Any] | None = None,
    measured_on: str | None = None,
    method: str = "noise",
    progress: Callable[[int, int], None] | None = None,
) -> ImpactProfile:
    """Measure I^ψ for step, cfg and block on ``pipe`` (a diffusers pipeline).

    Args:
        pipe: a pipeline with a supported ``transformer``; it must not have MixCache applied.
            CFG must be active in ``call_kwargs`` (e.g. ``guidance_scale > 1``) to measure cfg;
            otherwise I^cfg is set to the mean of the others and the notes say so.
        prompts: prompts to average over.
        num_inference_steps, seeds: the runs (one clean run per prompt and seed).
        noise_levels: relative noise sizes σ injected.
        step_fractions: where in the run noise is injected (fractions of the steps).
        call_kwargs: extra pipeline arguments (resolution, guidance, negative prompt, ...).
        measured_on: text stored in the profile; default names the transformer class and size.
        method: ``"noise"`` (the paper's: Gaussian noise of relative size σ, I = deviation / σ)
            or ``"reuse"`` ([ours]: one real reuse of ψ at the step, with entries one step old;
            I = deviation / D^ψ measured at that decision, so P = D·I predicts the deviation a
            reuse actually causes, structured errors included). ``noise_levels`` is unused then.
        progress: called as ``progress(done, total)`` after every generation (a calibration is
            ``prompts x seeds x (1 + 3 x steps x noise levels)`` full generations: minutes on a
            real model); the CLI shows it as a progress bar.

    Returns:
        A JSON-serialisable :class:`ImpactProfile` (``.to_dict()``, ``.save(path)``).
    """
    if not prompts:
        raise ConfigError("prompts must contain at least one prompt")
    if num_inference_steps < 3:
        raise ConfigError(
            f"num_inference_steps={num_inference_steps} is out of range: must be >= 3"
        )
    if method not in ("noise", "reuse"):
        raise ConfigError(f"method={method!r} is invalid: must be 'noise' or 'reuse'")
    if not noise_levels or any(not (s > 0) for s in noise_levels):
        raise ConfigError(f"noise_levels={tuple(noise_levels)} is invalid: must be numbers > 0")
    if not step_fractions or any(not (0 <= f <= 1) for f in step_fractions):
        raise ConfigError(f"step_fractions={tuple(step_fractions)} is invalid: must be in [0, 1]")
    transformer = getattr(pipe, "transformer", None)
    spec = find_spec(transformer)
    if spec is None:
        raise UnsupportedModelError(
            f"calibrate_impact needs a pipeline with a supported transformer, got "
            f"{type(transformer).__name__}"
        )
    kwargs = dict(call_kwargs or {})
    steps = sorted(
        {min(num_inference_steps - 1, round(f * (num_inference_steps - 1))) for f in step_fractions}
    )
    # Hooks in dry-run mode: every forward computes, every residual is captured, and the
    # perturbation lands exactly where a reuse would put its stored residual.
    # The paper preset (threshold mode, first-block probe): what the shipped profiles were
    # calibrated with; its trigger is what keeps the policy from reusing by itself below.
    config = MixCacheConfig.preset(
        "paper", granularities=GRANULARITIES, dry_run=True, cfg_mode="residual_diff"
    )
    if method == "reuse":
        # Real hooks, policy never reuses by itself (the trigger cannot fire below 0); only the
        # forced reuse happens. Every other step computes, so the entries are one step old.
        config = MixCacheConfig.preset(
            "paper", granularities=GRANULARITIES, trigger_threshold=0.0, min_warmup_steps=2
        )
        steps = [s for s in steps if s >= 2]  # signals need two computed steps
        if not steps:
            raise ConfigError("step_fractions leave no step >= 2 to reuse at; use more steps")
    per_point = 1 if method == "reuse" else len(noise_levels)
    total = len(prompts) * len(seeds) * (1 + len(GRANULARITIES) * len(steps) * per_point)
    done = 0

    def generate(prompt: str, seed: int) -> torch.Tensor:
        nonlocal done
        out = _final_latent(pipe, prompt, seed, num_inference_steps, kwargs)
        done += 1
        if progress is not None:
            progress(done, total)
        return out

    handle = apply_mixcache(pipe, config)
    ctrl = handle.controllers["transformer"]
    raw: dict[str, list[float]] = {g: [] for g in GRANULARITIES}
    guidance: float | None = None
    by_step: dict[str, dict[int, list[float]]] = {g: {s: [] for s in steps} for g in GRANULARITIES}
    try:
        for prompt in prompts:
            for seed in seeds:
                ctrl.perturb = None
                clean = generate(prompt, seed)
                guidance = _guidance_scale(pipe)  # what the pipeline ran at (None: unknown)
                for g in GRANULARITIES:
                    for step in steps:
                        if method == "reuse":
                            ctrl.forced_signal = None
                            ctrl.force = lambda s, g=g, step=step: g if s == step else None
                            out = generate(prompt, seed)
                            ctrl.force = None
                            d = ctrl.forced_signal
                            if d:  # None: the reuse was impossible (e.g. no CFG); 0: no signal
                                value = rel_l1(out, clean) / d
                                raw[g].append(value)
                                by_step[g][step].append(value)
                            continue
                        for k, sigma in enumerate(noise_levels):
                            noise = _Noise(g, step, sigma, seed * 1000 + 17 * step + k)
                            ctrl.perturb = noise
                            out = generate(prompt, seed)
                            if noise.applied:
                                value = rel_l1(out, clean) / sigma
                                raw[g].append(value)
                                by_step[g][step].append(value)
    finally:
        ctrl.perturb = None
        ctrl.force = None
        handle.remove()
    measured = {g: sum(v) / len(v) for g, v in raw.items() if v and sum(v) > 0}
    if not measured:
        raise ConfigError("calibration measured no deviation; check the pipeline call arguments")
    mean = sum(measured.values()) / len(measured)
    impact = {g: measured[g] / mean for g in measured}
    what = (
        "one forced reuse (age 1), I = deviation / D"
        if method == "reuse"
        else (f"noise injection: sigma {tuple(noise_levels)}")
    )
    notes = (
        f"{what} at steps {steps} of "
        f"{num_inference_steps}, {len(prompts)} prompt(s) x {len(seeds)} seed(s); "
        "normalised to mean 1 over measured granularities"
    )
    for g in GRANULARITIES:
        if g not in impact:
            impact[g] = 1.0
            notes += f"; {g} not measurable here (no such reuse in this run), set to 1.0"
    time_weights = _time_weights(by_step, measured, num_inference_steps)
    if time_weights:
        notes += "; time_weights: deviation per unit noise vs step, averaged over granularities"
    n_blocks = len(spec.blocks(transformer))
    measured_on = measured_on or (
        f"{type(transformer).__name__} with {n_blocks} blocks (run-time calibration)"
    )
    logger.info("mixcache: calibrated impact %s", impact)
    return ImpactProfile(
        family=spec.family,
        measured_on=measured_on,
        notes=notes,
        guidance_scale=guidance if guidance is not None and guidance > 1 else None,
        time_weights=time_weights,
        extra={
            "raw_mean": {g: (sum(v) / len(v) if v else None) for g, v in raw.items()},
            # deviation per unit noise at each perturbed step (fraction of the run -> value)
            "by_step": {
                g: {
                    f"{s / (num_inference_steps - 1):.3f}": sum(v) / len(v)
                    for s, v in per.items()
                    if v
                }
                for g, per in by_step.items()
            },
        },
        **impact,
    )
