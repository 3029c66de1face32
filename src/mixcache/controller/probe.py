"""Step probes: how the step's change is measured (``step_probe``, docs/method.md, "Signals D").

``first_block`` (:class:`FirstBlockProbe`, the paper's): block 0 of the reference always runs and
the relative change of its residual is the step change; the decision waits for it. ``none``
(:class:`InputChangeProbe`, EasyCache-style): no block runs before the decision; the step change
is predicted from the change of the transformer's input times a ratio k = output change / input
change, updated at every full compute of the reference.

Both queue their measurements in the controller's :class:`~mixcache.policy.signals.
PendingSignals` (one reduction per forward); ``step_of()`` is read when a measurement arrives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..granularity import to_cache
from ..policy.signals import rel_l1_sums

__all__ = ["FirstBlockProbe", "InputChangeProbe", "StepProbe", "make_probe"]


class StepProbe:
    """Interface: what each probe measures and when (see the module docstring)."""

    #: The decision is taken after block 0 of the reference has run.
    decides_after_block0: bool = False

    def __init__(
        self, pending: Any, cache_dtype: torch.dtype | None, step_of: Callable[[], int]
    ) -> None:
        self._pending = pending
        self._dtype = cache_dtype
        self._step_of = step_of
        self.reset()

    def reset(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def before_reference(self, x: Any) -> None:
        """The reference forward starts on model input ``x``."""

    def on_block0(self, residual: torch.Tensor) -> None:
        """Block 0 of a reference forward ran, with this residual."""

    def on_full_output(self, sample: torch.Tensor, step: int) -> None:
        """The reference ran every block and produced ``sample``."""

    def step_signal(self, made: int) -> float | None:
        """Accumulated change since step ``made`` (TeaCache/FBCache style); None: unknown."""
        raise NotImplementedError  # pragma: no cover - interface

    @property
    def change(self) -> float | None:
        """The latest per-step change (what the trigger compares)."""
        raise NotImplementedError  # pragma: no cover - interface

    def tensors(self) -> list[torch.Tensor]:
        """Tensors it keeps (counted in the held bytes)."""
        return []


class FirstBlockProbe(StepProbe):
    """The relative change of block 0's residual between consecutive reference forwards."""

    decides_after_block0 = True

    def reset(self) -> None:
        self.prev: torch.Tensor | None = None
        self._change: float | None = None
        self.hist: dict[int, float] = {}  # step -> probe change

    def on_block0(self, residual: torch.Tensor) -> None:
        if self.prev is not None and self.prev.shape == residual.shape:
            self._pending.add(rel_l1_sums(residual, self.prev), self._measured)
        self.prev = to_cache(residual, self._dtype)

    def _measured(self, value: float) -> None:
        self._change = value
        self.hist[self._step_of()] = value

    def step_signal(self, made: int) -> float | None:
        if self._change is None:
            return None
        return sum(v for j, v in self.hist.items() if j > made)

    @property
    def change(self) -> float | None:
        return self._change

    def tensors(self) -> list[torch.Tensor]:
        return [] if self.prev is None else [self.prev]


class InputChangeProbe(StepProbe):
    """EasyCache's prediction: k × the accumulated change of the transformer's input."""

    def reset(self) -> None:
        self.prev_input: torch.Tensor | None = None
        self.input_change: float | None = None
        self.input_hist: dict[int, float] = {}  # step -> input change
        self.prev_output: torch.Tensor | None = None
        self.prev_output_step: int | None = None
        self.output_change: float | None = None
        self.ratio_k: float | None = None

    def before_reference(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            return
        if self.prev_input is not None and self.prev_input.shape == x.shape:
            self._pending.add(rel_l1_sums(x, self.prev_input), self._input_measured)
        self.prev_input = x.detach().clone()

    def _input_measured(self, value: float) -> None:
        self.input_change = value
        self.input_hist[self._step_of()] = value

    def on_full_output(self, sample: torch.Tensor, step: int) -> None:
        """k = output change / input change between the last two full computes.

        Updated at every full compute of the reference, adjacent or not (EasyCache's
        transformation rate): the input change is the sum of the per-step input changes since
        the previous full compute, so k follows the run instead of keeping its first value.
        """
        prev = self.prev_output
        if prev is not None and self.prev_output_step is not None and prev.shape == sample.shape:
            since = self.prev_output_step
            self._pending.add(
                rel_l1_sums(sample, prev), lambda v: self.output_measured(v, since, step)
            )
        self.prev_output = sample.detach().clone()
        self.prev_output_step = step

    def output_measured(self, value: float, since: int, now: int) -> None:
        # Per-step output change: what the trigger compares (one step's worth, gap or not).
        self.output_change = value / max(1, now - since)
        moved = sum(v for j, v in self.input_hist.items() if since < j <= now)
        if moved > 0:
            self.ratio_k = value / moved

    def step_signal(self, made: int) -> float | None:
        if self.ratio_k is None:
            return None
        return self.ratio_k * sum(v for j, v in self.input_hist.items() if j > made)

    @property
    def change(self) -> float | None:
        return self.output_change

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in (self.prev_input, self.prev_output) if t is not None]


def make_probe(
    step_probe: str, pending: Any, cache_dtype: torch.dtype | None, step_of: Callable[[], int]
) -> StepProbe:
    """The probe ``step_probe`` names (``"first_block"`` or ``"none"``)."""
    cls = FirstBlockProbe if step_probe == "first_block" else InputChangeProbe
    return cls(pending, cache_dtype, step_of)
