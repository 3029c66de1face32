"""mixcache: MixCache for video diffusion transformers in diffusers.

Reuse work at step, CFG and block granularity, with a context-aware trigger, an adaptive hybrid
decision (P = D·I with an anti-repeat penalty) and an adaptive cache interval::

    from mixcache import apply_mixcache
    handle = apply_mixcache(pipe, "balanced")
    video = pipe(prompt).frames
    print(handle.stats().summary())
    handle.remove()
"""

from .api import MixCacheHandle, apply_mixcache, remove_mixcache
from .config import PRESETS, MixCacheConfig
from .errors import (
    AlreadyAppliedError,
    ConfigError,
    ConflictingCacheError,
    MixCacheError,
    NotAppliedError,
    UnsupportedModelError,
)
from .profiles import ImpactProfile
from .stats import CacheStats, DecisionRecord

__all__ = [
    "PRESETS",
    "AlreadyAppliedError",
    "CacheStats",
    "ConfigError",
    "ConflictingCacheError",
    "DecisionRecord",
    "ImpactProfile",
    "MixCacheConfig",
    "MixCacheError",
    "MixCacheHandle",
    "NotAppliedError",
    "UnsupportedModelError",
    "apply_mixcache",
    "calibrate_impact",
    "remove_mixcache",
]


def __getattr__(name: str):  # calibration pulls in more of diffusers: import it on first use
    if name == "calibrate_impact":
        from .calibration import calibrate_impact

        return calibrate_impact
    raise AttributeError(f"module 'mixcache' has no attribute {name!r}")
