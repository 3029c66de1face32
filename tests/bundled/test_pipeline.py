"""The bundled pipeline: latent map, WanPipeline-identical call pattern, save/load round trip."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from mixcache_lab.bundled import load_bundled_pipeline
from mixcache_lab.bundled.dataset import render_clip
from mixcache_lab.bundled.pipeline import (
    MixCacheT2VPipeline,
    build_tokenizer,
    latents_to_pixels,
    pixels_to_latents,
)


@pytest.fixture(scope="module")
def tiny_pipe() -> MixCacheT2VPipeline:
    """The bundled architecture, randomly initialised and shrunk (2 blocks, 48 wide)."""
    pipe = MixCacheT2VPipeline.from_config_random(seed=1, num_layers=2, num_heads=2, head_dim=24)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe: MixCacheT2VPipeline, **kw) -> np.ndarray:
    args = {
        "prompt": "a red circle moving left",
        "num_inference_steps": 3,
        "generator": torch.Generator().manual_seed(0),
    }
    return pipe(**(args | kw)).frames


def test_latent_map_is_invertible() -> None:
    clip = torch.from_numpy(np.stack([render_clip("a blue triangle moving down", 3)] * 2))
    lat = pixels_to_latents(clip)
    assert lat.shape == (2, 24, 5, 16, 16)
    assert torch.allclose(latents_to_pixels(lat), clip, atol=1e-6)
    # The first latent frame holds frame 0 twice (causal, as Wan's VAE); later latent frames
    # hold two consecutive frames each, and decoding keeps all of them.
    z = (torch.rand(1, 24, 5, 16, 16) * 1.8 - 0.9).reshape(1, 3, 2, 2, 2, 5, 16, 16)
    z[:, :, 0, :, :, 0] = z[:, :, 1, :, :, 0]
    z = z.reshape(1, 24, 5, 16, 16)
    assert latents_to_pixels(z).shape == (1, 9, 32, 32, 3)
    assert torch.allclose(pixels_to_latents(latents_to_pixels(z)), z, atol=1e-6)


def test_tokenizer_is_fixed_and_pads_with_zero() -> None:
    tok = build_tokenizer()
    ids = tok(["a red circle moving left", ""], padding="max_length", max_length=8).input_ids
    assert ids[0][:5] == [2, 3, 9, 12, 13] and ids[0][5:] == [0, 0, 0]
    assert ids[1] == [0] * 8
    assert build_tokenizer()("a green square").input_ids == tok("a green square").input_ids


def test_empty_prompt_embeds_to_zeros(tiny_pipe: MixCacheT2VPipeline) -> None:
    with torch.no_grad():
        emb = tiny_pipe.encode_text(["a red circle moving left", ""])
    assert emb.shape == (2, 8, 64)
    assert torch.count_nonzero(emb[1]) == 0
    assert torch.count_nonzero(emb[0, 5:]) == 0 and torch.count_nonzero(emb[0, :5]) > 0


def test_transformer_is_called_like_wan_pipeline(
    tiny_pipe: MixCacheT2VPipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, dict]] = []
    original = tiny_pipe.transformer.cache_context

    @contextlib.contextmanager
    def recording(name: str, **kwargs):
        calls.append((name, kwargs))
        with original(name, **kwargs):
            yield

    monkeypatch.setattr(tiny_pipe.transformer, "cache_context", recording)
    freed: list[bool] = []
    monkeypatch.setattr(tiny_pipe, "maybe_free_model_hooks", lambda: freed.append(True))
    _run(tiny_pipe, guidance_scale=5.0)
    assert [c[0] for c in calls] == ["cond", "uncond"] * 3
    sigmas = tiny_pipe.scheduler.sigmas
    for i in range(3):
        for _name, kw in calls[2 * i : 2 * i + 2]:
            assert kw == {"step_index": i, "sigma": float(sigmas[i]), "num_inference_steps": 3}
    assert freed == [True]  # cache hooks reset their per-run state here

    calls.clear()
    _run(tiny_pipe, guidance_scale=1.0)  # no CFG: one call per step
    assert [c[0] for c in calls] == ["cond"] * 3


def test_output_types(tiny_pipe: MixCacheT2VPipeline) -> None:
    frames = _run(tiny_pipe)
    assert isinstance(frames, np.ndarray) and frames.shape == (1, 9, 32, 32, 3)
    assert frames.min() >= 0.0 and frames.max() <= 1.0
    lat = _run(tiny_pipe, output_type="latent")
    assert lat.shape == (1, 24, 5, 16, 16)
    pt = _run(tiny_pipe, output_type="pt")
    assert torch.equal(pt, torch.from_numpy(frames))
    assert torch.equal(latents_to_pixels(lat), pt)
    batch = _run(
        tiny_pipe,
        prompt=["a red circle moving left", "a blue square moving up"],
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)],
    )
    assert batch.shape == (2, 9, 32, 32, 3)
    with pytest.raises(ValueError, match="num_frames"):
        _run(tiny_pipe, num_frames=8)


def test_save_load_round_trip_is_bit_exact(tiny_pipe: MixCacheT2VPipeline, tmp_path) -> None:
    tiny_pipe.save_pretrained(tmp_path, safe_serialization=True)
    loaded = load_bundled_pipeline(tmp_path)
    assert not loaded.transformer.training and not loaded.text_encoder.training
    for a, b in zip(
        tiny_pipe.transformer.state_dict().values(),
        loaded.transformer.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    assert np.array_equal(_run(tiny_pipe), _run(loaded))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "MixCacheT2VPipeline"
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))


def test_missing_model_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"model_index\.json missing"):
        load_bundled_pipeline(tmp_path / "nope")


def test_model_card_lists_every_stage_with_its_command() -> None:
    from mixcache_lab.bundled.train import DEFAULTS, model_card

    stage1 = {
        "config": {**DEFAULTS, "steps": 4000, "lr": 0.0008, "warmup": 150},
        "steps_trained": 1900,
        "wall_minutes": 80.0,
        "threads": 1,
        "final_loss_mean_last_100": 0.07,
    }
    stage2 = {
        "config": {
            **DEFAULTS,
            "steps": 8000,
            "lr": 0.0005,
            "init_from": "runs/stage1_export",
            "init_from_record": stage1,
        },
        "steps_trained": 3000,
        "wall_minutes": 60.0,
        "threads": 2,
        "final_loss_mean_last_100": 0.03,
        "adherence_heldout_50_steps": {
            "prompts": 16,
            "seeds": 2,
            "generated": {"color": 1.0, "shape": 0.9375, "direction": 1.0, "all_correct": 0.9375},
            "ground_truth": {"color": 1.0, "shape": 1.0, "direction": 1.0, "all_correct": 1.0},
        },
    }
    card = model_card(stage2)
    assert "--lr 0.0008 --warmup 150" in card  # stage 1's non-default values
    assert "--init-from <stage 1 export>" in card and "--lr 0.0005" in card
    assert "Total: 4900 optimiser steps, 140 min" in card
    assert "| generated by this model | 100.0% | 93.8% | 100.0% | 93.8% |" in card
    assert "## Reproducing it" not in card  # no re-run recorded


def _single_stage_record(**extra: object) -> dict:
    from mixcache_lab.bundled.train import DEFAULTS

    return {
        "config": {**DEFAULTS, "steps": 6500, "max_minutes": 118.0, "lr": 0.0008, "compile": True},
        "steps_trained": 6500,
        "wall_minutes": 85.0,
        "elapsed_minutes": 91.5,
        "threads": 2,
        "bf16_autocast": True,
        "machine": "x86_64, 2 cores",
        "final_loss_mean_last_100": 0.05,
        **extra,
    }


def test_card_spells_out_threads_precision_compile_and_elapsed_time() -> None:
    from mixcache_lab.bundled.train import model_card

    card = model_card(_single_stage_record())
    cmd = (
        "python -m mixcache_lab.bundled.train train --run-dir runs/bundled --steps 6500 "
        "--max-minutes 118 --lr 0.0008 --threads 2 --precision bf16 --compile"
    )
    assert f"`{cmd}`" in card
    assert "85.0 min of steps, 91.5 min in all" in card


def test_attach_reproduction_writes_both_adherence_rows(tmp_path) -> None:
    import json

    from mixcache_lab.bundled.train import attach_reproduction, model_card

    def adh(shape: float) -> dict:
        gen = {"color": 1.0, "shape": shape, "direction": 1.0, "all_correct": shape}
        truth = {"color": 1.0, "shape": 1.0, "direction": 1.0, "all_correct": 1.0}
        return {"prompts": 16, "seeds": 2, "generated": gen, "ground_truth": truth}

    shipped, rerun = tmp_path / "shipped", tmp_path / "rerun"
    shipped.mkdir(), rerun.mkdir()
    (shipped / "training_record.json").write_text(
        json.dumps(_single_stage_record(adherence_heldout_50_steps=adh(0.96875)))
    )
    (rerun / "training_record.json").write_text(json.dumps(_single_stage_record()))
    with pytest.raises(ValueError, match="no 50-step adherence"):
        attach_reproduction(shipped, rerun)
    (rerun / "training_record.json").write_text(
        json.dumps(_single_stage_record(adherence_heldout_50_steps=adh(0.9375)))
    )
    attach_reproduction(shipped, rerun)
    card = (shipped / "MODEL_CARD.md").read_text()
    assert card == model_card(json.loads((shipped / "training_record.json").read_text()))
    assert "| this model | 100.0% | 96.9% | 100.0% | 96.9% |" in card
    assert "| the re-run | 100.0% | 93.8% | 100.0% | 93.8% |" in card
    assert "6500 optimiser steps, 85.0 min of training steps, 91.5 min in all" in card
    assert f"(its record and plots: `{rerun.as_posix()}`)" in card


def test_init_from_export_copies_the_weights_and_the_parent_record(tmp_path) -> None:
    import json

    from mixcache_lab.bundled.train import _init_from_export

    src = MixCacheT2VPipeline.from_config_random(seed=1, num_layers=2, num_heads=2, head_dim=16)
    src.save_pretrained(tmp_path)
    (tmp_path / "training_record.json").write_text(json.dumps({"steps_trained": 7}))
    fresh = MixCacheT2VPipeline.from_config_random(seed=2, num_layers=2, num_heads=2, head_dim=16)
    cfg: dict = {}
    _init_from_export(fresh, tmp_path, cfg)
    for name in ("transformer", "text_encoder"):
        a, b = getattr(src, name).state_dict(), getattr(fresh, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert cfg["init_from"] == str(tmp_path) and cfg["init_from_record"]["steps_trained"] == 7
    other = MixCacheT2VPipeline.from_config_random(seed=2, num_layers=3, num_heads=2, head_dim=16)
    with pytest.raises(RuntimeError, match=r"Unexpected key|Missing key"):
        _init_from_export(other, tmp_path, {})
