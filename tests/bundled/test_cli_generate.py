"""``mixcache generate`` / ``mixcache adherence`` end to end on the shipped model, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from mixcache_lab.cli import main
from mixcache_lab.cli.generate import psnr, side_by_side


def _invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_generate_uncached_writes_a_clip_of_the_prompt_size(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    r = _invoke(
        [
            "generate",
            "a red circle moving left",
            "--cache",
            "none",
            "--steps",
            "3",
            "--out",
            str(out),
            "--upscale",
            "2",
        ]
    )
    assert r.exit_code == 0, r.output
    assert "cache none:" in r.output and str(out) in r.output
    # imageio-ffmpeg (a dependency) reads it back; iterate the reader (list() of it can
    # raise MemoryError, see env-notes).
    import imageio

    with imageio.get_reader(out, format="FFMPEG") as reader:
        frames = np.stack(list(iter(reader)))
    assert frames.shape == (9, 64, 64, 3)


@pytest.mark.slow
def test_generate_with_mixcache_and_compare(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "clip.gif"
    r = _invoke(
        [
            "generate",
            "a blue square moving up",
            "--cache",
            "fast",
            "--steps",
            "8",
            "--out",
            str(out),
            "--compare",
            "--upscale",
            "1",
        ]
    )
    assert r.exit_code == 0, r.output
    assert out.is_file()
    cmp_path = tmp_path / "sub" / "clip_compare.gif"
    assert cmp_path.is_file()
    assert "PSNR(cached, uncached)" in r.output and "speedup" in r.output
    both = iio.imread(cmp_path)
    assert both.shape[0] == 9 and both.shape[2] == 2 * 32 + 4  # two clips and a gap


def test_unknown_prompt_word_lists_the_vocabulary(tmp_path: Path) -> None:
    r = _invoke(["generate", "a purple dog moving left", "--out", str(tmp_path / "x.mp4")])
    assert r.exit_code == 2
    assert "unknown word(s) ['purple', 'dog']" in r.output
    assert "circle" in r.output and "magenta" in r.output
    assert not (tmp_path / "x.mp4").exists()


def test_missing_model_directory(tmp_path: Path) -> None:
    r = _invoke(
        [
            "generate",
            "a red circle moving left",
            "--model",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "x.mp4"),
        ]
    )
    assert r.exit_code == 1
    assert "model directory not found" in r.output


def test_directory_without_a_pipeline(tmp_path: Path) -> None:
    r = _invoke(
        [
            "generate",
            "a red circle moving left",
            "--model",
            str(tmp_path),
            "--out",
            str(tmp_path / "x.mp4"),
        ]
    )
    assert r.exit_code == 1
    assert "not a diffusers pipeline directory" in r.output


def test_unwritable_output_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = _invoke(["generate", "a red circle moving left", "--out", str(blocker / "x.mp4")])
    assert r.exit_code == 2
    assert "cannot write" in r.output
    r = _invoke(["generate", "a red circle moving left", "--out", str(tmp_path / "x.avi")])
    assert r.exit_code == 2
    assert ".mp4 or .gif" in r.output


def test_adherence_command_prints_and_saves_numbers(tmp_path: Path) -> None:
    js = tmp_path / "a.json"
    r = _invoke(
        ["adherence", "--prompts", "bench", "--seeds", "1", "--steps", "2", "--json", str(js)]
    )
    assert r.exit_code == 0, r.output
    assert "ground truth" in r.output and "generated" in r.output
    data = json.loads(js.read_text())
    assert data["ground_truth"]["all_correct"] == 1.0
    assert data["generated"]["n"] == 8


def test_psnr_and_side_by_side_helpers() -> None:
    a = np.zeros((2, 4, 4, 3))
    assert psnr(a, a) == float("inf")
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    u = np.zeros((2, 4, 4, 3), np.uint8)
    assert side_by_side(u, u, gap=2).shape == (2, 4, 10, 3)


@pytest.fixture()
def hunyuan_not_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """bundled-hunyuan as it is before its weights ship (an empty model directory)."""
    import dataclasses

    from mixcache_lab.bundled import BUNDLED_MODELS

    entry = dataclasses.replace(BUNDLED_MODELS["bundled-hunyuan"], directory=tmp_path / "empty")
    monkeypatch.setitem(BUNDLED_MODELS, "bundled-hunyuan", entry)
    return entry


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "a red circle moving left", "--model", "bundled-hunyuan"],
        ["adherence", "--model", "bundled-hunyuan"],
        ["calibrate", "bundled-hunyuan", "--out", "profile.json"],
    ],
    ids=["generate", "adherence", "calibrate"],
)
def test_untrained_hunyuan_model_names_its_training_command(
    args: list[str], hunyuan_not_trained, tmp_path: Path
) -> None:
    r = CliRunner().invoke(
        main, [*args, *(["--out", str(tmp_path / "x.mp4")] * (args[0] == "generate"))]
    )
    assert r.exit_code == 1, r.output
    assert "bundled-hunyuan is not trained yet: run `" in r.output
    assert hunyuan_not_trained.train_command in " ".join(r.output.split())


@pytest.fixture()
def tiny_hunyuan_shipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """bundled-hunyuan with tiny random weights (4 blocks: room for block reuse) in its place."""
    import dataclasses

    from mixcache_lab.bundled import BUNDLED_MODELS
    from mixcache_lab.bundled.hunyuan import MixCacheHunyuanT2VPipeline

    MixCacheHunyuanT2VPipeline.from_config_random(
        seed=0, num_layers=1, num_single_layers=3, num_heads=1, head_dim=16
    ).save_pretrained(tmp_path / "hy")
    entry = dataclasses.replace(BUNDLED_MODELS["bundled-hunyuan"], directory=tmp_path / "hy")
    monkeypatch.setitem(BUNDLED_MODELS, "bundled-hunyuan", entry)


def test_generate_and_adherence_by_model_name(tmp_path: Path, tiny_hunyuan_shipped) -> None:
    for name in ("bundled-hunyuan", "bundled-wan"):
        out = tmp_path / f"{name}.gif"
        r = _invoke(
            ["generate", "a red circle moving left", "--model", name, "--cache", "balanced",
             "--steps", "3", "--guidance", "4", "--out", str(out), "--upscale", "1"]
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        assert f"model: {name};" in r.output and out.is_file()
    r = _invoke(["generate", "a purple circle moving left", "--model", "bundled-hunyuan"])
    assert r.exit_code == 2 and "unknown word(s) ['purple']" in r.output
    js = tmp_path / "a.json"
    r = _invoke(
        ["adherence", "--model", "bundled-hunyuan", "--prompts", "bench", "--seeds", "1",
         "--steps", "2", "--json", str(js)]
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    data = json.loads(js.read_text())
    assert data["model"] == "bundled-hunyuan" and data["generated"]["n"] == 8
