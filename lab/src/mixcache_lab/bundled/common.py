"""What the bundled pipelines share: small video DiTs over a pixel-unshuffle "latent".

The fixed tokenizer, the text-encoder config, the pixel<->latent map, the scheduler config and
:class:`BundledT2VPipeline` (noise, input checks, decoding, construction from a config, the
training forward's interface). Each architecture is one module on top of it: the Wan model
(:mod:`mixcache_lab.bundled.pipeline`) and the HunyuanVideo one
(:mod:`mixcache_lab.bundled.hunyuan`); this module imports neither, so they do not import each
other.

The latent space is a fixed invertible map: pixels in [0, 1] -> [-1, 1] -> space-to-depth by
``latent_downscale`` (2) in height/width and ``latent_temporal_downscale`` (2) in time, the first
frame kept alone as in Wan's causal VAE (3 channels -> 24; 9x32x32 px -> 5x16x16 latents; with
the 1x2x2 patch, 320 tokens of 96 values). No VAE, so decoding is exact and cheap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import Whitespace
from tokenizers.processors import TemplateProcessing
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

from .dataset import VOCABULARY

__all__ = [
    "BOS_TOKEN",
    "LATENT_DOWNSCALE",
    "LATENT_TEMPORAL_DOWNSCALE",
    "MAX_SEQUENCE_LENGTH",
    "PAD_TOKEN",
    "TEXT_DIM",
    "UNK_TOKEN",
    "BundledT2VPipeline",
    "MixCacheT2VPipelineOutput",
    "build_tokenizer",
    "latents_to_pixels",
    "num_latent_frames",
    "pixels_to_latents",
    "scheduler_config",
    "text_encoder_config",
]

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
