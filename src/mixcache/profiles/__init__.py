"""Precision-impact profiles I^ψ (docs/method.md, "Impact I"): small JSON data, one file per family.

A profile says how much the final latent deviates per unit of relative error injected into what
each granularity reuses. The hybrid decision multiplies it with the measured redundancy D^ψ
(P^ψ = D^ψ · I^ψ), so the profile is what makes the three signals comparable.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "GRANULARITIES",
    "PROFILE_FILE",
    "ImpactProfile",
    "default_profile",
    "find_profile",
    "profile_cache_dir",
    "transformer_fingerprint",
]

#: File name of a profile written beside a model's weights by ``mixcache calibrate DIR``.
PROFILE_FILE = "mixcache_profile.json"

_NO_PROFILE = "no profile shipped: all impacts 1.0"

#: The three reuse granularities, in the order they are listed everywhere.
GRANULARITIES: tuple[str, str, str] = ("step", "cfg", "block")


@dataclass(frozen=True)
class ImpactProfile:
    """Calibrated precision impact I^ψ of each granularity.

    Attributes:
        family: model family the profile was measured on (``"wan"``, ``"hunyuan_video"``, ...).
        measured_on: what exactly was measured (model, resolution, steps, prompts): honesty matters,
            a profile measured on a tiny random model says so here.
        step, cfg, block: I^ψ, positive, normalised so that the measured ones average 1.
        time_weights: [ours] how the impact of an error depends on *when* it is made:
            ``((fraction of the run, weight), ...)``, weights averaging 1, interpolated linearly
            (an error late in the run has less denoising left to correct it). Empty: flat.
        notes: free text (method, noise sizes, steps perturbed).
        guidance_scale: the CFG scale the profile was measured at (``None``: unknown). An error
            in the uncond branch enters the guided prediction ``g·cond − (g−1)·uncond``
            multiplied by ``g − 1``, so :meth:`impacts` scales the cfg impact by
            ``(g − 1)/(guidance_scale − 1)`` for a run at another scale ``g``; step and block
            reuse err alike in both branches, which cancels there, so they are not scaled.
        errors: the measured error model the planner plans from
            (:class:`~mixcache.policy.planner.ErrorModel`, written by ``mixcache calibrate``;
            None: the profile has only impacts, and budget mode prices step by step).
        fingerprint: :func:`transformer_fingerprint` of the model it was measured on (None:
            unknown); a profile applied to another model is said so in the log.
    """

    family: str
    measured_on: str
    step: float = 1.0
    cfg: float = 1.0
    block: float = 1.0
    time_weights: tuple[tuple[float, float], ...] = ()
    notes: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    guidance_scale: float | None = None
    errors: Any = field(default=None, compare=False, hash=False)
    fingerprint: str | None = None

    def __post_init__(self) -> None:
        for name in GRANULARITIES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"impact.{name} must be a number > 0, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"impact.{name}={value!r} is out of range: must be finite and > 0"
                )
            object.__setattr__(self, name, float(value))
        if not isinstance(self.family, str) or not self.family:
            raise ConfigError("impact.family must be a non-empty string")
        weights = []
        for item in self.time_weights:
            try:
                frac, weight = float(item[0]), float(item[1])
            except (TypeError, ValueError, IndexError):
                raise ConfigError(
                    f"impact.time_weights entry {item!r} is invalid: must be (fraction, weight)"
                ) from None
            if not (0.0 <= frac <= 1.0 and math.isfinite(weight) and weight > 0):
                raise ConfigError(
                    f"impact.time_weights entry {item!r} is out of range: fraction in [0, 1], "
                    "weight finite and > 0"
                )
            weights.append((frac, weight))
        object.__setattr__(self, "time_weights", tuple(sorted(weights)))
        g = self.guidance_scale
        if g is not None:
            if isinstance(g, bool) or not isinstance(g, int | float) or not math.isfinite(g):
                raise ConfigError(f"impact.guidance_scale must be None or a number > 1, got {g!r}")
            if g <= 1.0:
                raise ConfigError(
                    f"impact.guidance_scale={g!r} is out of range: must be > 1 (a cfg impact "
                    "needs CFG to be measured)"
                )
            object.__setattr__(self, "guidance_scale", float(g))
        if self.errors is not None:
            from ..policy.planner import ErrorModel

            if isinstance(self.errors, Mapping):
                object.__setattr__(self, "errors", ErrorModel.from_dict(self.errors))
            elif not isinstance(self.errors, ErrorModel):
                raise ConfigError(
                    f"impact.errors must be None, an ErrorModel or its dict, got "
                    f"{type(self.errors).__name__}"
                )

    @property
    def measured(self) -> bool:
        """Whether it was measured (not the all-1.0 stand-in for a family without a profile)."""
        return self.measured_on != _NO_PROFILE

    def impact(self, granularity: str) -> float:
        """I^ψ of one granularity."""
        return getattr(self, granularity)

    def impacts(self, guidance_scale: float | None = None) -> dict[str, float]:
        """I^ψ of every granularity for a run at CFG scale ``guidance_scale`` (see the class
        docstring); unscaled when either scale is unknown or the run's is not above 1."""
        out = {g: self.impact(g) for g in GRANULARITIES}
        cal, g = self.guidance_scale, guidance_scale
        if cal is not None and g is not None and g > 1.0:
            out["cfg"] *= (g - 1.0) / (cal - 1.0)
        return out

    def time_weight(self, fraction: float | None) -> float:
        """Weight of an error made at ``fraction`` of the run (1.0 when flat or unknown)."""
        points = self.time_weights
        if not points or fraction is None:
            return 1.0
        if fraction <= points[0][0]:
            return points[0][1]
        for (f0, w0), (f1, w1) in itertools.pairwise(points):
            if fraction <= f1:
                return w0 + (w1 - w0) * (fraction - f0) / (f1 - f0) if f1 > f0 else w1
        return points[-1][1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: ``{family, measured_on, impact: {step, cfg, block}, notes}``."""
        out: dict[str, Any] = {
            "family": self.family,
            "measured_on": self.measured_on,
            "impact": {g: getattr(self, g) for g in GRANULARITIES},
            "time_weights": {f"{f:.3f}": w for f, w in self.time_weights},
            "notes": self.notes,
        }
        if self.guidance_scale is not None:
            out["guidance_scale"] = self.guidance_scale
        if self.extra:
            out["extra"] = dict(self.extra)
        if self.fingerprint is not None:
            out["fingerprint"] = self.fingerprint
        if self.errors is not None:
            out["errors"] = self.errors.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImpactProfile:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on a malformed profile."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"an impact profile must be a mapping, got {type(data).__name__}")
        impact = data.get("impact")
        if not isinstance(impact, Mapping):
            raise ConfigError("an impact profile needs an 'impact' mapping with step, cfg, block")
        unknown = set(impact) - set(GRANULARITIES)
        if unknown:
            raise ConfigError(
                f"impact has unknown keys {sorted(unknown)}; allowed: {GRANULARITIES}"
            )
        return cls(
            family=data.get("family", ""),
            measured_on=str(data.get("measured_on", "")),
            notes=str(data.get("notes", "")),
            extra=dict(data.get("extra", {})),
            time_weights=_time_weights(data.get("time_weights", {})),
            guidance_scale=data.get("guidance_scale"),
            errors=data.get("errors"),
            fingerprint=data.get("fingerprint"),
            **{g: impact.get(g, 1.0) for g in GRANULARITIES},
        )

    @classmethod
    def load(cls, path: str | Path) -> ImpactProfile:
        """Read a profile written by :meth:`save` or the ``calibrate`` command."""
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"cannot read impact profile {path}: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the profile as indented JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")


def _time_weights(raw: Any) -> tuple[tuple[float, float], ...]:
    if isinstance(raw, Mapping):
        try:
            return tuple((float(f), w) for f, w in raw.items())
        except ValueError:
            raise ConfigError(f"time_weights keys must be fractions, got {list(raw)}") from None
    if isinstance(raw, list | tuple):
        return tuple(tuple(x) for x in raw)  # type: ignore[misc]
    raise ConfigError(f"time_weights must be a mapping fraction -> weight, got {raw!r}")


@functools.cache
def default_profile(family: str) -> ImpactProfile:
    """The profile shipped for ``family`` (``src/mixcache/profiles/<family>.json``).

    Read once per process (profiles are immutable; the error model's tables take a few tens of
    milliseconds to decode, which every apply would otherwise pay)."""
    try:
        text = resources.files(__package__).joinpath(f"{family}.json").read_text()
    except FileNotFoundError:
        return ImpactProfile(family=family, measured_on=_NO_PROFILE)
    return ImpactProfile.from_dict(json.loads(text))


def transformer_fingerprint(module: Any) -> str:
    """A short stable id of a transformer's architecture and weights' identity: its class and
    config (the path it was loaded from excluded), and its parameter count.

    Two checkpoints of one architecture (a fine-tune) share it: their errors are alike enough
    to share a profile, and a user re-calibrates when they are not."""
    import hashlib

    config = dict(getattr(module, "config", {}) or {})
    for key in list(config):
        if key.startswith("_"):
            config.pop(key)
    n_params = sum(p.numel() for p in module.parameters()) if hasattr(module, "parameters") else 0
    text = json.dumps(
        {"class": type(module).__name__, "config": config, "params": n_params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def profile_cache_dir() -> Path:
    """Where ``mixcache calibrate`` also keeps profiles by fingerprint: ``$MIXCACHE_CACHE_DIR``,
    else ``$XDG_CACHE_HOME/mixcache/profiles`` (``~/.cache/mixcache/profiles``)."""
    import os

    root = os.environ.get("MIXCACHE_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mixcache" / "profiles"


def _model_dirs(module: Any, pipeline: Any) -> list[Path]:
    """Directories the model was loaded from: the transformer's, and the pipeline's."""
    out: list[Path] = []
    for obj in (module, pipeline):
        if obj is None:
            continue
        name = getattr(getattr(obj, "config", None), "_name_or_path", None) or getattr(
            obj, "name_or_path", None
        )
        if isinstance(name, str) and name:
            path = Path(name)
            if path.is_dir():
                out.extend([path, path.parent])
    return list(dict.fromkeys(out))


@functools.cache
def _shipped() -> tuple[ImpactProfile, ...]:
    out = []
    for item in resources.files(__package__).iterdir():
        if item.name.endswith(".json"):
            try:
                out.append(ImpactProfile.from_dict(json.loads(item.read_text())))
            except (ConfigError, json.JSONDecodeError):
                continue
    return tuple(out)


def find_profile(module: Any, family: str, pipeline: Any = None) -> tuple[ImpactProfile, str, bool]:
    """The profile for ``module`` (a transformer of ``family``), where it came from, and
    whether it was measured on this model.

    Looked up in order: ``mixcache_profile.json`` in the directory the model (or its pipeline)
    was loaded from or its parent — what ``mixcache calibrate DIR`` writes; the user's profile
    cache by :func:`transformer_fingerprint`; a shipped profile with the same fingerprint; the
    family's shipped profile (measured on another model: the third value is False).
    """
    fp = transformer_fingerprint(module)
    for folder in _model_dirs(module, pipeline):
        path = folder / PROFILE_FILE
        if path.is_file():
            prof = ImpactProfile.load(path)
            if prof.family == family and prof.fingerprint in (None, fp):
                return prof, str(path), True
    cached = profile_cache_dir() / f"{fp}.json"
    if cached.is_file():
        prof = ImpactProfile.load(cached)
        if prof.family == family:
            return prof, str(cached), True
    for prof in _shipped():
        if prof.fingerprint == fp and prof.family == family:
            return prof, f"shipped profile {family} ({prof.measured_on})", True
    prof = default_profile(family)
    return prof, f"shipped profile {family} ({prof.measured_on})", False
