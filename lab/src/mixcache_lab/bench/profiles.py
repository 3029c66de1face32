"""Benchmark profiles: which model, prompts, seeds, step count and repeats a run uses.

- ``tiny``: a random tiny pipeline (:mod:`mixcache_lab.tiny`; Wan unless ``--family``); seconds;
  what the tests run. Random weights make pictures meaningless but every code path (caches,
  counting, metrics, plots) real.
- ``bundled`` (default): the project's trained Wan model at 50 steps with CFG over its benchmark
  prompts; tuning/calibration uses the disjoint tuning prompts only.
- ``bundled-hunyuan``: the same on the trained HunyuanVideo model, with true CFG
  (``true_cfg_scale``, as ``HunyuanVideoPipeline`` takes it; ``--guidance`` sets it).
- ``wan-1.3b-shape``: random weights in the real Wan2.1-1.3B transformer shape, bf16, 1,280
  latent tokens, a few steps: speed and caching overhead only, no quality numbers.

Prompt sets: ``bench`` (what is reported), ``tuning`` (what presets are tuned on; never
reported) and ``training`` (prompts the bundled model was trained on that are neither: the
held-out matrix runs on these, with seeds from :data:`MATRIX_SEED`, so no preset was tuned on
them). :meth:`Profile.with_call` overrides steps, guidance and seed base (``--steps``,
``--guidance``, ``--seed``).

Every profile's settings are written into each result record (:meth:`Profile.settings`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .methods import MethodSpec, default_methods

__all__ = [
    "MATRIX_GUIDANCE",
    "MATRIX_SEED",
    "MATRIX_STEPS",
    "PROFILES",
    "PROMPT_SETS",
    "Profile",
    "get_profile",
    "matrix_models",
    "tiny_profile",
]

PROMPT_SETS = ("bench", "tuning", "training")
# The held-out matrix: step counts x guidance scales, and a seed base no other profile uses
# (bench 1_000_000+, tuning calibration 1_010_000+, training seeds < 1_000_000).
MATRIX_STEPS: tuple[int, ...] = (10, 20, 30, 50)
MATRIX_GUIDANCE: tuple[float, ...] = (3.0, 5.0, 7.0)
MATRIX_SEED = 2_000_000


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
        training_prompts: ``--prompt-set training``: prompts outside both sets above (for the
            bundled model: prompts it was trained on), for held-out settings.
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
        prompt_set: which prompt set ``prompts`` is (``bench``, ``tuning`` or ``training``).
        family: the model family (``wan``, ``hunyuan``...), written into the records.
        cfg_argument: the call argument that is the CFG scale (``guidance_scale``; the
            HunyuanVideo pipelines' ``true_cfg_scale``, whose ``guidance_scale`` is the embedded
            guidance).
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
    training_prompts: tuple[str, ...] = ()
    prompt_set: str = "bench"
    family: str = "wan"
    cfg_argument: str = "guidance_scale"

    def with_model_dir(self, model_dir: str) -> Profile:
        """The ``bundled`` profile loading a compatible pipeline directory instead."""
        if not self.name.startswith("bundled"):
            raise ValueError("--model-dir applies to the bundled profiles only")
        return dataclasses.replace(
            self,
            make_pipeline=lambda: _bundled_pipeline(model_dir),
            notes=(*self.notes, f"model loaded from {model_dir}"),
        )

    def on_tuning_set(self) -> Profile:
        """This profile with its tuning prompts as the prompts (for tuning, never reporting)."""
        return self.on_prompt_set("tuning")

    def on_prompt_set(self, name: str) -> Profile:
        """This profile on prompt set ``name`` (one of :data:`PROMPT_SETS`)."""
        if name not in PROMPT_SETS:
            raise ValueError(f"unknown prompt set {name!r}; known: {', '.join(PROMPT_SETS)}")
        if name == self.prompt_set:
            return self
        prompts = {"tuning": self.tuning_prompts, "training": self.training_prompts}.get(name)
        if not prompts:
            raise ValueError(f"profile {self.name!r} has no {name} prompts")
        label = {
            "tuning": "TUNING prompts [tuning set: for tuning presets, never for reporting]",
            "training": "training prompts (neither benchmark nor tuning prompts)",
        }[name]
        return dataclasses.replace(
            self,
            prompts=prompts,
            prompt_set=name,
            description=self.description.replace("its benchmark prompts", label)
            if "its benchmark prompts" in self.description
            else f"{self.description}; {label}",
        )

    def with_call(
        self, steps: int | None = None, guidance: float | None = None, seed: int | None = None
    ) -> Profile:
        """This profile with other step count, guidance scale and/or seed base."""
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance is not None and not (guidance >= 0.0 and math.isfinite(guidance)):
            raise ValueError(f"guidance must be a finite number >= 0, got {guidance}")
        kwargs = dict(self.call_kwargs)
        if steps is not None:
            kwargs["num_inference_steps"] = int(steps)
        if guidance is not None:
            kwargs[self.cfg_argument] = float(guidance)
        changed = [
            f"{label} {value:g}"
            for label, value in (("steps", steps), ("CFG", guidance), ("seed base", seed))
            if value is not None
        ]
        if not changed:
            return self
        return dataclasses.replace(
            self,
            call_kwargs=kwargs,
            seed=self.seed if seed is None else int(seed),
            description=f"{self.description} [overridden: {', '.join(changed)}]",
        )

    @property
    def guidance(self) -> float | None:
        """Guidance scale of the call, if the profile sets one."""
        g = self.call_kwargs.get(self.cfg_argument)
        return None if g is None else float(g)

    @property
    def steps(self) -> int:
        """Denoising steps of the reference."""
        return int(self.call_kwargs["num_inference_steps"])

    def settings(self, prompts: int | None = None, repeats: int | None = None) -> dict[str, Any]:
        """The settings every record carries (JSON-able)."""
        # Inputs such as an image or a video (image-to-video families) are named, not dumped.
        kw = {
            k: v if v is None or isinstance(v, (bool, int, float, str, dict)) else type(v).__name__
            for k, v in self.call_kwargs.items()
            if not callable(v)
        }
        return {
            "profile": self.name,
            "description": self.description,
            "call_kwargs": kw,
            "prompts": list(self.prompts[: prompts or len(self.prompts)]),
            "tuning_prompt": self.tuning_prompt,
            "prompt_set": self.prompt_set,
            "family": self.family,
            "steps": self.steps,
            "guidance": self.guidance,
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
    from mixcache_lab.tiny import make_tiny_wan_pipeline

    return make_tiny_wan_pipeline(num_layers=6)


_TINY_TRAINING_PROMPTS = (
    "a white cat walks on the beach",
    "a black dog walks in the snow",
    "a red square moving up",
    "a blue triangle moving down",
)

TINY = Profile(
    name="tiny",
    description="random tiny Wan (6 blocks, 32x32x9 frames), 12 steps with CFG; seconds",
    make_pipeline=_tiny_pipeline,
    prompts=("a red circle moving right", "a blue square moving left"),
    tuning_prompt="a green triangle moving up",
    tuning_prompts=("a green triangle moving up", "a yellow circle moving down"),
    training_prompts=_TINY_TRAINING_PROMPTS,
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


def tiny_profile(family: str = "wan") -> Profile:
    """The ``tiny`` profile on the tiny pipeline of ``family`` (``--family``).

    The pipeline, its call arguments and whether it batches cond and uncond into one forward
    come from the family's :data:`mixcache_lab.tiny.TINY_PIPELINES` entry: ``cfg_batched`` is a
    fact of the pipeline class, never guessed from the family's name.
    """
    if family == "wan":
        return TINY
    from mixcache_lab.tiny import TINY_PIPELINES, tiny_call_kwargs

    entry = TINY_PIPELINES.get(family)
    if entry is None:
        raise ValueError(f"unknown tiny family {family!r}; known: {', '.join(TINY_PIPELINES)}")
    kwargs = tiny_call_kwargs(family, num_inference_steps=TINY.steps)
    kwargs.pop("output_type", None)  # the profile decides (decode=True)
    return dataclasses.replace(
        TINY,
        description=f"random tiny {family} pipeline, {TINY.steps} steps; seconds"
        + ("; CFG batched in one forward" if entry.cfg_batched else ""),
        make_pipeline=entry.build,
        call_kwargs=kwargs,
        cfg_batched=entry.cfg_batched,
        family=family,
    )


# ----------------------------------------------------------------------------------------------
# bundled
# ----------------------------------------------------------------------------------------------


def _bundled_pipeline(model_dir: str | None = None) -> Any:
    try:
        from mixcache_lab.bundled import load_bundled_pipeline

        return load_bundled_pipeline(model_dir)
    except (ImportError, FileNotFoundError) as exc:
        raise RuntimeError(f"the bundled model is not available: {exc}") from exc


def _bundled_prompts() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(bench, tuning, training) prompts of the bundled model.

    ``training``: every 7th of its 56 training prompts (8, fixed). The benchmark and tuning
    prompts are held-out combinations, so the three sets are disjoint.
    """
    try:
        from mixcache_lab.bundled import BENCH_PROMPTS, TRAIN_PROMPTS, TUNING_PROMPTS
    except ImportError:
        return (), ("",), ()
    return tuple(BENCH_PROMPTS), tuple(TUNING_PROMPTS), tuple(TRAIN_PROMPTS[3::7])


