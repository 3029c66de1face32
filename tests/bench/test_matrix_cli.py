"""The bench's generality flags end to end on the tiny profile: --steps/--guidance/--seed,
--prompt-set training, --family, --matrix; and the measurement parts (memory, device sync)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mixcache_lab.bench.methods import BenchContext, default_methods, mag_ratios
from mixcache_lab.bench.profiles import (
    BUNDLED,
    MATRIX_SEED,
    TINY,
    get_profile,
    matrix_models,
    tiny_profile,
)
from mixcache_lab.bench.runner import BlockComputeCounter, PeakMemory, _Generator
from mixcache_lab.cli.bench import bench


def _invoke(args: list[str]) -> str:
    result = CliRunner().invoke(bench, [*args, "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_call_flags_reach_every_record(tmp_path: Path) -> None:
    _invoke(
        ["--profile", "tiny", "--steps", "4", "--guidance", "3.5", "--seed", "77",
         "--prompt-set", "training", "--prompts", "2", "--methods", "half-steps",
         "--out", str(tmp_path)]
    )  # fmt: skip
    records = _records(tmp_path)
    assert {r["method"] for r in records} == {"none", "half-steps"}
    for r in records:
        s = r["profile"]
        assert s["call_kwargs"]["num_inference_steps"] == 4 and s["steps"] == 4
        assert s["call_kwargs"]["guidance_scale"] == 3.5 and s["guidance"] == 3.5
        assert s["seed_base"] == 77 and r["seed"] == 77 + r["prompt_index"]
        assert s["prompt_set"] == "training"
        assert r["prompt"] == TINY.training_prompts[r["prompt_index"]]
        assert r["forwards_total"] == (8 if r["method"] == "none" else 4)  # 2 branches x steps


def test_bad_flags_are_refused_with_the_reason() -> None:
    runner = CliRunner()
    for args, msg in (
        (["--profile", "bundled", "--family", "wan"], "tiny profile only"),
        (["--profile", "tiny", "--family", "nope", "--list"], "unknown tiny family"),
        (["--matrix", "--cells", "20by5", "--list"], "STEPSxCFG"),
        (["--matrix", "--steps", "20", "--list"], "--cells"),
        (["--profile", "tiny", "--cells", "20x5"], "--matrix only"),
        (["--profile", "wan-1.3b-shape", "--prompt-set", "training", "--list"], "no training"),
    ):
        result = runner.invoke(bench, args)
        assert result.exit_code != 0 and msg in result.output, (args, result.output)


def test_training_prompts_are_neither_bench_nor_tuning_prompts() -> None:
    if not BUNDLED.prompts:
        pytest.skip("the bundled model is not importable here")
    train = BUNDLED.training_prompts
    assert len(train) == 8 and len(set(train)) == 8
    assert not set(train) & (set(BUNDLED.prompts) | set(BUNDLED.tuning_prompts))
    from mixcache_lab.bundled import TRAIN_PROMPTS

    assert set(train) <= set(TRAIN_PROMPTS)  # prompts the model was trained on
    models = matrix_models()  # every trained bundled model, the Wan one first
    assert models[0].name == "bundled"
    for m in models:  # one dataset: every model runs the same training prompts
        assert m.prompts == train and m.prompt_set == "training", m.name
    # The matrix's seeds are outside the benchmark's, the calibration's and training's.
    assert BUNDLED.seed + 10_000 + len(BUNDLED.prompts) < MATRIX_SEED


def test_family_takes_cfg_batching_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    from mixcache_lab import tiny

    registry = tiny.TINY_PIPELINES
    for name, entry in registry.items():
        p = tiny_profile(name)
        assert p.cfg_batched is entry.cfg_batched, name
        assert p.family == name and "output_type" not in p.call_kwargs
    # Flip one entry: the profile follows the registry, not the family's name.
    fake = dict(registry)
    fake["wan_i2v"] = type(registry["wan_i2v"])(registry["wan_i2v"].build, True, {})
    monkeypatch.setattr(tiny, "TINY_PIPELINES", fake)
    monkeypatch.setattr(tiny, "tiny_call_kwargs", lambda f, num_inference_steps: {})
    assert tiny_profile("wan_i2v").cfg_batched is True
    assert get_profile("tiny", "wan") is TINY
    with pytest.raises(ValueError, match="unknown tiny family"):
        tiny_profile("nope")


def test_family_runs_through_the_cli(tmp_path: Path) -> None:
    from mixcache_lab import tiny

    assert "cogvideox" in tiny.TINY_PIPELINES
    _invoke(
        ["--profile", "tiny", "--family", "cogvideox", "--steps", "4", "--prompts", "1",
         "--methods", "half-steps,mixcache-balanced", "--out", str(tmp_path)]
    )  # fmt: skip
    records = _records(tmp_path)
    ref = next(r for r in records if r["method"] == "none")
    assert ref["profile"]["family"] == "cogvideox"
    assert ref["forwards_total"] == 4  # batched CFG: one forward per step
    assert ref["status"] == "ok" and ref["block_fraction"] == 1.0


# ----------------------------------------------------------------------------------------------
# The matrix end to end
# ----------------------------------------------------------------------------------------------

MATRIX_METHODS = "mixcache-balanced,mixcache-x2,mixcache-step-only,fbc,magcache,half-steps"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], str]:
    out = tmp_path_factory.mktemp("matrix")
    stdout = _invoke(
        ["--matrix", "--models", "tiny", "--cells", "4x5,6x2", "--prompts", "1",
         "--methods", MATRIX_METHODS, "--out", str(out)]
    )  # fmt: skip
    return out, _records(out), stdout


def test_matrix_writes_its_outputs(matrix: tuple[Path, list[dict], str]) -> None:
    out, _, stdout = matrix
    for name in ("matrix.md", "matrix.png", "readme_snippet.md", "results.jsonl"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for cell in ("4x5", "6x2"):
        assert "| method | speedup |" in (out / "cells" / "tiny" / cell / "results.md").read_text()
    snippet = (out / "readme_snippet.md").read_text()
    assert "Command: `mixcache bench --matrix" in snippet and "whole run" in snippet
    assert "| tiny | 4x5 | balanced |" in snippet and "matrix.png" in snippet
    assert "held-out matrix" in stdout


def test_matrix_cells_carry_their_settings(matrix: tuple[Path, list[dict], str]) -> None:
    _, records, _ = matrix
    assert {(r["model"], r["cell"]) for r in records} == {("tiny", "4x5"), ("tiny", "6x2")}
    for r in records:
        steps, cfg = (int(float(x)) for x in r["cell"].split("x"))
        s = r["profile"]
        assert s["steps"] == steps and s["guidance"] == cfg
        assert s["prompt_set"] == "training" and r["seed"] == MATRIX_SEED
        assert r["prompt"] == TINY.training_prompts[0]
        assert r["matrix"]["cells"] == ["4x5", "6x2"]
        if r["method"] == "none":
            assert r["forwards_total"] == 2 * steps
        if r["method"] == "half-steps":
            assert r["block_fraction"] == pytest.approx(0.5)
        if r["family"] == "magcache" and r["status"] == "ok":
            # ratios are calibrated per cell: one per step of that cell
            assert len(r["method_settings"]["mag_ratios"]) == steps


def test_matrix_budget_rows_run_at_their_budget(matrix: tuple[Path, list[dict], str]) -> None:
    _, records, _ = matrix
    (x2,) = [r for r in records if r["method"] == "mixcache-x2" and r["cell"] == "4x5"]
    assert x2["status"] == "ok" and x2["target_speedup"] == 2.0
    assert x2["method_settings"]["block_speedup"] == 2.0


# ----------------------------------------------------------------------------------------------
# Measurement: per-cell calibration, memory, device sync
# ----------------------------------------------------------------------------------------------


def test_mag_ratios_are_memoised_per_step_count(monkeypatch: pytest.MonkeyPatch) -> None:
    runs: list[int] = []
    ctx = BenchContext(pipe=None, steps=3, memo={})

    class _T:
        def enable_cache(self, config) -> None:
            runs.append(config.num_inference_steps)

        def disable_cache(self) -> None:
            pass

    ctx.pipe = type("P", (), {"transformer": _T()})()
    ctx.calibrate = lambda: print([1.0] * ctx.steps)
    assert mag_ratios(ctx) == [1.0] * 3
    ctx.steps = 5
    assert mag_ratios(ctx) == [1.0] * 5  # a new step count calibrates again
    ctx.steps = 3
    assert mag_ratios(ctx) == [1.0] * 3 and runs == [3, 5]  # ...and the old one is kept


def test_peak_memory_sees_a_short_lived_allocation() -> None:
    # 64 MiB allocated, touched and freed inside the block: a sampler could miss it, the
    # kernel's peak counter cannot.
    import mmap

    with PeakMemory("cpu") as mem:
        # A fresh anonymous mapping, every page touched: the allocator cannot hand back pages
        # that are already resident (a freed torch/numpy buffer may be reused without growth).
        block = mmap.mmap(-1, 64 * 2**20)
        for offset in range(0, len(block), 4096):
            block[offset] = 1
        block.close()
    if mem.source.startswith("ru_maxrss"):
        pytest.skip("no resettable peak counter here (/proc/self/clear_refs)")
    assert mem.source.startswith("VmHWM")
    assert 60 * 2**20 <= mem.peak_delta < 200 * 2**20


def test_every_clock_read_follows_a_device_sync() -> None:
    from mixcache_lab.tiny import make_tiny_wan_pipeline

    pipe = make_tiny_wan_pipeline(num_layers=2)
    events: list[str] = []
    clock_value = iter(range(100))

    def clock() -> float:
        events.append("clock")
        return float(next(clock_value))

    profile = TINY.with_call(steps=2)
    counter = BlockComputeCounter(pipe.transformer, lambda: pipe.current_timestep)
    gen = _Generator(pipe, profile, counter, sync=lambda: events.append("sync"), clock=clock)
    from mixcache_lab.bench.methods import Installed

    out = gen(TINY.prompts[0], 0, Installed(remove=lambda: None), time_blocks=True)
    assert out.seconds == 1.0  # two clock reads of the fake clock around the call
    reads = [i for i, e in enumerate(events) if e == "clock"]
    assert len(reads) == 2 and all(events[i - 1] == "sync" for i in reads)
    # the block timer (perf_counter inside block hooks) syncs at entry and exit of each forward
    assert events.count("sync") == 2 + 2 * 4  # 2 steps x 2 branches x (start, stop)


def test_default_methods_sweep_every_peer_three_times() -> None:
    families: dict[str, int] = {}
    for spec in default_methods(20):
        families[spec.family] = families.get(spec.family, 0) + 1
    for fam in ("fbc", "magcache", "seacache", "taylorseer", "pab", "dbcache", "dbcache-ts"):
        assert families[fam] >= 3, fam
    budgets = [s for s in default_methods(20) if s.family == "mixcache-budget"]
    assert [(s.name, s.target_speedup) for s in budgets] == [
        ("mixcache-x1.5", 1.5),
        ("mixcache-x2", 2.0),
        ("mixcache-x2.5", 2.5),
        ("mixcache-x3", 3.0),
    ]


def test_peak_memory_on_cuda_reads_the_allocator_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    # No GPU here: the CUDA calls are replaced, so the branch's arithmetic and order are tested.
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: calls.append("sync"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 100)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: 1100)
    with PeakMemory("cuda:0") as mem:
        calls.append("work")
    assert mem.peak_delta == 1000 and mem.source == "torch.cuda.max_memory_allocated"
    assert calls == ["sync", "reset", "work", "sync"]


def test_device_sync_waits_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from mixcache_lab.bench.runner import device_sync

    synced: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: synced.append(d))
    device_sync(torch.nn.Linear(2, 2))()
    assert synced == []  # CPU module: nothing to wait for

    class _OnCuda(torch.nn.Module):
        def parameters(self, recurse: bool = True):
            yield type("P", (), {"device": torch.device("cuda", 1)})()

    device_sync(_OnCuda())()
    assert synced == [torch.device("cuda", 1)]


def test_matrix_leaves_out_the_overhead_probe_and_the_paper_mode_unless_asked() -> None:
    from mixcache_lab.bench.matrix import matrix_methods

    names = [s.name for s in matrix_methods(TINY)]
    assert "mixcache-dry-run" not in names and "mixcache-paper-choices" not in names
    assert {"mixcache-balanced", "mixcache-x3", "mixcache-cfg-only", "half-steps"} <= set(names)
    assert len(names) == len(TINY.methods(TINY.steps)) - 2
    asked = [s.name for s in matrix_methods(TINY, "mixcache-dry-run")]
    assert asked == ["none", "mixcache-dry-run"]


def test_single_granularity_ablations_run_a_budget_they_can_reach() -> None:
    # cfg and block reuse save at most half a step, so balanced's x2.25 is out of their reach:
    # they run x1.5 (compared with the hybrid's x1.5 point); step reuse runs balanced's budget.
    ctx = BenchContext(pipe=None, steps=20)
    specs = {s.name: s for s in default_methods(20)}
    budgets = {g: specs[f"mixcache-{g}-only"].build(ctx) for g in ("step", "cfg", "block")}
    assert {g: (c.granularities, c.block_speedup) for g, c in budgets.items()} == {
        "step": (("step",), 2.25),
        "cfg": (("cfg",), 1.5),
        "block": (("block",), 1.5),
    }
