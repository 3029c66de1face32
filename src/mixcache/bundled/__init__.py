"""The small text-to-video model trained by this project and shipped inside the package.

It is a diffusers ``WanTransformer3DModel`` (8 blocks, 192 wide) with a one-layer UMT5 text
encoder, a fixed word-level tokenizer, a pixel<->latent space-to-depth map and a flow-matching
scheduler, trained on the procedural clips of :mod:`mixcache.bundled.dataset` (see
``model/MODEL_CARD.md``). Its pipeline calls the transformer exactly as ``WanPipeline`` does, so
everything that caches Wan runs on it on any CPU, and quality numbers come from a trained
denoising trajectory rather than random weights.

Heavy imports (torch, diffusers) happen on first use of :func:`load_bundled_pipeline`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .dataset import (
    BENCH_PROMPTS,
    HELDOUT_PROMPTS,
    TRAIN_PROMPTS,
    TUNING_PROMPTS,
    UnknownPromptError,
    parse_prompt,
)

if TYPE_CHECKING:
    import torch

    from .pipeline import MixCacheT2VPipeline

BUNDLED_MODEL_DIR: Path = Path(__file__).resolve().parent / "model"

__all__ = [
    "BENCH_PROMPTS",
    "BUNDLED_MODEL_DIR",
    "HELDOUT_PROMPTS",
    "TRAIN_PROMPTS",
    "TUNING_PROMPTS",
    "UnknownPromptError",
    "load_bundled_pipeline",
    "parse_prompt",
]


def load_bundled_pipeline(
    model_dir: str | Path | None = None,
    torch_dtype: torch.dtype | None = None,
    progress_bar: bool = False,
) -> MixCacheT2VPipeline:
    """Load the shipped pipeline (or a compatible ``save_pretrained`` directory), offline.

    Every component is put in eval mode (a module built from a config starts in training mode,
    and dropout would make identical runs differ). ``progress_bar`` enables diffusers' per-step
    progress bar.
    """
    from .pipeline import MixCacheT2VPipeline

    path = Path(model_dir) if model_dir is not None else BUNDLED_MODEL_DIR
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no bundled model at {path} (model_index.json missing); "
            "train and export it with `python -m mixcache.bundled.train`"
        )
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = MixCacheT2VPipeline.from_pretrained(path, local_files_only=True, **kwargs)
    pipe.transformer.eval()
    pipe.text_encoder.eval()
    pipe.set_progress_bar_config(disable=not progress_bar)
    return pipe
