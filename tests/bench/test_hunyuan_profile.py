"""The bench on HunyuanVideo: the bundled-hunyuan profile and every peer on the tiny model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mixcache_lab.bench.profiles import (
    BUNDLED,
    BUNDLED_HUNYUAN,
    get_profile,
    matrix_models,
    tiny_profile,
)
from mixcache_lab.bench.runner import run_bench


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
    import mixcache_lab.bundled as bundled

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
    # Two rounds: the second runs the methods in reverse, so every peer also runs after every
    # other one has been applied and removed (cache-dit used to leave the transformer's block
    # lists reordered, and FBC then failed and the block timer read garbage).
    return run_bench(profile, out, methods=PEERS, prompts=1, repeats=2, progress=False)


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


def test_every_peer_leaves_the_transformer_as_it_found_it(hunyuan_records: list[dict]) -> None:
    # The reference's block-time share is a fraction of its own wall time: it can only stay in
    # (0, 1] if the timer's first and last block are still the ones that run first and last
    # after all the peers came and went.
    ref = next(r for r in hunyuan_records if r["method"] == "none")
    assert 0 < ref["block_time_share_ref"] <= 1
    # The runner would also undo a reordering, but say so: the peers' own removal must not
    # need it.
    assert all("reordered" not in r["reason"] for r in hunyuan_records)


def test_seacache_is_unavailable_on_hunyuan_video_because_it_would_run_full() -> None:
    import diffusers
    import torch

    from mixcache_lab.bench.methods import BenchContext, MethodUnavailable, default_methods
    from mixcache_lab.tiny import make_tiny_hunyuan_pipeline, tiny_call_kwargs

    pipe = make_tiny_hunyuan_pipeline()
    spec = next(s for s in default_methods(8) if s.name == "seacache-0.5")
    with pytest.raises(MethodUnavailable, match="fail-open"):
        spec.build(BenchContext(pipe=pipe, steps=8))
    # The reason holds: applied anyway, diffusers' SeaCache computes every block of every step
    # (if a diffusers release adds a HunyuanVideo adapter this fails: benchmark it again).
    # A hook on a projection inside the last block: one on the block itself would also fire
    # when a cache replaced the block's forward.
    calls = []
    handle = pipe.transformer.single_transformer_blocks[-1].proj_mlp.register_forward_hook(
        lambda *a: calls.append(1)
    )
    pipe.transformer.enable_cache(diffusers.SeaCacheConfig(threshold=10.0))
    try:
        kwargs = tiny_call_kwargs("hunyuan_video", num_inference_steps=8)
        pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs)
    finally:
        pipe.transformer.disable_cache()
        handle.remove()
    assert "true_cfg_scale" not in kwargs and len(calls) == 8  # one forward per step
