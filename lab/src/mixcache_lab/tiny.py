"""Tiny, randomly initialised diffusers video pipelines built offline from configs.

These are what the tests and the benchmark's ``tiny`` profile run: real ``WanPipeline`` and
``HunyuanVideoPipeline`` objects (the exact classes users run), shrunk so one forward takes
milliseconds on a CPU. Nothing is downloaded: every component is built from a config, the
tokenizers are fixed-vocabulary word-level tokenizers (tokenizers trained at run time are not
deterministic across processes), and every component is put in ``eval()`` mode
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


def _wan_dit_config(num_layers: int, heads: int = 2, head_dim: int = 16) -> dict[str, Any]:
    """The tiny Wan-architecture transformer config (Wan, Wan I2V, SkyReels-V2)."""
    return {
        "patch_size": (1, 2, 2),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 32,
        "freq_dim": 64,
        "ffn_dim": 64,
        "num_layers": num_layers,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "rope_max_seq_len": 32,
    }


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
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    tokenizer = make_word_tokenizer()
    text_encoder = _t5_encoder(tokenizer, 32, seed, umt5=True)
    vae = _wan_vae(seed + 1)
    torch.manual_seed(seed + 2)
    transformer = WanTransformer3DModel(
        **_wan_dit_config(num_layers, num_attention_heads, attention_head_dim)
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


def _t5_encoder(tokenizer: Any, d_model: int, seed: int, umt5: bool = False) -> Any:
    """A 2-layer T5 encoder for ``tokenizer``: UMT5 (Wan, SkyReels-V2) or T5 (CogVideoX,
    LTX-Video, HunyuanVideo-1.5's glyph encoder). Weights from ``torch.manual_seed(seed)``."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    torch.manual_seed(seed)
    return model_cls(
        config_cls(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=8,
            d_ff=64 if umt5 else 32,
            num_layers=2,
            num_heads=4 if umt5 else 2,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    )


def _finish(pipe: Any) -> Any:
    pipe.set_progress_bar_config(disable=True)
    return _eval_all(pipe)


def make_tiny_cogvideox_pipeline(
    version: str = "1.0", image_to_video: bool = False, num_layers: int = 4, seed: int = 0
) -> Any:
    """A real ``CogVideoXPipeline`` (or ``CogVideoXImageToVideoPipeline``) with a tiny transformer.

    ``version="1.0"``: sinusoidal positions, no temporal patching (CogVideoX-2B/5B);
    ``"1.5"``: rotary positions, ``patch_size_t=2`` and, for image-to-video, the ``ofs``
    embedding (CogVideoX1.5-5B). Image-to-video doubles the transformer's input channels (the
    image latents are concatenated on channels). Call with 9 frames at 32x32 (3 latent frames).
    """
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    if version not in ("1.0", "1.5"):
        raise ValueError(f"CogVideoX version must be '1.0' or '1.5', got {version!r}")
    v15 = version == "1.5"
    tokenizer = make_word_tokenizer(model_max_length=16)
    text_encoder = _t5_encoder(tokenizer, 32, seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLCogVideoX(
        in_channels=3,
        out_channels=3,
        down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=4,
    )
    torch.manual_seed(seed + 2)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=8 if image_to_video else 4,
        out_channels=4,
        time_embed_dim=2,
        ofs_embed_dim=2 if (v15 and image_to_video) else None,
        text_embed_dim=32,
        num_layers=num_layers,
        sample_width=4,
        sample_height=4,
        sample_frames=9,
        patch_size=2,
        patch_size_t=2 if v15 else None,
        temporal_compression_ratio=4,
        max_text_seq_length=16,
        use_rotary_positional_embeddings=v15,
        use_learned_positional_embeddings=False,
    )
    scheduler = CogVideoXDDIMScheduler(timestep_spacing="trailing")
    cls = CogVideoXImageToVideoPipeline if image_to_video else CogVideoXPipeline
    return _finish(
        cls(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            transformer=transformer,
            scheduler=scheduler,
        )
    )


def make_tiny_mochi_pipeline(num_layers: int = 4, seed: int = 0) -> Any:
    """A real ``MochiPipeline`` with a tiny ``MochiTransformer3DModel`` and ``AutoencoderKLMochi``.

    Call with 7 frames at 32x32 (2 latent frames of 4x4: the VAE compresses 6x in time, 8x in
    space). It runs cond and uncond as one forward of the doubled batch, like CogVideoX.
    """
    from diffusers import (
        AutoencoderKLMochi,
        FlowMatchEulerDiscreteScheduler,
        MochiPipeline,
        MochiTransformer3DModel,
    )

    tokenizer = make_word_tokenizer(model_max_length=16)
    text_encoder = _t5_encoder(tokenizer, 32, seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLMochi(
        latent_channels=12,
        out_channels=3,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
    )
    torch.manual_seed(seed + 2)
    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        pooled_projection_dim=16,
        in_channels=12,
        text_embed_dim=32,
        time_embed_dim=4,
        max_sequence_length=16,
    )
    return _finish(
        MochiPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


def make_tiny_ltx_pipeline(
    image_to_video: bool = False, num_layers: int = 4, seed: int = 0, condition: bool = False
) -> Any:
    """A real ``LTXPipeline`` (or ``LTXImageToVideoPipeline``, or with ``condition``
    ``LTXConditionPipeline``) with a tiny ``LTXVideoTransformer3DModel`` and
    ``AutoencoderKLLTXVideo``."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXConditionPipeline,
        LTXImageToVideoPipeline,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = make_word_tokenizer(model_max_length=16)
    text_encoder = _t5_encoder(tokenizer, 32, seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False, False, False, False, False),
        upsample_residual=(False, False, False, False),
        upsample_factor=(1, 1, 1, 1),
        patch_size=1,
        patch_size_t=1,
        encoder_causal=True,
        decoder_causal=False,
    )
    vae.use_framewise_encoding = False
    vae.use_framewise_decoding = False
    torch.manual_seed(seed + 2)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8,
        out_channels=8,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=4,
        attention_head_dim=8,
        cross_attention_dim=32,
        num_layers=num_layers,
        caption_channels=32,
    )
    if condition and image_to_video:
        raise ValueError("condition=True builds LTXConditionPipeline; pass image_to_video=False")
    cls = LTXImageToVideoPipeline if image_to_video else LTXPipeline
    if condition:
        cls = LTXConditionPipeline
    return _finish(
        cls(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
    )


def make_tiny_hunyuan15_pipeline(num_layers: int = 4, seed: int = 0) -> Any:
    """A real ``HunyuanVideo15Pipeline`` with a tiny ``HunyuanVideo15Transformer3DModel``.

    The Qwen2.5-VL text model and the ByT5 glyph encoder are tiny random models; the word-level
    tokenizer gets a minimal chat template, and the pipeline's prompt-template crop (tied to the
    real Qwen tokenizer) is set to 0. Classifier-free guidance through the pipeline's guider.
    """
    from diffusers import (
        AutoencoderKLHunyuanVideo15,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideo15Pipeline,
        HunyuanVideo15Transformer3DModel,
    )
    from diffusers.guiders import ClassifierFreeGuidance
    from transformers import ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    tokenizer = make_word_tokenizer(add_eos=False, model_max_length=64)
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
    torch.manual_seed(seed)
    text_encoder = Qwen2_5_VLTextModel(
        Qwen2_5_VLTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
    )
    tokenizer_2 = ByT5Tokenizer()
    text_encoder_2 = _t5_encoder(tokenizer_2, 32, seed + 1)
    torch.manual_seed(seed + 2)
    vae = AutoencoderKLHunyuanVideo15(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 16),
        layers_per_block=1,
        spatial_compression_ratio=4,
        temporal_compression_ratio=2,
        downsample_match_channel=False,
        upsample_match_channel=False,
    )
    torch.manual_seed(seed + 3)
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=9,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=num_layers,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=1,
        patch_size_t=1,
        text_embed_dim=16,
        text_embed_2_dim=32,
        image_embed_dim=12,
        rope_axes_dim=(2, 2, 4),
        target_size=16,
        task_type="t2v",
    )
    pipe = HunyuanVideo15Pipeline(
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        guider=ClassifierFreeGuidance(guidance_scale=5.0),
    )
    # The real template's system prompt is cropped by token count of the real Qwen tokenizer.
    pipe.prompt_template_encode_start_idx = 0
    pipe.tokenizer_max_length = 16
    pipe.tokenizer_2_max_length = 16
    return _finish(pipe)


def _wan_vae(seed: int) -> Any:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


def make_tiny_skyreels_v2_pipeline(num_layers: int = 6, seed: int = 0) -> Any:
    """A real ``SkyReelsV2Pipeline`` (text-to-video) with a tiny ``SkyReelsV2Transformer3DModel``
    (Wan's architecture), the tiny Wan VAE and a UMT5 encoder."""
    from diffusers import (
        SkyReelsV2Pipeline,
        SkyReelsV2Transformer3DModel,
        UniPCMultistepScheduler,
    )

    tokenizer = make_word_tokenizer()
    text_encoder = _t5_encoder(tokenizer, 32, seed, umt5=True)
    vae = _wan_vae(seed + 1)
    torch.manual_seed(seed + 2)
    transformer = SkyReelsV2Transformer3DModel(**_wan_dit_config(num_layers))
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=8.0
    )
    return _finish(
        SkyReelsV2Pipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
        )
    )


def make_tiny_wan_i2v_pipeline(num_layers: int = 6, seed: int = 0) -> Any:
    """A real ``WanImageToVideoPipeline`` (Wan 2.1 I2V): a ``WanTransformer3DModel`` with 36 input
    channels (latents + mask + image latents) and image cross-attention, a tiny CLIP vision
    encoder built from its config."""
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    tokenizer = make_word_tokenizer()
    text_encoder = _t5_encoder(tokenizer, 32, seed, umt5=True)
    vae = _wan_vae(seed + 1)
    torch.manual_seed(seed + 2)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=4,
            projection_dim=4,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=16,
            patch_size=8,
        )
    )
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    torch.manual_seed(seed + 3)
    # 36 input channels: noisy latents (16) + first-frame mask (4) + image latents (16).
    transformer = WanTransformer3DModel(
        **{**_wan_dit_config(num_layers), "in_channels": 36}, image_dim=4
    )
    return _finish(
        WanImageToVideoPipeline(
            tokenizer=tokenizer,
            text_encoder=text_encoder,
            vae=vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            image_processor=image_processor,
            image_encoder=image_encoder,
            transformer=transformer,
        )
    )


