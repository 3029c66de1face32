"""What a valid MixCacheConfig is, written from the field meanings in its docstring.

Deliberately independent of ``mixcache.config`` (no ``_RANGES``, no ``_CHOICES``): if a range in
the code is wrong, these expectations and the code disagree and the fuzz tests fail. Each rule
says why the documented meaning implies it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from hypothesis import strategies as st

from mixcache import ImpactProfile, MixCacheConfig

FIELDS = {f.name for f in dataclasses.fields(MixCacheConfig)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)


def _count(v: Any, low: int) -> bool:
    """A count of blocks / steps / tokens: an integer >= low (never a float, never inf)."""
    return _is_int(v) and v >= low


def _nonneg(v: Any) -> bool:
    """A threshold on a relative L1 change (>= 0 by definition); inf = "never stops"."""
    return _is_number(v) and v >= 0


# field -> predicate on its own value (cross-field rules are in `invalid_fields`)
SINGLE: dict[str, Any] = {
    # "non-empty subset of (step, cfg, block)": a set cannot repeat an element
    "granularities": lambda v: (
        (
            isinstance(v, tuple | list)
            and len(v) > 0
            and all(isinstance(g, str) and g in ("step", "cfg", "block") for g in v)
            and len(set(v)) == len(v)
        )
        or v in ("step", "cfg", "block")
    ),
    "step_probe": lambda v: v in ("first_block", "none"),
    "cfg_mode": lambda v: v in ("residual_diff", "output"),
    "block_span": lambda v: v in ("middle", "lowest_change"),
    "score": lambda v: v in ("paper", "per_saving"),
    # whose error rate prices a compute: the entry's own, or the run's mean
    "pace": lambda v: v in ("cadence", "signal"),
    # the head blocks are the probe: at least one runs; the tail (corrector) may be empty
    "head_blocks": lambda v: _count(v, 1),
    "tail_blocks": lambda v: _count(v, 0),
    # "a fraction of all blocks": a span has at least some length and at most all of them
    "span_fraction": lambda v: _is_number(v) and 0 < v <= 1,
    # the span moves when the best window changed less than (1 - margin) x the current one:
    # margin 1 would never move it, a negative margin would move it to a worse window
    "span_switch_margin": lambda v: _is_number(v) and 0 <= v < 1,
    # 0: last residual, 1: linear extrapolation; nothing else is defined
    "residual_order": lambda v: _is_int(v) and v in (0, 1),
    # a fraction of the steps that always computes: all of them (1) would never cache
    "warmup_fraction": lambda v: _is_number(v) and 0 <= v < 1,
    # the first step has nothing to reuse, so at least one warm-up step
    "min_warmup_steps": lambda v: _count(v, 1),
    "final_steps": lambda v: _count(v, 0),
    "trigger_threshold": _nonneg,
    "refresh_threshold": _nonneg,
    # a penalty on repeating a granularity: a factor below 1 would be a bonus
    "repeat_penalty": lambda v: _is_number(v) and v >= 1,
    "time_weighting": lambda v: isinstance(v, bool),
    # "most reused steps in a row": at least one reuse, a whole number
    "interval_init": lambda v: _count(v, 1),
    "interval_min": lambda v: _count(v, 1),
    "interval_max": lambda v: _count(v, 1),
    "delta1": _nonneg,
    "delta2": _nonneg,
    # an age in steps beyond which an entry is not reused; an entry is at least 1 step old
    "max_age": lambda v: v is None or _count(v, 1),
    "cache_dtype": lambda v: v is None or v in ("float32", "float16", "bfloat16"),
    "sketch_tokens": lambda v: _count(v, 1),
    "impact": lambda v: v is None or isinstance(v, ImpactProfile | Mapping),
    "dry_run": lambda v: isinstance(v, bool),
    # a speed-up: at least 1x, and a finite budget (inf would mean "compute nothing")
    "block_speedup": lambda v: v is None or (_is_number(v) and math.isfinite(v) and v >= 1),
    # a ratio of changes: positive
    "trigger_ratio": lambda v: v is None or (_is_number(v) and v > 0),
}


def invalid_fields(values: Mapping[str, Any]) -> set[str]:
    """Fields whose value (alone or with the field it must be ordered with) is invalid."""
    bad = {name for name, value in values.items() if name in SINGLE and not SINGLE[name](value)}
    ints = ("interval_min", "interval_init", "interval_max")
    if not bad & set(ints):
        lo, init, hi = (values[k] for k in ints)
        if not lo <= init <= hi:  # the interval starts inside its own bounds
            bad |= set(ints)
    if not bad & {"delta1", "delta2"} and values["delta1"] > values["delta2"]:
        bad |= {"delta1", "delta2"}  # shrink above delta2, grow below delta1: delta1 <= delta2
    return bad


def defaults() -> dict[str, Any]:
    """The dataclass defaults as documented (the paper's reading)."""
    return {
        f.name: f.default
        for f in dataclasses.fields(MixCacheConfig)
        if f.name not in ("process_group", "preset_name")
    }


# --------------------------------------------------------------------------- strategies
_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=3),
    st.just(math.nan),
    st.just(-math.inf),
    st.just(math.inf),
    st.lists(st.integers(0, 2), max_size=2),
)
_ints = st.integers(-3, 70)
_floats = st.floats(-2.0, 12.0, allow_nan=False)
_any_number = st.one_of(_ints, _floats, st.sampled_from([0, 0.0, 1, 1.0, 1e-9, math.inf]))

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "granularities": st.one_of(
        st.lists(
            st.sampled_from(["step", "cfg", "block"]), min_size=1, max_size=3, unique=True
        ).map(tuple),
        st.lists(st.sampled_from(["step", "cfg", "block", "frame", ""]), max_size=4).map(tuple),
        st.sampled_from(["step", "cfg", "block", "frame"]),
    ),
    "step_probe": st.sampled_from(["first_block", "none", "last_block", None, 0]),
    "cfg_mode": st.sampled_from(["residual_diff", "output", "x", None]),
    "block_span": st.sampled_from(["middle", "lowest_change", "x", 1]),
    "score": st.sampled_from(["paper", "per_saving", "x"]),
    "pace": st.sampled_from(["cadence", "signal", "streak", None]),
    "time_weighting": st.one_of(st.booleans(), st.sampled_from([0, 1, "yes", None])),
    "dry_run": st.one_of(st.booleans(), st.sampled_from([0, 1, "yes", None])),
    "cache_dtype": st.sampled_from([None, "float32", "float16", "bfloat16", "int8", "fp16", 3]),
    "impact": st.sampled_from([None, 3, "wan"]),
}
_NUMERIC = (
    "head_blocks", "tail_blocks", "span_fraction", "span_switch_margin", "residual_order",
    "warmup_fraction", "min_warmup_steps", "final_steps", "trigger_threshold",
    "refresh_threshold", "repeat_penalty", "interval_init", "interval_min", "interval_max",
    "delta1", "delta2", "max_age", "sketch_tokens", "block_speedup", "trigger_ratio",
)  # fmt: skip
for _name in _NUMERIC:
    VALUES[_name] = st.one_of(_any_number, _any_number, _junk)
