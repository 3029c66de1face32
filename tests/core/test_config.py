"""MixCacheConfig: presets, overrides, serialisation, validation (with property tests)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixcache import ConfigError, ImpactProfile, MixCacheConfig
from mixcache.config import PRESETS
from mixcache.profiles import default_profile


def test_presets_exist_and_default_is_balanced():
    assert set(PRESETS) == {"quality", "balanced", "fast", "paper"}
    assert MixCacheConfig.resolve(None) == MixCacheConfig.preset("balanced")
    assert MixCacheConfig.resolve("fast").preset_name == "fast"


def test_a_config_that_differs_from_every_preset_is_custom():
    assert MixCacheConfig(granularities=("cfg",)).preset_name is None
    assert MixCacheConfig(granularities=("cfg",)).tag().startswith("mix-custom-")
    assert MixCacheConfig(block_speedup=1.8).preset_name == "quality"


def test_presets_are_budgets_that_grow_in_aggressiveness():
    q, b, f = (MixCacheConfig.preset(n) for n in ("quality", "balanced", "fast"))
    assert 1.0 < q.block_speedup < b.block_speedup < f.block_speedup
    # Apart from the budget (and fast's shorter streak cap) the presets are one method: same
    # fields everywhere else.
    strip = {"block_speedup", "preset_name", "interval_max"}
    assert {k: v for k, v in q.to_dict().items() if k not in strip} == {
        k: v for k, v in f.to_dict().items() if k not in strip
    }
    assert q.interval_max == b.interval_max == 6 and f.interval_max == 3


def test_preset_overrides_and_cfg_only_ablation():
    c = MixCacheConfig.preset("fast", granularities=("cfg",))
    assert c.granularities == ("cfg",)
    assert c.interval_max == PRESETS["fast"]["interval_max"]
    assert MixCacheConfig.preset("fast", granularities=("block", "step")).granularities == (
        "step",
        "block",
    )


def test_replace_never_mutates_original():
    c = MixCacheConfig.preset("balanced")
    d = c.replace(refresh_threshold=0.9)
    assert c.refresh_threshold != 0.9 and d.refresh_threshold == 0.9
    with pytest.raises(AttributeError):
        c.refresh_threshold = 1.0  # frozen


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"granularities": ()}, "granularities=() is invalid: must be a non-empty subset"),
        ({"granularities": ("step", "frame")}, "non-empty subset of ('step', 'cfg', 'block')"),
        ({"step_probe": "last_block"}, "step_probe='last_block' is invalid: must be one of"),
        ({"cfg_mode": "x"}, "cfg_mode='x' is invalid"),
        ({"block_span": "x"}, "block_span='x' is invalid"),
        ({"head_blocks": 0}, "head_blocks=0 is out of range: must be an integer >= 1"),
        ({"span_fraction": 0.0}, "span_fraction=0.0 is out of range: must be a number > 0.0"),
        ({"span_fraction": 1.5}, "and <= 1.0"),
        ({"warmup_fraction": 1.0}, "warmup_fraction=1.0 is out of range"),
        ({"repeat_penalty": 0.5}, "repeat_penalty=0.5 is out of range: must be a number >= 1.0"),
        ({"refresh_threshold": -1}, "refresh_threshold=-1 is out of range"),
        ({"trigger_threshold": math.nan}, "trigger_threshold=nan is out of range"),
        ({"interval_min": 3, "interval_init": 2}, "interval_init=2 is out of range"),
        ({"delta1": 0.5, "delta2": 0.1}, "delta1=0.5 is out of range: must be <= delta2"),
        ({"max_age": 0}, "max_age=0 is out of range"),
        ({"min_warmup_steps": 1.5}, "min_warmup_steps=1.5 is invalid: must be an integer"),
        ({"final_steps": True}, "final_steps=True is invalid"),
        ({"cache_dtype": "int8"}, "cache_dtype='int8' is invalid: must be None or one of"),
        ({"impact": 3}, "impact=3 is invalid"),
        ({"dry_run": "yes"}, "dry_run='yes' is invalid"),
        ({"plan_correction": 1.0}, "plan_correction=1.0 is out of range: must be a number > 1.0"),
    ],
)
def test_invalid_values_raise_config_error_naming_field_and_range(kwargs, message):
    with pytest.raises(ConfigError, match=None) as info:
        MixCacheConfig.preset("paper", **kwargs)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="unknown preset 'turbo'"):
        MixCacheConfig.preset("turbo")
    with pytest.raises(ConfigError, match=r"unknown config field\(s\) \['treshold'\]"):
        MixCacheConfig.preset("fast", treshold=0.1)
    with pytest.raises(ConfigError, match="config must be a MixCacheConfig, its dict"):
        MixCacheConfig.resolve(3)


def test_cache_dtype_accepts_torch_dtype():
    import torch

    assert MixCacheConfig.preset("paper", cache_dtype=torch.bfloat16).cache_dtype == "bfloat16"


def test_to_dict_from_dict_round_trip_is_json():
    c = MixCacheConfig.preset("fast", cache_dtype="bfloat16", impact=default_profile("wan"))
    data = json.loads(json.dumps(c.to_dict()))
    assert MixCacheConfig.from_dict(data) == c
    with pytest.raises(ConfigError, match="unknown config field"):
        MixCacheConfig.from_dict({**data, "bogus": 1})


def test_tag_is_short_and_distinguishes():
    tags = {
        MixCacheConfig.preset(n, granularities=g).tag()
        for n in PRESETS
        for g in (("step",), ("cfg",), ("step", "cfg", "block"))
    }
    assert len(tags) == 3 * len(PRESETS)
    assert all(len(t) < 40 and " " not in t for t in tags)


def test_impact_profile_round_trip_and_validation(tmp_path):
    p = ImpactProfile("wan", "test", step=2.0, cfg=0.5, block=1.0, notes="n")
    p.save(tmp_path / "p.json")
    assert ImpactProfile.load(tmp_path / "p.json") == p
    assert MixCacheConfig.preset("paper", impact=p.to_dict()).impact == p
    with pytest.raises(ConfigError, match=r"impact.step=0.0 is out of range"):
        ImpactProfile("wan", "x", step=0.0)
    with pytest.raises(ConfigError, match="unknown keys"):
        ImpactProfile.from_dict({"family": "wan", "impact": {"frame": 1}})


def test_time_weights_interpolate_and_round_trip():
    p = ImpactProfile("wan", "t", time_weights={"0.9": 2.0, "0.1": 0.5}.items())
    assert p.time_weights == ((0.1, 0.5), (0.9, 2.0))
    assert [p.time_weight(f) for f in (0.0, 0.5, 1.0, None)] == [0.5, 1.25, 2.0, 1.0]
    assert ImpactProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p
    assert ImpactProfile("wan", "flat").time_weight(0.9) == 1.0
    with pytest.raises(ConfigError, match="time_weights entry"):
        ImpactProfile("wan", "t", time_weights=((1.5, 1.0),))


def test_shipped_profiles_say_what_they_were_measured_on():
    for family in ("wan", "hunyuan_video"):
        p = default_profile(family)
        assert p.family == family
        # Honest about the model: each comes from its bundled trained model, and says it is
        # not the real checkpoint.
        assert "bundled trained" in p.measured_on and p.measured_on.endswith("itself")
        assert sum(p.impact(g) for g in ("step", "cfg", "block")) == pytest.approx(3.0)
        weights = [w for _, w in p.time_weights]
        assert len(weights) >= 3 and sum(weights) / len(weights) == pytest.approx(1.0)
        assert weights[-1] > weights[0]  # late errors cost more (measured)


# --------------------------------------------------------------------------- properties
# Which values each numeric field accepts is fuzzed in tests/fuzz/test_fuzz_config.py against
# expectations written from the documented meanings (not from the code's range table).


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["step", "cfg", "block", "frame", ""]), max_size=4))
def test_granularities_property(values):
    ok = (
        bool(values) and set(values) <= {"step", "cfg", "block"} and len(set(values)) == len(values)
    )
    if ok:
        c = MixCacheConfig.preset("paper", granularities=tuple(values))
        assert set(c.granularities) == set(values)
        assert MixCacheConfig.from_dict(c.to_dict()) == c
    else:
        with pytest.raises(ConfigError, match="granularities="):
            MixCacheConfig.preset("paper", granularities=tuple(values))


@settings(max_examples=50, deadline=None)
@given(
    preset=st.sampled_from(sorted(PRESETS)),
    refresh=st.floats(0, 10),
    penalty=st.floats(1, 10),
    grans=st.sampled_from(
        [("step",), ("cfg",), ("block",), ("step", "cfg"), ("step", "cfg", "block")]
    ),
)
def test_valid_configs_round_trip(preset, refresh, penalty, grans):
    c = MixCacheConfig.preset(preset, refresh_threshold=refresh, repeat_penalty=penalty,
                              granularities=grans)  # fmt: skip
    assert MixCacheConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_paper_preset_is_the_papers_choices_and_the_defaults_are_balanced():
    # Every [ours] choice is a field; the paper's reading is pinned here and in
    # docs/how-it-works.md. The "paper" preset is that reading (first-block probe, P = D*I, x5
    # penalty, no budget); the budget presets replace the fields tuned on the bundled model and
    # nothing else; the dataclass defaults are "balanced".
    expected = {
        "granularities": ["step", "cfg", "block"],
        "step_probe": "first_block",
        "cfg_mode": "residual_diff",
        "block_span": "middle",
        "score": "paper",
        "head_blocks": 1,
        "tail_blocks": 1,
        "span_fraction": 0.5,
        "span_switch_margin": 0.2,
        "residual_order": 0,
        "warmup_fraction": 0.1,
        "min_warmup_steps": 2,
        "final_steps": 1,
        "trigger_threshold": 0.15,
        "refresh_threshold": 0.3,
        "repeat_penalty": 5.0,
        "time_weighting": True,
        "interval_init": 2,
        "interval_min": 1,
        "interval_max": 5,
        "delta1": 0.05,
        "delta2": 0.25,
        "max_age": None,
        "block_speedup": None,
        "pace": "cadence",
        "planner": "measured",
        "plan_objective": "sum",
        "plan_forms": ["plain", "linear"],
        "trigger_ratio": None,
        "plan_correction": 2.0,
        "max_cache_bytes": None,
        "cache_dtype": None,
        "sketch_tokens": 64,
        "impact": None,
        "dry_run": False,
        "preset_name": "paper",
    }
    assert MixCacheConfig.preset("paper").to_dict() == expected
    # Built field by field, the paper's values are recognised as the preset.
    assert MixCacheConfig(**{**expected, "preset_name": None}) == MixCacheConfig.preset("paper")
    assert MixCacheConfig() == MixCacheConfig.preset("balanced")
    assert MixCacheConfig().preset_name == "balanced" and MixCacheConfig().block_speedup == 2.25
    for name, fields in PRESETS.items():
        if name == "paper":
            continue
        preset = MixCacheConfig.preset(name).to_dict()
        changed = {k for k in expected if preset[k] != expected[k]} - {"preset_name"}
        assert changed <= set(fields) and preset["preset_name"] == name
        assert fields["step_probe"] == "none" and fields["score"] == "per_saving"
        assert fields["residual_order"] == 1
