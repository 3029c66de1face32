"""Signals: relative L1 distances reduced to Python floats once per forward.

Relative L1 = mean|a − b| / mean|b| (docs/method.md, "Signals D"). It is kept as two sums
(numerator, denominator) until the one reduction point of a forward, :class:`PendingSignals`.
``flush`` stacks every pending sum into one tensor, all-reduces it once when a
``process_group`` is configured (sequence parallel: every rank then sees the global sums and
takes the same decision), and moves it to the host with a single synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["PendingSignals", "rel_l1", "rel_l1_sums"]


def rel_l1_sums(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum|a − b|, sum|b|)`` accumulated in float32, without a float32 copy of the inputs.

    The difference is taken in the tensors' dtype (exactly rounded), the sums in float32.
    Sums rather than means so shards of a sequence-parallel run add up to the global value.
    """
    num = torch.sum(torch.abs(a - b.to(a.dtype)), dtype=torch.float32)
    den = torch.sum(torch.abs(b), dtype=torch.float32)
    return num, den


def rel_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L1 distance of ``a`` from ``b`` as a float (synchronises; not for hot paths)."""
    num, den = rel_l1_sums(a, b)
    den_f = float(den)
    return float(num) / den_f if den_f > 0 else 0.0


class PendingSignals:
    """Scalar sums waiting for the next reduction point, each with the callback that uses it."""

    __slots__ = ("_items", "process_group")

    def __init__(self, process_group: Any = None) -> None:
        self._items: list[tuple[Callable[[float], None], torch.Tensor, torch.Tensor]] = []
        self.process_group = process_group

    def __len__(self) -> int:
        return len(self._items)

    def add(
        self, sums: tuple[torch.Tensor, torch.Tensor], callback: Callable[[float], None]
    ) -> None:
        """Queue ``num/den`` for ``callback``, called with the ratio at the next :meth:`flush`."""
        self._items.append((callback, sums[0], sums[1]))

    def clear(self) -> None:
        self._items.clear()

    def flush(self) -> int:
        """Reduce every pending sum (one all-reduce, one host sync); run the callbacks.

        Returns the number of signals reduced (0 means nothing was synchronised).
        """
        if not self._items:
            return 0
        items, self._items = self._items, []
        device = items[0][1].device  # blocks may sit on several devices (model parallel)
        flat = torch.stack([t.to(device) for _, num, den in items for t in (num, den)])
        if self.process_group is not None:
            import torch.distributed as dist

            dist.all_reduce(flat, group=self.process_group)
        values = flat.tolist()
        for i, (callback, _, _) in enumerate(items):
            num, den = values[2 * i], values[2 * i + 1]
            callback(num / den if den > 0 else 0.0)
        return len(items)
