"""Wan 2.1 / 2.2 (``diffusers.WanTransformer3DModel``).

Blocks: ``blocks[i](hidden_states, encoder_hidden_states, temb, rotary_emb) -> hidden_states``.
``WanPipeline`` calls the transformer inside ``cache_context("cond"/"uncond", step_index=...,
sigma=..., num_inference_steps=...)``; with ``guidance_scale <= 1`` only "cond" runs.
"""

from __future__ import annotations

from .spec import ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import WanTransformer3DModel

    return (WanTransformer3DModel,)


WAN = register(
    ModelSpec(
        family="wan",
        class_names=("WanTransformer3DModel",),
        load_classes=_classes,
        block_lists=("blocks",),
        returns_encoder=False,
    )
)
