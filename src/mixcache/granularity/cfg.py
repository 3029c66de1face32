"""CFG reuse (docs/method.md, "cfg"): the cond branch runs fully, the uncond branch runs no blocks.

``residual_diff`` mode: R_uncond(t) := R_cond(t) − ΔR, ΔR = R_cond − R_uncond at the last step both
branches were computed — the guidance *difference* is reused, not the stale uncond output, so the
uncond prediction follows the fresh cond one. ``output`` mode does the same on the model output
(out_uncond(t) := out_cond(t) − Δout) and skips the uncond forward entirely.
"""

from __future__ import annotations

import torch

__all__ = ["cfg_residual"]


def cfg_residual(reference_now: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """R_cond(t) − ΔR (or out_cond(t) − Δout), in the reference's dtype."""
    return reference_now - delta.to(reference_now.dtype)
