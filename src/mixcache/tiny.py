"""Tiny, randomly initialised diffusers video pipelines built offline from configs.

These are what the tests and the benchmark's ``tiny`` profile run: real ``WanPipeline`` and
``HunyuanVideoPipeline`` objects (the exact classes users run), shrunk so one forward takes
milliseconds on a CPU. Nothing is downloaded: every component is built from a config, the
tokenizers are fixed-vocabulary word-level tokenizers (tokenizers trained at run time are not
deterministic across processes, see env-notes), and every component is put in ``eval()`` mode
(T5 dropout would otherwise make identical runs differ).

Random weights give meaningless pictures; compare *latents* (``output_type="latent"``) when
checking cache behaviour, since tiny VAEs squash differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "TINY_PIPELINES",
    "TINY_VOCAB",
    "TinyFamily",
    "make_tiny_hunyuan_pipeline",
    "make_tiny_wan_pipeline",
    "make_word_tokenizer",
    "tiny_call_kwargs",
]

# Words the tiny pipelines know; anything else maps to [UNK]. Fixed, so token ids are identical in
# every process.
TINY_VOCAB: tuple[str, ...] = (
    "a",
    "an",
    "the",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "black",
    "cat",
    "dog",
    "circle",
    "square",
    "triangle",
    "moving",
    "left",
    "right",
    "up",
    "down",
    "walks",
    "on",
    "beach",
    "in",
    "snow",
    "blurry",
    "low",
    "quality",
    "video",
)


def make_word_tokenizer(
    vocab: tuple[str, ...] = TINY_VOCAB, model_max_length: int = 64, add_eos: bool = True
) -> Any:
    """Build a deterministic word-level ``PreTrainedTokenizerFast``.

    Ids: 0 = ``<pad>``, 1 = ``</s>``, 2 = ``<unk>``, then ``vocab`` in order. Text is lower-cased
    and split on whitespace and punctuation. With ``add_eos`` an end-of-sequence token is appended,
    as T5-style encoders expect.
    """
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    ids = {tok: i for i, tok in enumerate([*specials, *vocab])}
    tok = Tokenizer(WordLevel(vocab=ids, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_eos:
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def _eval_all(pipe: Any) -> Any:
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            component.requires_grad_(False)
    return pipe


def make_tiny_wan_pipeline(
    num_layers: int = 6,
    num_attention_heads: int = 2,
    attention_head_dim: int = 16,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A real ``diffusers.WanPipeline`` with a tiny random ``WanTransformer3DModel``.

    ``num_layers`` blocks (default 6, so block-span reuse has a head, a middle and a tail),
    a 2-layer UMT5 text encoder, a tiny ``AutoencoderKLWan`` and the flow-matching UniPC scheduler
    Wan ships with. All weights come from ``torch.manual_seed(seed)``.
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = make_word_tokenizer()
    text_dim = 32
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(
            vocab_size=len(tokenizer),
            d_model=text_dim,
            d_kv=8,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )
    torch.manual_seed(seed + 2)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        in_channels=16,
        out_channels=16,
        text_dim=text_dim,
        freq_dim=64,
        ffn_dim=64,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        transformer=transformer if dtype == torch.float32 else transformer.to(dtype),
        scheduler=scheduler,
    )
    pipe.set_progress_bar_config(disable=True)
    return _eval_all(pipe)


def make_tiny_hunyuan_pipeline(
    num_layers: int = 2,
    num_single_layers: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Any:
    """A real ``diffusers.HunyuanVideoPipeline`` with a tiny random transformer.

    ``num_layers`` dual-stream plus ``num_single_layers`` single-stream blocks (default 2 + 4),
    a tiny Llama and CLIP text encoder with word-level tokenizers, a tiny
    ``AutoencoderKLHunyuanVideo``. Call it with :func:`tiny_call_kwargs` ("hunyuan"), which passes
    a prompt template without the long system prompt of the real model (its ``crop_start`` is
    tied to the real Llama tokenizer).
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    tokenizer = make_word_tokenizer(add_eos=False)
    tokenizer_2 = make_word_tokenizer(add_eos=False, model_max_length=77)
    text_dim, pooled_dim = 16, 8
    torch.manual_seed(seed)
    text_encoder = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
        )
    )
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=pooled_dim,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
            projection_dim=pooled_dim,
        )
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4,
        up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        act_fn="silu",
        norm_num_groups=4,
        scaling_factor=0.476986,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    )
    torch.manual_seed(seed + 3)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=12,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_refiner_layers=1,
        patch_size=1,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        rope_axes_dim=(4, 4, 4),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    pipe = HunyuanVideoPipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer if dtype == torch.float32 else transformer.to(dtype),
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
    )
    pipe.set_progress_bar_config(disable=True)
    return _eval_all(pipe)


@dataclass(frozen=True)
class TinyFamily:
    """One tiny pipeline family: how to build it and how to call it.

    Attributes:
        build: returns a fresh tiny pipeline (random weights from a fixed seed, ``eval()``).
        cfg_batched: the pipeline runs cond and uncond as ONE forward of a doubled batch
            (``cache_context("cond_uncond")``), a fact of the pipeline class read from its
            ``__call__``; False: separate calls per branch.
        call_kwargs: default call arguments (small frames, short text, latents out); see
            :func:`tiny_call_kwargs`.
    """

    build: Callable[[], Any]
    cfg_batched: bool
    call_kwargs: dict[str, Any] = field(default_factory=dict)


_WAN_CALL: dict[str, Any] = {
    "height": 32,
    "width": 32,
    "num_frames": 9,
    "max_sequence_length": 16,
    "guidance_scale": 5.0,
    "negative_prompt": "blurry low quality video",
}
_HUNYUAN_CALL: dict[str, Any] = {
    "height": 32,
    "width": 32,
    "num_frames": 9,
    "max_sequence_length": 16,
    "guidance_scale": 6.0,
    "prompt_template": {"template": "{}", "crop_start": 0},
}

#: Tiny pipelines by family name (the bench's ``tiny`` profile and the family tests read it).
TINY_PIPELINES: dict[str, TinyFamily] = {
    "wan": TinyFamily(make_tiny_wan_pipeline, cfg_batched=False, call_kwargs=_WAN_CALL),
    "hunyuan_video": TinyFamily(
        make_tiny_hunyuan_pipeline, cfg_batched=False, call_kwargs=_HUNYUAN_CALL
    ),
}
_ALIASES = {"hunyuan": "hunyuan_video"}


def tiny_call_kwargs(
    family: str, num_inference_steps: int = 10, **overrides: Any
) -> dict[str, Any]:
    """Default call arguments for the tiny pipeline of ``family`` (a :data:`TINY_PIPELINES` key;
    ``"hunyuan"`` is accepted for ``"hunyuan_video"``).

    Small frames (a few dozen latent tokens), latents as output, short text sequences. Pass
    ``generator=torch.Generator().manual_seed(s)`` yourself for reproducible runs.
    """
    entry = TINY_PIPELINES.get(_ALIASES.get(family, family))
    if entry is None:
        raise ValueError(
            f"unknown tiny family {family!r}; expected one of {', '.join(TINY_PIPELINES)}"
        )
    kwargs = dict(entry.call_kwargs)
    kwargs.update(num_inference_steps=num_inference_steps, output_type="latent")
    kwargs.update(overrides)
    return kwargs