# Every fuzzed name is a field: a renamed field fails here instead of being silently left out.
assert set(VALUES) <= FIELDS, sorted(set(VALUES) - FIELDS)


@st.composite
def overrides(draw: Any, max_fields: int = 6) -> dict[str, Any]:
    """A few config fields with values drawn from valid and invalid ones."""
    names = draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=max_fields, unique=True))
    return {name: draw(VALUES[name]) for name in names}


def config_or_error(kwargs: Mapping[str, Any]) -> tuple[MixCacheConfig | None, set[str]]:
    """Build ``MixCacheConfig(**kwargs)``; return it (or None) with the expected invalid fields.

    Raises AssertionError when the outcome disagrees with :func:`invalid_fields`.
    """
    from mixcache import ConfigError

    bad = invalid_fields({**defaults(), **kwargs})
    try:
        config = MixCacheConfig(**kwargs)
    except ConfigError as exc:
        assert bad, f"{kwargs} is valid by the docs but was refused: {exc}"
        assert any(name in str(exc) for name in bad), f"{exc} names none of {sorted(bad)}"
        return None, bad
    assert not bad, f"{kwargs} accepted although {sorted(bad)} are invalid by the docs"
    return config, bad


@st.composite
def valid_overrides(draw: Any, max_fields: int = 5) -> dict[str, Any]:
    """Like :func:`overrides` but each value valid on its own (cross-field rules may still fail),
    so that most examples get as far as running a pipeline."""
    names = draw(st.lists(st.sampled_from(sorted(VALUES)), max_size=max_fields, unique=True))
    return {name: draw(VALUES[name].filter(SINGLE[name])) for name in names}
