"""Check a core-only install: ``import mixcache`` and ``apply_mixcache`` work without any extra.

Run with the interpreter of a venv where only the core wheel was installed (``.ci/core_install.sh
core`` makes one, with ``--alone``); ``tests/test_install.py`` also runs it inside the dev venv
with every optional module and ``mixcache_lab`` hidden. It builds a tiny
``WanTransformer3DModel`` from a config (no download), runs a small denoising loop with and
without MixCache, and checks that:

- MixCache reuses (compute fraction < 1) and the output stays finite;
- after ``remove()`` the loop is bit-identical to the uncached one;
- no optional module (mixcache-lab and the packages it brings) was imported by the core;
- with ``--alone``: mixcache-lab is not installed, and neither is a ``mixcache`` console script
  (the command line is mixcache-lab's), so the check above ran on the library alone.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import torch

STEPS = 8
# Top-level modules the library must never import: mixcache-lab and what it brings (its
# dependencies and extras; tests/test_install.py checks this matches mixcache_lab._entry's list).
OPTIONAL_MODULES = frozenset(
    {
        "mixcache_lab",
        "click",
        "tqdm",
        "imageio",
        "imageio_ffmpeg",
        "matplotlib",
        "transformers",
        "tokenizers",
        "scipy",
        "torchmetrics",
        "skimage",
        "cache_dit",
    }
)


def tiny_wan_transformer() -> torch.nn.Module:
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=16,
        out_channels=16,
        text_dim=32,
        freq_dim=64,
        ffn_dim=64,
        num_layers=4,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )
    return model.eval()


@torch.no_grad()
def denoise(model: torch.nn.Module) -> torch.Tensor:
    """A fixed Euler-style loop over STEPS timesteps, one cond branch per step."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 3, 8, 8, generator=gen)
    text = torch.randn(1, 8, 32, generator=gen)
    timesteps = torch.linspace(999, 1, STEPS)
    for i, t in enumerate(timesteps):
        with model.cache_context("cond", step_index=i, num_inference_steps=STEPS):
            v = model(hidden_states=x, timestep=t.reshape(1), encoder_hidden_states=text)[0]
        x = x - v / STEPS
    return x


def check_alone() -> None:
    """mixcache-lab and its console script are absent: the venv holds the library alone."""
    assert importlib.util.find_spec("mixcache_lab") is None, "mixcache-lab is installed"
    script = Path(sys.executable).with_name("mixcache")
    assert not script.exists(), f"the core installed a console script: {script}"
    print("library alone: no mixcache_lab, no `mixcache` console script")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--alone", action="store_true", help="also check mixcache-lab is not installed"
    )
    args = parser.parse_args()

    model = tiny_wan_transformer()
    ref = denoise(model)
    before = set(sys.modules)  # diffusers itself imports tqdm (and may import click)

    import mixcache
    from mixcache import MixCacheConfig, apply_mixcache

    # Random weights change too much per step for the presets' trigger: open it, reuse steps.
    config = MixCacheConfig(
        granularities=("step",), trigger_threshold=10.0, refresh_threshold=1e9, final_steps=1
    )
    handle = apply_mixcache(model, config)
    cached = denoise(model)
    fraction = handle.stats().compute_fraction
    handle.remove()
    assert 0 < fraction < 1, fraction
    assert torch.isfinite(cached).all()
    assert torch.equal(denoise(model), ref), "remove() did not restore the uncached output"
    pulled = sorted({m.split(".")[0] for m in set(sys.modules) - before} & OPTIONAL_MODULES)
    assert not pulled, f"the core imported optional modules: {pulled}"
    print(
        f"core install ok: mixcache from {mixcache.__file__}, torch {torch.__version__}; "
        f"compute fraction {fraction:.3f}"
    )
    if args.alone:
        check_alone()


if __name__ == "__main__":
    main()
