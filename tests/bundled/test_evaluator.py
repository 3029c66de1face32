"""The adherence evaluator on ground-truth clips and on clips that must fail."""

from __future__ import annotations

import numpy as np

from mixcache_lab.bundled import dataset as ds
from mixcache_lab.bundled.evaluator import adherence, ground_truth_adherence, judge, read_clip


def test_ground_truth_accuracy_is_at_least_98_percent() -> None:
    scenes = [s for s in ds.ALL_SCENES for _ in range(3)]
    clips = [ds.render_clip(s, ds.heldout_seed(i % 3)) for i, s in enumerate(scenes)]
    a = adherence(scenes, clips)
    assert a.n == 216
    assert a.all_correct >= 0.98
    assert min(a.color, a.shape, a.direction) >= 0.98


def test_ground_truth_helper_on_heldout_prompts() -> None:
    a = ground_truth_adherence(ds.HELDOUT_PROMPTS, seeds=2)
    assert a.n == 32 and a.all_correct >= 0.98


def test_reading_reports_attributes() -> None:
    r = read_clip(ds.render_clip("a yellow triangle moving up", 5))
    assert (r.color, r.shape, r.direction) == ("yellow", "triangle", "up")
    assert 0.4 < r.fill_ratio < 0.65  # a triangle fills about half its bounding box
    assert r.displacement is not None and r.displacement[1] < -8
    assert len(r.trajectory) == ds.NUM_FRAMES


def test_wrong_clips_are_judged_wrong() -> None:
    clip = ds.render_clip("a green circle moving right", 2)
    assert judge("a green circle moving right", clip)["all"]
    assert judge("a red circle moving right", clip) == {
        "color": False,
        "shape": True,
        "direction": True,
        "all": False,
    }
    assert not judge("a green circle moving left", clip)["direction"]
    assert not judge("a green circle moving right", clip[::-1])["direction"]  # played backwards
    assert not judge("a green square moving right", clip)["shape"]


def test_blank_and_static_clips_fail() -> None:
    blank = np.zeros((9, 32, 32, 3), dtype=np.float32) + 0.06
    r = read_clip(blank)
    assert r.color is None and r.shape is None and r.direction is None
    assert not judge("a red circle moving left", blank)["all"]


def test_reading_is_deterministic() -> None:
    rng = np.random.default_rng(0)
    clip = rng.random((9, 32, 32, 3), dtype=np.float32)
    assert read_clip(clip) == read_clip(clip.copy())


def test_stray_speckles_do_not_change_the_reading() -> None:
    # A generator's stray pixels away from the object must not stretch its bounding box (shape)
    # or drag its centroid (direction): the reading follows the largest connected component.
    clean = ds.render_clip("a blue triangle moving left", 4)
    speckled = clean.copy()
    rng = np.random.default_rng(1)
    for f in range(speckled.shape[0]):
        for y, x in rng.integers(0, 32, size=(4, 2)):
            if clean[f, y, x].max() < 0.2:  # on the background only
                speckled[f, y, x] = ds.COLORS["blue"]
    assert not np.array_equal(clean, speckled)
    a, b = read_clip(clean), read_clip(speckled)
    assert (b.color, b.shape, b.direction) == (a.color, a.shape, a.direction)
    assert (a.shape, a.direction) == ("triangle", "left")
    assert abs(b.fill_ratio - a.fill_ratio) < 0.05


def test_largest_component_wins_over_a_second_blob() -> None:
    clip = ds.render_clip("a red square moving down", 7)
    blob = clip.copy()
    blob[:, 1:3, 1:3] = ds.COLORS["red"]  # a 2x2 blob in a corner, every frame
    assert read_clip(blob).shape == "square"
    assert read_clip(blob).direction == "down"
