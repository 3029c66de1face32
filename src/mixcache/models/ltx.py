"""LTX-Video (``diffusers.LTXVideoTransformer3DModel``).

Blocks (``transformer_blocks``) return the hidden states only (diffusers' block registry). The
forward is ``(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, ...)``.
``LTXPipeline`` and ``LTXImageToVideoPipeline`` run ONE forward per step under
``cache_context("cond_uncond")`` with ``torch.cat([negative, positive])`` for the embeddings and
their attention mask and the latents doubled: uncond first. Image-to-video's timestep is
``(batch, tokens)`` (the conditioning mask zeroes it on the first frame); it is still batch-first.
The rotary embedding is computed inside the forward from the frame/height/width arguments
(plain ints, shared) or, with ``LTXConditionPipeline``, from ``video_coords``: a
``(batch, 3, tokens)`` tensor that pipeline doubles with the latents, so it is a batch argument
(a cond-half forward given the whole batch's coordinates would broadcast its rotary embedding to
both halves and fail in the first block).
"""

from __future__ import annotations

from dataclasses import replace

from .spec import MASKED_TEXT_BATCH, ArgRef, ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import LTXVideoTransformer3DModel

    return (LTXVideoTransformer3DModel,)


#: The masked-text layout plus LTXConditionPipeline's per-item coordinates.
LTX_BATCH = replace(MASKED_TEXT_BATCH, batch_args=(*MASKED_TEXT_BATCH.batch_args, "video_coords"))

LTX = register(
    ModelSpec(
        family="ltx",
        class_names=("LTXVideoTransformer3DModel",),
        load_classes=_classes,
        timestep=ArgRef(2, "timestep"),
        batch_layout=LTX_BATCH,
    )
)
