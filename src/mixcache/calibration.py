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

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .api import _guidance_scale, _step_index_hint, apply_mixcache, run_taus
from .config import MixCacheConfig
from .controller import Perturbation
from .errors import ConfigError, UnsupportedModelError
from .hooks.prefix import PrefixReplayHook, shared_prefix
from .models import find_spec
from .policy.planner import ErrorModel
from .policy.signals import rel_l1
from .profiles import GRANULARITIES, ImpactProfile, find_profile, transformer_fingerprint

logger = logging.getLogger("mixcache")

__all__ = [
    "DEFAULT_IMPACT_FRACTIONS",
    "calibrate_errors",
    "calibrate_impact",
    "profile_from_errors",
]


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


def _final_latent(
    pipe: Any,
    prompt: str,
    seed: int,
    steps: int,
    kwargs: dict[str, Any],
    keep: dict[int, torch.Tensor] | None = None,
) -> Any:
    """The final latent of one generation; with ``keep``, the latents after the steps named by
    its keys are stored in it too (through the pipeline's ``callback_on_step_end``)."""
    call = {"num_inference_steps": steps, "output_type": "latent", **kwargs, "return_dict": False}
    if keep is not None:

        def on_step_end(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if i in keep:
                keep[i] = tensors["latents"].detach().float().clone()
            return {}

        call["callback_on_step_end"] = on_step_end
        call["callback_on_step_end_tensor_inputs"] = ["latents"]
    # The prompt by keyword: image- and video-to-video pipelines take their input first.
    out = pipe(prompt=prompt, generator=torch.Generator(device="cpu").manual_seed(seed), **call)
    return out[0]


def _takes_step_callback(pipe: Any) -> bool:
    import inspect

    try:
        params = inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False
    return "callback_on_step_end" in params and "latents" in getattr(
        pipe, "_callback_tensor_inputs", ()
    )


#: Steps a replayed run computes before its first forced reuse: the reuse at ``s`` reads the
#: entry of step ``s - 1``; one step more gives every entry its usual predecessor.
PREFIX_LEAD = 2


def _prefix_hook(pipe: Any, share: bool) -> PrefixReplayHook | None:
    """A shared-prefix hook for ``pipe``, or None where runs cannot share one (not asked, or a
    pipeline whose scheduler does not count its steps)."""
    hint = _step_index_hint(pipe) if share else None
    return PrefixReplayHook(hint) if hint is not None else None


def _own_profile(pipe: Any, family: str) -> ImpactProfile:
    """The profile ``apply_mixcache`` would find for ``pipe``, given to the calibration's own
    configs so that applying them does not warn, once per generation, that the model has no
    profile of its own — the warning's advice is the command being run."""
    return find_profile(pipe.transformer, family, pipe)[0]


class _Generations:
    """The calibration's generations: each one a final latent, counted for ``progress``."""

    def __init__(
        self,
        pipe: Any,
        steps: int,
        kwargs: dict[str, Any],
        total: int,
        progress: Callable[[int, int], None] | None,
        share_prefix: bool = False,
    ) -> None:
        self.pipe, self.steps, self.kwargs, self.total = pipe, steps, kwargs, total
        self.progress, self.done = progress, 0
        self.share, self.prefix = share_prefix, None
        #: Transformer compute spent, in generations of ``steps`` (a replayed prefix is free),
        #: and the runs that replayed one.
        self.worth, self.shared = 0.0, 0

    def __call__(
        self,
        prompt: str,
        seed: int,
        keep: dict[int, torch.Tensor] | None = None,
        steps: int | None = None,
        *,
        record: bool = False,
        start: int | None = None,
    ) -> torch.Tensor:
        """One generation's final latent. ``record``: an exact run whose prefix later runs of
        the same prompt and seed share; ``start``: such a run, which computes from step
        ``start`` on (the steps before it replay the recorded exact run's outputs)."""
        n = steps or self.steps
        if record:
            self.prefix = _prefix_hook(self.pipe, self.share)
        hook = self.prefix if record or start is not None else None
        replayed = hook.replayed if hook is not None else 0
        with shared_prefix(self.pipe.transformer, hook, None if record else start):
            out = _final_latent(self.pipe, prompt, seed, n, self.kwargs, keep)
        skipped = start if hook is not None and start and hook.replayed > replayed else 0
        self.worth += (n - skipped) / self.steps
        self.shared += skipped > 0
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)
        return out


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
    own = _own_profile(pipe, spec.family)
    config = MixCacheConfig.preset(
        "paper", granularities=GRANULARITIES, dry_run=True, cfg_mode="residual_diff", impact=own
    )
    if method == "reuse":
        # Real hooks, policy never reuses by itself (the trigger cannot fire below 0); only the
        # forced reuse happens. Every other step computes, so the entries are one step old.
        config = MixCacheConfig.preset(
            "paper",
            granularities=GRANULARITIES,
            trigger_threshold=0.0,
            min_warmup_steps=2,
            impact=own,
        )
        steps = [s for s in steps if s >= 2]  # signals need two computed steps
        if not steps:
            raise ConfigError("step_fractions leave no step >= 2 to reuse at; use more steps")
    per_point = 1 if method == "reuse" else len(noise_levels)
    total = len(prompts) * len(seeds) * (1 + len(GRANULARITIES) * len(steps) * per_point)
    generate = _Generations(pipe, num_inference_steps, kwargs, total, progress)

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


