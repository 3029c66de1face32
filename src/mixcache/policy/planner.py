"""Plan a run from measured errors (docs/method.md, "Planning from measured errors").

Pure code: numbers in, a schedule out; no tensors, no model.

**The error model.** :class:`ErrorModel` holds what a calibration measured on the exact (uncached)
trajectory of a model, in *normalised time* ``τ`` (the scheduler's timestep divided by its number
of training timesteps: 1 is pure noise, 0 the clean sample), so one calibration serves every step
count:

- ``r``: the relative error of what a reuse puts in place of the fresh quantity — the stack
  residual for ``step``, the uncond residual rebuilt from the guidance difference for ``cfg``,
  the span residual for ``block`` — *as it enters the guided prediction*
  ``g·cond − (g−1)·uncond``, when the entry was made at calibration step ``a`` and is used at
  ``a + d``, in two *forms*: ``plain`` (the entry as it is) and ``linear`` (the line through
  the entry and the one made ``p`` steps earlier, extrapolated in ``τ``). The tables keep the
  Gram terms ``(|e_c|², |e_u|², e_c·e_u)`` of the two branches' errors (and those of the fresh
  quantity), so ``r`` is exact in L2 at *any* guidance scale ``g``: step and block reuse err
  alike in both branches and largely cancel in the guided prediction, a cfg reuse's error is
  amplified by ``g − 1``;
- ``impact``: how much final-output deviation one unit of that error causes when it is made at
  ``τ`` (measured by real single reuses, so structured errors are what is measured).

- ``gain``: how much a deviation of the latent entering a step at ``τ`` grows (or shrinks) by the
  end of the exact run (measured in the same single reuses: final deviation over the deviation
  of the latent right after the reuse).

A reuse at step ``t`` of an entry made at step ``a`` (the one before at ``p``) is predicted to add
``impact_g(τ_t) · r_g(τ_p, τ_a, τ_t)`` to the final error; the tables are interpolated in grid
index, so a run with another number of steps reads them between the calibration's points.
With a measured size exponent (calibrated by default) that price is multiplied by
``(h / h_cal) · (r / r_1)^(α(τ) − 1)``: a step of a short run, or an entry reused far from where
it was made, errs more than the reuses the impact was measured by (:meth:`ErrorModel.priced`);
a reuse of the run's last step is priced from its own measurement (:meth:`ErrorModel.priced_last`).
Errors of a schedule are summed over its reuses (or their maximum is taken, LeMiCa's minimax).
*Path-aware* (``path_aware=True``, off by default): a step reuse runs no block on the latent, so
the deviation it makes passes a streak of step reuses unchanged; its error is then multiplied by
``gain(τ_c) / gain(τ_{t+1})``, ``c`` the first step after ``t`` that is not a step reuse. It
ranks forced schedules better but plans worse on tuning cells (docs/bench/tuning/r14-gain.md).

**The plan.** :func:`plan_schedule` chooses, before the run, which steps compute and which
granularity and form reuses at every other step, minimising the predicted final error under the
compute budget. Dynamic programming over (last compute, the compute before it, compute spent;
path-aware, also the first step of the open streak of step reuses, priced when it ends):
exact for the model, in ``1/QUANTUM`` of a step of compute (a cfg reuse with two branches costs
half a step, a block reuse the share of blocks it runs).
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = [
    "FORMS",
    "QUANTUM",
    "ErrorModel",
    "Plan",
    "PlanOption",
    "plan_options",
    "plan_run",
    "plan_schedule",
    "planned",
    "predicted_error",
]

#: Reuse forms: the entry as stored, or the line through the last two entries (in τ).
FORMS: tuple[str, str] = ("plain", "linear")
#: Compute is planned in quarters of one step's full block compute.
QUANTUM = 4
_GRANS = ("step", "cfg", "block")


def _step_ratio(step: float | None, calibration_step: float) -> float:
    """A run's step over the calibration's at the same point (1 where either is unknown)."""
    if step is None or step <= 0 or calibration_step <= 0:
        return 1.0
    return step / calibration_step


def _grid_index(taus: np.ndarray, tau: float) -> float:
    """Fractional index of ``tau`` on the calibration grid (``taus`` decreasing)."""
    # np.interp needs increasing x: reverse both.
    n = len(taus)
    return float(np.interp(tau, taus[::-1], np.arange(n - 1, -1, -1, dtype=float)))


def pack_table(table: Any) -> dict[str, Any]:
    """A table as JSON: float16 values of ``table / scale`` (``scale`` its largest finite
    magnitude, so the relative precision is ~1e-3 of the largest entry), base64, with its
    shape. ``nan`` (not measured) is kept."""
    import base64

    a = np.asarray(table, dtype=np.float64)
    finite = np.abs(a[np.isfinite(a)])
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    data = (a / scale).astype("<f2").tobytes()
    return {"shape": list(a.shape), "scale": scale, "f16": base64.b64encode(data).decode()}


def unpack_table(packed: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`pack_table`."""
    import base64

    raw = base64.b64decode(packed["f16"])
    a = np.frombuffer(raw, dtype="<f2").astype(np.float64) * float(packed["scale"])
    return a.reshape(tuple(int(n) for n in packed["shape"]))


def _guided(terms: np.ndarray, g: float) -> float:
    """``|g·x_c − (g−1)·x_u|²`` from the Gram terms ``(|x_c|², |x_u|², x_c·x_u)``."""
    a, b, c = float(terms[0]), float(terms[1]), float(terms[2])
    return max(0.0, g * g * a + (g - 1.0) ** 2 * b - 2.0 * g * (g - 1.0) * c)


