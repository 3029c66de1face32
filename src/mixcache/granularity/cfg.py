"""CFG reuse (docs/method.md, "cfg"): the cond branch runs fully, the uncond branch runs no blocks.

``residual_diff`` mode: R_uncond(t) := R_cond(t) − ΔR, ΔR = R_cond − R_uncond at the last step both
branches were computed — the guidance *difference* is reused, not the stale uncond output, so the
uncond prediction follows the fresh cond one. ``output`` mode does the same on the model output
(out_uncond(t) := out_cond(t) − Δout) and skips the uncond forward entirely.

Batched CFG (one forward of ``[uncond, cond]``, CogVideoX, LTX-Video, Mochi): the same rule on
the model output, with the halves of the batch as the branches. A cfg step runs the transformer
on the cond half only (:func:`cond_half_inputs`) and rebuilds the batch with
out_uncond(t) := out_cond(t) − Δout, Δout = out_cond − out_uncond at the last whole-batch compute
(:func:`split_halves`, :func:`rebuild_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .base import Entry, Granularity, ReusePlan
from .step import oldest

__all__ = [
    "CfgReuse",
    "cfg_residual",
    "cfg_saving",
    "cond_half_inputs",
    "rebuild_batch",
    "split_halves",
]


def cfg_saving(n_branches: int) -> float:
    """Share of a step's block compute a cfg reuse saves: every branch but the reference."""
    branches = max(1, n_branches)
    return (branches - 1) / branches


