"""Quality metrics of a generation against the uncached reference of the same prompt and seed.

Frames are ``(F, H, W, 3)`` float arrays in [0, 1]; latents are tensors of any shape.

- PSNR over the whole clip (one MSE over every pixel of every frame; ``inf`` when identical);
- SSIM: scikit-image's, averaged over frames;
- MS-SSIM: torchmetrics', over the clip's frames, with as many scales (up to the standard 5)
  as the frame size allows — small frames cannot carry 5 scales; the
  scales used are reported with the value;
- relative L2 of the final latents: ``||a - b|| / ||b||``;
- LPIPS only where it can load (it needs torchvision and downloaded network weights, which this
  environment has not): otherwise reported as unavailable with the reason.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = ["lpips_status", "ms_ssim", "psnr", "quality_metrics", "rel_l2", "ssim"]

# The standard MS-SSIM scale weights (Wang et al. 2003), coarsest last.
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(frames: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """PSNR in dB of ``frames`` against ``ref`` over the whole clip; ``inf`` if identical."""
    mse = float(np.mean((frames.astype(np.float64) - ref.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(frames: np.ndarray, ref: np.ndarray) -> float:
    """Mean per-frame SSIM (scikit-image, Gaussian-free 7x7 default window, RGB)."""
    from skimage.metrics import structural_similarity

    win = min(7, *frames.shape[1:3])
    win = win if win % 2 else win - 1
    values = [
        structural_similarity(a, b, data_range=1.0, channel_axis=-1, win_size=win)
        for a, b in zip(frames.astype(np.float64), ref.astype(np.float64), strict=True)
    ]
    return float(np.mean(values))


def ms_ssim(frames: np.ndarray, ref: np.ndarray) -> tuple[float | None, str]:
    """Per-clip MS-SSIM (torchmetrics, Gaussian window sigma 1.5) and the scales used.

    The standard 5 scales need frames of about 160 pixels; smaller frames get as many scales as
    fit (the first weights of the standard set, renormalised by torchmetrics' ``relu``
    normalisation), and the note says how many.
    """
    from torchmetrics.functional.image import (
        multiscale_structural_similarity_index_measure as _ms_ssim,
    )

    x = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2)
    y = torch.from_numpy(ref.astype(np.float32)).permute(0, 3, 1, 2)
    for scales in range(5, 1, -1):
        try:
            value = _ms_ssim(
                x, y, data_range=1.0, betas=_MS_SSIM_WEIGHTS[:scales], normalize="relu"
            )
        except (RuntimeError, ValueError):
            continue  # too small for this many scales
        return float(value), f"scales={scales}"
    return None, f"frames {frames.shape[1]}x{frames.shape[2]} too small for 2 scales"


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in float64."""
    a64, b64 = a.detach().double().flatten(), b.detach().double().flatten()
    denom = float(torch.linalg.vector_norm(b64))
    num = float(torch.linalg.vector_norm(a64 - b64))
    return num / denom if denom > 0 else (0.0 if num == 0 else math.inf)


@lru_cache(maxsize=1)
def lpips_status() -> tuple[Any, str]:
    """(LPIPS model or None, status text). Loaded once; never downloads anything."""
    try:
        import lpips

        model = lpips.LPIPS(net="alex", verbose=False).eval()
    except Exception as exc:  # ImportError, missing weights, torchvision ABI errors...
        return None, f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"
    return model, "lpips (alex)"


def _lpips(frames: np.ndarray, ref: np.ndarray) -> float | None:
    model, _ = lpips_status()
    if model is None:
        return None
    x = torch.from_numpy(frames.astype(np.float32)).permute(0, 3, 1, 2) * 2 - 1
    y = torch.from_numpy(ref.astype(np.float32)).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        return float(model(x, y).mean())


def quality_metrics(
    frames: np.ndarray | None,
    ref_frames: np.ndarray | None,
    latents: torch.Tensor | None,
    ref_latents: torch.Tensor | None,
) -> dict[str, Any]:
    """Every quality metric that applies; missing inputs give ``None`` values."""
    out: dict[str, Any] = {
        "psnr": None,
        "ssim": None,
        "ms_ssim": None,
        "ms_ssim_setup": None,
        "lpips": None,
        "rel_l2_latent": None,
    }
    if latents is not None and ref_latents is not None:
        out["rel_l2_latent"] = rel_l2(latents, ref_latents)
    if frames is not None and ref_frames is not None:
        out["psnr"] = psnr(frames, ref_frames)
        out["ssim"] = ssim(frames, ref_frames)
        out["ms_ssim"], out["ms_ssim_setup"] = ms_ssim(frames, ref_frames)
        out["lpips"] = _lpips(frames, ref_frames)
    return out
