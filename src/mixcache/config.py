"""MixCacheConfig: one frozen, validated dataclass holding every knob of the method.

Every [ours] choice of docs/method.md is a field here with a documented, tested default. The
defaults are the ``"balanced"`` preset (a block-compute budget of x2.25), so ``MixCacheConfig()``
is what most users want; the presets ("quality" < "balanced" < "fast", and ``"paper"``, the
paper's threshold mode kept for comparison) differ only in field values. Invalid values raise
:class:`~mixcache.errors.ConfigError` when the config is built, naming the field and its range.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import ConfigError
from .profiles import GRANULARITIES, ImpactProfile

__all__ = ["CACHE_DTYPES", "PRESETS", "GranularityName", "MixCacheConfig", "StepProbeName"]

# Names (Literal types) of the choices; the classes of the same idea are
# granularity.Granularity and controller.probe.StepProbe.
GranularityName = Literal["step", "cfg", "block"]
StepProbeName = Literal["first_block", "none"]
CfgMode = Literal["residual_diff", "output"]
BlockSpan = Literal["middle", "lowest_change"]
ScoreMode = Literal["paper", "per_saving"]
Pace = Literal["cadence", "signal"]
Planner = Literal["measured", "priced"]
PlanObjective = Literal["sum", "max"]

#: Names accepted by ``cache_dtype`` (stored residuals are cast to this dtype).
CACHE_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")

_CHOICES: dict[str, tuple[str, ...]] = {
    "step_probe": ("first_block", "none"),
    "cfg_mode": ("residual_diff", "output"),
    "block_span": ("middle", "lowest_change"),
    "score": ("paper", "per_saving"),
    "pace": ("cadence", "signal"),
    "planner": ("measured", "priced"),
    "plan_objective": ("sum", "max"),
}

# field -> (low, high, low_inclusive, high_inclusive, integer?)  The one range table; the error
# messages are generated from it so they always match what is checked.
_RANGES: dict[str, tuple[float, float, bool, bool, bool]] = {
    "head_blocks": (1, math.inf, True, False, True),
    "tail_blocks": (0, math.inf, True, False, True),
    "span_fraction": (0.0, 1.0, False, True, False),
    "span_switch_margin": (0.0, 1.0, True, False, False),
    "warmup_fraction": (0.0, 1.0, True, False, False),
    "min_warmup_steps": (1, math.inf, True, False, True),
    "final_steps": (0, math.inf, True, False, True),
    "trigger_threshold": (0.0, math.inf, True, False, False),
    "refresh_threshold": (0.0, math.inf, True, False, False),
    "repeat_penalty": (1.0, math.inf, True, False, False),
    "interval_min": (1, math.inf, True, False, True),
    "interval_max": (1, math.inf, True, False, True),
    "interval_init": (1, math.inf, True, False, True),
    "delta1": (0.0, math.inf, True, False, False),
    "delta2": (0.0, math.inf, True, False, False),
    "max_age": (1, math.inf, True, False, True),
    "sketch_tokens": (1, math.inf, True, False, True),
    "residual_order": (0, 1, True, True, True),
    "block_speedup": (1.0, math.inf, True, False, False),
    "trigger_ratio": (0.0, math.inf, False, False, False),
    "plan_correction": (1.0, math.inf, False, False, False),
    "max_cache_bytes": (0, math.inf, True, False, True),
}


def _range_text(name: str) -> str:
    low, high, low_inc, high_inc, integer = _RANGES[name]
    kind = "an integer" if integer else "a number"
    left = f">= {low}" if low_inc else f"> {low}"
    if math.isinf(high):
        return f"{kind} {left}"
    right = f"<= {high}" if high_inc else f"< {high}"
    return f"{kind} {left} and {right}"


def _check_number(name: str, value: Any) -> None:
    low, high, low_inc, high_inc, integer = _RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name}={value!r} is invalid: must be {_range_text(name)}")
    if integer and not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} is invalid: must be {_range_text(name)}")
    ok = math.isfinite(value) or (math.isinf(high) and value == math.inf and not integer)
    ok = ok and (value >= low if low_inc else value > low)
    ok = ok and (value <= high if high_inc or math.isinf(high) else value < high)
    if not ok:
        raise ConfigError(f"{name}={value!r} is out of range: must be {_range_text(name)}")


@dataclass(frozen=True)
class MixCacheConfig:
    """Configuration of MixCache. Build it directly, or with :meth:`preset`.

    ``MixCacheConfig()`` is the ``"balanced"`` preset: a speed budget of x2.25 of block compute,
    reusing at step, cfg and block granularity with the settings measured best on the bundled
    models. ``MixCacheConfig.preset("paper")`` is the paper's threshold mode (first-block probe,
    P = D·I, x5 repeat penalty, no budget), kept for comparison. A config that cannot act on the
    pipeline it is applied to is refused (or, for one of several granularities, logged) by
    :func:`~mixcache.apply_mixcache`.

    Granularities and modes (docs/method.md, "The three granularities"):
        granularities: non-empty subset of ``("step", "cfg", "block")``; the others are never used
            (so "step only", "cfg only", "block only" are configs of the same code).
        step_probe: ``"first_block"`` — block 0 is always computed and the accumulated relative L1
            change of its residual is D_step (First-Block-Cache style); ``"none"`` — nothing is
            computed on a step reuse and D_step is predicted from the transformer's input change
            times the output/input change ratio of the last computed steps (EasyCache style).
        cfg_mode: ``"residual_diff"`` — the uncond branch runs no blocks and uses
            R_uncond(t) = R_cond(t) − ΔR; ``"output"`` — the uncond forward is skipped entirely
            and its output is out_cond(t) − Δout (Δ measured at the last step both branches ran).
        block_span: ``"middle"`` — the reused span is centred between the head and tail blocks;
            ``"lowest_change"`` — the contiguous window whose blocks' residuals changed least at the
            last full compute.
        head_blocks, tail_blocks: blocks always computed before / after the reused span (probe and
            corrector, as in DBCache).
        span_fraction: length of the reused span as a fraction of all blocks (clipped to what lies
            between head and tail).
        span_switch_margin: ``lowest_change`` only moves the span when the best window changed
            less than ``(1 - margin)`` times the current one (hysteresis); moves happen at full
            computes.
        residual_order: what a step reuse adds. ``0`` (docs/method.md): the residual of the last
            full compute. ``1`` [ours]: the residual linearly extrapolated from the last two
            full computes, ``R1 + (R1 - R0)·(t - s1)/(s1 - s0)`` in step indices (as SeaCache's
            ``residual_order=1``); one more hidden-state tensor per branch.

    Trigger (when caching may start):
        warmup_fraction, min_warmup_steps: steps ``< max(min_warmup_steps,
            ceil(warmup_fraction * num_steps))`` always compute.
        trigger_threshold: after warm-up, caching starts at the first step whose probe change
            (relative L1 of block 0's residual, or of the output with ``step_probe="none"``)
            is below this; once started it stays enabled.
        final_steps: the last ``final_steps`` steps always compute (boundary). In a planned
            run whose error model measured a reuse at the last step (``last_impact``), the
            last step is planned from that measurement and the ones before it compute.

    Hybrid decision and interval:
        score: ``"paper"`` — P^ψ = D^ψ·I^ψ (× penalty); ``"per_saving"`` — P^ψ divided by the
            fraction of the step's block compute that ψ saves (error per unit of saving).
        refresh_threshold: compute fully when even the best score P^ψ = D^ψ·I^ψ exceeds this.
        repeat_penalty: factor on P^ψ when ψ was the previous cached step's granularity (×5 in
            the paper).
        time_weighting: multiply P^ψ by the profile's calibrated weight for this point of the
            run (errors late in the run cost more; flat when the profile has no time weights or
            the number of steps is unknown).
        interval_init, interval_min, interval_max: the adaptive cache interval N (most reused steps
            in a row); at each full compute the deviation between the fresh result and what the
            last used cache would have given shrinks N if > ``delta2``, grows it if < ``delta1``.
        delta1, delta2: the interval's deviation thresholds (``delta1 <= delta2``).
        max_age: a cache entry computed more than this many steps ago is never reused
            (``None``: no limit beyond the interval).

    Speed budget [ours] (docs/method.md, "Speed budget and scale-free decisions"):
        block_speedup: the block-compute speedup to plan for (default ``2.25``, "balanced"):
            a number ``s >= 1`` — budget mode: the run spends ``1/s`` of the uncached
            transformer-block compute (within a few percent; the number of steps is known before
            the first step). This is not wall clock: text encoding, VAE decode, the blocks that
            always run and MixCache's own work are outside it (on the bundled model x2.25 of
            block compute measured x2.00 of wall clock, docs/benchmarks.md). ``None`` — the
            paper's threshold mode (trigger, refresh threshold and interval decide; preset
            ``"paper"``). ``target_speedup`` is the old name (accepted with a
            DeprecationWarning; the read-only property of that name returns this field).
            Every step after the warm-up is priced: each action costs its share of the step's
            block compute, each reuse its predicted error ``D^ψ·I^ψ·w(t)``; the action with the
            lowest ``error + λ·cost`` wins, and the price
            ``λ`` is set at every step from the budget left and the run's own recent error per
            step, so no threshold is in units of any model's change. The trigger still decides
            when caching may start (its wait ends early when the budget would otherwise become
            unreachable); ``refresh_threshold``, ``delta1`` and ``delta2`` are not used;
            ``interval_max`` caps the reuse streak.
        pace: budget mode's unit of error, the ``ε`` the price of a compute is set from
            (docs/method.md, "Speed budget and scale-free decisions"). ``"cadence"``: the
            error per step of the entry being reused now; streak lengths then depend only on
            the budget left (an even cadence that the budget corrects), whatever the signals
            say. ``"signal"``: the mean error per step over the run so far (since the
            warm-up); a step whose predicted error grows faster than the run's average ends
            its streak sooner and a quiet stretch reuses longer, so the signals decide where
            the computes fall (measured worse on both bundled models; the presets use
            ``"cadence"``).
        planner: budget mode's planner (docs/method.md, "Planning from measured errors").
            ``"measured"``: when the impact profile carries an error model (``mixcache
            calibrate`` writes one), the whole schedule — which steps compute, which
            granularity and form reuses at every other step — is planned before the run to
            minimise the predicted final error within the budget, and re-planned if a step
            cannot follow it; without an error model it falls back to ``"priced"`` and warns.
            ``"priced"``: v0.2's step-by-step price (``pace`` and ``trigger_ratio`` apply).
        plan_objective: ``"sum"`` (total predicted error) or ``"max"`` (LeMiCa's minimax:
            the worst single reuse).
        plan_forms: the reuse forms the planner may use: ``"plain"`` (the entry as stored)
            and/or ``"linear"`` (extrapolated through the last two entries in normalised
            time; used only with ``residual_order=1``, which keeps the entry before).
        plan_correction: the measured plan follows the prompt (docs/method.md, "Correcting
            it"): at every full compute after a reuse streak the run compares how far its own
            stack residual moved with what the calibration measured over the same span, as a
            ratio to the first such comparison of the run; when that ratio exceeds what the
            plan assumed there by more than this factor (the prompt moves faster than
            calibrated), the rest of the run is re-planned with the errors of the next steps
            scaled by it. A slower prompt is not discounted. ``None``: the plan is never
            corrected.
        trigger_ratio: budget mode's trigger, in the run's own units: after the warm-up,
            caching may start once the probe's per-step change is at most this times the
            largest change seen so far in the run (``None``: right after the warm-up). The
            wait ends anyway when the budget would otherwise become unreachable.

    Memory, data and execution:
        max_cache_bytes: ``None`` (no limit) or the most bytes the reusable cache entries
            (residuals, differences) may hold per transformer (per rank under sequence
            parallel); an entry that would go over it is not kept, and the forwards that would
            have reused it compute. The stats count them. The signal state (a copy of the last
            input/output latent, at most two latent-sized tensors) is not included.
        cache_dtype: ``None`` (keep the hidden-state dtype) or one of ``CACHE_DTYPES``; stored
            residuals are kept in this precision.
        sketch_tokens: tokens per block kept to measure per-block change
            (``block_span="lowest_change"`` only).
        impact: an :class:`~mixcache.profiles.ImpactProfile` (or its dict); ``None`` uses the
            profile shipped for the model family.
        dry_run: install every hook and measure every signal, but always compute fully (outputs
            are bit-identical to uncached; stats show what would have been reused).
        process_group: a ``torch.distributed`` group; when set, the per-forward signal sums are
            all-reduced in one call so every rank takes the same decision (sequence parallel).
        preset_name: name of the preset this config came from (informational).
    """

    granularities: tuple[str, ...] = GRANULARITIES
    step_probe: StepProbeName = "none"
    cfg_mode: CfgMode = "residual_diff"
    block_span: BlockSpan = "middle"
    score: ScoreMode = "per_saving"
    head_blocks: int = 1
    tail_blocks: int = 1
    span_fraction: float = 0.5
    span_switch_margin: float = 0.2
    residual_order: int = 1
    warmup_fraction: float = 0.04
    min_warmup_steps: int = 2
    final_steps: int = 2
    trigger_threshold: float = 0.15
    refresh_threshold: float = 0.3
    repeat_penalty: float = 1.0
    time_weighting: bool = True
    interval_init: int = 2
    interval_min: int = 1
    interval_max: int = 6
    delta1: float = 0.05
    delta2: float = 0.25
    max_age: int | None = None
    block_speedup: float | None = 2.25
    pace: Pace = "cadence"
    planner: Planner = "measured"
    plan_objective: PlanObjective = "sum"
    plan_forms: tuple[str, ...] = ("plain", "linear")
    plan_correction: float | None = 2.0
    trigger_ratio: float | None = None
    max_cache_bytes: int | None = None
    cache_dtype: str | None = None
    sketch_tokens: int = 64
    impact: ImpactProfile | None = None
    dry_run: bool = False
    process_group: Any = field(default=None, compare=False, repr=False)
    preset_name: str | None = None

    def __post_init__(self) -> None:
        self._normalise_and_check()
        if self.preset_name is None:
            # A config equal to a preset is named after it: MixCacheConfig() is "balanced".
            object.__setattr__(self, "preset_name", _matching_preset(self))

    @property
    def target_speedup(self) -> float | None:
        """Read-only alias of :attr:`block_speedup` (the field's name before 0.2)."""
        return self.block_speedup

    # -- validation ------------------------------------------------------------------------
    def _normalise_and_check(self) -> None:
        grans = self.granularities
        if isinstance(grans, str):
            grans = (grans,)
        try:
            grans = tuple(grans)
        except TypeError:
            raise ConfigError(
                f"granularities={self.granularities!r} is invalid: must be a non-empty subset of "
                f"{GRANULARITIES}"
            ) from None
        if not grans or any(g not in GRANULARITIES for g in grans) or len(set(grans)) != len(grans):
            raise ConfigError(
                f"granularities={self.granularities!r} is invalid: must be a non-empty subset of "
                f"{GRANULARITIES} without repeats"
            )
        # Canonical order, so equal sets give equal configs and tags.
        object.__setattr__(self, "granularities", tuple(g for g in GRANULARITIES if g in grans))
        for name, choices in _CHOICES.items():
            if getattr(self, name) not in choices:
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is invalid: must be one of {choices}"
                )
        for name in _RANGES:
            value = getattr(self, name)
            optional = (
                "max_age",
                "block_speedup",
                "trigger_ratio",
                "plan_correction",
                "max_cache_bytes",
            )
            if value is None and name in optional:
                continue
            _check_number(name, value)
        if self.block_speedup is not None and not math.isfinite(self.block_speedup):
            raise ConfigError(
                f"block_speedup={self.block_speedup!r} is out of range: must be None or a "
                "finite number >= 1.0"
            )
        if not self.interval_min <= self.interval_init <= self.interval_max:
            raise ConfigError(
                f"interval_init={self.interval_init} is out of range: must be an integer with "
                f"interval_min ({self.interval_min}) <= interval_init <= interval_max "
                f"({self.interval_max})"
            )
        if self.delta1 > self.delta2:
            raise ConfigError(
                f"delta1={self.delta1} is out of range: must be <= delta2 ({self.delta2})"
            )
        forms = self.plan_forms
        forms = (forms,) if isinstance(forms, str) else tuple(forms)
        if (
            not forms
            or any(f not in ("plain", "linear") for f in forms)
            or len(set(forms)) != len(forms)
        ):
            raise ConfigError(
                f"plan_forms={self.plan_forms!r} is invalid: must be a non-empty subset of "
                "('plain', 'linear') without repeats"
            )
        object.__setattr__(self, "plan_forms", tuple(f for f in ("plain", "linear") if f in forms))
        self._normalise_dtype()
        if isinstance(self.impact, Mapping):
            object.__setattr__(self, "impact", ImpactProfile.from_dict(self.impact))
        elif self.impact is not None and not isinstance(self.impact, ImpactProfile):
            raise ConfigError(
                f"impact={self.impact!r} is invalid: must be None, an ImpactProfile or its dict"
            )
        for name in ("dry_run", "time_weighting"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(
                    f"{name}={getattr(self, name)!r} is invalid: must be True or False"
                )

    def _normalise_dtype(self) -> None:
        value = self.cache_dtype
        if value is None:
            return
        name = str(value).removeprefix("torch.")
        if name not in CACHE_DTYPES:
            raise ConfigError(
                f"cache_dtype={value!r} is invalid: must be None or one of {CACHE_DTYPES}"
            )
        object.__setattr__(self, "cache_dtype", name)

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str = "balanced", **overrides: Any) -> MixCacheConfig:
        """A preset (``"quality"``, ``"balanced"``, ``"fast"``, ``"paper"``) with some fields
        replaced.

        ``MixCacheConfig.preset("balanced", granularities=("cfg",), block_speedup=1.5)`` is
        the cfg-only ablation the bench runs (a cfg reuse saves at most half a step, so x1.5 is
        a budget it can reach).
        """
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: must be one of {tuple(PRESETS)}")
        overrides = _renamed(overrides)
        _check_field_names(overrides)
        values = {**PRESETS[name], "preset_name": name, **overrides}
        return cls(**values)

    @classmethod
    def resolve(cls, config: MixCacheConfig | str | None) -> MixCacheConfig:
        """Accept a config, its dict (:meth:`to_dict`), a preset name or ``None`` (balanced)."""
        if config is None:
            return cls.preset("balanced")
        if isinstance(config, str):
            return cls.preset(config)
        if isinstance(config, cls):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        raise ConfigError(
            f"config must be a MixCacheConfig, its dict, a preset name {tuple(PRESETS)} or None, "
            f"got {type(config).__name__}"
        )

    def replace(self, **changes: Any) -> MixCacheConfig:
        """A copy with some fields replaced (validated again); the original is untouched."""
        changes = _renamed(changes)
        _check_field_names(changes)
        return dataclasses.replace(self, **changes)

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (``process_group`` is not serialised)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "process_group":
                continue
            value = getattr(self, f.name)
            if f.name in ("granularities", "plan_forms"):
                value = list(value)
            elif f.name == "impact" and value is not None:
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixCacheConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a config must be a mapping, got {type(data).__name__}")
        values = _renamed(data)
        _check_field_names(values)
        for name in ("granularities", "plan_forms"):
            if name in values and isinstance(values[name], list):
                values[name] = tuple(values[name])
        return cls(**values)

    def tag(self) -> str:
        """A short, file-name-safe description, e.g. ``mix-balanced-scb-fb``."""
        letters = "".join(g[0] for g in self.granularities)
        parts = ["mix", self.preset_name or "custom", letters]
        parts.append("fb" if self.step_probe == "first_block" else "np")
        if self.block_speedup is not None:
            parts.append(f"x{self.block_speedup:g}")
        if self.cfg_mode == "output":
            parts.append("cfgout")
        if self.block_span == "lowest_change":
            parts.append("lc")
        if self.cache_dtype:
            parts.append(self.cache_dtype.replace("float", "f").replace("bf", "bf"))
        if self.dry_run:
            parts.append("dry")
        return "-".join(parts)


def _check_field_names(values: Mapping[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(MixCacheConfig)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(names)}")


#: Old field names still accepted (with a DeprecationWarning) for one release: old -> new.
RENAMED_FIELDS: dict[str, str] = {"target_speedup": "block_speedup"}


def _renamed(values: Mapping[str, Any], stacklevel: int = 3) -> dict[str, Any]:
    """``values`` with deprecated field names replaced by their new names (warns once each)."""
    out = dict(values)
    for old, new in RENAMED_FIELDS.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{old}= and {new}= both given: {old} is the old name of {new}")
        warnings.warn(
            f"MixCacheConfig field {old!r} is deprecated: use {new!r} (same meaning: the "
            f"block-compute speedup to plan for); {old!r} will be removed in the next release",
            DeprecationWarning,
            stacklevel=stacklevel,
        )
        out[new] = out.pop(old)
    return out


_dataclass_init = MixCacheConfig.__init__


def _init(self: MixCacheConfig, *args: Any, **kwargs: Any) -> None:
    # The generated __init__ with the deprecated keyword names mapped first.
    _dataclass_init(self, *args, **_renamed(kwargs, stacklevel=3))


_init.__doc__ = _dataclass_init.__doc__
_init.__wrapped__ = _dataclass_init  # type: ignore[attr-defined]  # inspect.signature shows fields
MixCacheConfig.__init__ = _init  # type: ignore[method-assign]


#: Preset field values (the dataclass defaults are "balanced"). The three budget
#: presets are speed budgets (``block_speedup``: the block-compute speedup planned before the
#: first step), so they mean the same on every model, step count and guidance scale: the share
#: of block compute they spend is fixed, and the signals decide where and how they reuse.
#: Aggressiveness grows quality < balanced < fast. What they share [ours]: a step reuse that
#: runs no block (``step_probe="none"``, D_step predicted from the input change times EasyCache's
#: output/input ratio k) and extrapolates the residual from the last two computes
#: (``residual_order=1``), no x5 repeat penalty, a 2-step warm-up (two computes give k and the
#: extrapolation) and the last 2 steps computed (a plan whose error model measured the last
#: step plans that one; docs/method.md); docs/how-it-works.md ("Presets") gives the
#: measurements behind these choices. ``"paper"`` is the paper's threshold mode (first-block
#: probe, P = D*I, x5 repeat penalty, trigger / refresh / interval thresholds, no budget), kept
#: for comparison: its thresholds are in units of one model's change, so what it saves varies
#: from model to model.
_SHARED: dict[str, Any] = {
    "step_probe": "none",
    "residual_order": 1,
    "score": "per_saving",
    "repeat_penalty": 1.0,
    "warmup_fraction": 0.04,
    "min_warmup_steps": 2,
    "final_steps": 2,
    "interval_min": 1,
    "interval_init": 2,
    "interval_max": 6,
}

PRESETS: dict[str, dict[str, Any]] = {
    "quality": {**_SHARED, "block_speedup": 1.8},
    "balanced": {**_SHARED, "block_speedup": 2.25},  # = the dataclass defaults
    # fast's plans are the only ones long enough to reach the shared cap of 6: on the tuning
    # cells a cap of 3 measured +1.1 dB (Wan) and +5.3 dB (HunyuanVideo) summed over six cells
    # each, a cap of 4 -0.5 / +1.9; balanced's plans do not change with 4
    # (docs/bench/tuning/r24-fast-streaks.md). The additive error model prices long streaks
    # as measured at 10 steps, not the longer spans fast reaches; on the held-out matrix the cap
    # ended fast's two dominated cells (docs/bench/tuning/r25-streak-factor.md).
    "fast": {**_SHARED, "block_speedup": 2.8, "interval_max": 3},
    "paper": {
        "step_probe": "first_block",
        "score": "paper",
        "residual_order": 0,
        "warmup_fraction": 0.1,
        "final_steps": 1,
        "repeat_penalty": 5.0,
        "interval_max": 5,
        "block_speedup": None,
    },
}


def _matching_preset(config: MixCacheConfig) -> str | None:
    """The name of the preset whose values ``config`` has in every field, or None."""
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(MixCacheConfig)
        if f.name not in ("process_group", "preset_name")
    }
    for name, values in PRESETS.items():
        want = {**defaults, **values}
        if all(getattr(config, k) == v for k, v in want.items()):
            return name
    return None
