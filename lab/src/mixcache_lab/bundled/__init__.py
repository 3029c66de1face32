"""The small text-to-video models trained by this project and shipped inside the package.

``bundled-wan`` (the default) is a diffusers ``WanTransformer3DModel`` (8 blocks, 192 wide) with a
one-layer UMT5 text encoder, a fixed word-level tokenizer, a pixel<->latent space-to-depth map
and a flow-matching scheduler, trained on the procedural clips of
:mod:`mixcache_lab.bundled.dataset` (see ``model/MODEL_CARD.md``). Its pipeline calls the
transformer exactly as ``WanPipeline`` does, so everything that caches Wan runs on it on any
CPU, and quality numbers come from a trained denoising trajectory rather than random weights.

``bundled-hunyuan`` is the same recipe on a ``HunyuanVideoTransformer3DModel`` (dual- and
single-stream blocks) whose pipeline calls it exactly as ``HunyuanVideoPipeline`` does
(:mod:`mixcache_lab.bundled.hunyuan`); its weights are in ``model_hunyuan/``.

Heavy imports (torch, diffusers) happen on first use of :func:`load_bundled_pipeline`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
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

    from .pipeline import BundledT2VPipeline

_HERE = Path(__file__).resolve().parent
BUNDLED_MODEL_DIR: Path = _HERE / "model"


class BundledModelNotTrainedError(FileNotFoundError):
    """A bundled model's weights are not in the package yet; the message says how to train it."""


@dataclass(frozen=True)
class BundledModel:
    """One bundled model: its name (``--model``), training architecture, directory and recipe."""

    name: str
    arch: str  # ``python -m mixcache_lab.bundled.train train --arch``
    directory: Path
    description: str
    train_args: str  # the documented one-command recipe, after --arch and --run-dir

    @property
    def run_dir(self) -> str:
        """The training run directory its documented command uses."""
        return "runs/bundled" if self.arch == "wan" else f"runs/{self.name}"

    @property
    def train_command(self) -> str:
        """The one command that trains it from scratch (resumable: re-run it after a stop)."""
        arch = "" if self.arch == "wan" else f" --arch {self.arch}"
        return (
            f"python -m mixcache_lab.bundled.train train{arch} --run-dir {self.run_dir} "
            f"{self.train_args}"
        )

    @property
    def export_command(self) -> str:
        """The command that writes the trained run into the package (``directory``)."""
        return f"python -m mixcache_lab.bundled.train export --run-dir {self.run_dir}"

    @property
    def shipped(self) -> bool:
        """Whether its weights are in the package."""
        return (self.directory / "model_index.json").is_file()


_RECIPE = "--schedule-minutes 100 --max-minutes 118 --lr 0.0008 --warmup 150"
BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            "bundled-wan",
            "wan",
            BUNDLED_MODEL_DIR,
            "Wan transformer, 8 blocks, 192 wide",
            f"--steps 6500 {_RECIPE} --threads 2 --precision bf16 --compile --eval-every 500",
        ),
        BundledModel(
            "bundled-hunyuan",
            "hunyuan",
            _HERE / "model_hunyuan",
            "HunyuanVideo transformer, 2 dual-stream + 14 single-stream blocks, 144 wide",
            "--steps 6000 --schedule-minutes 100 --max-minutes 110 --lr 0.0008 --warmup 150 "
            "--threads 2 --precision bf16 --compile --eval-every 500",
        ),
    )
}
DEFAULT_BUNDLED_MODEL = "bundled-wan"
# ``_class_name`` of the bundled pipelines in ``model_index.json``.
BUNDLED_PIPELINE_CLASSES: tuple[str, ...] = ("MixCacheT2VPipeline", "MixCacheHunyuanT2VPipeline")

__all__ = [
    "BENCH_PROMPTS",
    "BUNDLED_MODELS",
    "BUNDLED_MODEL_DIR",
    "BUNDLED_PIPELINE_CLASSES",
    "DEFAULT_BUNDLED_MODEL",
    "HELDOUT_PROMPTS",
    "TRAIN_PROMPTS",
    "TUNING_PROMPTS",
    "BundledModel",
    "BundledModelNotTrainedError",
    "UnknownPromptError",
    "bundled_model_dir",
    "load_bundled_pipeline",
    "parse_prompt",
]


def bundled_model_dir(model: str | Path | None = None) -> Path:
    """The directory of ``model``: a bundled model's name, a directory, or None (the default).

    Raises :class:`BundledModelNotTrainedError` (naming the command that trains it) for a
    bundled model whose weights are not shipped yet, and ``FileNotFoundError`` for a directory
    without ``model_index.json``.
    """
    if model is None or (isinstance(model, str) and model in BUNDLED_MODELS):
        entry = BUNDLED_MODELS[model or DEFAULT_BUNDLED_MODEL]
        if not entry.shipped:
            raise BundledModelNotTrainedError(
                f"{entry.name} is not trained yet: run `{entry.train_command}`, "
                f"then `{entry.export_command}`"
            )
        return entry.directory
    path = Path(model)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no bundled model at {path} (model_index.json missing); "
            "train and export it with `python -m mixcache_lab.bundled.train`"
        )
    return path


def load_bundled_pipeline(
    model_dir: str | Path | None = None,
    torch_dtype: torch.dtype | None = None,
    progress_bar: bool = False,
) -> BundledT2VPipeline:
    """Load a bundled pipeline, offline: by name (``"bundled-hunyuan"``), directory, or default.

    The pipeline class is the one ``model_index.json`` names (the Wan or the HunyuanVideo
    bundled pipeline). Every component is put in eval mode (a module built from a config starts
    in training mode, and dropout would make identical runs differ). ``progress_bar`` enables
    diffusers' per-step progress bar.
    """
    from .pipeline import bundled_pipeline_class

    path = bundled_model_dir(model_dir)
    class_name = json.loads((path / "model_index.json").read_text()).get("_class_name")
    cls = bundled_pipeline_class(class_name)
    kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = cls.from_pretrained(path, local_files_only=True, **kwargs)
    pipe.transformer.eval()
    pipe.text_encoder.eval()
    pipe.set_progress_bar_config(disable=not progress_bar)
    return pipe
