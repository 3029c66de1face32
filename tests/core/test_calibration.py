"""Impact calibration on tiny Wan: deterministic, JSON, accepted by the config, no hooks left."""

from __future__ import annotations

import json

import pytest

from mixcache import ConfigError, ImpactProfile, MixCacheConfig, calibrate_impact
from mixcache.tiny import tiny_call_kwargs


def _kwargs():
    kw = tiny_call_kwargs("wan")
    for key in ("num_inference_steps", "output_type"):
        kw.pop(key)
    return kw


def test_calibration_is_deterministic_json_and_usable(tiny_wan_pipe):
    args = dict(
        num_inference_steps=6, noise_levels=(0.1,), step_fractions=(0.5,), call_kwargs=_kwargs()
    )
    a = calibrate_impact(tiny_wan_pipe, ["a red circle moving right"], **args)
    b = calibrate_impact(tiny_wan_pipe, ["a red circle moving right"], **args)
    assert a == b and a.extra == b.extra
    data = json.loads(json.dumps(a.to_dict()))
    assert ImpactProfile.from_dict(data) == a
    assert a.family == "wan" and "WanTransformer3DModel" in a.measured_on
    values = [a.impact(g) for g in ("step", "cfg", "block")]
    assert all(v > 0 for v in values) and sum(values) == pytest.approx(3.0)
    assert MixCacheConfig(impact=data).impact == a
    assert a.time_weights == ()  # one perturbed step: no time profile
    registry = getattr(tiny_wan_pipe.transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks  # hooks removed


def test_calibration_without_cfg_says_so(tiny_wan_pipe):
    kw = {**_kwargs(), "guidance_scale": 1.0}
    p = calibrate_impact(
        tiny_wan_pipe, ["a red circle"], num_inference_steps=4, noise_levels=(0.1,),
        step_fractions=(0.5,), call_kwargs=kw,
    )  # fmt: skip
    assert p.cfg == 1.0 and "cfg not measurable" in p.notes


def test_calibration_argument_errors(tiny_wan_pipe):
    with pytest.raises(ConfigError, match="at least one prompt"):
        calibrate_impact(tiny_wan_pipe, [])
    with pytest.raises(ConfigError, match="noise_levels"):
        calibrate_impact(tiny_wan_pipe, ["a"], noise_levels=(0.0,))


def test_calibrate_command_writes_a_profile(tmp_path):
    from click.testing import CliRunner

    from mixcache.cli.calibrate import calibrate

    out = tmp_path / "wan.json"
    result = CliRunner().invoke(
        calibrate, ["tiny-wan", "--steps", "3", "--noise", "0.1", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    profile = ImpactProfile.load(out)
    assert profile.family == "wan" and json.loads(out.read_text())["impact"]["step"] > 0


def test_reuse_calibration_forces_one_real_reuse_per_run(tiny_wan_pipe):
    p = calibrate_impact(
        tiny_wan_pipe, ["a red circle"], num_inference_steps=6, step_fractions=(0.5, 0.8),
        call_kwargs=_kwargs(), method="reuse",
    )  # fmt: skip
    assert "one forced reuse" in p.notes
    assert all(p.impact(g) > 0 for g in ("step", "cfg", "block"))
    assert len(p.time_weights) == 2
    with pytest.raises(ConfigError, match="method='guess' is invalid"):
        calibrate_impact(tiny_wan_pipe, ["a"], method="guess")
