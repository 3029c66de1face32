"""The bundled text-to-video pipelines: small video DiTs over a pixel-unshuffle "latent".

What every bundled model shares lives here: the fixed tokenizer, the text-encoder config, the
pixel<->latent map, the scheduler config and :class:`BundledT2VPipeline` (noise, input checks,
decoding, construction from a config, the training forward's interface). A second architecture
is one module (:mod:`mixcache.bundled.hunyuan`) on top of it.

``MixCacheT2VPipeline`` (the Wan model) is a ``diffusers.DiffusionPipeline`` whose denoising loop
calls the transformer exactly as ``diffusers.WanPipeline`` does (cond and uncond as two separate
calls inside ``transformer.cache_context("cond"/"uncond", step_index=..., sigma=...,
num_inference_steps=...)``), so any cache written for Wan sees the same call pattern here.

Components:
- ``transformer``: ``diffusers.WanTransformer3DModel`` (small, see :func:`transformer_config`);
- ``text_encoder``: ``transformers.UMT5EncoderModel`` (tiny, trained with the transformer);
- ``tokenizer``: a fixed-vocabulary word-level ``PreTrainedTokenizerFast`` (deterministic);
- ``scheduler``: ``diffusers.FlowMatchEulerDiscreteScheduler`` with a flow shift, as in Wan.

The latent space is a fixed invertible map: pixels in [0, 1] -> [-1, 1] -> space-to-depth by
``latent_downscale`` (2) in height/width and ``latent_temporal_downscale`` (2) in time, the first
frame kept alone as in Wan's causal VAE (3 channels -> 24; 9x32x32 px -> 5x16x16 latents; with
the 1x2x2 patch, 320 tokens of 96 values). No VAE, so decoding is exact and cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from .dataset import HEIGHT, NUM_FRAMES, VOCABULARY, WIDTH

logger = logging.getLogger("mixcache")

PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"
BOS_TOKEN = "<s>"
MAX_SEQUENCE_LENGTH = 8
LATENT_DOWNSCALE = 2
LATENT_TEMPORAL_DOWNSCALE = 2
TEXT_DIM = 64


def build_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """The fixed word-level tokenizer: ids are assigned from :data:`VOCABULARY` in order.

    A tokenizer *trained* at run time is not deterministic across processes; a fixed vocabulary
    is, so the same prompt always gives the same ids. With ``bos`` every sequence starts with
    ``<s>`` (id 2, words from 3), as Llama tokenizers do: then even the empty prompt has one
    attended token, which HunyuanVideo's text refiner needs (it averages over the mask).
    """
    vocab = {PAD_TOKEN: 0, UNK_TOKEN: 1}
    if bos:
        vocab[BOS_TOKEN] = 2
    for w in VOCABULARY:
        vocab[w] = len(vocab)
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.normalizer = Lowercase()
    tok.pre_tokenizer = Whitespace()
    if bos:
        tok.post_processor = TemplateProcessing(
            single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        **({"bos_token": BOS_TOKEN} if bos else {}),
        model_max_length=MAX_SEQUENCE_LENGTH,
    )


def text_encoder_config(vocab_size: int) -> UMT5Config:
    """A one-layer UMT5 encoder (the Wan text-encoder family, shrunk to 64 wide)."""
    return UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=16,
        d_ff=128,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


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


def scheduler_config(shift: float = 3.0) -> dict[str, Any]:
    """Flow-matching Euler scheduler with a flow shift (Wan uses shift 3-5; we use 3)."""
    return {"num_train_timesteps": 1000, "shift": shift}


def pixels_to_latents(
    pixels: torch.Tensor,
    downscale: int = LATENT_DOWNSCALE,
    temporal_downscale: int = LATENT_TEMPORAL_DOWNSCALE,
) -> torch.Tensor:
    """(B, F, H, W, 3) in [0, 1] -> (B, 3*rt*r*r, 1 + (F-1)/rt, H/r, W/r) in [-1, 1].

    Space-to-depth by ``r`` in height and width and by ``rt`` in time. As in Wan's causal
    video VAE, the first latent frame holds the first frame alone: it is repeated ``rt`` times
    before grouping, so F must be 1 + a multiple of ``rt``. :func:`latents_to_pixels` inverts
    this exactly (the repeated copies are dropped).
    """
    b, f, h, w, c = pixels.shape
    r, rt = downscale, temporal_downscale
    if (f - 1) % rt:
        raise ValueError(f"num_frames must be 1 + a multiple of {rt}, got {f}")
    x = pixels * 2.0 - 1.0
    if rt > 1:
        x = torch.cat([x[:, :1].expand(b, rt - 1, h, w, c), x], dim=1)
    fl = x.shape[1] // rt
    x = x.reshape(b, fl, rt, h // r, r, w // r, r, c)
    # channels ordered (c, rt, ry, rx), like a 3-D pixel_unshuffle
    x = x.permute(0, 7, 2, 4, 6, 1, 3, 5)
    return x.reshape(b, c * rt * r * r, fl, h // r, w // r).contiguous()


def latents_to_pixels(
    latents: torch.Tensor,
    downscale: int = LATENT_DOWNSCALE,
    temporal_downscale: int = LATENT_TEMPORAL_DOWNSCALE,
) -> torch.Tensor:
    """(B, C, Fl, h, w) -> (B, 1 + (Fl-1)*rt, h*r, w*r, 3) in [0, 1] (clamped)."""
    b, cc, fl, h, w = latents.shape
    r, rt = downscale, temporal_downscale
    c = cc // (rt * r * r)
    x = latents.reshape(b, c, rt, r, r, fl, h, w)
    x = x.permute(0, 5, 2, 6, 3, 7, 4, 1)
    x = x.reshape(b, fl * rt, h * r, w * r, c)[:, rt - 1 :]
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def num_latent_frames(num_frames: int, temporal_downscale: int = LATENT_TEMPORAL_DOWNSCALE) -> int:
    """Latent frames for a clip of ``num_frames`` frames."""
    return (num_frames - 1) // temporal_downscale + 1


@dataclass
class MixCacheT2VPipelineOutput(BaseOutput):
    """Output of :class:`MixCacheT2VPipeline`.

    ``frames``: (B, F, H, W, 3) float array in [0, 1] for ``output_type="np"``; a tensor of the
    same layout for ``"pt"``; the final latents (B, C, F, h, w) for ``"latent"``.
    """

    frames: np.ndarray | torch.Tensor


class BundledT2VPipeline(DiffusionPipeline):
    """What the bundled pipelines share; subclasses set the transformer and the denoising loop.

    A subclass sets :attr:`arch` (its ``train --arch`` name), :attr:`transformer_class`,
    :attr:`arch_defaults` (the architecture's training defaults: the keyword arguments of
    :meth:`transformer_config`), :attr:`cfg_argument` (the ``__call__`` argument that is the CFG
    scale) and implements :meth:`transformer_config` and :meth:`training_prediction`. Everything
    else (tokenizer, text encoder, scheduler, latent map, noise, decoding) is the same.
    """

    arch: ClassVar[str]
    transformer_class: ClassVar[type[torch.nn.Module]]
    arch_defaults: ClassVar[dict[str, Any]]
    cfg_argument: ClassVar[str] = "guidance_scale"
    tokenizer_bos: ClassVar[bool] = False
    model_cpu_offload_seq = "text_encoder->transformer"

    def _register_components(
        self,
        tokenizer: PreTrainedTokenizerFast,
        text_encoder: UMT5EncoderModel,
        transformer: torch.nn.Module,
        scheduler: FlowMatchEulerDiscreteScheduler,
        latent_downscale: int,
        latent_temporal_downscale: int,
    ) -> None:
        self.register_modules(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            transformer=transformer,
            scheduler=scheduler,
        )
        self.register_to_config(
            latent_downscale=latent_downscale, latent_temporal_downscale=latent_temporal_downscale
        )

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """diffusers' loader, then every weight copied into memory of its own.

        Loaded weights can sit at addresses CPU kernels treat differently from freshly
        allocated ones (seen on AMD EPYC: the same weights gave outputs 1.6e-6 apart), so a
        pipeline saved and loaded again would not reproduce its outputs bit for bit. The
        models are a few MB: the copy is cheap, and it also releases the files.
        """
        pipe = super().from_pretrained(*args, **kwargs)
        with torch.no_grad():
            for module in (pipe.transformer, pipe.text_encoder):
                for t in (*module.parameters(), *module.buffers()):
                    t.data = t.data.clone()
        return pipe

    @staticmethod
    def transformer_config(**kwargs: Any) -> dict[str, Any]:
        """Keyword arguments of the transformer for the given architecture settings."""
        raise NotImplementedError

    @classmethod
    def from_config_random(
        cls, seed: int = 0, shift: float = 3.0, **transformer_kwargs: Any
    ) -> BundledT2VPipeline:
        """A randomly initialised pipeline with the bundled architecture (for training/tests)."""
        torch.manual_seed(seed)
        tokenizer = build_tokenizer(bos=cls.tokenizer_bos)
        text_encoder = UMT5EncoderModel(text_encoder_config(len(tokenizer)))
        transformer = cls.transformer_class(**cls.transformer_config(**transformer_kwargs))
        scheduler = FlowMatchEulerDiscreteScheduler(**scheduler_config(shift))
        pipe = cls(tokenizer, text_encoder, transformer, scheduler)
        pipe.text_encoder.eval()
        pipe.transformer.eval()
        return pipe

    @classmethod
    def cfg_kwargs(cls, scale: float) -> dict[str, Any]:
        """``__call__`` arguments that run classifier-free guidance at ``scale``."""
        return {cls.cfg_argument: scale}

    # -- training -----------------------------------------------------------------------------

    def training_prediction(
        self, latents: torch.Tensor, sigma: torch.Tensor, prompts: list[str]
    ) -> torch.Tensor:
        """The transformer's prediction for noisy ``latents`` at noise level ``sigma`` (B,).

        Called by the trainer with gradients on; a dropped prompt (for CFG) is ``""``. The
        transformer gets the same inputs the denoising loop gives it.
        """
        raise NotImplementedError

    # -- shared parts of the denoising loop ---------------------------------------------------

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def current_timestep(self) -> torch.Tensor | None:
        return self._current_timestep

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    def tokenize(
        self, prompt: list[str], max_sequence_length: int = MAX_SEQUENCE_LENGTH
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask (B, max_sequence_length), on the text encoder's device."""
        inputs = self.tokenizer(
            prompt,
            padding="max_length",
            max_length=max_sequence_length,
            truncation=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        device = self.text_encoder.device
        return inputs.input_ids.to(device), inputs.attention_mask.to(device)

    def prepare_latents(
        self,
        batch_size: int,
        num_channels_latents: int,
        height: int,
        width: int,
        num_frames: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise of shape (B, C, 1 + (F-1)/rt, H/r, W/r), or the given latents."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        r = self.config.latent_downscale
        fl = num_latent_frames(num_frames, self.config.latent_temporal_downscale)
        shape = (batch_size, num_channels_latents, fl, height // r, width // r)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    def _check_call(
        self,
        prompt: Any,
        prompt_embeds: torch.Tensor | None,
        height: int,
        width: int,
        num_frames: int,
        output_type: str,
        tensor_inputs: list[str],
    ) -> None:
        """Validate ``__call__`` arguments before any work (clear messages, not shape errors)."""
        if prompt is None and prompt_embeds is None:
            raise ValueError("pass `prompt` or `prompt_embeds`")
        if output_type not in ("np", "pt", "latent"):
            raise ValueError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        r, rt = self.config.latent_downscale, self.config.latent_temporal_downscale
        patch = self.transformer.config.patch_size
        p = patch[-1] if isinstance(patch, (tuple, list)) else patch  # Wan: (t, h, w); Hunyuan: int
        if height % (r * p) or width % (r * p):
            raise ValueError(f"height and width must be multiples of {r * p}")
        if num_frames < 1 or (num_frames - 1) % rt:
            raise ValueError(f"num_frames must be 1 + a multiple of {rt}, got {num_frames}")
        for k in tensor_inputs:
            if k not in self._callback_tensor_inputs:
                raise ValueError(
                    f"callback tensor input {k!r} not in {self._callback_tensor_inputs}"
                )

    def _finish(
        self, latents: torch.Tensor, output_type: str, return_dict: bool
    ) -> MixCacheT2VPipelineOutput | tuple:
        """Decode (exactly: the latent map is invertible) and end the call as diffusers does."""
        self._current_timestep = None
        if output_type == "latent":
            video: np.ndarray | torch.Tensor = latents
        else:
            r, rt = self.config.latent_downscale, self.config.latent_temporal_downscale
            pixels = latents_to_pixels(latents.float(), r, rt)
            video = pixels.cpu().numpy() if output_type == "np" else pixels
        # Real diffusers pipelines end here; cache hooks reset their per-run state on it.
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return MixCacheT2VPipelineOutput(frames=video)


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
    from .hunyuan import MixCacheHunyuanT2VPipeline

    classes = {c.__name__: c for c in (MixCacheT2VPipeline, MixCacheHunyuanT2VPipeline)}
    if class_name not in classes:
        raise ValueError(
            f"{class_name!r} is not a bundled pipeline class; known: {', '.join(classes)}"
        )
    return classes[class_name]


def pipeline_class_for_arch(arch: str) -> type[BundledT2VPipeline]:
    """The bundled pipeline class of a training architecture (``train --arch``)."""
    from .hunyuan import MixCacheHunyuanT2VPipeline

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
