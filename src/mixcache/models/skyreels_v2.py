"""SkyReels-V2 (``diffusers.SkyReelsV2Transformer3DModel``, Wan's architecture).

Blocks (``blocks``) are Wan blocks returning the hidden states; the block class is not in
diffusers' block registry, so that is stated here. ``SkyReelsV2Pipeline`` and
``SkyReelsV2ImageToVideoPipeline`` call the transformer like ``WanPipeline`` (``"cond"`` then
``"uncond"`` per step). The diffusion-forcing pipelines are refused: they denoise frames at
different noise levels in one call (a per-frame timestep matrix) and, for long videos, run the
whole schedule once per chunk of frames, so a transformer call is not "one step of one
schedule" and residuals from a previous call do not belong to the same latent.
"""

from __future__ import annotations

from .spec import ModelSpec, register


def _classes() -> tuple[type, ...]:
    from diffusers import SkyReelsV2Transformer3DModel

    return (SkyReelsV2Transformer3DModel,)


_DIFFUSION_FORCING = (
    "diffusion forcing denoises frames at different noise levels in one call (a per-frame "
    "timestep matrix) and restarts the schedule for every chunk of a long video, so consecutive "
    "transformer calls are not steps of one schedule; use SkyReelsV2Pipeline or "
    "SkyReelsV2ImageToVideoPipeline"
)

SKYREELS_V2 = register(
    ModelSpec(
        family="skyreels_v2",
        class_names=("SkyReelsV2Transformer3DModel",),
        load_classes=_classes,
        returns_encoder=False,
        refused_pipelines=tuple(
            (name, _DIFFUSION_FORCING)
            for name in (
                "SkyReelsV2DiffusionForcingPipeline",
                "SkyReelsV2DiffusionForcingImageToVideoPipeline",
                "SkyReelsV2DiffusionForcingVideoToVideoPipeline",
            )
        ),
    )
)