def make_tiny_wan_v2v_pipeline(num_layers: int = 6, seed: int = 0) -> Any:
    """A real ``WanVideoToVideoPipeline`` on the components of :func:`make_tiny_wan_pipeline`
    (it calls the transformer without cache contexts, cond then uncond)."""
    from diffusers import WanVideoToVideoPipeline

    base = make_tiny_wan_pipeline(num_layers=num_layers, seed=seed)
    return _finish(
        WanVideoToVideoPipeline(
            tokenizer=base.tokenizer,
            text_encoder=base.text_encoder,
            vae=base.vae,
            transformer=base.transformer,
            scheduler=base.scheduler,
        )
    )


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

_NEG = "blurry low quality video"
_COG_CALL: dict[str, Any] = {
    "height": 32,
    "width": 32,
    "num_frames": 9,
    "max_sequence_length": 16,
    "guidance_scale": 6.0,
    "negative_prompt": _NEG,
}
_LTX_CALL: dict[str, Any] = {**_COG_CALL, "guidance_scale": 3.0}
_MOCHI_CALL: dict[str, Any] = {**_COG_CALL, "num_frames": 7, "guidance_scale": 4.5}
_HUNYUAN15_CALL: dict[str, Any] = {
    "height": 16,
    "width": 16,
    "num_frames": 9,
    "negative_prompt": _NEG,
}


