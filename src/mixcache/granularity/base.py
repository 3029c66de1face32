"""A cache entry: stored tensors plus the step they were computed at (their age)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Entry", "to_cache"]


def to_cache(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` detached and, if ``dtype`` is set and differs, cast to it (docs/method.md, Memory)."""
    t = t.detach()
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


@dataclass
class Entry:
    """Stored residual(s) of one granularity for one branch.

    ``hidden`` is always present; ``encoder`` only where the reused span ends before the last
    block of a model whose blocks also update encoder states (HunyuanVideo). ``step`` is when it
    was computed (joint scheduling: entries carry their age); ``span`` the blocks it covers.
    """

    hidden: torch.Tensor
    step: int
    span: tuple[int, int] = (0, 0)
    encoder: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        n = self.hidden.numel() * self.hidden.element_size()
        if self.encoder is not None:
            n += self.encoder.numel() * self.encoder.element_size()
        return n