def _bundled_adherence() -> Callable[[np.ndarray, str], dict[str, float]] | None:
    """The bundled evaluator as ``(frames (F,H,W,3) in [0,1], prompt) -> scores``, or None.

    Scores: ``adherence`` = share of the prompt's attributes (colour, shape, direction) the clip
    shows, ``adherence_all`` = 1.0 when all three are right.
    """
    try:
        from mixcache_lab.bundled.evaluator import judge
    except ImportError:
        return None

    def score(frames: np.ndarray, prompt: str) -> dict[str, float]:
        ok = judge(prompt, frames)
        parts = [float(ok[k]) for k in ("color", "shape", "direction")]
        return {"adherence": sum(parts) / 3.0, "adherence_all": float(ok["all"])}

    return score


_BENCH, _TUNE, _TRAIN = _bundled_prompts()

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
    training_prompts=_TRAIN,
    call_kwargs={"num_inference_steps": 50, "guidance_scale": 5.0},
    seed=1_000_000,
    repeats=2,
    adherence=_bundled_adherence,
    notes=("tuning/calibration prompts are disjoint from the benchmark prompts",),
)


def _bundled_hunyuan_pipeline() -> Any:
    return _bundled_pipeline("bundled-hunyuan")


# The same prompts, seeds and evaluator as ``bundled`` (one dataset): only the model differs.
BUNDLED_HUNYUAN = dataclasses.replace(
    BUNDLED,
    name="bundled-hunyuan",
    description=(
        "the bundled trained HunyuanVideo model (2 dual- + 14 single-stream blocks; 9 frames of "
        "32x32), 50 steps with true CFG 5.0 over its benchmark prompts"
    ),
    make_pipeline=_bundled_hunyuan_pipeline,
    call_kwargs={"num_inference_steps": 50, "true_cfg_scale": 5.0},
    cfg_argument="true_cfg_scale",
    family="hunyuan",
    notes=(
        *BUNDLED.notes,
        "true CFG as HunyuanVideoPipeline runs it: cond and uncond are separate transformer "
        "calls; guidance_scale stays the pipeline's embedded-guidance default",
    ),
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

PROFILES: dict[str, Profile] = {p.name: p for p in (TINY, BUNDLED, BUNDLED_HUNYUAN, WAN_13B_SHAPE)}


def get_profile(name: str, family: str | None = None) -> Profile:
    """The profile called ``name`` (``tiny`` on ``family``); ``ValueError`` when unknown."""
    if family is not None:
        if name != "tiny":
            raise ValueError("--family applies to the tiny profile only")
        return tiny_profile(family)
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


def _bundled_trained(profile_name: str) -> bool:
    try:
        from mixcache_lab.bundled import BUNDLED_MODELS, DEFAULT_BUNDLED_MODEL
    except ImportError:
        return False
    model = DEFAULT_BUNDLED_MODEL if profile_name == "bundled" else profile_name
    entry = BUNDLED_MODELS.get(model)
    return entry is not None and entry.shipped


def matrix_models(names: str | None = None) -> list[Profile]:
    """The models of the held-out matrix, as profiles on their ``training`` prompt set.

    ``names``: comma-separated profile names, ``tiny:FAMILY`` for a tiny family; default:
    every bundled model (profiles named ``bundled*``) whose weights are shipped.
    """
    if not names:
        wanted = [n for n in PROFILES if n.startswith("bundled") and _bundled_trained(n)]
    else:
        wanted = [n.strip() for n in names.split(",") if n.strip()]
    out = []
    for n in wanted:
        base, _, fam = n.partition(":")
        profile = get_profile(base, fam or None)
        out.append(dataclasses.replace(profile.on_prompt_set("training"), name=n))
    if not out:
        raise ValueError("--models: no model given")
    return out
