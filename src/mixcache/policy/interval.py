"""Adaptive cache interval (docs/method.md, "Step 3").

The interval N is how many reused steps in a row are allowed before a full compute. At each
full compute the deviation between the fresh result and what the last used cache would have
given is measured: above ``delta2`` the interval shrinks by one, below ``delta1`` it grows by
one, always within ``[interval_min, interval_max]``.
"""

from __future__ import annotations

from ..config import MixCacheConfig

__all__ = ["update_interval"]


def update_interval(interval: int, deviation: float, config: MixCacheConfig) -> tuple[int, str]:
    """New interval and a short reason. Pure."""
    if deviation > config.delta2:
        new = max(config.interval_min, interval - 1)
        return (
            new,
            f"deviation {deviation:.3g} > delta2 {config.delta2:g}: interval {interval}->{new}",
        )
    if deviation < config.delta1:
        new = min(config.interval_max, interval + 1)
        return (
            new,
            f"deviation {deviation:.3g} < delta1 {config.delta1:g}: interval {interval}->{new}",
        )
    return interval, f"deviation {deviation:.3g} within [delta1, delta2]: interval {interval}"
