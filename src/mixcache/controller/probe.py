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

__all__ = ["FirstBlockProbe", "InputChangeProbe", "StepProbe", "make_probe", "queue_per_item"]


def queue_per_item(
    pending: Any,
    a: torch.Tensor,
    b: torch.Tensor,
    callback: Callable[[tuple[float, ...]], None],
) -> None:
    """Queue the relative L1 change of ``a`` from ``b`` per batch item (dim 0).

    One decision covers every item of a batch (``num_videos_per_prompt``, several prompts), so
    the step change is the largest item's, not the batch's sum, in which an item that changes
    fast is averaged away by the others. Each item's pair of sums goes through the one reduction
    (context parallel splits the tokens, never the batch, so every rank queues as many pairs and
    reduces each item's global sums); ``callback`` gets the per-item values at that reduction.
    """
    if a.dim() < 2 or a.shape[0] == 1:  # one item: the whole tensor's sums, as for any signal
        pending.add(rel_l1_sums(a, b), lambda v: callback((v,)))
        return
    n = a.shape[0]
    num = torch.sum(torch.abs(a - b.to(a.dtype)).reshape(n, -1), dim=1, dtype=torch.float32)
    den = torch.sum(torch.abs(b).reshape(n, -1), dim=1, dtype=torch.float32)
    got = [0.0] * n

    def take(i: int, value: float) -> None:
        got[i] = value
        if i == n - 1:  # the callbacks run in queue order: every item has arrived
            callback(tuple(got))

    for i in range(n):
        pending.add((num[i], den[i]), lambda v, i=i: take(i, v))


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
            queue_per_item(self._pending, residual, self.prev, self._measured)
        self.prev = to_cache(residual, self._dtype)

    def _measured(self, per_item: tuple[float, ...]) -> None:
        value = max(per_item)  # the fastest item decides (see queue_per_item)
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
    """EasyCache's prediction: k × the accumulated change of the transformer's input.

    Per batch item (:func:`queue_per_item`): each item has its own input changes and its own k,
    and the step change is the largest item's prediction.
    """

    def reset(self) -> None:
        self.prev_input: torch.Tensor | None = None
        self.input_change: float | None = None
        self.input_hist: dict[int, tuple[float, ...]] = {}  # step -> per-item input change
        self.prev_output: torch.Tensor | None = None
        self.prev_output_step: int | None = None
        self.output_change: float | None = None
        self.ratio_k: tuple[float | None, ...] | None = None  # per item

    def before_reference(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor):
            return
        if self.prev_input is not None and self.prev_input.shape == x.shape:
            queue_per_item(self._pending, x, self.prev_input, self._input_measured)
        self.prev_input = x.detach().clone()

    def _input_measured(self, per_item: tuple[float, ...]) -> None:
        self.input_change = max(per_item)
        self.input_hist[self._step_of()] = per_item

    def on_full_output(self, sample: torch.Tensor, step: int) -> None:
        """k = output change / input change between the last two full computes.

        Updated at every full compute of the reference, adjacent or not (EasyCache's
        transformation rate): the input change is the sum of the per-step input changes since
        the previous full compute, so k follows the run instead of keeping its first value.
        """
        prev = self.prev_output
        if prev is not None and self.prev_output_step is not None and prev.shape == sample.shape:
            since = self.prev_output_step
            queue_per_item(
                self._pending, sample, prev, lambda v: self.output_measured(v, since, step)
            )
        self.prev_output = sample.detach().clone()
        self.prev_output_step = step

    def _moved(self, item: int, since: int, now: int | None = None) -> float:
        """Item ``item``'s input change accumulated over the steps after ``since`` (to ``now``)."""
        return sum(
            v[item] if item < len(v) else 0.0
            for j, v in self.input_hist.items()
            if j > since and (now is None or j <= now)
        )

    def output_measured(self, per_item: tuple[float, ...], since: int, now: int) -> None:
        # Per-step output change: what the trigger compares (one step's worth, gap or not).
        self.output_change = max(per_item) / max(1, now - since)
        old = self.ratio_k or ()
        ks: list[float | None] = []
        for i, value in enumerate(per_item):
            moved = self._moved(i, since, now)
            ks.append(value / moved if moved > 0 else (old[i] if i < len(old) else None))
        if any(k is not None for k in ks):
            self.ratio_k = tuple(ks)

    def step_signal(self, made: int) -> float | None:
        if self.ratio_k is None:
            return None
        known = [k * self._moved(i, made) for i, k in enumerate(self.ratio_k) if k is not None]
        return max(known) if known else None

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
