"""The training command on a shrunk model: resuming is exact, export writes a loadable model."""

from __future__ import annotations

import json

import pytest
import torch

from mixcache_lab.bundled.train import main

# A 1-block, 16-wide model and batches of 2: the loop, checkpointing and export, not learning.
TINY = [
    "--num-layers", "1", "--num-heads", "1", "--head-dim", "16", "--batch-size", "2",
    "--threads", "1", "--precision", "fp32", "--eval-every", "0", "--eval-steps", "2",
    "--log-every", "1",
]  # fmt: skip


def _ckpt(run) -> dict:
    return torch.load(run / "ckpt.pt", map_location="cpu", weights_only=False)


# The same for the HunyuanVideo architecture: 1 dual-stream + 1 single-stream block.
TINY_HUNYUAN = ["--arch", "hunyuan", "--num-single-layers", "1", *TINY]


@pytest.mark.parametrize("flags", [TINY, TINY_HUNYUAN], ids=["wan", "hunyuan"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, flags) -> None:
    # The default warm-up (200 steps) is longer than these runs, so the LR of step s does not
    # depend on --steps, and a run stopped at 2 and resumed to 4 must equal one run to 4.
    once, twice = tmp_path / "once", tmp_path / "twice"
    main(["train", "--run-dir", str(once), "--steps", "4", *flags])
    main(["train", "--run-dir", str(twice), "--steps", "2", *flags])
    assert _ckpt(twice)["step"] == 2
    main(["train", "--run-dir", str(twice), "--steps", "4", *flags])
    a, b = _ckpt(once), _ckpt(twice)
    assert a["step"] == b["step"] == 4
    assert [x for _, x in a["history"]] == [x for _, x in b["history"]]
    # ... and it did resume: a restart from scratch would end equal too, but would have lost
    # the evaluation the first part ran at its end (step 2).
    assert [e["step"] for e in a["evals"]] == [4]
    assert [e["step"] for e in b["evals"]] == [2, 4]
    for key in ("transformer", "ema_transformer", "ema_text_encoder"):
        for name, t in a[key].items():
            assert torch.equal(t, b[key][name]), (key, name)
    # Elapsed time counts everything the process did, so it is at least the step time.
    assert b["elapsed_seconds"] >= b["wall_seconds"] > 0


def test_arch_settings_and_resumes_are_checked(tmp_path) -> None:
    with pytest.raises(SystemExit, match="--num-single-layers does not apply to --arch wan"):
        main(["train", "--run-dir", str(tmp_path / "a"), "--num-single-layers", "3", *TINY])
    run = tmp_path / "b"
    main(["train", "--run-dir", str(run), "--steps", "1", *TINY])
    with pytest.raises(SystemExit, match="holds a wan run"):
        main(["train", "--run-dir", str(run), "--steps", "2", *TINY_HUNYUAN])


@pytest.mark.slow
@pytest.mark.parametrize("flags", [TINY, TINY_HUNYUAN], ids=["wan", "hunyuan"])
def test_export_writes_a_model_that_loads_with_its_card(tmp_path, flags) -> None:
    from mixcache_lab.bundled import load_bundled_pipeline

    run, out = tmp_path / "run", tmp_path / "out"
    main(["train", "--run-dir", str(run), "--steps", "2", *flags])
    main(["export", "--run-dir", str(run), "--out", str(out)])
    record = json.loads((out / "training_record.json").read_text())
    assert record["steps_trained"] == 2 and record["elapsed_minutes"] is not None
    assert "adherence_heldout_50_steps" in record
    assert (out / "MODEL_CARD.md").read_text().startswith("# The bundled mixcache")
    for png in ("loss.png", "adherence.png", "change_profile.png"):
        assert (out / png).stat().st_size > 0
    pipe = load_bundled_pipeline(out)
    assert pipe.arch == _ckpt(run)["cfg"].get("arch", "wan")
    ema = _ckpt(run)["ema_transformer"]
    for name, t in pipe.transformer.state_dict().items():
        assert torch.equal(t, ema[name]), name
