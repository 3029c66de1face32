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

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["cfg_residual", "cond_half_inputs", "rebuild_batch", "split_halves"]


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