# --------------------------------------------------------------------------- error model
#: Gaps tabulated by :func:`calibrate_errors` (steps of the calibration run): every gap up to 8,
#: then sparser (a run with fewer steps reads them between points, see policy/planner.py).
ERROR_GAPS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 19, 24)
ERROR_PREV_GAPS: tuple[int, ...] = (1, 2, 3, 5, 8, 12, 18)


class _Recorder(Perturbation):
    """Observes (never changes) what each granularity would store, as a fixed token sketch.

    The sketch keeps ``tokens`` evenly spaced rows of the (batch, tokens, channels) tensor, in
    float32 on the CPU: relative L1 errors are means over elements, which a uniform row sample
    estimates without holding full hidden states of every step (a 14B model's would not fit).
    """

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.data: dict[tuple[str, str], dict[int, torch.Tensor]] = {}

    def _sketch(self, t: torch.Tensor) -> torch.Tensor:
        flat = t.detach().reshape(t.shape[0], -1, t.shape[-1]) if t.dim() >= 3 else t.detach()
        if flat.dim() == 3 and flat.shape[1] > self.tokens:
            idx = torch.linspace(0, flat.shape[1] - 1, self.tokens).round().long()
            flat = flat[:, idx.to(flat.device)]
        return flat.float().cpu().clone()

    def apply(
        self, kind: str, step: int, branch: str, tensor: torch.Tensor, scale_of: torch.Tensor
    ) -> torch.Tensor:
        self.data.setdefault((kind, branch), {})[step] = self._sketch(scale_of)
        return tensor


def _gram(c: torch.Tensor | None, u: torch.Tensor | None) -> np.ndarray:
    """``(|c|², |u|², c·u)`` in float64 (a missing branch counts as zero)."""
    cc = float((c.double() ** 2).sum()) if c is not None else 0.0
    uu = float((u.double() ** 2).sum()) if u is not None else 0.0
    cu = float((c.double() * u.double()).sum()) if c is not None and u is not None else 0.0
    return np.array([cc, uu, cu])


