"""LTX-Video (``diffusers.LTXVideoTransformer3DModel``).

Blocks (``transformer_blocks``) return the hidden states only (diffusers' block registry). The
forward is ``(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, ...)``.
``LTXPipeline`` and ``LTXImageToVideoPipeline`` run ONE forward per step under
``cache_context("cond_uncond")`` with ``torch.cat([negative, positive])`` for the embeddings and
their attention mask and the latents doubled: uncond first. Image-to-video's timestep is
``(batch, tokens)`` (the conditioning mask zeroes it on the first frame); it is still batch-first.
The rotary embedding is computed inside the forward from the frame/height/width arguments
(plain ints, shared).
"""

from __future__ import annotations

from .spec import MASKED_TEXT_BATCH, ArgRef, ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import LTXVideoTransformer3DModel

    return (LTXVideoTransformer3DModel,)


LTX = register(
    ModelSpec(
        family="ltx",
        class_names=("LTXVideoTransformer3DModel",),
        load_classes=_classes,
        timestep=ArgRef(2, "timestep"),
        batch_layout=MASKED_TEXT_BATCH,
    )
)
