"""Context-aware cache trigger: *when* caching may be enabled at all (docs/method.md, "Step 1").

Caching is off during a warm-up (the first steps set up the layout and change fast), switches on
at the first step after warm-up whose probe change falls below ``trigger_threshold`` (and stays
on: the reason is recorded once), and is off again for the last ``final_steps`` steps (the
boundary: the final steps sharpen details and change fast again).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from ..config import MixCacheConfig

__all__ = ["TriggerResult", "TriggerState", "check_trigger", "in_final_steps", "warmup_steps"]


class TriggerState(Enum):
    """Where the trigger stands at a step (what control flow reads; the reason is for people)."""

    WARMUP = "warmup"  # a leading step that always computes
    FINAL = "final"  # one of the last ``final_steps``, which always compute
    WAITING = "waiting"  # after warm-up, caching has not started yet
    FIRED = "fired"  # caching starts at this step
    ENABLED = "enabled"  # caching started at an earlier step


def warmup_steps(num_steps: int | None, config: MixCacheConfig) -> int:
    """Number of leading steps that always compute."""
    if num_steps is None:
        return config.min_warmup_steps
    return max(config.min_warmup_steps, math.ceil(config.warmup_fraction * num_steps))


def in_final_steps(step: int, num_steps: int | None, config: MixCacheConfig) -> bool:
    """True for the last ``final_steps`` steps (unknown ``num_steps``: never)."""
    return num_steps is not None and step >= num_steps - config.final_steps


@dataclass(frozen=True)
class TriggerResult:
    """Whether this step may use a cache, why, and where the trigger stands."""

    may_cache: bool
    reason: str
    state: TriggerState

    @property
    def fired(self) -> bool:
        """The trigger fired at this step (caching starts now)."""
        return self.state is TriggerState.FIRED

    @property
    def waiting(self) -> bool:
        """After the warm-up, caching has not started yet (not a warm-up or final step)."""
        return self.state is TriggerState.WAITING


def check_trigger(
    step: int,
    num_steps: int | None,
    probe_change: float | None,
    triggered: bool,
    config: MixCacheConfig,
) -> TriggerResult:
    """Apply warm-up, boundary and threshold to one step. Pure."""
    warm = warmup_steps(num_steps, config)
    if step < warm:
        return TriggerResult(False, f"warm-up (step < {warm})", TriggerState.WARMUP)
    if in_final_steps(step, num_steps, config):
        return TriggerResult(
            False, f"final steps (last {config.final_steps} always compute)", TriggerState.FINAL
        )
    if triggered:
        return TriggerResult(True, "caching enabled", TriggerState.ENABLED)
    if probe_change is None:
        return TriggerResult(False, "trigger waiting: no probe signal yet", TriggerState.WAITING)
    if probe_change < config.trigger_threshold:
        return TriggerResult(
            True,
            f"trigger: probe change {probe_change:.3g} < {config.trigger_threshold:g} at step "
            f"{step} (after {warm} warm-up steps)",
            TriggerState.FIRED,
        )
    return TriggerResult(
        False,
        f"trigger waiting: probe change {probe_change:.3g} >= {config.trigger_threshold:g}",
        TriggerState.WAITING,
    )