@dataclass(frozen=True)
class ErrorModel:
    """Measured reuse errors of one model (see the module docstring).

    Attributes:
        taus: normalised time of each calibration step, decreasing.
        gaps: the ``d`` (steps from the entry to its use) tabulated, increasing, ``gaps[0] >= 1``.
        prev_gaps: the ``p`` (steps between the two entries of a line) tabulated.
        plain: per granularity, ``plain[g][a][i]`` = the Gram terms ``(|e_c|², |e_u|²,
            e_c·e_u)`` of the error of the entry made at calibration step ``a`` used
            ``gaps[i]`` steps later (``nan``: not measured; a single-branch run has
            ``e_u = 0``).
        linear: per granularity, ``linear[g][a][j][i]``: the same for the line through the
            entries made at ``a - prev_gaps[j]`` and ``a``, used ``gaps[i]`` steps after ``a``.
        fresh: per granularity, ``fresh[g][t]``: the Gram terms of the fresh quantity at step
            ``t`` (what ``r`` is relative to).
        impact: per granularity, ``((τ, I), ...)``: final relative deviation per unit of r.
        gain: ``((τ, G), ...)``: final deviation per unit of deviation of the latent entering
            a step at ``τ`` (empty: not measured, every step transmits alike and errors add).
        guidance_scale: the CFG scale the calibration ran (the scale ``r`` is read at when the
            run's is unknown); None: no CFG.
        notes: how it was measured.
        size_exponent: ``((τ, α), ...)`` or ``((τ, α, ρ), ...)``: how the final error of a
            reuse grows with its size (:meth:`priced`); measured by single reuses of a short
            run, whose errors are ``ρ`` times those the impact was measured at (``r / r_1``,
            geometric mean over the calibration's prompts). Empty: linear (α = 1, no step-size
            term).
        last_impact: the impact of a plain step reuse at the *last* step, the one that ends at
            the clean sample: measured there (:meth:`priced_last`), because that step is unlike
            its neighbours — on flow-matching schedules it spans the smallest σ to 0 (0.009 of
            the trajectory at 10 steps as at 50), so reusing it is nearly free where the curve
            read from τ 0.34 would price it like a mid-run step. None: not measured; the last
            step always computes.
    """

    taus: tuple[float, ...]
    gaps: tuple[int, ...]
    prev_gaps: tuple[int, ...]
    plain: Mapping[str, Any]
    linear: Mapping[str, Any]
    fresh: Mapping[str, Any]
    impact: Mapping[str, tuple[tuple[float, float], ...]]
    gain: tuple[tuple[float, float], ...] = ()
    guidance_scale: float | None = None
    notes: str = ""
    size_exponent: tuple[tuple[float, ...], ...] = ()
    last_impact: float | None = None
    _arrays: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        taus = np.asarray(self.taus, dtype=float)
        if taus.ndim != 1 or len(taus) < 3 or np.any(np.diff(taus) >= 0):
            raise ConfigError("errors.taus must be >= 3 strictly decreasing numbers")
        if not self.gaps or self.gaps[0] < 1 or list(self.gaps) != sorted(set(self.gaps)):
            raise ConfigError("errors.gaps must be increasing integers >= 1")
        if (
            not self.prev_gaps
            or self.prev_gaps[0] < 1
            or list(self.prev_gaps) != sorted(set(self.prev_gaps))
        ):
            raise ConfigError("errors.prev_gaps must be increasing integers >= 1")
        if not self.plain:
            raise ConfigError("errors.plain must hold at least one granularity")
        arrays: dict[str, Any] = {"taus": taus}
        n, ng, npg = len(taus), len(self.gaps), len(self.prev_gaps)
        shapes = {"plain": (n, ng, 3), "linear": (n, npg, ng, 3), "fresh": (n, 3)}
        for kind, shape in shapes.items():
            for g, table in getattr(self, kind).items():
                if g not in _GRANS:
                    raise ConfigError(f"errors.{kind} has unknown granularity {g!r}")
                a = np.asarray(table, dtype=float)
                if a.shape != shape:
                    raise ConfigError(
                        f"errors.{kind}[{g!r}] must have shape {shape}, got {a.shape}"
                    )
                arrays[f"{kind}/{g}"] = a
        for g in self.plain:
            if f"fresh/{g}" not in arrays:
                raise ConfigError(f"errors.fresh has no table for {g!r}")
            points = self.impact.get(g)
            if not points:
                raise ConfigError(f"errors.impact has no curve for {g!r}")
            pts = sorted((float(t), float(v)) for t, v in points)
            if any(not (math.isfinite(v) and v >= 0) for _, v in pts):
                raise ConfigError(f"errors.impact[{g!r}] must be finite numbers >= 0")
            arrays[f"impact/{g}"] = (np.array([t for t, _ in pts]), np.array([v for _, v in pts]))
        gain = sorted((float(t), float(v)) for t, v in self.gain)
        if any(not (math.isfinite(v) and v > 0) for _, v in gain):
            raise ConfigError("errors.gain must be finite numbers > 0")
        if gain:
            arrays["gain"] = (np.array([t for t, _ in gain]), np.log([v for _, v in gain]))
        lengths = {len(p) for p in self.size_exponent}
        if len(lengths) > 1 or not lengths <= {2, 3}:
            raise ConfigError(
                "errors.size_exponent must hold (τ, α) points or (τ, α, ρ) points, all alike"
            )
        size = sorted(tuple(float(x) for x in p) for p in self.size_exponent)
        if any(not all(math.isfinite(x) and x > 0 for x in p[1:]) for p in size):
            raise ConfigError("errors.size_exponent must be finite numbers > 0")
        if size:
            arrays["size"] = (np.array([p[0] for p in size]), np.array([p[1] for p in size]))
            if len(size[0]) == 3:
                arrays["size_reach"] = (arrays["size"][0], np.array([p[2] for p in size]))
        if self.last_impact is not None and not (
            math.isfinite(self.last_impact) and self.last_impact >= 0
        ):
            raise ConfigError("errors.last_impact must be a finite number >= 0 (or None)")
        object.__setattr__(self, "_arrays", arrays)

    # -- reading
    @property
    def granularities(self) -> tuple[str, ...]:
        return tuple(g for g in _GRANS if g in self.plain)

    def impact_at(self, granularity: str, tau: float) -> float:
        """Final deviation per unit of error made at ``tau``.

        The step curve is interpolated between its points (flat beyond them). Every other
        granularity is read as the step curve times its own measured *ratio* to it,
        interpolated between its points: how much an error made at ``τ`` grows by the end is
        mostly a property of the trajectory, steep near pure noise, so a granularity measured
        at two points takes that shape from the step curve instead of being extrapolated flat
        from its nearest point (which under-priced a cfg reuse at τ 0.98 eight-fold on the
        bundled HunyuanVideo model). Without a step curve, plain interpolation.
        """
        ts, vs = self._arrays[f"impact/{granularity}"]
        step = self._arrays.get("impact/step")
        if granularity == "step" or step is None:
            return float(np.interp(tau, ts, vs))
        st, sv = step
        base = np.interp(ts, st, sv)
        # Where the step curve is 0 the ratio is undefined: those points are left out.
        ratio = np.where(base > 0, vs / np.where(base > 0, base, 1.0), np.nan)
        if not np.isfinite(ratio).any():
            return float(np.interp(tau, ts, vs))
        keep = np.isfinite(ratio)
        return float(np.interp(tau, ts[keep], ratio[keep]) * np.interp(tau, st, sv))

    def gain_at(self, tau: float) -> float:
        """How much a deviation of the latent entering a step at ``tau`` is multiplied by the end
        of the run: interpolated in log between the measured points, flat beyond them (1 when
        the model has no gain curve)."""
        curve = self._arrays.get("gain")
        if curve is None:
            return 1.0
        return float(np.exp(np.interp(tau, curve[0], curve[1])))

    def _cal_tau(self, x: float) -> float:
        """Normalised time at fractional calibration index ``x`` (0 beyond the last step)."""
        taus = self._arrays["taus"]
        n = len(taus)
        return float(np.interp(x, np.arange(n + 1, dtype=float), np.append(taus, 0.0)))

    def priced(
        self,
        granularity: str,
        r: float,
        tau_use: float,
        step_size: float | None = None,
        guidance_scale: float | None = None,
    ) -> float:
        """The final error a reuse of error ``r`` at ``tau_use`` adds: ``impact · r``, and, when
        the model has a ``size_exponent`` curve, times ``(h / h_cal) · (r / r_1)^(α − 1)``.

        ``h`` is the run's step size at ``tau_use`` (``step_size``, in normalised time) and
        ``h_cal`` the calibration's there: a plain reuse moves the latent by ``h`` times its
        error, so a step of a short run makes an error several times the one the impact was
        measured at. ``r_1`` is the error of the reuse the impact was measured by (the entry
        made one calibration step earlier): the impact is linear only near that size. α is
        measured (:func:`mixcache.calibration.calibrate_errors`): below 1 near pure noise,
        where a large error is partly corrected by the steps after it, above 1 later.

        An exponent below 1 is not extrapolated past the size it was measured at (``ρ``, where
        the model has it): beyond, the price grows in proportion to ``r``. A sub-linear growth
        read from single reuses says nothing about the far larger errors of an entry reused
        several steps later, and extrapolating it priced long early streaks as nearly free.
        """
        if not math.isfinite(r):
            return math.inf
        e = self.impact_at(granularity, tau_use) * r
        size = self._arrays.get("size")
        if size is None or r <= 0:
            return e
        steps, ratio = self.size_terms(granularity, r, tau_use, step_size, guidance_scale)
        alpha = float(np.interp(tau_use, size[0], size[1]))
        reach = self._arrays.get("size_reach")
        if alpha < 1.0 and reach is not None:
            ratio = min(ratio, float(np.interp(tau_use, reach[0], reach[1])))
        return e * steps * ratio ** (alpha - 1.0)

    def priced_last(self, r: float, step_size: float | None = None) -> float:
        """The final error a plain or extrapolated step reuse of error ``r`` adds at the run's
        last step: ``last_impact · r · h / h_cal``, ``h`` the run's last step and ``h_cal`` the
        calibration's (a step reuse moves the latent by the step times its error, so a
        schedule whose last step is longer pays in proportion). ``inf`` when not measured."""
        if self.last_impact is None or not math.isfinite(r):
            return math.inf
        return self.last_impact * r * _step_ratio(step_size, float(self._arrays["taus"][-1]))

    def size_terms(
        self,
        granularity: str,
        r: float,
        tau_use: float,
        step_size: float | None = None,
        guidance_scale: float | None = None,
    ) -> tuple[float, float]:
        """``(h / h_cal, r / r_1)`` of :meth:`priced` (1 where either is not defined: no step
        size given, or the reuse lies at the calibration's first step)."""
        x = _grid_index(self._arrays["taus"], tau_use)
        steps = _step_ratio(step_size, self._cal_tau(x) - self._cal_tau(x + 1.0))
        if x < 1.0:
            return steps, 1.0
        r1 = self.reuse_error(
            granularity, "plain", self._cal_tau(x - 1.0), tau_use, None, guidance_scale
        )
        return steps, (r / r1 if math.isfinite(r1) and r1 > 0 else 1.0)

    def _gap_weights(self, gaps: Sequence[int], d: float) -> list[tuple[int, float]] | None:
        """Interpolation weights over the tabulated gaps for a fractional gap ``d``; index -1
        stands for gap 0 (no error). None when ``d`` is beyond the table."""
        if d <= 1e-9:
            return [(-1, 1.0)]
        if d > gaps[-1] + 1e-9:
            return None
        prev_i, prev_g = -1, 0.0
        for i, g in enumerate(gaps):
            if d <= g + 1e-9:
                w = (d - prev_g) / (g - prev_g)
                return [(prev_i, 1.0 - w), (i, w)]
            prev_i, prev_g = i, float(g)
        return None  # pragma: no cover - guarded above

    def _row_weights(self, x: float) -> list[tuple[int, float]]:
        a0 = min(math.floor(x), len(self.taus) - 1)
        w = x - a0
        out = [(a0, 1.0 - w)]
        if w > 0 and a0 + 1 < len(self.taus):
            out.append((a0 + 1, w))
        return out

    def reuse_error(
        self,
        granularity: str,
        form: str,
        tau_entry: float,
        tau_use: float,
        tau_prev: float | None = None,
        guidance_scale: float | None = None,
    ) -> float:
        """r of reusing (in ``form``) an entry made at ``tau_entry`` at ``tau_use`` in a run at
        CFG scale ``guidance_scale`` (1: no CFG; None: the calibration's); for ``linear``,
        through the entry made at ``tau_prev``. ``inf`` outside what was measured."""
        taus = self._arrays["taus"]
        xa, xt = _grid_index(taus, tau_entry), _grid_index(taus, tau_use)
        gw = self._gap_weights(self.gaps, xt - xa)
        if gw is None:
            return math.inf
        if form == "plain":
            table = self._arrays[f"plain/{granularity}"]
            pw: list[tuple[int, float]] | None = None
        elif form == "linear":
            table = self._arrays.get(f"linear/{granularity}")
            if tau_prev is None or table is None:
                return math.inf
            xp = _grid_index(taus, tau_prev)
            # A line through two entries closer than one calibration step is read at the
            # smallest measured spacing (its slope is estimated alike).
            p = min(max(xa - xp, self.prev_gaps[0]), self.prev_gaps[-1])
            pw = [(j, w) for j, w in (self._gap_weights(self.prev_gaps, p) or []) if j >= 0]
            pw = pw or [(0, 1.0)]
        else:
            raise ConfigError(f"form={form!r} is invalid: must be one of {FORMS}")
        # Weighted mean over the neighbouring cells that were measured (a line's previous entry
        # cannot lie before the first step: near the start some cells do not exist).
        terms, weight = np.zeros(3), 0.0
        zero_gap = 0.0
        for a, wa in self._row_weights(xa):
            for i, wg in gw:
                if wg == 0.0 or wa == 0.0:
                    continue
                if i < 0:
                    zero_gap += wa * wg  # gap 0: no error
                    continue
                cells = (
                    [(table[a, i], 1.0)] if pw is None else [(table[a, j, i], wp) for j, wp in pw]
                )
                for v, wp in cells:
                    if np.all(np.isfinite(v)):
                        terms += wa * wg * wp * v
                        weight += wa * wg * wp
        if weight <= 0.0:
            return 0.0 if zero_gap > 0 else math.inf
        terms *= (1.0 - zero_gap) / weight if zero_gap < 1.0 else 0.0
        fresh = np.zeros(3)
        for t, wt in self._row_weights(xt):
            fresh += wt * self._arrays[f"fresh/{granularity}"][t]
        g = self.guidance_scale if guidance_scale is None else guidance_scale
        g = 1.0 if g is None else g
        den = _guided(fresh, g)
        if den <= 0:
            return math.inf
        return math.sqrt(_guided(terms, g) / den)

    # -- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON form; the tables are packed (:func:`pack_table`: float16, base64)."""

        def tables(kind: str) -> dict[str, Any]:
            return {g: pack_table(t) for g, t in getattr(self, kind).items()}

        return {
            "taus": [round(t, 6) for t in self.taus],
            "gaps": list(self.gaps),
            "prev_gaps": list(self.prev_gaps),
            "plain": tables("plain"),
            "linear": tables("linear"),
            "fresh": tables("fresh"),
            "impact": {
                g: [[round(t, 6), float(f"{v:.4g}")] for t, v in c] for g, c in self.impact.items()
            },
            "gain": [[round(t, 6), float(f"{v:.4g}")] for t, v in self.gain],
            "guidance_scale": self.guidance_scale,
            "notes": self.notes,
            "size_exponent": [
                [round(p[0], 6), *(float(f"{v:.4g}") for v in p[1:])] for p in self.size_exponent
            ],
            "last_impact": None if self.last_impact is None else float(f"{self.last_impact:.4g}"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ErrorModel:
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` on a malformed model."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"an error model must be a mapping, got {type(data).__name__}")

        def arr(x: Any) -> np.ndarray:
            if isinstance(x, Mapping):
                return unpack_table(x)

            def fix(v: Any) -> Any:
                return [fix(u) for u in v] if isinstance(v, list) else (np.nan if v is None else v)

            return np.asarray(fix(x), dtype=float)

        try:
            return cls(
                taus=tuple(float(t) for t in data["taus"]),
                gaps=tuple(int(g) for g in data["gaps"]),
                prev_gaps=tuple(int(g) for g in data["prev_gaps"]),
                plain={g: arr(t) for g, t in data["plain"].items()},
                linear={g: arr(t) for g, t in data.get("linear", {}).items()},
                fresh={g: arr(t) for g, t in data["fresh"].items()},
                impact={
                    g: tuple((float(t), float(v)) for t, v in c) for g, c in data["impact"].items()
                },
                gain=tuple((float(t), float(v)) for t, v in data.get("gain", ())),
                guidance_scale=data.get("guidance_scale"),
                notes=str(data.get("notes", "")),
                size_exponent=tuple(
                    tuple(float(x) for x in p) for p in data.get("size_exponent", ())
                ),
                last_impact=(
                    None if data.get("last_impact") is None else float(data["last_impact"])
                ),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed error model: {exc!r}") from None


@dataclass(frozen=True)
class PlanOption:
    """One way a step may reuse: a granularity in a form, at a cost (share of a full step)."""

    granularity: str
    form: str
    cost: float


@dataclass(frozen=True)
class Plan:
    """A schedule: per step ``"compute"`` or a granularity, and the form of each reuse.

    ``predicted`` is the model's final error of the schedule; ``cost`` its compute in full
    steps (exact, not quantised); ``start`` the first step it covers (a re-plan starts mid-run);
    ``out_of_reach``: no schedule lands within 5 % of the budget, so this is the one nearest to
    it (the forced computes and the streak cap decide it; e.g. x5 at 10 steps).
    """

    actions: tuple[str, ...]
    forms: tuple[str | None, ...]
    predicted: float
    cost: float
    start: int = 0
    out_of_reach: bool = False

    def code(self) -> str:
        """One letter a step: ``C`` compute, ``s``/``S`` step reuse plain/linear, ``g``/``G``
        cfg, ``b``/``B`` block (capitals: linear)."""
        letters = {"step": "s", "cfg": "g", "block": "b"}
        out = []
        for a, f in zip(self.actions, self.forms, strict=True):
            if a == "compute":
                out.append("C")
            else:
                ch = letters[a]
                out.append(ch.upper() if f == "linear" else ch)
        return "".join(out)

    def action_at(self, step: int) -> tuple[str, str | None]:
        i = step - self.start
        if 0 <= i < len(self.actions):
            return self.actions[i], self.forms[i]
        return "compute", None


def plan_options(
    model: ErrorModel,
    granularities: Sequence[str],
    forms: Sequence[str],
    costs: Mapping[str, float],
) -> list[PlanOption]:
    """The reuses a plan may use: every granularity allowed, measured and priced in ``costs``
    (share of a full step it runs), in every form allowed."""
    return [
        PlanOption(g, f, float(costs[g]))
        for g in _GRANS
        if g in granularities and g in model.granularities and g in costs
        for f in forms
    ]


def _reuse_price(
    model: ErrorModel,
    granularity: str,
    r: float,
    taus: Sequence[float],
    t: int,
    guidance_scale: float | None,
    last: bool,
) -> float:
    """What a reuse of error ``r`` at step ``t`` of a run adds to its final error. ``last``:
    ``t`` is the run's last step and the model measured a reuse there (``last_impact``), which
    only a step reuse was; otherwise the curve's price (:meth:`ErrorModel.priced`)."""
    step = float(taus[t]) - (float(taus[t + 1]) if t + 1 < len(taus) else 0.0)
    if last and t == len(taus) - 1 and model.last_impact is not None:
        return model.priced_last(r, step) if granularity == "step" else math.inf
    return model.priced(granularity, r, taus[t], step, guidance_scale)


def predicted_error(
    model: ErrorModel,
    taus: Sequence[float],
    actions: Sequence[str],
    forms: Sequence[str | None],
    guidance_scale: float | None = None,
    objective: str = "sum",
    path_aware: bool = False,
    scale: Sequence[float] | None = None,
) -> float:
    """The model's final error of a given schedule (``inf`` if it reuses before any compute or
    outside what was measured).

    ``path_aware`` (module docstring): the error of a step reuse is carried, unchanged, to the
    first step after its streak, and grows from there as the run's gain says; a cfg or block
    reuse runs part of the model on the latent, so its own error is priced as measured (next
    step propagating). Off: the errors add as measured. ``scale``: a factor per step on the
    error of a reuse there (a run's correction, :func:`plan_schedule`)."""
    n = len(actions)
    last: int | None = None
    prev: int | None = None
    errs: list[float] = []
    pending: list[float] = []  # step reuses of the open streak, each over the gain after it

    def gain(t: int) -> float:
        return model.gain_at(taus[t]) if path_aware and t < n else 1.0

    def close(t: int) -> None:
        g = gain(t)
        errs.extend(e * g for e in pending)
        pending.clear()

    for t, (a, f) in enumerate(zip(actions, forms, strict=True)):
        if a != "step":
            close(t)
        if a == "compute":
            prev, last = last, t
            continue
        if last is None:
            return math.inf
        r = model.reuse_error(
            a,
            f or "plain",
            taus[last],
            taus[t],
            taus[prev] if prev is not None else None,
            guidance_scale,
        )
        e = _reuse_price(model, a, r, taus, t, guidance_scale, last=True)
        e *= scale[t] if scale is not None else 1.0
        if a == "step":
            pending.append(e / gain(t + 1))
        else:
            errs.append(e)
    close(n)
    if not errs:
        return 0.0
    return max(errs) if objective == "max" else float(sum(errs))


#: Share of a run's budget its plan may spend beyond it or fall short of it (whole quanta; the
#: budget promises ±5 %).
BUDGET_SLACK = 0.045


def plan_schedule(
    model: ErrorModel,
    taus: Sequence[float],
    budget: float,
    options: Sequence[PlanOption],
    *,
    guidance_scale: float | None = None,
    objective: str = "sum",
    max_streak: int | None = None,
    final_steps: int = 1,
    start: int = 0,
    last_compute: int | None = None,
    prev_compute: int | None = None,
    slack: float = BUDGET_SLACK,
    at_least: float | None = None,
    path_aware: bool = False,
    last_computes: bool = True,
    scale: Sequence[float] | None = None,
    _near: float | None = None,
) -> Plan:
    """The schedule of lowest predicted final error that spends at most ``budget``.

    Args:
        model: the measured error model.
        taus: normalised time of every step of the run (``len(taus)`` steps).
        budget: compute the steps from ``start`` on may spend, in full steps.
        options: the reuses allowed (granularity, form, cost); a full compute costs 1.
        guidance_scale: the run's CFG scale (1: no CFG; None: the calibration's).
        objective: ``"sum"`` (total predicted error) or ``"max"`` (LeMiCa's minimax: the worst
            single reuse).
        max_streak: most reuses in a row (None: as far as the model was measured).
        final_steps: the last steps always compute (at least the last one, unless the model
            measured a reuse there: ``last_impact``; then the ones before it).
        start, last_compute, prev_compute: plan from ``start`` on, the last computes having
            been at ``last_compute`` and ``prev_compute`` (a re-plan mid-run). With
            ``last_compute=None`` step ``start`` computes.
        slack: share of ``budget`` the plan may spend beyond it (quantisation).
        at_least: the plan spends at least this (when any schedule can): a budget is a promise
            both ways, so a cheaper schedule of lower predicted error does not undercut it.
        last_computes: the last of ``taus`` computes even with ``final_steps=0`` (False: a
            plan over part of a run, e.g. Wan2.2's first expert, whose next step another
            transformer computes anyway).
        scale: a factor per step (``len(taus)``) on the error of a reuse at that step: a
            run that measures its own errors larger than calibrated somewhere says so here.
        path_aware: price streaks of step reuses with the model's gain curve
            (:func:`predicted_error`). Off by default: on tuning cells the plans it made lost
            2-4 dB to the additive model's (docs/bench/tuning/r14-gain.md).

    Returns the :class:`Plan` of steps ``start..len(taus)-1``. When no schedule fits the
    budget (the forced computes and ``max_streak`` alone cost more), the plan of *least
    compute* is returned, lowest predicted error among those, with ``out_of_reach=True``: a
    budget out of reach is met as nearly as the rules allow, with the reuses still placed by
    the measured errors. With ``at_least`` (a budget promised both ways), when no schedule
    spends within ``[at_least, budget]`` the one nearest to the window's centre is returned,
    on either side (``out_of_reach`` when more than 5 % away). Raises :class:`ConfigError`
    only when no schedule exists at all (a reuse was never measured anywhere).
    """
    n = len(taus)
    if not 0 <= start < n:
        raise ConfigError(f"start={start} is out of range for {n} steps")
    if objective not in ("sum", "max"):
        raise ConfigError(f"objective={objective!r} is invalid: must be 'sum' or 'max'")
    final_steps = max(1 if last_computes else 0, final_steps)
    # A measured last step is planned like any other (a step reuse there is nearly free on
    # flow-matching schedules); the final steps before it still compute.
    plan_last = last_computes and model.last_impact is not None
    units = [max(0, round(o.cost * QUANTUM)) for o in options]
    # Compute is planned in quanta; the plan may spend up to ``slack`` over the budget, so a
    # budget between two whole quanta (5.33 steps at 12 steps and x2.25) is not floored by a
    # whole step (the budget promises ±5 %).
    cap_u = max(0, math.floor(budget * (1.0 + slack) * QUANTUM + 1e-6))
    inf = math.inf
    size = cap_u + 1
    streak = max_streak if max_streak is not None else n

    def shift(v: np.ndarray, k: int) -> np.ndarray:
        if k == 0:
            return v
        out = np.full(size, inf)
        if k < size:
            out[k:] = v[: size - k]
        return out

    combine = np.add if objective == "sum" else np.maximum
    # A plain reuse's error does not depend on the compute before the entry: one reading per
    # (granularity, form, entry, use[, previous]) serves every state that shares it.
    errors_seen: dict[tuple[str, str, int, int, int], float] = {}

    def error_of(granularity: str, form: str, a: int, t: int, p: int) -> float:
        key = (granularity, form, a, t, p if form == "linear" else -1)
        e = errors_seen.get(key)
        if e is None:
            r = model.reuse_error(
                granularity, form, taus[a], taus[t], taus[p] if p >= 0 else None, guidance_scale
            )
            e = _reuse_price(model, granularity, r, taus, t, guidance_scale, last=plan_last)
            if scale is not None:
                e *= scale[t]
            errors_seen[key] = e
        return e

    # The gain of the latent entering each step (after the last one: the output itself). A step
    # reuse's error is divided by the gain after it when it is made and multiplied by the gain
    # where its streak ends, so the streak's errors are priced when it closes.
    gain_in = [model.gain_at(taus[j]) if path_aware else 1.0 for j in range(n)] + [1.0]
    step_opts = [k for k, o in enumerate(options) if o.granularity == "step"]
    other_opts = [k for k, o in enumerate(options) if o.granularity != "step"]
    if len({units[k] for k in step_opts}) > 1:
        raise ConfigError("the step reuse options must share one cost")
    step_u = units[step_opts[0]] if step_opts else 0

    # dp[(a, p, s)] -> array over compute units spent: lowest objective of the errors priced so
    # far, with the last compute at a, the one before at p (-1: none) and the open streak of
    # step reuses starting at s (-1: none). pend[(a, p, s)]: that streak's errors, each over the
    # gain after it (a function of the key alone: every step of it took its least-error form).
    # back[t][key] -> (option per unit, source index per unit, source keys) to reconstruct.
    Key = tuple[int, int, int]
    dp: dict[Key, np.ndarray] = {}
    pend: dict[Key, float] = {}
    back: list[dict[Key, tuple[np.ndarray, np.ndarray, list[Key]]]] = []
    first_forced = last_compute is None
    if first_forced:
        v = np.full(size, inf)
        if size > QUANTUM:
            v[QUANTUM] = 0.0
        else:
            v[-1] = 0.0  # the first step must compute whatever the budget
        dp[(start, -1 if prev_compute is None else prev_compute, -1)] = v
        back.append({})
        t0 = start + 1
    else:
        v = np.full(size, inf)
        v[0] = 0.0
        dp[(last_compute, -1 if prev_compute is None else prev_compute, -1)] = v  # type: ignore[index]
        t0 = start
    nopt = len(options)
    for t in range(t0, n):
        forced = t >= n - final_steps and not (plan_last and t == n - 1)
        cands: dict[Key, list[tuple[np.ndarray, int, Key]]] = {}
        new_pend: dict[Key, float] = {}
        for key, val in dp.items():
            a, p, s = key
            may_reuse = not forced and t - a <= streak
            if may_reuse and step_opts:
                best_k, best_e = -1, inf
                for k in step_opts:
                    if options[k].form == "linear" and p < 0:
                        continue
                    e = error_of("step", options[k].form, a, t, p)
                    if e < best_e:
                        best_k, best_e = k, e
                if best_k >= 0 and not path_aware:  # priced at once: no streak to carry
                    cands.setdefault((a, p, -1), []).append(
                        (combine(shift(val, step_u), best_e), best_k, key)
                    )
                elif best_k >= 0:
                    e = best_e / gain_in[t + 1]
                    nk = (a, p, s if s >= 0 else t)
                    new_pend[nk] = e if s < 0 else float(combine(pend[key], e))
                    cands.setdefault(nk, []).append((shift(val, step_u), best_k, key))
            # Any other action ends the open streak: its errors reach this step unchanged.
            closed = val if s < 0 else combine(val, pend[key] * gain_in[t])
            if may_reuse:
                for k in other_opts:
                    opt = options[k]
                    if opt.form == "linear" and p < 0:
                        continue
                    e = error_of(opt.granularity, opt.form, a, t, p)
                    if math.isfinite(e):
                        cands.setdefault((a, p, -1), []).append(
                            (combine(shift(closed, units[k]), e), k, key)
                        )
            cands.setdefault((t, a, -1), []).append((shift(closed, QUANTUM), nopt, key))
        new: dict[Key, np.ndarray] = {}
        new_back: dict[Key, tuple[np.ndarray, np.ndarray, list[Key]]] = {}
        for nk, items in cands.items():
            stack = np.stack([c for c, _, _ in items])
            pick = np.argmin(stack, axis=0)
            best = stack[pick, np.arange(size)]
            if not np.isfinite(best).any():
                continue
            new[nk] = best
            chosen = np.array([k for _, k, _ in items])[pick]
            new_back[nk] = (chosen, pick, [src for *_, src in items])
        dp = new
        pend = {k: w for k, w in new_pend.items() if k in new}
        back.append(new_back)
    # A streak still open at the end (no last compute) reaches the output unchanged.
    for key in [k for k in dp if k[2] >= 0]:
        dp[key] = combine(dp[key], pend[key] * gain_in[n])
    # Best end state: lowest objective, then least compute (the last step computed unless
    # last_computes=False).
    lo_u = 0 if at_least is None else max(0, math.ceil(at_least * QUANTUM - 1e-6))

    def best_end(lo: int) -> tuple[Any, Any, float]:
        key_, u_, v_ = None, None, inf
        for key, val in dp.items():
            window = val[lo:]
            if not np.isfinite(window).any():
                continue
            if _near is not None:  # compute nearest to _near first, then lowest error
                ok = np.flatnonzero(np.isfinite(window)) + lo
                u = int(ok[np.argmin(np.abs(ok - _near * QUANTUM))])
                d, d_ = abs(u - _near * QUANTUM), inf if u_ is None else abs(u_ - _near * QUANTUM)
                if d < d_ - 1e-9 or (abs(d - d_) <= 1e-9 and val[u] < v_ - 1e-15):
                    key_, u_, v_ = key, u, float(val[u])
                continue
            u = lo + int(np.argmin(window))
            if val[u] < v_ - 1e-15:
                key_, u_, v_ = key, u, float(val[u])
        return key_, u_, v_

    if _near is not None:
        best_key, best_u, best_v = best_end(0)
        if best_key is None:
            raise ConfigError(f"no schedule exists over steps {start}..{n - 1}")
    else:
        best_key, best_u, best_v = best_end(min(lo_u, size - 1))
        if best_key is None and at_least is None:
            best_key, best_u, best_v = best_end(0)
    if best_key is None:
        # Nothing within the budget's window (whole and half steps leave gaps at low step
        # counts: x3 at 10 steps is 3.33 steps), or, with no lower bound, nothing under it (the
        # forced computes and the streak cap cost more): the schedule nearest to it, on either
        # side, among all (every step computing always exists) keeps the promise best; out of
        # reach when more than 5 % away (always, without a lower bound: it lies above).
        centre = 0.0 if at_least is None else (at_least + budget) / 2
        near = plan_schedule(
            model,
            taus,
            float(n - start) + 1.0,
            options,
            guidance_scale=guidance_scale,
            objective=objective,
            max_streak=max_streak,
            final_steps=final_steps,
            start=start,
            last_compute=last_compute,
            prev_compute=prev_compute,
            slack=0.0,
            path_aware=path_aware,
            last_computes=last_computes,
            scale=scale,
            _near=centre,
        )
        far = at_least is None or abs(near.cost - centre) > 0.05 * centre + 1e-6
        return dataclasses.replace(near, out_of_reach=far)
    # Reconstruct backwards.
    actions: list[str] = []
    forms: list[str | None] = []
    key, u = best_key, best_u
    for t in range(n - 1, t0 - 1, -1):
        choice, src, sources = back[t - start][key]
        k = int(choice[u])
        key = sources[int(src[u])]
        if k == nopt:
            actions.append("compute")
            forms.append(None)
            u -= QUANTUM
        else:
            opt = options[k]
            actions.append(opt.granularity)
            forms.append(opt.form)
            u -= units[k]
    if first_forced:
        actions.append("compute")
        forms.append(None)
    actions.reverse()
    forms.reverse()
    cost = sum(
        1.0
        if a == "compute"
        else next(o.cost for o in options if (o.granularity, o.form) == (a, f))
        for a, f in zip(actions, forms, strict=True)
    )
    return Plan(tuple(actions), tuple(forms), best_v, cost, start)


# Plans made in this process: a service re-applies MixCache per request, or a notebook applies
# and removes it around each run, and every new handle would otherwise plan again (0.6-0.8 s at
# 50 steps on a 2-core CPU, up to a tenth of a small model's generation). The model object is
# held with its plan, so the ``id`` in a key cannot be reused by another model while the entry
# lives; a lock keeps concurrent pipelines in threads from corrupting the order.
_PLANS: OrderedDict[tuple[Any, ...], tuple[ErrorModel, Plan]] = OrderedDict()
_PLANS_KEPT = 64
_PLANS_LOCK = threading.Lock()


def planned(
    model: ErrorModel,
    taus: Sequence[float],
    budget: float,
    options: Sequence[PlanOption],
    **kwargs: Any,
) -> Plan:
    """:func:`plan_schedule`, remembered per process (the last 64 distinct calls).

    ``plan_schedule`` is a pure function of its arguments, so an identical call (same model
    object, times, budget, options and keywords) returns the plan made before. Errors are not
    remembered: they are raised again.
    """
    key = (id(model), tuple(taus), budget, tuple(options), tuple(sorted(kwargs.items())))
    with _PLANS_LOCK:
        hit = _PLANS.get(key)
        if hit is not None and hit[0] is model:
            _PLANS.move_to_end(key)
            return hit[1]
    plan = plan_schedule(model, taus, budget, options, **kwargs)
    with _PLANS_LOCK:
        _PLANS[key] = (model, plan)
        while len(_PLANS) > _PLANS_KEPT:
            _PLANS.popitem(last=False)
    return plan


def plan_run(
    model: ErrorModel,
    taus: Sequence[float],
    total: float,
    spent: float,
    options: Sequence[PlanOption],
    *,
    start: int,
    computes: Sequence[int],
    guidance_scale: float | None = None,
    objective: str = "sum",
    max_streak: int | None = None,
    final_steps: int = 1,
    last_computes: bool = True,
    scale: tuple[float, ...] | None = None,
) -> Plan:
    """The plan of a run from step ``start`` on, :func:`planned` (remembered per process): the
    run may spend ``total`` full steps of compute, has spent ``spent`` on the steps before
    ``start``, and computed at ``computes`` (in order). What a run executes and what
    ``mixcache plan`` prints are both this call."""
    left = total - spent
    return planned(
        model,
        taus,
        left + BUDGET_SLACK * total,
        options,
        guidance_scale=guidance_scale,
        objective=objective,
        max_streak=max_streak,
        final_steps=final_steps,
        start=start,
        last_compute=computes[-1] if computes else None,
        prev_compute=computes[-2] if len(computes) > 1 else None,
        slack=0.0,
        at_least=left - BUDGET_SLACK * total,
        last_computes=last_computes,
        scale=scale,
    )