def _error_tables(
    rec: _Recorder, taus: Sequence[float]
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Gram terms of the plain and linear reuse errors of every granularity, and of the fresh
    quantities, from one exact run's sketches (see :class:`~mixcache.policy.planner.ErrorModel`).
    """
    n = len(taus)
    gaps, prev_gaps = ERROR_GAPS, ERROR_PREV_GAPS
    uncond = sorted({b for k, b in rec.data if k == "cfg"})  # the non-reference branch
    u_branch = uncond[0] if uncond else None
    c_branch = next((b for k, b in rec.data if k == "step" and b != u_branch), None)
    plain: dict[str, Any] = {}
    linear: dict[str, Any] = {}
    fresh: dict[str, Any] = {}

    def full(kind: str, branch: str | None) -> dict[int, torch.Tensor] | None:
        x = rec.data.get((kind, branch)) if branch is not None else None
        return x if x is not None and len(x) == n else None

    for g in GRANULARITIES:
        kind = "block" if g == "block" else "step"
        fc, fu = full(kind, c_branch), full(kind, u_branch)
        if fc is None:
            continue
        if g == "cfg":
            xc, xu = None, full("cfg", u_branch)  # the uncond residual errs by ΔR's error
            if xu is None or fu is None:
                continue
        else:
            xc, xu = fc, fu

        def err(x: dict[int, torch.Tensor] | None, a: int, t: int, s: int | None, k: float):
            if x is None:
                return None
            if s is None:
                return x[a] - x[t]
            return torch.lerp(x[s], x[a], 1.0 + k) - x[t]

        p_tab = np.full((n, len(gaps), 3), np.nan)
        l_tab = np.full((n, len(prev_gaps), len(gaps), 3), np.nan)
        for a in range(n):
            for i, d in enumerate(gaps):
                t = a + d
                if t >= n:
                    break
                p_tab[a, i] = _gram(err(xc, a, t, None, 0.0), err(xu, a, t, None, 0.0))
                for j, p in enumerate(prev_gaps):
                    s = a - p
                    if s < 0:
                        break
                    k = (taus[t] - taus[a]) / (taus[a] - taus[s])
                    l_tab[a, j, i] = _gram(err(xc, a, t, s, k), err(xu, a, t, s, k))
        plain[g] = p_tab
        linear[g] = l_tab
        fresh[g] = np.stack([_gram(fc[t], fu[t] if fu is not None else None) for t in range(n)])
    return plain, linear, fresh


#: Where single reuses measure the impact of an error (fractions of the calibration's steps).
#: The impact rises about six-fold between τ 0.95 and 0.98 on both bundled models (measured on
#: their tuning prompts), so the step curve has two points in the first 7 % of the run — step 1,
#: the earliest step any plan reuses, among them — and three over the rest; cfg and block are
#: read as a ratio to the step curve (:meth:`ErrorModel.impact_at`), so two points each give
#: them its shape. With one more at the last step (``ErrorModel.last_impact``): 1 + 9 + 1 = 11
#: runs a prompt, 7.7 generations' worth with the shared prefix.
DEFAULT_IMPACT_FRACTIONS: dict[str, tuple[float, ...]] = {
    "step": (0.02, 0.07, 0.2, 0.5, 0.85),
    "cfg": (0.07, 0.5),
    "block": (0.07, 0.5),
}

#: The short run whose single step reuses measure how the final error grows with a reuse's size
#: (:meth:`ErrorModel.priced`; measured by default since docs/bench/tuning/r21-size-adopted.md):
#: at 10 steps a reuse's error is 3-7 times the one the impact was measured at (50 steps, entry
#: one step old), the range low step counts and long streaks plan in. Its steps 1, 2, 4, 6 and
#: 8: 1 + 5 runs of 10 steps a prompt, 0.96 generations' worth of 50 with the shared prefix.
SIZE_STEPS = 10
SIZE_POINTS: tuple[int, ...] = (1, 2, 4, 6, 8)
#: The exponent's range: a reading outside it is a measurement a few runs cannot support.
SIZE_EXPONENT_RANGE = (0.25, 3.0)


def calibrate_errors(
    pipe: Any,
    prompts: Sequence[str],
    *,
    num_inference_steps: int = 50,
    seeds: Sequence[int] = (0,),
    call_kwargs: dict[str, Any] | None = None,
    impact_fractions: Mapping[str, Sequence[float]] | None = None,
    sketch_tokens: int = 256,
    guidance_scale: float | None = None,
    size_steps: int | None = SIZE_STEPS,
    share_prefix: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> ErrorModel:
    """Measure the error model the planner plans from.

    docs/method.md, "Planning from measured errors", says why this form.

    For every prompt and seed: one exact run records, at every step, what each granularity
    would store (stack residual, guidance difference, span residual; a token sketch), from which
    the error of reusing any step's entry at any later step, plain or extrapolated in
    normalised time, is computed without another generation; then a few real single reuses
    (plain, entry one step old) measure how much final-latent deviation a unit of that error
    causes at that point of the run, and one at the last step (``last_impact``: that step ends
    at the clean sample, so the plan may reuse it when it costs next to nothing): ``prompts x
    seeds x (2 + sum of impact points)`` runs (11 a prompt with the defaults) at
    ``num_inference_steps``; then single reuses of a short run of ``size_steps`` measure how
    the final error grows with a reuse's size (``size_exponent``), ``prompts x seeds x 6`` runs
    of ``size_steps`` more. Every single reuse shares the exact run's prefix (``share_prefix``):
    it computes only from two steps before the reuse. Cost with the defaults: 8.7 generations'
    worth of transformer compute a prompt (the returned model's ``notes`` state the figure).

    Args:
        pipe: a pipeline with a supported transformer and MixCache not applied. CFG must be on
            in ``call_kwargs`` for cfg to be measured.
        prompts, seeds: the runs averaged over (use prompts you will not evaluate on).
        num_inference_steps: the calibration's step count; runs with other step counts read
            the tables in normalised time (50 covers every gap a 10- to 50-step run uses).
        call_kwargs: other pipeline arguments (resolution, frames, guidance, negative prompt).
        impact_fractions: per granularity, where in the run single reuses are measured
            (fractions of the steps); default :data:`DEFAULT_IMPACT_FRACTIONS`: step at 5
            points, two of them in the first 7 % of the run, where the impact of an error
            rises steeply; cfg and block at 2 (read as a ratio to the step curve).
        sketch_tokens: token rows kept per step and branch for the error tables.
        guidance_scale: the CFG scale of the calibration runs when the pipeline does not keep
            it (HunyuanVideo's ``true_cfg_scale``); read from the pipeline otherwise.
        size_steps: the short run's step count for the size exponent (default
            :data:`SIZE_STEPS`), at most half of ``num_inference_steps``. None (also a
            calibration under 8 steps): no size exponent, every error priced linearly as at the
            calibration's own step size. Measured, the exponent ranks 10-step schedules far
            better and plans better on the tuning cells, with four prompts a cell: +17 dB over
            36 preset cells (docs/bench/tuning/r21-size-adopted.md).
        share_prefix: the single reuses replay the exact run's transformer outputs up to two
            steps before the reuse instead of computing them (kept on the CPU: one output per
            step and branch, the latent's size); the error model is the same bit for bit.
            False: every run computes every step (a pipeline whose scheduler does not count
            its steps in ``step_index`` always does).
        progress: ``progress(done, total)`` after every run.
    """
    if not prompts:
        raise ConfigError("prompts must contain at least one prompt")
    if num_inference_steps < max(ERROR_GAPS[0] + 2, 6):
        raise ConfigError(
            f"num_inference_steps={num_inference_steps} is out of range: must be >= 6"
        )
    if sketch_tokens < 1:
        raise ConfigError(f"sketch_tokens={sketch_tokens} is out of range: must be >= 1")
    if size_steps is not None and size_steps < 4:
        raise ConfigError(f"size_steps={size_steps} is out of range: must be >= 4 (or None)")
    # The short run has at most half the calibration's steps (its errors must be larger than
    # the ones the impact was measured at); a calibration too short for one has no exponent.
    if size_steps is not None and min(size_steps, num_inference_steps // 2) < 4:
        size_steps = None
    elif size_steps is not None:
        size_steps = min(size_steps, num_inference_steps // 2)
    transformer = getattr(pipe, "transformer", None)
    spec = find_spec(transformer)
    if spec is None:
        raise UnsupportedModelError(
            f"calibrate_errors needs a pipeline with a supported transformer, got "
            f"{type(transformer).__name__}"
        )
    fractions = dict(impact_fractions or DEFAULT_IMPACT_FRACTIONS)
    unknown = set(fractions) - set(GRANULARITIES)
    if unknown:
        raise ConfigError(f"impact_fractions has unknown granularities {sorted(unknown)}")
    n = num_inference_steps
    points = {
        g: sorted({min(n - 2, max(1, round(f * (n - 1)))) for f in fs})
        for g, fs in fractions.items()
    }
    kwargs = dict(call_kwargs or {})
    size_points = (
        tuple(
            sorted(
                {min(size_steps - 2, max(1, round(s * (size_steps - 1) / 9))) for s in SIZE_POINTS}
            )
        )
        if size_steps is not None
        else ()
    )
    size_runs = len(prompts) * len(seeds) * (1 + len(size_points)) if size_points else 0
    total = len(prompts) * len(seeds) * (2 + sum(len(v) for v in points.values())) + size_runs
    generate = _Generations(pipe, n, kwargs, total, progress, share_prefix)

    # The forms the presets execute: no probe, stack residual from h0, residual-difference cfg.
    # Threshold mode ("paper"): no plan switches a granularity off while it is observed.
    own = _own_profile(pipe, spec.family)
    observe = MixCacheConfig.preset(
        "paper",
        granularities=GRANULARITIES,
        dry_run=True,
        cfg_mode="residual_diff",
        step_probe="none",
        impact=own,
    )
    force_cfg = MixCacheConfig.preset(
        "paper",
        granularities=GRANULARITIES,
        trigger_threshold=0.0,
        min_warmup_steps=1,
        step_probe="none",
        cfg_mode="residual_diff",
        residual_order=0,
        impact=own,
    )
    plains: list[dict[str, Any]] = []
    linears: list[dict[str, Any]] = []
    freshes: list[dict[str, Any]] = []
    impacts: dict[str, dict[int, list[float]]] = {g: {} for g in GRANULARITIES}
    # The gain of the run: each single reuse at s perturbs the latent leaving step s; how much
    # that deviation has grown by the end (log, per reuse step) prices streaks of step reuses,
    # which pass a deviation on unchanged. Needs the pipeline's step callback.
    reuse_steps = sorted({s for v in points.values() for s in v})
    track = _takes_step_callback(pipe)
    gains: dict[int, list[float]] = {}
    last_impacts: list[float] = []
    taus: list[float] | None = None
    guidance: float | None = None
    for prompt in prompts:
        for seed in seeds:
            handle = apply_mixcache(pipe, observe)
            ctrl = handle.controllers["transformer"]
            rec = _Recorder(sketch_tokens)
            ctrl.perturb = rec
            clean_at: dict[int, torch.Tensor] | None = (
                dict.fromkeys(reuse_steps) if track else None  # type: ignore[arg-type]
            )
            try:
                clean = generate(prompt, seed, clean_at, record=True)
            finally:
                ctrl.perturb = None
                handle.remove()
            taus = run_taus(pipe) or [1.0 - i / n for i in range(n)]
            if len(taus) != n:
                raise ConfigError(
                    f"the pipeline ran {len(taus)} of the {n} steps asked (a truncated run, "
                    "e.g. video-to-video strength < 1): calibrate the whole schedule with "
                    "strength=1.0 (`--call strength=1.0`); runs at any strength then read the "
                    "tables at their own steps"
                )
            guidance = guidance_scale or _guidance_scale(pipe)
            plain, linear, fresh = _error_tables(rec, taus)
            # A granularity with no table here (cfg on a batched-CFG pipeline) forces no reuse:
            # the count of generations the progress shows is what will run.
            generate.total = (
                len(prompts)
                * len(seeds)
                * (2 + sum(len(v) for g, v in points.items() if g in plain))
                + size_runs
            )
            plains.append(plain)
            linears.append(linear)
            freshes.append(fresh)
            model_now = ErrorModel(
                taus=tuple(taus),
                gaps=ERROR_GAPS,
                prev_gaps=ERROR_PREV_GAPS,
                plain=plain,
                linear=linear,
                fresh=fresh,
                impact={g: ((0.0, 1.0),) for g in plain},
                guidance_scale=guidance if guidance is not None and guidance > 1 else None,
            )
            handle = apply_mixcache(pipe, force_cfg)
            ctrl = handle.controllers["transformer"]
            try:
                for g, steps_ in points.items():
                    if g not in plain:
                        continue
                    for s in steps_:
                        at: dict[int, Any] | None = {s: None} if clean_at is not None else None
                        out = _forced_reuse(ctrl, generate, prompt, seed, g, s, keep=at)
                        r = model_now.reuse_error(g, "plain", taus[s - 1], taus[s])
                        if out is not None and math.isfinite(r) and r > 0:
                            impacts[g].setdefault(s, []).append(rel_l1(out, clean) / r)
                        if out is not None and at is not None and clean_at is not None:
                            gain = _gain(out, clean, at[s], clean_at[s])
                            if gain is not None:
                                gains.setdefault(s, []).append(math.log(gain))
                # The last step, which ends at the clean sample: priced from its own reading
                # (ErrorModel.last_impact), not from the curve's last point.
                out = _forced_reuse(ctrl, generate, prompt, seed, "step", n - 1)
                r = model_now.reuse_error("step", "plain", taus[n - 2], taus[n - 1])
                if out is not None and math.isfinite(r) and r > 0:
                    last_impacts.append(rel_l1(out, clean) / r)
            finally:
                ctrl.force = None
                handle.remove()
    assert taus is not None
    grans = [g for g in GRANULARITIES if plains and all(g in p for p in plains)]
    curves: dict[str, tuple[tuple[float, float], ...]] = {}
    for g in grans:
        pts = [(taus[s], sum(v) / len(v)) for s, v in sorted(impacts[g].items()) if v]
        if not pts:
            # Not measurable here (e.g. no reuse possible): the step curve stands in.
            continue
        curves[g] = tuple(pts)
    if "step" not in curves:
        raise ConfigError("calibration measured no step-reuse deviation; check the call arguments")
    for g in grans:
        curves.setdefault(g, curves["step"])
    # The latent leaving step s enters step s + 1: that is the point of the run it is read at.
    gain_curve = tuple(
        (taus[s + 1], float(math.exp(sum(v) / len(v))))
        for s, v in sorted(gains.items())
        if v and s + 1 < len(taus)
    )
    if not gain_curve:
        logger.warning(
            "mixcache: calibrate_errors could not read the latents between steps (the pipeline "
            "has no callback_on_step_end with 'latents'): the error model has no gain curve, "
            "so the planner adds the errors of a streak of reuses as if each were alone"
        )
    run_points = {g: v for g, v in points.items() if g in grans}
    done_long = generate.done
    model = ErrorModel(
        taus=tuple(taus),
        gaps=ERROR_GAPS,
        prev_gaps=ERROR_PREV_GAPS,
        # Gram terms add over runs (sums over elements), so averaging them is averaging the
        # squared errors: an r of the whole calibration set.
        plain={g: np.mean(np.stack([p[g] for p in plains]), axis=0) for g in grans},
        linear={g: np.mean(np.stack([p[g] for p in linears]), axis=0) for g in grans},
        fresh={g: np.mean(np.stack([p[g] for p in freshes]), axis=0) for g in grans},
        impact=curves,
        gain=gain_curve,
        guidance_scale=guidance if guidance is not None and guidance > 1 else None,
        last_impact=sum(last_impacts) / len(last_impacts) if last_impacts else None,
    )
    size = (
        _size_exponent(model, generate, prompts, seeds, force_cfg, size_steps, size_points)
        if size_steps is not None
        else ()
    )
    short = (
        f" and {generate.done - done_long} of {size_steps} steps (single step reuses at steps "
        f"{list(size_points)}: the size exponent)"
        if size
        else ""
    )
    shared = f" ({generate.shared} runs shared the exact run's prefix)" if generate.shared else ""
    notes = (
        f"calibrate_errors: {len(prompts)} prompt(s) x {len(seeds)} seed(s) at {n} steps, "
        f"{done_long} generations{short}, {generate.worth:.1f} generations' worth of "
        f"transformer compute{shared}; tables from token sketches ({sketch_tokens} rows); "
        f"impact {'and gain ' if gain_curve else ''}from single plain reuses at steps {run_points}"
        f"{f' and at the last step ({n - 1})' if last_impacts else ''}"
    )
    return dataclasses.replace(model, size_exponent=size, notes=notes)


def _forced_reuse(
    ctrl: Any,
    generate: _Generations,
    prompt: str,
    seed: int,
    granularity: str,
    step: int,
    *,
    keep: dict[int, Any] | None = None,
    steps: int | None = None,
) -> Any:
    """One generation with ``granularity`` forced at ``step`` and every other step computed
    (nothing but the one reuse differs from the exact run); its final latent, or None when the
    reuse could not happen (no entry: the run is not what was asked)."""
    ctrl.force = lambda t: granularity if t == step else "compute"
    try:
        # Only the steps from PREFIX_LEAD before the reuse on differ from the exact run: the
        # ones before replay it where the calibration shares its prefix.
        start = max(0, step - PREFIX_LEAD)
        out = generate(prompt, seed, keep, steps=steps, start=start)
    finally:
        ctrl.force = None
    last = ctrl.last_stats
    records = last.records if last else ()
    return out if any(r.step == step and r.action == granularity for r in records) else None


def _size_exponent(
    model: ErrorModel,
    generate: _Generations,
    prompts: Sequence[str],
    seeds: Sequence[int],
    force: MixCacheConfig,
    steps: int,
    points: Sequence[int],
) -> tuple[tuple[float, float, float], ...]:
    """``(τ, α, ρ)`` per point of a ``steps``-step run (:meth:`ErrorModel.priced`): a single
    plain step reuse there makes an error ``r`` several times (``ρ = r / r_1``) the ``r_1`` the
    impact was measured at, and its measured final deviation ``m`` against the linear price
    ``impact · r · h / h_cal`` gives ``α = 1 + ln(m / price) / ln(r / r_1)`` (averaged in log
    over prompts and seeds, as ``ρ``). A point whose error is under 1.3 times ``r_1`` cannot
    tell the exponent and is left out."""
    logs: dict[int, list[float]] = {}
    sizes: dict[int, list[float]] = {}
    taus: list[float] = []
    for prompt in prompts:
        for seed in seeds:
            clean = generate(prompt, seed, steps=steps, record=True)
            taus = run_taus(generate.pipe) or [1.0 - i / steps for i in range(steps)]
            handle = apply_mixcache(generate.pipe, force)
            ctrl = handle.controllers["transformer"]
            try:
                for s in points:
                    out = _forced_reuse(ctrl, generate, prompt, seed, "step", s, steps=steps)
                    if out is None:
                        continue
                    h = taus[s] - (taus[s + 1] if s + 1 < len(taus) else 0.0)
                    r = model.reuse_error("step", "plain", taus[s - 1], taus[s])
                    h_ratio, ratio = model.size_terms("step", r, taus[s], h)
                    price = model.priced("step", r, taus[s]) * h_ratio
                    m = rel_l1(out, clean)
                    if ratio >= 1.3 and price > 0 and m > 0 and math.isfinite(price):
                        logs.setdefault(s, []).append(math.log(m / price) / math.log(ratio))
                        sizes.setdefault(s, []).append(math.log(ratio))
            finally:
                ctrl.force = None
                handle.remove()
    lo, hi = SIZE_EXPONENT_RANGE
    # (τ, α, ρ): ρ the size measured at (geometric mean), beyond which α < 1 is not trusted.
    return tuple(
        (
            taus[s],
            float(min(hi, max(lo, 1.0 + sum(v) / len(v)))),
            float(math.exp(sum(sizes[s]) / len(sizes[s]))),
        )
        for s, v in sorted(logs.items())
        if v
    )


def _gain(out: Any, clean: Any, dev_at: Any, clean_at: Any) -> float | None:
    """Final deviation over the deviation of the latent right after a reuse (absolute mean
    magnitudes: a deviation passes unchanged through a streak of step reuses, not a relative
    one); None when either is not measurable."""
    if dev_at is None or clean_at is None:
        return None
    start = float((dev_at.float() - clean_at.float()).abs().mean())
    end = float((out.float() - clean.float()).abs().mean())
    if not (math.isfinite(start) and math.isfinite(end)) or start <= 0 or end <= 0:
        return None
    return end / start


def profile_from_errors(
    pipe: Any, errors: ErrorModel, *, measured_on: str | None = None
) -> ImpactProfile:
    """The :class:`ImpactProfile` that carries ``errors`` for ``pipe``'s transformer: its
    family and fingerprint, and impacts I^ψ (each curve's mean, normalised to mean 1) for the
    step-by-step price when the planner is off."""
    transformer = pipe.transformer
    spec = find_spec(transformer)
    if spec is None:
        raise UnsupportedModelError(f"unsupported transformer {type(transformer).__name__}")
    means = {g: sum(v for _, v in c) / len(c) for g, c in errors.impact.items() if c}
    mean = sum(means.values()) / len(means) if means else 1.0
    impact = {g: (means[g] / mean if mean > 0 and means.get(g) else 1.0) for g in GRANULARITIES}
    n_blocks = len(spec.blocks(transformer))
    measured_on = measured_on or (
        f"{type(transformer).__name__} with {n_blocks} blocks "
        f"({sum(p.numel() for p in transformer.parameters()) / 1e6:.1f}M parameters)"
    )
    return ImpactProfile(
        family=spec.family,
        measured_on=measured_on,
        notes=errors.notes,
        guidance_scale=errors.guidance_scale,
        errors=errors,
        fingerprint=transformer_fingerprint(transformer),
        **impact,
    )
