"""End to end: ``mixcache bench --profile tiny`` through the CLI, then checks on what it wrote."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from mixcache_lab.bench.profiles import TINY
from mixcache_lab.cli.bench import bench

PEER_FAMILIES = ("fbc", "magcache", "seacache", "taylorseer", "pab", "dbcache", "dbcache-ts")
OUTPUTS = ("results.jsonl", "results.md", "pareto.png", "grid.png", "trace.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], str]:
    out = tmp_path_factory.mktemp("bench")
    result = CliRunner().invoke(
        bench, ["--profile", "tiny", "--out", str(out), "--quiet"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return out, records, result.output


def _by(records: list[dict], method: str) -> list[dict]:
    return [r for r in records if r["method"] == method]


def test_every_output_is_written(run: tuple[Path, list[dict], str]) -> None:
    out, _, _ = run
    for name in OUTPUTS:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_record_per_method_and_prompt_with_settings(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    methods = {r["method"] for r in records}
    assert {"none", "half-steps", "fastercache"} <= methods
    for m in methods:
        assert [r["prompt"] for r in _by(records, m)] == list(TINY.prompts)
    for r in records:
        assert r["profile"]["profile"] == "tiny"
        assert r["profile"]["call_kwargs"]["num_inference_steps"] == TINY.steps
        assert r["machine"]["cores"] >= 1 and r["machine"]["torch"]
        assert r["status"] in ("ok", "unavailable", "failed")
        if r["status"] == "ok":
            assert r["tag"] and r["time_s"] > 0 and r["speedup"] > 0
            assert 0.0 < r["block_fraction"] <= 1.0
            assert r["deterministic"], r["method"]  # the timed repeats give the same latents
        else:
            assert r["reason"]
    assert not [r for r in records if r["status"] == "failed"]


def test_reference_is_exact(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    for r in _by(records, "none"):
        assert r["psnr"] == math.inf and r["rel_l2_latent"] == 0.0
        assert r["block_fraction"] == 1.0 and r["speedup"] == 1.0
        assert r["forwards_total"] == 2 * TINY.steps  # cond + uncond per step
    assert records[0]["profile"]["restored_exactly_after_all_methods"] is True


def test_half_steps_counts_exactly_half(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    for r in _by(records, "half-steps"):
        assert r["block_fraction"] == pytest.approx(0.5, abs=1e-12)
        assert r["forwards_total"] == TINY.steps
        assert r["rel_l2_latent"] > 0


def test_every_peer_family_really_skips_compute(run: tuple[Path, list[dict], str]) -> None:
    # A peer that silently does nothing would be a configuration bug of ours.
    _, records, _ = run
    for fam in PEER_FAMILIES:
        recs = [r for r in records if r["family"] == fam and r["status"] == "ok"]
        if fam.startswith("dbcache") and not recs:
            pytest.importorskip("cache_dit")
        assert recs, fam
        assert min(r["block_fraction"] for r in recs) < 0.9, fam
        assert max(r["rel_l2_latent"] for r in recs) > 0, fam


def test_peer_sweeps_move_along_the_tradeoff(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run

    def frac(m: str) -> float:
        return sum(r["block_fraction"] for r in _by(records, m))

    assert frac("fbc-0.2") <= frac("fbc-0.1") <= frac("fbc-0.05")
    assert frac("seacache-0.5") <= frac("seacache-0.1")


def test_fastercache_is_reported_not_applicable(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    for r in _by(records, "fastercache"):
        assert r["status"] == "unavailable" and "not applicable" in r["reason"]


def test_magcache_uses_calibrated_ratios(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    r = _by(records, "magcache-0.06")[0]
    ratios = r["method_settings"]["mag_ratios"]
    assert len(ratios) == TINY.steps and ratios[0] == 1.0 and len(set(ratios)) > 2


def test_mixcache_methods_run_or_say_why(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    mix = [r for r in records if r["family"].startswith("mixcache")]
    assert {r["method"] for r in mix} == {
        "mixcache-quality",
        "mixcache-balanced",
        "mixcache-fast",
        "mixcache-x1.5",
        "mixcache-x2",
        "mixcache-x2.5",
        "mixcache-x3",
        "mixcache-step-only",
        "mixcache-cfg-only",
        "mixcache-block-only",
        "mixcache-paper-choices",
    }
    for r in mix:
        if r["status"] == "ok":
            assert r["mixcache_records"], r["method"]
            assert len(r["mixcache_records"]) == r["forwards_total"]
            # The benchmark's own count agrees with MixCache's record of what it computed
            # (Wan blocks are identical, so the FLOP fraction equals the block fraction).
            stats = r["method_stats"]
            assert r["block_fraction"] == pytest.approx(stats["compute_fraction"], abs=1e-9)
            assert r["cache_bytes"] and r["cache_bytes"] >= stats["cache_bytes"] > 0
        else:
            assert "mixcache" in r["reason"]


def test_mixcache_dry_run_computes_everything(run: tuple[Path, list[dict], str]) -> None:
    _, records, _ = run
    for r in _by(records, "mixcache-dry-run"):
        if r["status"] == "ok":
            assert r["block_fraction"] == 1.0 and r["rel_l2_latent"] == 0.0
            assert r["family"] == "diagnostic"


def test_tables_list_every_method(run: tuple[Path, list[dict], str]) -> None:
    out, records, stdout = run
    md = (out / "results.md").read_text()
    assert "| method | speedup |" in md and "profile `tiny`" in md
    for r in records:
        assert r["method"] in md
        assert r["method"] in stdout
