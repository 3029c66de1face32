"""mixcache: MixCache for video diffusion transformers in diffusers.

Reuses transformer work at step, CFG and block granularity. By default (``MixCacheConfig()``,
the ``"balanced"`` preset) a run spends a planned share of the uncached block compute (a
block-compute budget of x2.25): every step is priced, and the reuse with the lowest predicted
error per unit of saving wins. The paper's threshold mode (context-aware trigger, P = D·I with
an anti-repeat penalty, adaptive interval) is the ``"paper"`` preset::

    import mixcache
    handle = mixcache.apply_mixcache(pipe)          # or "quality", "fast", block_speedup=2.0
    video = pipe(prompt).frames
    print(mixcache.summary(pipe))                   # one line; handle.stats() a few more
    handle.remove()                                 # or pipe.transformer.disable_cache()
"""

from .api import (
    MixCacheHandle,
    apply_mixcache,
    apply_mixcache_to_transformer,
    remove_mixcache,
    summary,
)
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
    "apply_mixcache_to_transformer",
    "calibrate_impact",
    "remove_mixcache",
    "summary",
]


def __getattr__(name: str):  # calibration pulls in more of diffusers: import it on first use
    if name == "calibrate_impact":
        from .calibration import calibrate_impact

        return calibrate_impact
    raise AttributeError(f"module 'mixcache' has no attribute {name!r}")
