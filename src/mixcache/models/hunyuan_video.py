"""HunyuanVideo (``diffusers.HunyuanVideoTransformer3DModel``).

Two lists of blocks, run one after the other: ``transformer_blocks`` (dual-stream) then
``single_transformer_blocks``; both take ``(hidden_states, encoder_hidden_states, temb, ...)``
and return ``(hidden_states, encoder_hidden_states)``. MixCache treats them as one stack of
``len(a) + len(b)`` blocks; both the lists (diffusers' block identifiers, in its order) and the
block returns (its block registry) come from diffusers. ``HunyuanVideoPipeline`` runs one pass
(guidance-distilled) unless ``true_cfg_scale > 1`` with a negative prompt; its cache contexts
carry only the name, so steps are detected from the timestep.
"""

from __future__ import annotations

from .spec import ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import HunyuanVideoTransformer3DModel

    return (HunyuanVideoTransformer3DModel,)


HUNYUAN_VIDEO = register(
    ModelSpec(
        family="hunyuan_video",
        class_names=("HunyuanVideoTransformer3DModel",),
        load_classes=_classes,
    )
)
