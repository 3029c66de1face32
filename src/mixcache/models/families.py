"""Every supported family as data: one :class:`ModelSpec` row each, registered on import.

Adding a family is one row here (its transformer class names, where its arguments are and how
its pipeline batches CFG); the classes are imported lazily from diffusers by name. What each
family's pipelines do, which the rows encode:

- **wan**: Wan 2.1 / 2.2 (``diffusers.WanTransformer3DModel``), and the Wan variants MixCache
  refuses.

  Blocks: ``blocks[i](hidden_states, encoder_hidden_states, temb, rotary_emb) -> hidden_states``
  (found by diffusers' block identifiers; the return from its block registry). ``WanPipeline``
  calls the transformer inside ``cache_context("cond"/"uncond", step_index=..., sigma=...,
  num_inference_steps=...)``; with ``guidance_scale <= 1`` only "cond" runs.
  ``WanImageToVideoPipeline`` uses the same class (36 input channels, image cross-attention) with
  name-only contexts; ``WanVideoToVideoPipeline`` calls it without contexts (cond then uncond at
  the same timestep: the controller gives the second call its own slot).

  Refused: ``WanVACETransformer3DModel`` and ``WanAnimateTransformer3DModel`` add freshly computed
  terms to the hidden states *between* blocks, in the transformer's own loop (VACE control hints
  after the VACE layers; Animate's face adapter every few blocks). A reused span's stored residual
  already contains those terms and the loop adds the fresh ones again, so every reuse would count
  them twice.

- **hunyuan_video**: HunyuanVideo (``diffusers.HunyuanVideoTransformer3DModel``).

  Two lists of blocks, run one after the other: ``transformer_blocks`` (dual-stream) then
  ``single_transformer_blocks``; both take ``(hidden_states, encoder_hidden_states, temb, ...)``
  and return ``(hidden_states, encoder_hidden_states)``. MixCache treats them as one stack of
  ``len(a) + len(b)`` blocks; both the lists (diffusers' block identifiers, in its order) and the
  block returns (its block registry) come from diffusers. ``HunyuanVideoPipeline`` runs one pass
  (guidance-distilled) unless ``true_cfg_scale > 1`` with a negative prompt; its cache contexts
  carry only the name, so steps are detected from the timestep.

- **hunyuan_video_1_5**: HunyuanVideo-1.5 (``diffusers.HunyuanVideo15Transformer3DModel``).

  Blocks (``transformer_blocks``) take ``(hidden_states, encoder_hidden_states, temb,
  attention_mask, freqs_cis)`` and return ``(hidden_states, encoder_hidden_states)``; the block
  class is not in diffusers' block registry, so that is stated here. ``HunyuanVideo15Pipeline``
  and its image-to-video pipeline run classifier-free guidance through their guider: one forward
  per guider batch under ``cache_context("pred_cond")`` then ``cache_context("pred_uncond")``
  (cond first, the reference); with guidance off only ``"pred_cond"`` runs. The contexts carry no
  step index, so steps come from the timestep (second argument).

- **cogvideox**: CogVideoX 1.0 and 1.5 (``diffusers.CogVideoXTransformer3DModel``).

  Blocks (``transformer_blocks``, found by diffusers' identifiers) return ``(hidden_states,
  encoder_hidden_states)`` (diffusers' block registry). The forward is ``(hidden_states,
  encoder_hidden_states, timestep, ...)``: the timestep is the third argument. Every CogVideoX
  pipeline (text-, image-, video-to-video, Fun) runs ONE forward per step under
  ``cache_context("cond_uncond")`` with ``torch.cat([negative_prompt_embeds, prompt_embeds])``,
  latents doubled and ``timestep = t.expand(batch)``: uncond first. ``ofs`` (CogVideoX 1.5 image-
  to-video) is a one-element tensor shared by the whole batch, and the rotary embeddings are
  computed by the pipeline per call for both halves alike, so neither is sliced.

- **ltx**: LTX-Video (``diffusers.LTXVideoTransformer3DModel``).

  Blocks (``transformer_blocks``) return the hidden states only (diffusers' block registry). The
  forward is ``(hidden_states, encoder_hidden_states, timestep, encoder_attention_mask, ...)``.
  ``LTXPipeline`` and ``LTXImageToVideoPipeline`` run ONE forward per step under
  ``cache_context("cond_uncond")`` with ``torch.cat([negative, positive])`` for the embeddings and
  their attention mask and the latents doubled: uncond first. Image-to-video's timestep is
  ``(batch, tokens)`` (the conditioning mask zeroes it on the first frame); it is still batch-
  first. The rotary embedding is computed inside the forward from the frame/height/width arguments
  (plain ints, shared) or, with ``LTXConditionPipeline``, from ``video_coords``: a ``(batch, 3,
  tokens)`` tensor that pipeline doubles with the latents, so it is a batch argument (a cond-half
  forward given the whole batch's coordinates would broadcast its rotary embedding to both halves
  and fail in the first block).

- **mochi**: Mochi (``diffusers.MochiTransformer3DModel``).

  Blocks (``transformer_blocks``) return ``(hidden_states, encoder_hidden_states)`` (diffusers'
  block registry); the last block does not update the encoder states (``context_pre_only``), it
  still returns them. The forward is ``(hidden_states, encoder_hidden_states, timestep,
  encoder_attention_mask, ...)``. ``MochiPipeline`` runs ONE forward per step under
  ``cache_context("cond_uncond")`` with ``torch.cat([negative, positive])`` for the embeddings and
  their mask, latents doubled and ``timestep = t.expand(batch)``: uncond first.

- **skyreels_v2**: SkyReels-V2 (``diffusers.SkyReelsV2Transformer3DModel``, Wan's architecture).

  Blocks (``blocks``) are Wan blocks returning the hidden states; the block class is not in
  diffusers' block registry, so that is stated here. ``SkyReelsV2Pipeline`` and
  ``SkyReelsV2ImageToVideoPipeline`` call the transformer like ``WanPipeline`` (``"cond"`` then
  ``"uncond"`` per step). The diffusion-forcing pipelines are refused: they denoise frames at
  different noise levels in one call (a per-frame timestep matrix) and, for long videos, run the
  whole schedule once per chunk of frames, so a transformer call is not "one step of one schedule"
  and residuals from a previous call do not belong to the same latent.
"""

