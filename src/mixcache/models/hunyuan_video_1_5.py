"""HunyuanVideo-1.5 (``diffusers.HunyuanVideo15Transformer3DModel``).

Blocks (``transformer_blocks``) take ``(hidden_states, encoder_hidden_states, temb,
attention_mask, freqs_cis)`` and return ``(hidden_states, encoder_hidden_states)``; the block
class is not in diffusers' block registry, so that is stated here. ``HunyuanVideo15Pipeline`` and
its image-to-video pipeline run classifier-free guidance through their guider: one forward per
guider batch under ``cache_context("pred_cond")`` then ``cache_context("pred_uncond")`` (cond
first, the reference); with guidance off only ``"pred_cond"`` runs. The contexts carry no step
index, so steps come from the timestep (second argument).
"""

from __future__ import annotations

from .spec import ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import HunyuanVideo15Transformer3DModel

    return (HunyuanVideo15Transformer3DModel,)


HUNYUAN_VIDEO_1_5 = register(
    ModelSpec(
        family="hunyuan_video_1_5",
        class_names=("HunyuanVideo15Transformer3DModel",),
        load_classes=_classes,
        returns_encoder=True,
    )
)