def cfg_residual(reference_now: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """R_cond(t) − ΔR (or out_cond(t) − Δout), in the reference's dtype."""
    return reference_now - delta.to(reference_now.dtype)


def split_halves(sample: torch.Tensor, uncond_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uncond, cond)`` halves of a batched-CFG tensor laid out by the pipeline."""
    half = sample.shape[0] // 2
    first, second = sample[:half], sample[half:]
    return (first, second) if uncond_first else (second, first)


def rebuild_batch(cond: torch.Tensor, delta: torch.Tensor, uncond_first: bool) -> torch.Tensor:
    """The whole batch from its computed cond half and the stored Δout = out_cond − out_uncond."""
    uncond = cfg_residual(cond, delta)
    return torch.cat([uncond, cond] if uncond_first else [cond, uncond])


def cond_half_inputs(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    params: Sequence[str],
    batch_args: Sequence[str],
    batch: int,
    uncond_first: bool,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The forward's arguments for the cond half of a batch of ``batch`` items.

    ``batch_args`` (from the family's layout) are the arguments that carry the batch; ``params``
    names the forward's positional parameters. A batch argument whose first dimension is not the
    batch (a timestep of shape ``(1,)`` that broadcasts) is shared by both halves and passed as is.
    """

    def cut(name: str, value: Any) -> Any:
        if (
            name in batch_args
            and isinstance(value, torch.Tensor)
            and value.dim() > 0
            and value.shape[0] == batch
        ):
            return split_halves(value, uncond_first)[1]
        return value

    new_args = tuple(cut(params[i] if i < len(params) else "", a) for i, a in enumerate(args))
    return new_args, {k: cut(k, v) for k, v in kwargs.items()}


class CfgReuse(Granularity):
    """The guidance difference per non-reference branch, and the reference's fresh residual.

    Slots: ``"delta"`` (ΔR = R_ref − R_b, ``residual_diff``; Δout = out_cond − out_uncond of a
    batched forward) and ``"delta_out"`` (Δout = out_ref − out_b, ``output``); with
    ``residual_order=1`` also the one before (``"<slot>_prev"``), and a reuse extrapolates the
    difference linearly from the two, as the step granularity does with its residual.
    ``reference_now`` is the reference's R_full (or output) at the current step: a cfg reuse of
    another branch is built from it, so it is dropped at every new step. ``layout`` (a family's
    :class:`~mixcache.models.spec.BatchLayout`, or None) is set when a batched-CFG forward can
    be split into its halves.
    """

    name = "cfg"

    def __init__(
        self,
        pending: Any,
        cache_dtype: torch.dtype | None,
        num_blocks: int,
        mode: str,
        layout: Any = None,
        on_drift: Callable[[str, float], None] | None = None,
        residual_order: int = 0,
    ) -> None:
        super().__init__(pending, cache_dtype, on_drift, residual_order)
        self._num_blocks = num_blocks
        self.mode = mode
        self.layout = layout
        self.reference_now: torch.Tensor | None = None

    def release(self) -> None:
        super().release()
        self.reference_now = None

    def new_step(self) -> None:
        self.reference_now = None

    @property
    def slot(self) -> str:
        return "delta_out" if self.mode == "output" else "delta"

    def entry(self, branch: str) -> Entry | None:
        return self.get(branch, self.slot)

    def oldest(self, branches: Sequence[str]) -> int | None:
        return oldest([self.entry(b) for b in branches])

    def saving(self, n_branches: int) -> float:
        return cfg_saving(n_branches)

    def delta_at(self, branch: str, slot: str, step: int) -> torch.Tensor | None:
        """The difference a reuse of ``branch`` at ``step`` subtracts (extrapolated with
        ``residual_order=1``); None without an entry."""
        delta = self._at(branch, slot, step)
        return delta.hidden if isinstance(delta, Entry) else delta

    def plan(self, branch: str, step: int) -> ReusePlan | None:
        delta = self.delta_at(branch, self.slot, step)
        ref = self.reference_now
        if delta is None or ref is None:
            return None
        stored = self.entry(branch)
        if stored is not None and delta is not stored.hidden and delta.dtype == ref.dtype:
            # An extrapolated difference is this reuse's own: R_ref − ΔR is written into it.
            rebuilt = torch.sub(ref, delta, out=delta)
        else:
            rebuilt = cfg_residual(ref, delta)
        if self.mode == "output":
            return ReusePlan((0, self._num_blocks), output=rebuilt)
        return ReusePlan((0, self._num_blocks), residual=rebuilt, fresh=True)

    def tensors(self) -> list[torch.Tensor]:
        return [] if self.reference_now is None else [self.reference_now]

    def store(self, branch: str, slot: str, delta: torch.Tensor, step: int, track: bool) -> Entry:
        """Keep the guidance difference of ``branch`` at ``step``."""
        return self._store_line(branch, slot, delta, step, track)

    # -- batched CFG: one forward of [uncond, cond]
    def splits(self, x: Any, cfg_on: bool | None) -> bool:
        """A forward on ``x`` is the two halves of a batched-CFG batch that runs CFG now."""
        batch_ok = isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] % 2 == 0
        return self.layout is not None and batch_ok and cfg_on is True

    def half_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], params: Sequence[str], batch: int
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The forward's arguments for the cond half of the batch (a batched cfg step)."""
        layout = self.layout
        assert layout is not None
        return cond_half_inputs(args, kwargs, params, layout.batch_args, batch, layout.uncond_first)

    def rebuild(self, branch: str, cond: torch.Tensor, step: int) -> torch.Tensor:
        """The batch rebuilt from the cond half's output and the stored difference."""
        delta = self.delta_at(branch, "delta", step)
        assert self.layout is not None and delta is not None
        return rebuild_batch(cond, delta, self.layout.uncond_first)

    def store_batched(self, branch: str, sample: torch.Tensor, step: int) -> Entry:
        """Whole-batch compute: Δout = out_cond − out_uncond, and its drift for D^cfg."""
        assert self.layout is not None
        uncond, cond = split_halves(sample, self.layout.uncond_first)
        old = self.get(branch, "delta")
        delta = cond - uncond
        track = old is not None and old.hidden.shape == delta.shape
        return self.store(branch, "delta", delta, step, track)