def tiny_image(size: int = 32) -> Any:
    """A deterministic RGB test image (a gradient) for the image-to-video pipelines."""
    from PIL import Image

    x = torch.linspace(0, 255, size).to(torch.uint8)
    rgb = torch.stack([x.expand(size, size), x.expand(size, size).T, 255 - x.expand(size, size)])
    return Image.fromarray(rgb.permute(1, 2, 0).numpy())


def tiny_video(frames: int = 9, size: int = 32) -> list[Any]:
    """A deterministic list of frames (the image, rolled one pixel per frame) for video-to-video."""
    import numpy as np
    from PIL import Image

    base = np.asarray(tiny_image(size))
    return [Image.fromarray(np.roll(base, i, axis=1)) for i in range(frames)]


class _Lazy(dict):  # type: ignore[type-arg]
    """Call kwargs whose image/video values are built when read (PIL imported lazily)."""

    def __init__(self, base: dict[str, Any], **makers: Callable[[], Any]) -> None:
        super().__init__(base)
        self._makers = makers

    def materialise(self) -> dict[str, Any]:
        return {**self, **{k: make() for k, make in self._makers.items()}}


#: Tiny pipelines by family name (the bench's ``tiny`` profile and the family tests read it).
TINY_PIPELINES: dict[str, TinyFamily] = {
    "wan": TinyFamily(make_tiny_wan_pipeline, cfg_batched=False, call_kwargs=_WAN_CALL),
    "hunyuan_video": TinyFamily(
        make_tiny_hunyuan_pipeline, cfg_batched=False, call_kwargs=_HUNYUAN_CALL
    ),
    "cogvideox": TinyFamily(make_tiny_cogvideox_pipeline, cfg_batched=True, call_kwargs=_COG_CALL),
    "cogvideox_1_5_i2v": TinyFamily(
        lambda: make_tiny_cogvideox_pipeline("1.5", image_to_video=True),
        cfg_batched=True,
        call_kwargs=_Lazy(_COG_CALL, image=tiny_image),
    ),
    "ltx": TinyFamily(make_tiny_ltx_pipeline, cfg_batched=True, call_kwargs=_LTX_CALL),
    "ltx_i2v": TinyFamily(
        lambda: make_tiny_ltx_pipeline(image_to_video=True),
        cfg_batched=True,
        call_kwargs=_Lazy(_LTX_CALL, image=tiny_image),
    ),
    # Conditioned on an image: per-token timesteps and per-item video_coords at twice the batch.
    "ltx_condition": TinyFamily(
        lambda: make_tiny_ltx_pipeline(condition=True),
        cfg_batched=True,
        call_kwargs=_Lazy(_LTX_CALL, image=tiny_image),
    ),
    "mochi": TinyFamily(make_tiny_mochi_pipeline, cfg_batched=True, call_kwargs=_MOCHI_CALL),
    "hunyuan_video_1_5": TinyFamily(
        make_tiny_hunyuan15_pipeline, cfg_batched=False, call_kwargs=_HUNYUAN15_CALL
    ),
    "skyreels_v2": TinyFamily(
        make_tiny_skyreels_v2_pipeline, cfg_batched=False, call_kwargs=_WAN_CALL
    ),
    "wan_i2v": TinyFamily(
        make_tiny_wan_i2v_pipeline,
        cfg_batched=False,
        call_kwargs=_Lazy(_WAN_CALL, image=tiny_image),
    ),
    "wan_v2v": TinyFamily(
        make_tiny_wan_v2v_pipeline,
        cfg_batched=False,
        # No num_frames: video-to-video takes the frame count from the input video.
        call_kwargs=_Lazy(
            {k: v for k, v in _WAN_CALL.items() if k != "num_frames"} | {"strength": 0.8},
            video=tiny_video,
        ),
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
    # Wan video-to-video drops height/width/num_frames: they come from the input video.
    base = entry.call_kwargs
    kwargs = base.materialise() if isinstance(base, _Lazy) else dict(base)
    kwargs.update(num_inference_steps=num_inference_steps, output_type="latent")
    kwargs.update(overrides)
    return kwargs
