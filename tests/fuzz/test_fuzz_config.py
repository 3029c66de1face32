"""Config validity fuzzing: the code accepts exactly what the documented field meanings allow.

Expectations come from :mod:`fuzz_expected` (written from the MixCacheConfig docstring), never from
the code's own range table. No model is involved, so this runs many examples quickly.
"""

from __future__ import annotations

import json

from fuzz_expected import config_or_error, overrides
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixcache import ConfigError, MixCacheConfig
from mixcache.config import PRESETS

FUZZ = settings(
    max_examples=800,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(kwargs=overrides())
def test_config_accepts_exactly_the_documented_values(kwargs):
    config, _ = config_or_error(kwargs)
    if config is not None:
        # A valid config survives its JSON round trip and has a file-name-safe tag.
        assert MixCacheConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
        assert " " not in config.tag()


@settings(max_examples=200, deadline=None, derandomize=True)
@given(name=st.sampled_from(sorted(PRESETS)), kwargs=overrides(max_fields=3))
def test_preset_overrides_follow_the_same_rules(name, kwargs):
    # A preset is the dataclass with some fields replaced: the overrides are judged together with
    # the preset's own values (e.g. an interval_min above the preset's interval_max is invalid).
    from fuzz_expected import defaults, invalid_fields

    merged = {**defaults(), **PRESETS[name], **kwargs}
    bad = invalid_fields(merged)
    try:
        config = MixCacheConfig.preset(name, **kwargs)
    except ConfigError as exc:
        assert bad, f"preset {name} + {kwargs} refused: {exc}"
        return
    assert not bad, f"preset {name} + {kwargs} accepted although {sorted(bad)} are invalid"
    assert config.preset_name == name


def test_budget_field_documented_range():
    # block_speedup is None (the paper's threshold mode) or a finite speed-up >= 1.
    for ok in (None, 1, 1.0, 2.5, 100):
        config_or_error({"block_speedup": ok})
    for bad in (0.5, 0, -1, float("inf"), float("nan"), True, "2"):
        config, fields = config_or_error({"block_speedup": bad})
        assert config is None and "block_speedup" in fields
