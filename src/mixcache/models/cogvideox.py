"""CogVideoX 1.0 and 1.5 (``diffusers.CogVideoXTransformer3DModel``).

Blocks (``transformer_blocks``, found by diffusers' identifiers) return ``(hidden_states,
encoder_hidden_states)`` (diffusers' block registry). The forward is ``(hidden_states,
encoder_hidden_states, timestep, ...)``: the timestep is the third argument. Every CogVideoX
pipeline (text-, image-, video-to-video, Fun) runs ONE forward per step under
``cache_context("cond_uncond")`` with ``torch.cat([negative_prompt_embeds, prompt_embeds])``,
latents doubled and ``timestep = t.expand(batch)``: uncond first. ``ofs`` (CogVideoX 1.5
image-to-video) is a one-element tensor shared by the whole batch, and the rotary embeddings are
computed by the pipeline per call for both halves alike, so neither is sliced.
"""

from __future__ import annotations

from .spec import ArgRef, BatchLayout, ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import CogVideoXTransformer3DModel

    return (CogVideoXTransformer3DModel,)


COGVIDEOX = register(
    ModelSpec(
        family="cogvideox",
        class_names=("CogVideoXTransformer3DModel",),
        load_classes=_classes,
        timestep=ArgRef(2, "timestep"),
        batch_layout=BatchLayout(batch_args=("hidden_states", "encoder_hidden_states", "timestep")),
    )
)