from __future__ import annotations

from dataclasses import replace

from .spec import MASKED_TEXT_BATCH, ArgRef, BatchLayout, ModelSpec, register

__all__ = ["FAMILIES"]

_BETWEEN_BLOCKS = (
    "it adds {what} to the hidden states between blocks, outside the blocks MixCache hooks; a "
    "reused span's residual already holds them and the transformer's loop would add them again"
)
_DIFFUSION_FORCING = (
    "diffusion forcing denoises frames at different noise levels in one call (a per-frame "
    "timestep matrix) and restarts the schedule for every chunk of a long video, so consecutive "
    "transformer calls are not steps of one schedule; use SkyReelsV2Pipeline or "
    "SkyReelsV2ImageToVideoPipeline"
)
#: The masked-text layout plus LTXConditionPipeline's per-item coordinates.
LTX_BATCH = replace(MASKED_TEXT_BATCH, batch_args=(*MASKED_TEXT_BATCH.batch_args, "video_coords"))

#: The table, in the order classes are matched (the order the families were registered in
#: before they were one table): family, transformer classes, what differs from the defaults.
FAMILIES: tuple[ModelSpec, ...] = (
    ModelSpec(
        family="cogvideox",
        class_names=("CogVideoXTransformer3DModel",),
        timestep=ArgRef(2, "timestep"),
        batch_layout=BatchLayout(batch_args=("hidden_states", "encoder_hidden_states", "timestep")),
    ),
    ModelSpec(family="hunyuan_video", class_names=("HunyuanVideoTransformer3DModel",)),
    ModelSpec(
        family="hunyuan_video_1_5",
        class_names=("HunyuanVideo15Transformer3DModel",),
        returns_encoder=True,
    ),
    ModelSpec(
        family="ltx",
        class_names=("LTXVideoTransformer3DModel",),
        timestep=ArgRef(2, "timestep"),
        batch_layout=LTX_BATCH,
    ),
    ModelSpec(
        family="mochi",
        class_names=("MochiTransformer3DModel",),
        timestep=ArgRef(2, "timestep"),
        batch_layout=MASKED_TEXT_BATCH,
    ),
    ModelSpec(
        family="skyreels_v2",
        class_names=("SkyReelsV2Transformer3DModel",),
        returns_encoder=False,
        refused_pipelines=tuple(
            (name, _DIFFUSION_FORCING)
            for name in (
                "SkyReelsV2DiffusionForcingPipeline",
                "SkyReelsV2DiffusionForcingImageToVideoPipeline",
                "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
            )
        ),
    ),
    ModelSpec(family="wan", class_names=("WanTransformer3DModel",)),
    ModelSpec(
        family="wan_vace",
        class_names=("WanVACETransformer3DModel",),
        refused=_BETWEEN_BLOCKS.format(what="VACE control hints"),
    ),
    ModelSpec(
        family="wan_animate",
        class_names=("WanAnimateTransformer3DModel",),
        refused=_BETWEEN_BLOCKS.format(what="face-adapter outputs"),
    ),
)

for _spec in FAMILIES:
    register(_spec)
