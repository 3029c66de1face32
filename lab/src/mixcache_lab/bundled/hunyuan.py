"""The bundled HunyuanVideo-architecture model: the second trained bundled model.

``MixCacheHunyuanT2VPipeline`` runs a small ``diffusers.HunyuanVideoTransformer3DModel``
(dual-stream blocks, then single-stream blocks) over the same latent space, tokenizer family,
text encoder and dataset as the Wan model (:mod:`mixcache_lab.bundled.pipeline`), on the base
both share (:mod:`mixcache_lab.bundled.common`), and its denoising loop calls the transformer
exactly as ``diffusers.HunyuanVideoPipeline`` does:

- the conditional pass in ``transformer.cache_context("cond")`` with ``hidden_states``,
  ``timestep``, ``encoder_hidden_states``, ``encoder_attention_mask``, ``pooled_projections``,
  ``guidance``, ``attention_kwargs`` and ``return_dict=False``;
- with ``true_cfg_scale > 1`` and a negative prompt, the unconditional pass in
  ``cache_context("uncond")`` with the same keyword arguments; no step index in the context;
- sigmas ``linspace(1, 0, N + 1)[:-1]`` given to the scheduler (which applies its shift).

What HunyuanVideo's two text encoders give the transformer comes from one small encoder here:
``encoder_hidden_states`` and ``encoder_attention_mask`` are the UMT5 encoder's output and the
token mask (padded positions are masked, not zeroed, as with HunyuanVideo's Llama encoder), and
``pooled_projections`` (CLIP's pooled vector in HunyuanVideo) is the masked mean of that output.
The tokenizer starts every sequence with ``<s>`` so the empty prompt keeps one attended token.

The model is trained with true CFG (prompt dropout), not guidance-distilled, so the transformer
has no guidance embedder (``guidance_embeds=False``): the pipeline still passes ``guidance``
(``guidance_scale * 1000``) as ``HunyuanVideoPipeline`` does, and the transformer ignores it.
CFG is ``true_cfg_scale`` (default 5.0) with ``negative_prompt`` (default ``""``, the empty
prompt the model was trained to be unconditional on); ``negative_prompt=None`` turns it off, as
in diffusers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import retrieve_timesteps
from transformers import PreTrainedTokenizerFast, UMT5EncoderModel

from .common import (
    LATENT_DOWNSCALE,
    LATENT_TEMPORAL_DOWNSCALE,
    MAX_SEQUENCE_LENGTH,
    TEXT_DIM,
    BundledT2VPipeline,
    MixCacheT2VPipelineOutput,
)
from .dataset import HEIGHT, NUM_FRAMES, WIDTH

__all__ = ["MixCacheHunyuanT2VPipeline", "hunyuan_transformer_config"]


def hunyuan_transformer_config(
    num_layers: int = 2,
    num_single_layers: int = 14,
    num_heads: int = 4,
    head_dim: int = 36,
    ffn_mult: int = 2,
    num_refiner_layers: int = 1,
) -> dict[str, Any]:
    """Keyword arguments of the bundled ``HunyuanVideoTransformer3DModel``.

    ``num_layers`` dual-stream blocks then ``num_single_layers`` single-stream ones (16 in all by
    default, twice the Wan model's depth, so block-level caching has a middle to reuse). Width
    ``num_heads * head_dim`` (144) is 1.5x the 96 values per token (24 latent channels x a 2x2
    patch), for the reason the Wan model's config gives; it is not 192 like the Wan model's
    because HunyuanVideo blocks carry more parameters per width (adaLN-Zero of both streams, a
    text stream in the dual blocks): 192 wide would be about 40 MB of float32 weights, over the
    20 MB the package ships, 144 wide is 19 MB. Four heads of 36 rather than six of 24: the same
    parameters, and fewer, larger heads make CPU attention about a third cheaper. The rotary
    dimensions split the head dimension over (time, height, width) as HunyuanVideo's
    (16, 56, 56) splits 128.
    """
    if head_dim % 4:
        raise ValueError(f"head_dim must be a multiple of 4 (3 even rotary axes), got {head_dim}")
    in_ch = 3 * LATENT_TEMPORAL_DOWNSCALE * LATENT_DOWNSCALE * LATENT_DOWNSCALE
    t_dim = 2 * (head_dim // 8)  # rotary axes must be even
    hw_dim = 2 * ((head_dim - t_dim) // 4)
    return {
        "in_channels": in_ch,
        "out_channels": in_ch,
        "num_attention_heads": num_heads,
        "attention_head_dim": head_dim,
        "num_layers": num_layers,
        "num_single_layers": num_single_layers,
        "num_refiner_layers": num_refiner_layers,
        "mlp_ratio": float(ffn_mult),
        "patch_size": 2,
        "patch_size_t": 1,
        "qk_norm": "rms_norm",
        "guidance_embeds": False,
        "text_embed_dim": TEXT_DIM,
        "pooled_projection_dim": TEXT_DIM,
        "rope_axes_dim": (t_dim, hw_dim, head_dim - t_dim - hw_dim),
    }


class MixCacheHunyuanT2VPipeline(BundledT2VPipeline):
    """Text-to-video, small HunyuanVideo transformer; the loop mirrors ``HunyuanVideoPipeline``."""

    arch: ClassVar[str] = "hunyuan"
    transformer_class: ClassVar[type[torch.nn.Module]] = HunyuanVideoTransformer3DModel
    arch_defaults: ClassVar[dict[str, Any]] = {
        "num_layers": 2,
        "num_single_layers": 14,
        "num_heads": 4,
        "head_dim": 36,
        "ffn_mult": 2,
    }
    cfg_argument: ClassVar[str] = "true_cfg_scale"
    tokenizer_bos: ClassVar[bool] = True
    _callback_tensor_inputs: ClassVar[list[str]] = ["latents", "prompt_embeds"]

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerFast,
        text_encoder: UMT5EncoderModel,
        transformer: HunyuanVideoTransformer3DModel,
        scheduler: FlowMatchEulerDiscreteScheduler,
        latent_downscale: int = LATENT_DOWNSCALE,
        latent_temporal_downscale: int = LATENT_TEMPORAL_DOWNSCALE,
    ) -> None:
        # Its own signature (not the base's): diffusers reads the component types from it.
        super().__init__()
        self._register_components(
            tokenizer, text_encoder, transformer, scheduler, latent_downscale,
            latent_temporal_downscale,
        )  # fmt: skip

    transformer_config = staticmethod(hunyuan_transformer_config)

    @property
    def guidance_scale(self) -> float:
        """The embedded-guidance scale of the call (ignored: no guidance embedder)."""
        return self._guidance_scale

    # -- text ---------------------------------------------------------------------------------

    def encode_text(
        self, prompt: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(embeddings (B, L, D), pooled (B, D), attention mask (B, L)) of ``prompt``.

        Padded positions keep the encoder's output and are masked (as HunyuanVideo's Llama
        embeddings are); pooled = mean over the attended tokens (``<s>`` always is one).
        """
        ids, mask = self.tokenize(prompt, max_sequence_length)
        hidden = self.text_encoder(ids, mask).last_hidden_state
        m = mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1)
        return hidden, pooled, mask

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        batch_size: int,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embeddings, pooled embeddings and mask, each repeated ``num_videos_per_prompt`` times.

        A single string is used for every one of ``batch_size`` prompts (a negative prompt for a
        batch). Given embeddings are used as they are; all three must then be given.
        """
        if prompt_embeds is None:
            prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt or [])
            if len(prompts) != batch_size:
                raise ValueError(f"got {len(prompts)} prompts for a batch of {batch_size}")
            prompt_embeds, pooled_prompt_embeds, prompt_attention_mask = self.encode_text(
                prompts, max_sequence_length
            )
        elif pooled_prompt_embeds is None or prompt_attention_mask is None:
            raise ValueError(
                "prompt_embeds needs pooled_prompt_embeds and prompt_attention_mask as well"
            )
        n = num_videos_per_prompt
        return (
            prompt_embeds.repeat_interleave(n, dim=0),
            pooled_prompt_embeds.repeat_interleave(n, dim=0),
            prompt_attention_mask.repeat_interleave(n, dim=0),
        )

    # -- training -----------------------------------------------------------------------------

    def training_prediction(
        self, latents: torch.Tensor, sigma: torch.Tensor, prompts: list[str]
    ) -> torch.Tensor:
        """See :meth:`BundledT2VPipeline.training_prediction` (inputs as the loop gives them)."""
        emb, pooled, mask = self.encode_text(prompts)
        guidance = torch.full_like(sigma, 6.0 * 1000.0)  # the loop's default; no embedder uses it
        return self.transformer(
            hidden_states=latents,
            timestep=sigma * 1000.0,
            encoder_hidden_states=emb,
            encoder_attention_mask=mask.to(emb.dtype),
            pooled_projections=pooled,
            guidance=guidance,
            return_dict=False,
        )[0]

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = "",
        height: int = HEIGHT,
        width: int = WIDTH,
        num_frames: int = NUM_FRAMES,
        num_inference_steps: int = 50,
        sigmas: list[float] | None = None,
        true_cfg_scale: float = 5.0,
        guidance_scale: float = 6.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "np",
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        max_sequence_length: int = MAX_SEQUENCE_LENGTH,
    ) -> MixCacheT2VPipelineOutput | tuple:
        """Generate clips. Arguments follow ``diffusers.HunyuanVideoPipeline.__call__``.

        True CFG runs when ``true_cfg_scale > 1`` and a negative prompt (or negative embeddings)
        is given; the default negative prompt is the empty one. Returns a
        :class:`~mixcache_lab.bundled.pipeline.MixCacheT2VPipelineOutput` (or a 1-tuple).
        """
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        self._check_call(
            prompt, prompt_embeds, height, width, num_frames, output_type, tensor_inputs
        )
        # HunyuanVideoPipeline's rule, so callers switch CFG on and off the same way.
        has_neg_prompt = negative_prompt is not None or (
            negative_prompt_embeds is not None and negative_pooled_prompt_embeds is not None
        )
        do_true_cfg = true_cfg_scale > 1 and has_neg_prompt

        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._current_timestep = None
        self._interrupt = False
        device = self._execution_device

        if prompt is not None:
            batch_size = 1 if isinstance(prompt, str) else len(prompt)
        else:
            batch_size = prompt_embeds.shape[0]

        transformer_dtype = self.transformer.dtype
        prompt_embeds, pooled_prompt_embeds, prompt_attention_mask = self.encode_prompt(
            prompt,
            batch_size,
            num_videos_per_prompt,
            prompt_embeds,
            pooled_prompt_embeds,
            prompt_attention_mask,
            max_sequence_length,
        )
        prompt_embeds = prompt_embeds.to(device=device, dtype=transformer_dtype)
        prompt_attention_mask = prompt_attention_mask.to(device=device, dtype=transformer_dtype)
        pooled_prompt_embeds = pooled_prompt_embeds.to(device=device, dtype=transformer_dtype)
        if do_true_cfg:
            (
                negative_prompt_embeds,
                negative_pooled_prompt_embeds,
                negative_prompt_attention_mask,
            ) = self.encode_prompt(
                negative_prompt,
                batch_size,
                num_videos_per_prompt,
                negative_prompt_embeds,
                negative_pooled_prompt_embeds,
                negative_prompt_attention_mask,
                max_sequence_length,
            )
            negative_prompt_embeds = negative_prompt_embeds.to(
                device=device, dtype=transformer_dtype
            )
            negative_prompt_attention_mask = negative_prompt_attention_mask.to(
                device=device, dtype=transformer_dtype
            )
            negative_pooled_prompt_embeds = negative_pooled_prompt_embeds.to(
                device=device, dtype=transformer_dtype
            )

        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1] if sigmas is None else sigmas
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, sigmas=sigmas
        )
        latents = self.prepare_latents(
            batch_size * num_videos_per_prompt,
            self.transformer.config.in_channels,
            height,
            width,
            num_frames,
            torch.float32,
            device,
            generator,
            latents,
        )
        guidance = (
            torch.tensor(
                [guidance_scale] * latents.shape[0], dtype=transformer_dtype, device=device
            )
            * 1000.0
        )
        self.scheduler.set_begin_index(0)
        self._num_timesteps = len(timesteps)

        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                self._current_timestep = t
                latent_model_input = latents.to(transformer_dtype)
                timestep = t.expand(latents.shape[0]).to(latents.dtype)
                # Same context names and keyword arguments as HunyuanVideoPipeline.
                with self.transformer.cache_context("cond"):
                    noise_pred = self.transformer(
                        hidden_states=latent_model_input,
                        timestep=timestep,
                        encoder_hidden_states=prompt_embeds,
                        encoder_attention_mask=prompt_attention_mask,
                        pooled_projections=pooled_prompt_embeds,
                        guidance=guidance,
                        attention_kwargs=attention_kwargs,
                        return_dict=False,
                    )[0]
                if do_true_cfg:
                    with self.transformer.cache_context("uncond"):
                        neg_noise_pred = self.transformer(
                            hidden_states=latent_model_input,
                            timestep=timestep,
                            encoder_hidden_states=negative_prompt_embeds,
                            encoder_attention_mask=negative_prompt_attention_mask,
                            pooled_projections=negative_pooled_prompt_embeds,
                            guidance=guidance,
                            attention_kwargs=attention_kwargs,
                            return_dict=False,
                        )[0]
                    noise_pred = neg_noise_pred + true_cfg_scale * (noise_pred - neg_noise_pred)

                latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    local = {"latents": latents, "prompt_embeds": prompt_embeds}
                    out = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs})
                    latents = out.pop("latents", latents)
                    prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                progress_bar.update()

        return self._finish(latents, output_type, return_dict)
