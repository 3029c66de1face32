"""The bench on HunyuanVideo: the bundled-hunyuan profile and every peer on the tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mixcache.bench.profiles import (
    BUNDLED,
    BUNDLED_HUNYUAN,
    get_profile,
    matrix_models,
    tiny_profile,
)
from mixcache.bench.runner import run_bench


def test_bundled_hunyuan_sets_true_cfg_not_embedded_guidance() -> None:
    p = get_profile("bundled-hunyuan")
    assert p is BUNDLED_HUNYUAN and p.family == "hunyuan"
    assert p.call_kwargs == {"num_inference_steps": 50, "true_cfg_scale": 5.0}
    assert p.guidance == 5.0
    q = p.with_call(steps=20, guidance=3.0)
    # --guidance is the CFG scale: true_cfg_scale on HunyuanVideo, whose guidance_scale is the
    # embedded guidance; setting that instead would leave CFG at 5 and change the model input.
    assert q.call_kwargs == {"num_inference_steps": 20, "true_cfg_scale": 3.0}
    assert q.settings()["guidance"] == 3.0 and q.steps == 20
    # One dataset: the same prompts and seeds as the Wan model's profile.
    assert (p.prompts, p.tuning_prompts, p.training_prompts, p.seed) == (
        BUNDLED.prompts,
        BUNDLED.tuning_prompts,
        BUNDLED.training_prompts,
        BUNDLED.seed,
    )
    assert p.with_model_dir("somewhere").notes[-1] == "model loaded from somewhere"


def test_matrix_default_models_are_the_trained_bundled_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mixcache.bundled as bundled

    shipped = [n for n, m in bundled.BUNDLED_MODELS.items() if m.shipped]
    names = [p.name for p in matrix_models()]
    assert names == [("bundled" if n == "bundled-wan" else n) for n in shipped]
    untrained = dataclasses.replace(
        bundled.BUNDLED_MODELS["bundled-hunyuan"], directory=Path("/nonexistent")
    )
    monkeypatch.setitem(bundled.BUNDLED_MODELS, "bundled-hunyuan", untrained)
    assert "bundled-hunyuan" not in [p.name for p in matrix_models()]
    # Named explicitly it is still taken (and fails at load time with the training command).
    assert [p.name for p in matrix_models("bundled-hunyuan")] == ["bundled-hunyuan"]


PEERS = "taylorseer-attn-i5,taylorseer-attn+ffn-i3,pab-s2,dbcache-0.24,fbc-0.2,magcache-0.24"


@pytest.fixture(scope="module")
def hunyuan_records(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    profile = tiny_profile("hunyuan_video").with_call(steps=8)
    out = tmp_path_factory.mktemp("hy")
    return run_bench(profile, out, methods=PEERS, prompts=1, repeats=1, progress=False)


@pytest.mark.parametrize("method", PEERS.split(","))
def test_every_peer_really_caches_on_hunyuan_video(
    hunyuan_records: list[dict], method: str
) -> None:
    # TaylorSeer's module names, PAB's attention and cache-dit's two block lists must all find
    # HunyuanVideo's dual- and single-stream blocks: a peer that silently does nothing would
    # be a configuration bug of ours.
    rec = next(r for r in hunyuan_records if r["method"] == method)
    if method.startswith("dbcache") and rec["status"] != "ok":
        pytest.importorskip("cache_dit")
    assert rec["status"] == "ok", rec.get("reason") or rec.get("error")
    assert rec["block_fraction"] < 0.95 and rec["rel_l2_latent"] > 0
