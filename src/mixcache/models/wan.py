"""Wan 2.1 / 2.2 (``diffusers.WanTransformer3DModel``), and the Wan variants MixCache refuses.

Blocks: ``blocks[i](hidden_states, encoder_hidden_states, temb, rotary_emb) -> hidden_states``
(found by diffusers' block identifiers; the return from its block registry). ``WanPipeline`` calls
the transformer inside ``cache_context("cond"/"uncond", step_index=..., sigma=...,
num_inference_steps=...)``; with ``guidance_scale <= 1`` only "cond" runs.
``WanImageToVideoPipeline`` uses the same class (36 input channels, image cross-attention) with
name-only contexts; ``WanVideoToVideoPipeline`` calls it without contexts (cond then uncond at the
same timestep: the controller gives the second call its own slot).

Refused: ``WanVACETransformer3DModel`` and ``WanAnimateTransformer3DModel`` add freshly computed
terms to the hidden states *between* blocks, in the transformer's own loop (VACE control hints
after the VACE layers; Animate's face adapter every few blocks). A reused span's stored residual
already contains those terms and the loop adds the fresh ones again, so every reuse would count
them twice.
"""

from __future__ import annotations

from .spec import ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import WanTransformer3DModel

    return (WanTransformer3DModel,)


def _vace() -> tuple[type, ...]:
    from diffusers import WanVACETransformer3DModel

    return (WanVACETransformer3DModel,)


def _animate() -> tuple[type, ...]:
    from diffusers import WanAnimateTransformer3DModel

    return (WanAnimateTransformer3DModel,)


WAN = register(
    ModelSpec(family="wan", class_names=("WanTransformer3DModel",), load_classes=_classes)
)

_BETWEEN_BLOCKS = (
    "it adds {what} to the hidden states between blocks, outside the blocks MixCache hooks; a "
    "reused span's residual already holds them and the transformer's loop would add them again"
)
register(
    ModelSpec(
        family="wan_vace",
        class_names=("WanVACETransformer3DModel",),
        load_classes=_vace,
        refused=_BETWEEN_BLOCKS.format(what="VACE control hints"),
    )
)
register(
    ModelSpec(
        family="wan_animate",
        class_names=("WanAnimateTransformer3DModel",),
        load_classes=_animate,
        refused=_BETWEEN_BLOCKS.format(what="face-adapter outputs"),
    )
)
