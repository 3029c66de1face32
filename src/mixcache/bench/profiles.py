"""Benchmark profiles: which model, prompts, seeds, step count and repeats a run uses.

- ``tiny``: the random tiny Wan pipeline (:mod:`mixcache.tiny`); seconds; what the tests run.
  Random weights make pictures meaningless but every code path (caches, counting, metrics,
  plots) real.
- ``bundled`` (default): the project's trained model at 50 steps with CFG over its benchmark
  prompts; tuning/calibration uses the disjoint tuning prompts only.
- ``wan-1.3b-shape``: random weights in the real Wan2.1-1.3B transformer shape, bf16, 1,280
  latent tokens, a few steps: speed and caching overhead only, no quality numbers.

Every profile's settings are written into each result record (:meth:`Profile.settings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .methods import MethodSpec, default_methods

__all__ = ["PROFILES", "Profile", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """One benchmark setting.

    Attributes:
        name: profile name (``--profile``).
        description: one line for the report.
        make_pipeline: builds the pipeline (called once per run).
        prompts: the benchmark prompts, in order (``--prompts N`` takes the first N).
        tuning_prompt: the prompt calibrating peers run on; never one of ``prompts``.
        tuning_prompts: the prompt set for tuning MixCache's presets (``--prompt-set tuning``);
            disjoint from ``prompts``.
        call_kwargs: pipeline call arguments shared by every method (steps, size, guidance).
        seed: prompt ``i`` uses generator seed ``seed + i``, the same for every method.
        repeats: timed runs per (method, prompt); the reported time is their median.
        warmup: ``"method"`` = one excluded warm-up generation per method (on the first
            prompt); ``"once"`` = one short warm-up for the whole run (heavy profiles).
        quality: whether image-quality metrics make sense (not on random-weight timing runs).
        decode: whether to decode frames (``output_type="np"``) or keep latents only.
        adherence: returns ``(frames, prompt) -> {score name: value in [0, 1]}``, or ``None``
            when no evaluator is available.
        prompt_kwargs: turns a prompt into call arguments (default: ``{"prompt": p}``).
        methods: the method list for this profile.
        cfg_batched: whether the pipeline batches cond/uncond in one forward.
        notes: extra facts printed with the settings.
    """

    name: str
    description: str
    make_pipeline: Callable[[], Any]
    prompts: tuple[str, ...]
    tuning_prompt: str
    call_kwargs: dict[str, Any]
    tuning_prompts: tuple[str, ...] = ()
    seed: int = 0
    repeats: int = 2
    warmup: str = "method"
    quality: bool = True
    decode: bool = True
    adherence: Callable[[], Callable[[np.ndarray, str], dict[str, float]] | None] = lambda: None
    prompt_kwargs: Callable[[str], dict[str, Any]] = lambda p: {"prompt": p}
    methods: Callable[[int], list[MethodSpec]] = default_methods
    cfg_batched: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def with_model_dir(self, model_dir: str) -> Profile:
        """The ``bundled`` profile loading a compatible pipeline directory instead."""
        if self.name != "bundled":
            raise ValueError("--model-dir applies to the bundled profile only")
        return dataclasses.replace(
            self,
            make_pipeline=lambda: _bundled_pipeline(model_dir),
            notes=(*self.notes, f"model loaded from {model_dir}"),
        )

    def on_tuning_set(self) -> Profile:
        """This profile with its tuning prompts as the prompts (for tuning, never reporting)."""
        if not self.tuning_prompts:
            raise ValueError(f"profile {self.name!r} has no tuning prompts")
        return dataclasses.replace(
            self,
            prompts=self.tuning_prompts,
            description=self.description.replace("benchmark prompts", "TUNING prompts")
            + " [tuning set: for tuning presets, never for reporting]",
        )

    @property
    def steps(self) -> int:
        """Denoising steps of the reference."""
        return int(self.call_kwargs["num_inference_steps"])

    def settings(self, prompts: int | None = None, repeats: int | None = None) -> dict[str, Any]:
        """The settings every record carries (JSON-able)."""
        kw = {k: v for k, v in self.call_kwargs.items() if not callable(v)}
        return {
            "profile": self.name,
            "description": self.description,
            "call_kwargs": kw,
            "prompts": list(self.prompts[: prompts or len(self.prompts)]),
            "tuning_prompt": self.tuning_prompt,
            "prompt_set": "tuning" if self.prompts == self.tuning_prompts else "bench",
            "seed_base": self.seed,
            "repeats": repeats or self.repeats,
            "warmup": self.warmup,
            "quality": self.quality,
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------------------------
# tiny
# ----------------------------------------------------------------------------------------------


def _tiny_pipeline() -> Any:
    from mixcache.tiny import make_tiny_wan_pipeline

    return make_tiny_wan_pipeline(num_layers=6)


TINY = Profile(
    name="tiny",
    description="random tiny Wan (6 blocks, 32x32x9 frames), 12 steps with CFG; seconds",
    make_pipeline=_tiny_pipeline,
    prompts=("a red circle moving right", "a blue square moving left"),
    tuning_prompt="a green triangle moving up",
    tuning_prompts=("a green triangle moving up", "a yellow circle moving down"),
    call_kwargs={
        "height": 32,
        "width": 32,
        "num_frames": 9,
        "num_inference_steps": 12,
        "guidance_scale": 5.0,
        "negative_prompt": "blurry low quality video",
        "max_sequence_length": 16,
    },
    repeats=1,
    notes=("random weights: quality numbers exercise the code, they say nothing about methods",),
)


# ----------------------------------------------------------------------------------------------
# bundled
# ----------------------------------------------------------------------------------------------


def _bundled_pipeline(model_dir: str | None = None) -> Any:
    try:
        from mixcache.bundled import load_bundled_pipeline

        return load_bundled_pipeline(model_dir)
    except (ImportError, FileNotFoundError) as exc:
        raise RuntimeError(f"the bundled model is not available: {exc}") from exc


def _bundled_prompts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    try:
        from mixcache.bundled import BENCH_PROMPTS, TUNING_PROMPTS
    except ImportError:
        return (), ("",)
    return tuple(BENCH_PROMPTS), tuple(TUNING_PROMPTS)


def _bundled_adherence() -> Callable[[np.ndarray, str], dict[str, float]] | None:
    """The bundled evaluator as ``(frames (F,H,W,3) in [0,1], prompt) -> scores``, or None.

    Scores: ``adherence`` = share of the prompt's attributes (colour, shape, direction) the clip
    shows, ``adherence_all`` = 1.0 when all three are right.
    """
    try:
        from mixcache.bundled.evaluator import judge
    except ImportError:
        return None

    def score(frames: np.ndarray, prompt: str) -> dict[str, float]:
        ok = judge(prompt, frames)
        parts = [float(ok[k]) for k in ("color", "shape", "direction")]
        return {"adherence": sum(parts) / 3.0, "adherence_all": float(ok["all"])}

    return score


_BENCH, _TUNE = _bundled_prompts()

BUNDLED = Profile(
    name="bundled",
    description=(
        "the bundled trained model (Wan transformer, 8 blocks; 9 frames of 32x32), "
        "50 steps with CFG 5.0 over its benchmark prompts"
    ),
    make_pipeline=_bundled_pipeline,
    prompts=_BENCH,
    tuning_prompt=_TUNE[0],
    tuning_prompts=_TUNE,
    call_kwargs={"num_inference_steps": 50, "guidance_scale": 5.0},
    seed=1_000_000,
    repeats=2,
    adherence=_bundled_adherence,
    notes=("tuning/calibration prompts are disjoint from the benchmark prompts",),
)


# ----------------------------------------------------------------------------------------------
# wan-1.3b-shape
# ----------------------------------------------------------------------------------------------

WAN_13B_CONFIG: dict[str, Any] = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}
_TEXT_LEN = 512  # Wan pads prompts to 512 UMT5 tokens; cross-attention cost depends on it


def _wan13b_pipeline() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**WAN_13B_CONFIG).eval()
    transformer.requires_grad_(False)
    # bf16 the way from_pretrained(torch_dtype=bfloat16) loads it: the modules the model marks
    # as keep-in-fp32 (norms, time embedding, modulation table) stay in float32.
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, tensor in [*transformer.named_parameters(), *transformer.named_buffers()]:
        if not keep & set(name.split(".")) and tensor.is_floating_point():
            tensor.data = tensor.data.to(torch.bfloat16)
    # No text encoder (prompt_embeds are passed) and no VAE (latents are returned): the timing
    # is the denoising loop, which is what caches change.
    pipe = WanPipeline(
        tokenizer=None,
        text_encoder=None,
        vae=None,
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _random_embeds(prompt: str) -> dict[str, Any]:
    # Deterministic stand-in text embeddings per prompt (the weights are random anyway).
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "little")
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(1, _TEXT_LEN, 4096, generator=g, dtype=torch.float32)
    uncond = torch.randn(1, _TEXT_LEN, 4096, generator=g, dtype=torch.float32)
    return {
        "prompt_embeds": cond.to(torch.bfloat16),
        "negative_prompt_embeds": uncond.to(torch.bfloat16),
    }


def _wan13b_methods(steps: int) -> list[MethodSpec]:
    keep = {
        "none",
        "mixcache-balanced",
        "mixcache-fast",
        "mixcache-dry-run",
        "fbc-0.1",
        "taylorseer-attn+ffn-i3",
        "dbcache-0.16",
        "half-steps",
    }
    return [s for s in default_methods(steps) if s.name in keep]


WAN_13B_SHAPE = Profile(
    name="wan-1.3b-shape",
    description=(
        "random Wan2.1-1.3B-shaped transformer (30 blocks, 12x128 heads), bf16, "
        "1,280 latent tokens (5x16x16), 6 steps with CFG; speed and overhead only"
    ),
    make_pipeline=_wan13b_pipeline,
    prompts=("a cat walks on the beach",),
    tuning_prompt="a dog runs in the snow",
    call_kwargs={
        "height": 256,
        "width": 256,
        "num_frames": 17,
        "num_inference_steps": 6,
        "guidance_scale": 5.0,
        "output_type": "latent",
    },
    repeats=1,
    warmup="once",
    quality=False,
    decode=False,
    prompt_kwargs=_random_embeds,
    methods=_wan13b_methods,
    notes=(
        "random weights: no quality numbers; rel-L2 of latents is reported for information",
        "MagCache is left out: its ratios would be calibrated on random weights",
        "cost: one forward is ~3.6 TFLOP; ~4 s on a CPU with AMX-BF16, ~50 s on AVX-512 only "
        "(bf16 matmul ~75 GFLOP/s), where the profile takes hours, not minutes",
    ),
)

PROFILES: dict[str, Profile] = {p.name: p for p in (TINY, BUNDLED, WAN_13B_SHAPE)}


def get_profile(name: str) -> Profile:
    """The profile called ``name``; ``ValueError`` listing the known ones otherwise."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None
