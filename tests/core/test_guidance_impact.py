"""The cfg impact follows the run's guidance scale: an uncond error enters the guided prediction
g*cond - (g-1)*uncond multiplied by g - 1, so I^cfg measured at g_cal is scaled by
(g - 1)/(g_cal - 1); step and block errors are shared by both branches and are not scaled."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.errors import ConfigError
from mixcache.profiles import ImpactProfile, default_profile
from mixcache_lab.tiny import tiny_call_kwargs

PROFILE = ImpactProfile("wan", "test", step=1.0, cfg=0.8, block=1.2, guidance_scale=5.0)


def test_cfg_impact_scales_with_guidance_minus_one():
    assert PROFILE.impacts(3.0) == {"step": 1.0, "cfg": pytest.approx(0.4), "block": 1.2}
    assert PROFILE.impacts(9.0)["cfg"] == pytest.approx(1.6)
    # Unknown run scale, no CFG in the run, or a profile with no recorded scale: as measured.
    for impacts in (PROFILE.impacts(None), PROFILE.impacts(1.0)):
        assert impacts == {"step": 1.0, "cfg": 0.8, "block": 1.2}
    unknown = dataclasses.replace(PROFILE, guidance_scale=None)
    assert unknown.impacts(3.0)["cfg"] == 0.8


def test_guidance_scale_round_trips_and_is_validated():
    assert ImpactProfile.from_dict(PROFILE.to_dict()) == PROFILE
    assert "guidance_scale" not in dataclasses.replace(PROFILE, guidance_scale=None).to_dict()
    for bad in (1.0, 0.5, float("nan"), True, "5"):
        with pytest.raises(ConfigError, match="guidance_scale"):
            dataclasses.replace(PROFILE, guidance_scale=bad)
    # The shipped profiles say what they were measured at.
    assert default_profile("wan").guidance_scale == 5.0


def _impact_in_run(pipe, family: str, profile: ImpactProfile, guidance: float) -> dict:
    """The impacts the controller priced with during one generation at ``guidance``."""
    handle = apply_mixcache(pipe, MixCacheConfig.preset("balanced", impact=profile))
    try:
        pipe(
            "a red circle",
            generator=torch.Generator().manual_seed(0),
            **tiny_call_kwargs(family, 6, guidance_scale=guidance),
        )
        return dict(handle.controllers["transformer"].impact)
    finally:
        handle.remove()


@pytest.mark.parametrize("guidance", [2.0, 5.0, 9.0])
def test_a_wan_run_prices_cfg_at_its_own_guidance_scale(tiny_wan_pipe, guidance):
    impact = _impact_in_run(tiny_wan_pipe, "wan", PROFILE, guidance)
    assert impact["cfg"] == pytest.approx(0.8 * (guidance - 1) / 4)
    assert (impact["step"], impact["block"]) == (1.0, 1.2)


def test_hunyuan_video_true_cfg_scale_is_not_known_so_cfg_is_not_rescaled(tiny_hunyuan_pipe):
    # HunyuanVideo's _guidance_scale is the embedded guidance, not the true-CFG scale.
    profile = dataclasses.replace(PROFILE, family="hunyuan_video")
    assert _impact_in_run(tiny_hunyuan_pipe, "hunyuan", profile, 9.0)["cfg"] == 0.8


def test_the_guidance_reader_takes_each_experts_scale_and_only_real_cfg_scales():
    from mixcache.api import _guidance_scale

    class Wan22Like:  # a pipeline whose _guidance_scale is the CFG scale
        do_classifier_free_guidance = property(lambda self: self._guidance_scale > 1)

        def __init__(self, g: float, g2: float | None) -> None:
            self._guidance_scale, self._guidance_scale_2 = g, g2

    class HunyuanLike:  # _guidance_scale is the embedded guidance: not a CFG scale
        _guidance_scale = 6.0

    assert _guidance_scale(Wan22Like(4.0, 3.0), "transformer") == 4.0
    assert _guidance_scale(Wan22Like(4.0, 3.0), "transformer_2") == 3.0
    assert _guidance_scale(Wan22Like(4.0, None), "transformer_2") == 4.0  # no second scale set
    assert _guidance_scale(HunyuanLike()) is None
