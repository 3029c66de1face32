"""The bundled Wan model's pipeline, and the registry of the bundled pipeline classes.

What every bundled model shares (tokenizer, text encoder config, latent map, scheduler config,
:class:`BundledT2VPipeline`) is in :mod:`mixcache_lab.bundled.common`, re-exported here; the
second architecture is :mod:`mixcache_lab.bundled.hunyuan`, on the same base.

``MixCacheT2VPipeline`` (the Wan model) is a ``diffusers.DiffusionPipeline`` whose denoising loop
calls the transformer exactly as ``diffusers.WanPipeline`` does (cond and uncond as two separate
calls inside ``transformer.cache_context("cond"/"uncond", step_index=..., sigma=...,
num_inference_steps=...)``), so any cache written for Wan sees the same call pattern here.

Components:
- ``transformer``: ``diffusers.WanTransformer3DModel`` (small, see :func:`transformer_config`);
- ``text_encoder``: ``transformers.UMT5EncoderModel`` (tiny, trained with the transformer);
- ``tokenizer``: a fixed-vocabulary word-level ``PreTrainedTokenizerFast`` (deterministic);
- ``scheduler``: ``diffusers.FlowMatchEulerDiscreteScheduler`` with a flow shift, as in Wan.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

from .common import (
    BOS_TOKEN,
    LATENT_DOWNSCALE,
    LATENT_TEMPORAL_DOWNSCALE,
    MAX_SEQUENCE_LENGTH,
    PAD_TOKEN,
    TEXT_DIM,
    UNK_TOKEN,
    BundledT2VPipeline,
    MixCacheT2VPipelineOutput,
    build_tokenizer,
    latents_to_pixels,
    num_latent_frames,
    pixels_to_latents,
    scheduler_config,
    text_encoder_config,
)
from .dataset import HEIGHT, NUM_FRAMES, WIDTH
from .hunyuan import MixCacheHunyuanT2VPipeline

# The shared names stay importable from here (train.py, the tests and older scripts use them).
__all__ = [
    "BOS_TOKEN",
    "LATENT_DOWNSCALE",
    "LATENT_TEMPORAL_DOWNSCALE",
    "MAX_SEQUENCE_LENGTH",
    "PAD_TOKEN",
    "TEXT_DIM",
    "UNK_TOKEN",
    "BundledT2VPipeline",
    "MixCacheHunyuanT2VPipeline",
    "MixCacheT2VPipeline",
    "MixCacheT2VPipelineOutput",
    "build_tokenizer",
    "bundled_pipeline_class",
    "cfg_call_kwargs",
    "latents_to_pixels",
    "num_latent_frames",
    "pipeline_class_for_arch",
    "pixels_to_latents",
    "scheduler_config",
    "text_encoder_config",
    "transformer_config",
]


def transformer_config(
    num_layers: int = 8, num_heads: int = 6, head_dim: int = 32, ffn_mult: int = 2
) -> dict[str, Any]:
    """Keyword arguments of the bundled ``WanTransformer3DModel``.

    Width = num_heads * head_dim must be well above the 96 values per token
    (24 latent channels times a 1x2x2 patch): the patch embedding is linear, and a model barely
    wider than its tokens cannot separate signal from noise (a 128-wide prototype with 192
    values per token never removed its noise).
    """
    width = num_heads * head_dim
    in_ch = 3 * LATENT_TEMPORAL_DOWNSCALE * LATENT_DOWNSCALE * LATENT_DOWNSCALE
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": num_heads,
        "attention_head_dim": head_dim,
        "in_channels": in_ch,
        "out_channels": in_ch,
        "text_dim": TEXT_DIM,
        "freq_dim": 64,
        "ffn_dim": ffn_mult * width,
        "num_layers": num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "rope_max_seq_len": 64,
    }


class MixCacheT2VPipeline(BundledT2VPipeline):
    """Text-to-video with a small Wan transformer; the denoising loop mirrors ``WanPipeline``."""

    arch: ClassVar[str] = "wan"
    transformer_class: ClassVar[type[torch.nn.Module]] = WanTransformer3DModel
    arch_defaults: ClassVar[dict[str, Any]] = {
        "num_layers": 8,
        "num_heads": 6,
        "head_dim": 32,
        "ffn_mult": 2,
    }
    _callback_tensor_inputs: ClassVar[list[str]] = [
        "latents",
        "prompt_embeds",
        "negative_prompt_embeds",
    ]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        text_encoder: UMT5EncoderModel,
        transformer: WanTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        latent_downscale: int = LATENT_DOWNSCALE,
        latent_temporal_downscale: int = LATENT_TEMPORAL_DOWNSCALE,
    ) -> None:
        super().__init__()
        self._register_components(
            tokenizer, text_encoder, transformer, scheduler, latent_downscale,
            latent_temporal_downscale,
        )  # fmt: skip

    transformer_config = staticmethod(transformer_config)

    def training_prediction(
        self, latents: torch.Tensor, sigma: torch.Tensor, prompts: list[str]
    ) -> torch.Tensor:
        """See :meth:`BundledT2VPipeline.training_prediction` (the empty prompt embeds to 0)."""
        emb = self.encode_text(prompts)
        return self.transformer(latents, sigma * 1000.0, emb, return_dict=False)[0]

    # -- helpers ------------------------------------------------------------------------------

    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1.0

    def encode_text(
        self, prompt: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
    ) -> torch.Tensor:
        """Prompt embeddings (B, max_sequence_length, text_dim); padded positions are exactly 0.

        As in ``WanPipeline``, the encoder output is cut at each prompt's length and padded with
        zeros, so the empty prompt (the unconditional branch) embeds to all zeros.
        """
        ids, mask = self.tokenize(prompt, max_sequence_length)
        hidden = self.text_encoder(ids, mask).last_hidden_state
        return hidden * mask.to(dtype=hidden.dtype).unsqueeze(-1)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        negative_prompt: str | list[str] | None = None,
        do_classifier_free_guidance: bool = True,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode prompt and negative prompt, with the same contract as ``WanPipeline``."""
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds = self.encode_text(prompts, max_sequence_length)
        batch_size = prompt_embeds.shape[0]
        prompt_embeds = prompt_embeds.repeat_interleave(num_videos_per_prompt, dim=0)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt = negative_prompt or ""
            if isinstance(negative_prompt, str):
                negative_prompt = [negative_prompt] * batch_size
            if len(negative_prompt) != batch_size:
                raise ValueError(
                    f"negative_prompt has {len(negative_prompt)} entries, prompt has {batch_size}"
                )
            negative_prompt_embeds = self.encode_text(list(negative_prompt), max_sequence_length)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(
                num_videos_per_prompt, dim=0
            )
        return prompt_embeds, negative_prompt_embeds

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int = HEIGHT,
        width: int = WIDTH,
        num_frames: int = NUM_FRAMES,
        num_inference_steps: int = 50,
        guidance_scale: float = 5.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    ) -> MixCacheT2VPipelineOutput | tuple:
        """Generate clips. Arguments follow ``diffusers.WanPipeline.__call__``.

        Returns a :class:`MixCacheT2VPipelineOutput` (or a 1-tuple if ``return_dict=False``).
        """
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self._check_call(
            prompt, prompt_embeds, height, width, num_frames, output_type, tensor_inputs
        )

        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            negative_prompt,
            self.do_classifier_free_guidance,
            num_videos_per_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            max_sequence_length,
        )
        transformer_dtype = self.transformer.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=transformer_dtype)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(
                device=device, dtype=transformer_dtype
            )
        batch_size = prompt_embeds.shape[0]

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        latents = self.prepare_latents(
            batch_size,
            self.transformer.config.in_channels,
            height,
            width,
            num_frames,
            torch.float32,
            device,
            generator,
            latents,
        )
        self._num_timesteps = len(timesteps)
        self.scheduler.set_begin_index(0)

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                latent_model_input = latents.to(transformer_dtype)
                timestep = t.expand(latents.shape[0])
                # Same context names and kwargs as WanPipeline: caches key their state on them.
                cache_context_kwargs = {
                    "step_index": i,
                    "sigma": float(self.scheduler.sigmas[i]),
                    "num_inference_steps": self._num_timesteps,
                }
                with self.transformer.cache_context("cond", **cache_context_kwargs):
                    noise_pred = self.transformer(
                        hidden_states=latent_model_input,
                        timestep=timestep,
                        encoder_hidden_states=prompt_embeds,
                        attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                if self.do_classifier_free_guidance:
                    with self.transformer.cache_context("uncond", **cache_context_kwargs):
                        noise_uncond = self.transformer(
                            hidden_states=latent_model_input,
                            timestep=timestep,
                            encoder_hidden_states=negative_prompt_embeds,
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                        )[0]
                    noise_pred = noise_uncond + guidance_scale * (noise_pred - noise_uncond)

                latents = self.scheduler.step(noise_pred.float(), t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = out.pop(
                        "negative_prompt_embeds", negative_prompt_embeds
                    )
                progress_bar.update()

        return self._finish(latents, output_type, return_dict)


def bundled_pipeline_class(class_name: str | None) -> type[BundledT2VPipeline]:
    """The bundled pipeline class a ``model_index.json`` names (``_class_name``)."""
    classes = {c.__name__: c for c in (MixCacheT2VPipeline, MixCacheHunyuanT2VPipeline)}
    if class_name not in classes:
        raise ValueError(
            f"{class_name!r} is not a bundled pipeline class; known: {', '.join(classes)}"
        )
    return classes[class_name]


def pipeline_class_for_arch(arch: str) -> type[BundledT2VPipeline]:
    """The bundled pipeline class of a training architecture (``train --arch``)."""
    classes = {c.arch: c for c in (MixCacheT2VPipeline, MixCacheHunyuanT2VPipeline)}
    if arch not in classes:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(classes)}")
    return classes[arch]


def cfg_call_kwargs(pipe: Any, scale: float) -> dict[str, Any]:
    """Call arguments that run ``pipe`` with classifier-free guidance at ``scale``.

    A bundled pipeline says which argument that is (``true_cfg_scale`` for the HunyuanVideo
    one, whose ``guidance_scale`` is the embedded guidance); any other pipeline gets
    ``guidance_scale``.
    """
    cfg_kwargs = getattr(type(pipe), "cfg_kwargs", None)
    return cfg_kwargs(scale) if cfg_kwargs is not None else {"guidance_scale": scale}
