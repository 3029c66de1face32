"""MixCache configs for the tiny random-weight pipelines of the tests.

The presets are tuned on the bundled trained model, whose output changes about 1 % per step
mid-run; a random-weight model changes far more per step, so the presets' triggers never fire on
it and nothing would be reused. These configs keep the tests exercising every reuse path: they
are the values the presets had before tuning, chosen for the tiny models' scale (and ordered
quality < balanced < fast the same way).
"""

from __future__ import annotations

from mixcache import MixCacheConfig

TINY_QUALITY = MixCacheConfig.preset(
    "paper",
    warmup_fraction=0.2,
    final_steps=2,
    trigger_threshold=0.1,
    refresh_threshold=0.15,
    interval_init=1,
    interval_max=2,
    delta1=0.03,
    delta2=0.1,
)
TINY_BALANCED = MixCacheConfig.preset("paper")  # the paper's choices with the dataclass defaults
TINY_FAST = MixCacheConfig.preset(
    "paper",
    warmup_fraction=0.06,
    final_steps=1,
    trigger_threshold=0.3,
    refresh_threshold=1.0,
    interval_init=3,
    interval_min=3,
    interval_max=8,
    delta1=0.1,
    delta2=0.5,
    span_fraction=0.7,
)
