"""Mochi (``diffusers.MochiTransformer3DModel``).

Blocks (``transformer_blocks``) return ``(hidden_states, encoder_hidden_states)`` (diffusers'
block registry); the last block does not update the encoder states (``context_pre_only``), it
still returns them. The forward is ``(hidden_states, encoder_hidden_states, timestep,
encoder_attention_mask, ...)``. ``MochiPipeline`` runs ONE forward per step under
``cache_context("cond_uncond")`` with ``torch.cat([negative, positive])`` for the embeddings and
their mask, latents doubled and ``timestep = t.expand(batch)``: uncond first.
"""

from __future__ import annotations

from .spec import MASKED_TEXT_BATCH, ArgRef, ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import MochiTransformer3DModel

    return (MochiTransformer3DModel,)


MOCHI = register(
    ModelSpec(
        family="mochi",
        class_names=("MochiTransformer3DModel",),
        load_classes=_classes,
        timestep=ArgRef(2, "timestep"),
        batch_layout=MASKED_TEXT_BATCH,
    )
)
