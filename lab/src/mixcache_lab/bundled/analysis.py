"""Per-step change profile of a pipeline's transformer output (per CFG branch).

Caches exploit that a video DiT's output changes little between neighbouring steps over most
of the trajectory (large changes at the start and the very end). This measures that profile on
the bundled model so it can be compared with what published profiles of Wan / HunyuanVideo show.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mixcache.policy.signals import rel_l1


@torch.no_grad()
def change_profile(
    pipe: Any,
    prompts: Sequence[str],
    steps: int = 50,
    guidance: float = 5.0,
    seed: int = 0,
) -> dict[str, list[float]]:
    """Relative L1 change of the transformer output from step to step, per branch.

    Returns ``{"cond": [...], "uncond": [...], "cfg_gap": [...]}``: entry i of cond/uncond is the
    change between steps i and i+1 (averaged over ``prompts``); ``cfg_gap`` is the relative
    difference between the cond and uncond outputs at each step (how much the unconditional
    branch differs from the conditional one). Assumes the pipeline calls the transformer once
    for cond and then once for uncond per step, as ``WanPipeline``, ``HunyuanVideoPipeline``
    with true CFG, and the bundled pipelines do.
    """
    outputs: list[torch.Tensor] = []

    def hook(_mod: torch.nn.Module, _args: Any, _kwargs: Any, out: Any) -> None:
        outputs.append((out[0] if isinstance(out, tuple) else out.sample).detach().clone())

    from .pipeline import cfg_call_kwargs

    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        pipe(
            list(prompts),
            num_inference_steps=steps,
            **cfg_call_kwargs(pipe, guidance),
            generator=[torch.Generator().manual_seed(seed + i) for i in range(len(prompts))],
            output_type="latent",
        )
    finally:
        handle.remove()
    cond, uncond = outputs[0::2], outputs[1::2]
    return {
        "cond": [rel_l1(cond[i + 1], cond[i]) for i in range(len(cond) - 1)],
        "uncond": [rel_l1(uncond[i + 1], uncond[i]) for i in range(len(uncond) - 1)],
        "cfg_gap": [rel_l1(c, u) for c, u in zip(cond, uncond, strict=True)],
    }


def plot_change_profile(profile: dict[str, list[float]], path: str | Path, title: str = "") -> None:
    """Save the change profile as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = np.arange(1, len(profile["cond"]) + 1)
    ax.plot(x, profile["cond"], label="cond: rel. L1 change vs previous step")
    ax.plot(x, profile["uncond"], label="uncond: rel. L1 change vs previous step")
    ax.plot(
        np.arange(len(profile["cfg_gap"])),
        profile["cfg_gap"],
        ls="--",
        label="rel. L1 gap cond vs uncond (same step)",
    )
    ax.set_yscale("log")
    ax.set_xlabel("denoising step")
    ax.set_ylabel("relative L1")
    ax.set_title(title or "transformer output change per step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def final_latent_fn(pipe: Any, steps: int, guidance: float, seed: int = 1) -> Any:
    """``latent(prompt)``: the final latent of ``pipe`` at ``steps`` and CFG ``guidance``, seed
    ``seed`` — what the forced-schedule scripts compare a schedule's output with."""
    from .pipeline import cfg_call_kwargs

    kw = cfg_call_kwargs(pipe, guidance)

    @torch.no_grad()
    def latent(prompt: str) -> torch.Tensor:
        out = pipe(
            prompt,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            output_type="latent",
            **kw,
        )
        return out.frames if hasattr(out, "frames") else out[0]

    return latent
