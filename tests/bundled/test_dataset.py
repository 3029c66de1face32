"""The procedural dataset: determinism, the train / held-out split, prompt parsing."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mixcache_lab.bundled import dataset as ds


def test_render_is_deterministic_and_seed_dependent() -> None:
    a = ds.render_clip("a red circle moving left", 7)
    b = ds.render_clip("a red circle moving left", 7)
    c = ds.render_clip("a red circle moving left", 8)
    assert a.shape == (ds.NUM_FRAMES, ds.HEIGHT, ds.WIDTH, 3)
    assert a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_training_stream_is_a_pure_function_of_index() -> None:
    p1, c1 = ds.training_example(123, base_seed=3)
    p2, c2 = ds.training_example(123, base_seed=3)
    assert p1 == p2 and np.array_equal(c1, c2)
    assert ds.training_example(124, base_seed=3)[0] in ds.TRAIN_PROMPTS


def test_training_never_uses_heldout_prompts_or_seeds() -> None:
    heldout = set(ds.HELDOUT_PROMPTS)
    for i in range(2000):
        scene, seed = ds.training_spec(i)
        assert scene.prompt not in heldout
        assert 0 <= seed < ds.HELDOUT_SEED_BASE
    assert ds.heldout_seed(0) >= ds.HELDOUT_SEED_BASE


def test_split_partitions_the_prompt_space() -> None:
    train, held = set(ds.TRAIN_PROMPTS), set(ds.HELDOUT_PROMPTS)
    assert len(ds.ALL_SCENES) == 6 * 3 * 4
    assert not train & held
    assert train | held == {s.prompt for s in ds.ALL_SCENES}
    assert len(held) == 16


def test_bench_and_tuning_are_disjoint_heldout_subsets() -> None:
    bench, tuning = set(ds.BENCH_PROMPTS), set(ds.TUNING_PROMPTS)
    assert 6 <= len(bench) <= 8 and 6 <= len(tuning) <= 8
    assert not bench & tuning
    assert bench | tuning <= set(ds.HELDOUT_PROMPTS)


def test_every_attribute_pair_of_a_heldout_prompt_is_seen_in_training() -> None:
    # The held-out set tests composition, not unseen words or unseen pairs.
    train = ds.TRAIN_SCENES
    for h in ds.HELDOUT_SCENES:
        for a, b in itertools.combinations(("color", "shape", "direction"), 2):
            assert any(
                getattr(t, a) == getattr(h, a) and getattr(t, b) == getattr(h, b) for t in train
            ), (h, a, b)


def test_shape_moves_the_right_way_and_stays_inside() -> None:
    for direction, (dx, dy) in ds.DIRECTION_VECTORS.items():
        clip = ds.render_clip(f"a blue square moving {direction}", 11)
        fg = np.abs(clip - np.asarray(ds.BACKGROUND)).max(-1) > 0.5
        ys, xs = np.mgrid[0 : ds.HEIGHT, 0 : ds.WIDTH]
        cx = [xs[m].mean() for m in fg]
        cy = [ys[m].mean() for m in fg]
        assert np.sign(cx[-1] - cx[0]) == dx and np.sign(cy[-1] - cy[0]) == dy
        assert abs((cx[-1] - cx[0]) + (cy[-1] - cy[0])) > 8  # at least 8 px of travel
        # nothing touches the border: the whole shape is visible in every frame
        assert not fg[:, 0].any() and not fg[:, -1].any()
        assert not fg[:, :, 0].any() and not fg[:, :, -1].any()


def test_parse_prompt_accepts_variants_and_rejects_unknown_words() -> None:
    assert ds.parse_prompt("A Red  circle moving LEFT") == ds.Scene("red", "circle", "left")
    assert ds.parse_prompt("red circle left").prompt == "a red circle moving left"
    with pytest.raises(ds.UnknownPromptError, match=r"unknown word\(s\) \['purple'\]") as e:
        ds.parse_prompt("a purple circle moving left")
    assert "magenta" in str(e.value) and "triangle" in str(e.value)
    with pytest.raises(ds.UnknownPromptError, match="exactly one shape"):
        ds.parse_prompt("a red circle square moving left")
