"""One rank of a context-parallel run of tiny pipelines, with and without MixCache.

Launched by ``test_context_parallel.py`` (``python worker.py --rank R --world W ...``), one
process per rank, one torch thread each, over gloo with a ``file://`` rendezvous. It runs every
job of ``--jobs`` and saves what the test compares into ``--out``. ``--jobs`` is a JSON file
``{"parallel": [job, ...], "reference": [job, ...]}``:

- ``ref-<rank>.pt``: the single-process results of every ``world``-th reference job, starting at
  ``rank`` (computed *before* the process group exists, so the ranks share that work and no rank
  waits for another inside a collective);
- ``cp-<rank>.pt``: the context-parallel results of every parallel job, on this rank.

A job is ``{"key", "family", "config", "steps"}``, plus ``"order"`` and ``"repeat"`` for a
parallel job; ``family`` is ``"wan"``, ``"wan22"`` (two transformers) or ``"hunyuan"``;
``config`` names an entry of :func:`configs` (``null``: no MixCache); ``order`` is ``"before"``
(MixCache applied, then ``enable_parallelism``) or ``"after"`` (the other way round); ``repeat``
runs a second cached generation.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))  # tiny_configs

from tiny_configs import TINY_BALANCED, TINY_FAST, TINY_QUALITY

from mixcache import MixCacheConfig, apply_mixcache
from mixcache_lab.tiny import (
    make_tiny_hunyuan_pipeline,
    make_tiny_wan_pipeline,
    tiny_call_kwargs,
)

PROMPT = "a red circle moving right"


def configs() -> dict[str, MixCacheConfig]:
    """The configs a job may name. Tiny configs are the ones that reuse on random weights."""
    out = {
        "quality": MixCacheConfig.preset("quality"),
        "balanced": MixCacheConfig.preset("balanced"),
        "fast": MixCacheConfig.preset("fast"),
        "tiny-quality": TINY_QUALITY,
        "tiny-balanced": TINY_BALANCED,
        "tiny-fast": TINY_FAST,
        "tiny-step": TINY_FAST.replace(granularities=("step",)),
        "tiny-cfg": TINY_FAST.replace(granularities=("cfg",)),
        "tiny-block": TINY_FAST.replace(granularities=("block",)),
        "tiny-lowest-change": TINY_FAST.replace(
            granularities=("block",), block_span="lowest_change", sketch_tokens=4
        ),
        "tiny-cfg-output": TINY_FAST.replace(granularities=("cfg",), cfg_mode="output"),
        "tiny-no-probe": TINY_FAST.replace(step_probe="none"),
    }
    for name in ("quality", "balanced", "fast"):
        # The presets start caching from a 3 % output change, which a random-weight model never
        # reaches; the same presets with the tiny models' trigger do reuse.
        out[f"{name}-tiny-trigger"] = MixCacheConfig.preset(
            name, trigger_threshold=TINY_FAST.trigger_threshold
        )
    if "block_speedup" in {f.name for f in dataclasses.fields(MixCacheConfig)}:
        out["budget"] = MixCacheConfig.preset("balanced", block_speedup=2.0)
    return out


def build(family: str) -> Any:
    """A fresh tiny pipeline with fixed seeds (identical in every process)."""
    if family == "hunyuan":
        return make_tiny_hunyuan_pipeline()
    pipe = make_tiny_wan_pipeline()
    if family == "wan22":  # Wan2.2 A14B: two transformers split at a boundary timestep
        from diffusers import WanPipeline

        second = copy.deepcopy(pipe.transformer)
        torch.manual_seed(7)
        with torch.no_grad():  # a different low-noise expert, so a mix-up would show
            for p in second.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        pipe = WanPipeline(
            tokenizer=pipe.tokenizer,
            text_encoder=pipe.text_encoder,
            vae=pipe.vae,
            scheduler=pipe.scheduler,
            transformer=pipe.transformer,
            transformer_2=second.eval(),
            boundary_ratio=0.5,
        )
        pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: Any, family: str, steps: int) -> torch.Tensor:
    kind = "hunyuan" if family == "hunyuan" else "wan"
    kwargs = tiny_call_kwargs(kind, num_inference_steps=steps)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **kwargs).frames


@contextmanager
def cpu_device_count() -> Iterator[None]:
    """``enable_parallelism`` computes ``rank % torch.accelerator.device_count()``: a division by
    zero without an accelerator. Only then, and only for that call, report one device."""
    if torch.accelerator.device_count() > 0:
        yield
        return
    original = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.accelerator.device_count = original  # type: ignore[assignment]


def transformers_of(pipe: Any) -> list[torch.nn.Module]:
    return [m for m in (pipe.transformer, getattr(pipe, "transformer_2", None)) if m is not None]


def enable_cp(transformers: list[torch.nn.Module], world: int) -> str | None:
    """Context parallel (Ulysses) on every transformer; the error message if diffusers refuses."""
    from diffusers import ContextParallelConfig

    try:
        with cpu_device_count():
            for t in transformers:
                t.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    except ValueError as exc:
        return str(exc)
    return None


def records(handle: Any) -> list[dict[str, Any]]:
    return [r.to_dict() for r in handle.stats().records]


def cached_run(handle: Any, pipe: Any, family: str, steps: int) -> dict[str, Any]:
    """One generation with MixCache applied: its output, records and stats."""
    out = {"gen1": generate(pipe, family, steps), "records1": records(handle)}
    stats = handle.stats()
    out.update(compute_fraction=stats.compute_fraction, cache_bytes=stats.cache_bytes)
    out["summary"] = stats.summary()
    return out


def _config(job: dict[str, Any]) -> MixCacheConfig | None:
    return configs()[job["config"]] if job.get("config") else None


def run_reference(job: dict[str, Any]) -> dict[str, Any]:
    """The single-process run of ``job``: its plain output, or its cached output and records."""
    family, steps, config = job["family"], job["steps"], _config(job)
    pipe = build(family)
    if config is None:
        return {"plain": generate(pipe, family, steps)}
    handle = apply_mixcache(pipe, config)
    out = cached_run(handle, pipe, family, steps)
    handle.remove()
    return out


def run_parallel(job: dict[str, Any], world: int) -> dict[str, Any]:
    """``job`` on this rank of a context-parallel run, MixCache applied ``before`` or ``after``
    ``enable_parallelism``; then (``repeat``) a second generation, then remove() and a plain one.
    """
    family, steps, config = job["family"], job["steps"], _config(job)
    pipe = build(family)
    out: dict[str, Any] = {}
    before = job.get("order") == "before"
    if family == "hunyuan":
        # diffusers records the parallel config and rewires the attention processors before it
        # finds there is no plan: the refused model is left half-parallel, so refuse on a copy
        # and run the untouched one, each rank on the whole sequence.
        out["cp_error"] = enable_cp([copy.deepcopy(pipe.transformer)], world)
    elif config is None or not before:
        out["cp_error"] = enable_cp(transformers_of(pipe), world)
    if config is None:
        out["plain"] = generate(pipe, family, steps)
        return out
    handle = apply_mixcache(pipe, config)
    if before and family != "hunyuan":
        out["cp_error"] = enable_cp(transformers_of(pipe), world)
    out.update(cached_run(handle, pipe, family, steps))
    if job.get("repeat"):
        out["gen2"] = generate(pipe, family, steps)
        out["records2"] = records(handle)
    handle.remove()
    out["after_remove"] = generate(pipe, family, steps)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--init", required=True, help="file:// rendezvous URL")
    parser.add_argument("--jobs", required=True, help="JSON file: list of jobs")
    parser.add_argument("--out", required=True, help="directory for the result files")
    parser.add_argument("--timeout", type=float, default=60.0, help="process-group timeout, s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = json.loads(Path(args.jobs).read_text())
    jobs, references = spec["parallel"], spec["reference"]
    out = Path(args.out)

    mine = references[args.rank :: args.world]
    refs = {j["key"]: run_reference(j) for j in mine}
    torch.save(refs, out / f"ref-{args.rank}.pt")

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=args.init,
        rank=args.rank,
        world_size=args.world,
        timeout=timedelta(seconds=args.timeout),
    )
    try:
        results = {j["key"]: run_parallel(j, args.world) for j in jobs}
        torch.save(results, out / f"cp-{args.rank}.pt")
    finally:
        # Without a barrier a rank sometimes tears the group down while the other still uses it.
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
