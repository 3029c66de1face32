"""Fuzzing across real tiny pipelines: config x family x steps x guidance x batch.

Only documented errors (``ConfigError`` for a config that is invalid or does not fit the model)
may come out; never an ``AssertionError``/``IndexError`` from inside MixCache, never a NaN. Config
validity is judged by :mod:`fuzz_expected` (the documented meanings), not by the code's table.
The pipelines are the tiniest that still have a head, a span and a tail (3 blocks, 1 frame of
16x16, 8 text tokens), so one example costs a fraction of a second.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from fuzz_expected import config_or_error, overrides, valid_overrides
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixcache import ConfigError, apply_mixcache
from mixcache_lab.tiny import make_tiny_hunyuan_pipeline, make_tiny_wan_pipeline, tiny_call_kwargs

NUM_BLOCKS = 3
SMALL = {"height": 16, "width": 16, "num_frames": 1, "max_sequence_length": 8}
# variant -> (tiny_call_kwargs family, call arguments for guidance g, branches per step)
FAMILIES = {
    "wan_cfg": ("wan", lambda g: {"guidance_scale": max(g, 1.01)}, 2),
    "wan_no_cfg": ("wan", lambda g: {"guidance_scale": min(g, 1.0)}, 1),
    "hunyuan_distilled": ("hunyuan", lambda g: {"guidance_scale": g}, 1),
    "hunyuan_true_cfg": (
        "hunyuan",
        lambda g: {"true_cfg_scale": max(g, 1.01), "negative_prompt": "blurry"},
        2,
    ),
}


@functools.cache
def pipeline(family: str):
    if family == "wan":
        return make_tiny_wan_pipeline(num_layers=NUM_BLOCKS)
    return make_tiny_hunyuan_pipeline(num_layers=1, num_single_layers=NUM_BLOCKS - 1)


def fits(config) -> bool:
    """A block reuse needs at least one block between the head and the tail (documented): as
    the only granularity that is a ConfigError; next to others, block is n/a in the stats."""
    return config.granularities != ("block",) or (
        config.head_blocks + config.tail_blocks <= NUM_BLOCKS - 1
    )


@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    kwargs=st.one_of(overrides(max_fields=2), valid_overrides(), valid_overrides()),
    family=st.sampled_from(sorted(FAMILIES)),
    steps=st.integers(1, 60),
    guidance=st.floats(0.0, 10.0),
    batch=st.integers(1, 3),
)
def test_pipelines_raise_only_documented_errors_and_stay_finite(kwargs, family, steps, guidance,
                                                                batch):  # fmt: skip
    config, _ = config_or_error(kwargs)
    if config is None:
        return
    kind, call, branches = FAMILIES[family]
    pipe = pipeline(kind)
    if not fits(config):
        with pytest.raises(ConfigError, match="head_blocks \\+ tail_blocks"):
            apply_mixcache(pipe, config)
        return
    kw = tiny_call_kwargs(kind, steps, **SMALL, **call(guidance), num_videos_per_prompt=batch)
    with apply_mixcache(pipe, config) as handle:
        out = pipe("a red cat", generator=torch.Generator().manual_seed(0), **kw).frames
    stats = handle.stats()
    assert out.shape[0] == batch
    assert torch.isfinite(out).all()
    assert len(stats.records) == steps * branches
    assert sorted({r.step for r in stats.records}) == list(range(steps))
    assert all(0 <= r.blocks_computed <= r.blocks_total == NUM_BLOCKS for r in stats.records)
    if config.dry_run:
        assert {r.action for r in stats.records} == {"compute"}
    assert math.isfinite(stats.compute_fraction) and 0 <= stats.compute_fraction <= 1
