"""Soak: many generations in one process, each bit-identical to the same generation run fresh.

``python -m mixcache_lab.soak --generations 100`` (what ``make soak`` runs) alternates pipelines
(tiny Wan, tiny HunyuanVideo, the bundled model), configs (the paper's ``MixCacheConfig()``, a
config that reuses on random weights, the presets, speed budgets when the config has
``block_speedup``), step counts, guidance scales and batch sizes; one generation is interrupted
by an exception raised from ``callback_on_step_end``. Every completed generation must equal its
*reference* bit for bit (latents, decision records, peak cache bytes), and the number of live
tensors must not grow from one cycle of settings to the next.

Why a reference equals a fresh process: a generation's result depends only on the weights, the
pipeline's components (configs, scheduler) and what MixCache holds. The reference runs on a
``copy.deepcopy`` of the pipeline taken before any hook was installed or any generation ran, with
its own freshly applied MixCache, and the generator is seeded per call; nothing else carries
state between calls (diffusers' pipelines draw no global random numbers when given a generator).
So the reference sees exactly what a new process that built the same pipeline would see.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import logging
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from mixcache.api import MixCacheHandle, apply_mixcache
from mixcache.config import MixCacheConfig

__all__ = ["Setting", "SoakFailure", "SoakResult", "plan", "run_soak"]

_HAS_BUDGET = "block_speedup" in {f.name for f in dataclasses.fields(MixCacheConfig)}

# Thresholds that let random-weight tiny models reuse (their output changes far more per step
# than a trained model's, so the presets' triggers never fire on them).
_REUSING = MixCacheConfig.preset(
    "paper", trigger_threshold=1e9, refresh_threshold=1e9, warmup_fraction=0.0, final_steps=1
)


def _configs() -> dict[str, MixCacheConfig]:
    configs = {
        "paper": MixCacheConfig.preset("paper"),
        "reusing": _REUSING,
        "quality": MixCacheConfig.preset("quality"),
        "balanced": MixCacheConfig.preset("balanced"),
        "fast": MixCacheConfig.preset("fast"),
        "cfg_output_bf16": _REUSING.replace(cfg_mode="output", cache_dtype="bfloat16"),
        "lowest_change": _REUSING.replace(block_span="lowest_change", step_probe="none"),
    }
    if _HAS_BUDGET:
        configs["budget_2x"] = MixCacheConfig(block_speedup=2.0)
        configs["budget_1.5x"] = MixCacheConfig.preset("balanced", block_speedup=1.5)
    return configs


def _tiny_kwargs(family: str) -> Callable[[float, int, int], dict[str, Any]]:
    from .tiny import tiny_call_kwargs

    small = {"height": 16, "width": 16, "num_frames": 1, "max_sequence_length": 8}

    def kwargs(guidance: float, steps: int, batch: int) -> dict[str, Any]:
        extra: dict[str, Any] = {"guidance_scale": guidance}
        if family == "hunyuan" and guidance > 1:
            extra = {"true_cfg_scale": guidance, "negative_prompt": "blurry"}
        return tiny_call_kwargs(family, steps, **small, **extra, num_videos_per_prompt=batch)

    return kwargs


def _bundled_kwargs(guidance: float, steps: int, batch: int) -> dict[str, Any]:
    return {
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "num_videos_per_prompt": batch,
        "output_type": "latent",
    }


def _builders() -> dict[str, tuple[Callable[[], Any], Callable[..., dict[str, Any]], str]]:
    from .bundled import load_bundled_pipeline
    from .tiny import make_tiny_hunyuan_pipeline, make_tiny_wan_pipeline

    return {
        "tiny_wan": (
            lambda: make_tiny_wan_pipeline(num_layers=3),
            _tiny_kwargs("wan"),
            "a red cat",
        ),
        "tiny_hunyuan": (
            lambda: make_tiny_hunyuan_pipeline(num_layers=1, num_single_layers=2),
            _tiny_kwargs("hunyuan"),
            "a red cat",
        ),
        "bundled": (load_bundled_pipeline, _bundled_kwargs, "a red circle moving right"),
    }


@dataclass(frozen=True)
class Setting:
    """One generation of the soak."""

    pipeline: str
    config: str
    steps: int
    guidance: float
    batch: int
    seed: int
    interrupt_at: int | None = None  # raise from callback_on_step_end at this step

    def key(self) -> tuple[Any, ...]:
        return (self.pipeline, self.config, self.steps, self.guidance, self.batch, self.seed)


def plan(generations: int, pipelines: tuple[str, ...] | None = None) -> list[Setting]:
    """A deterministic schedule.

    Consecutive settings change pipeline, steps, guidance and batch; each config stays on each
    pipeline for two of its runs in a row (so one handle's controller serves several generations
    with different settings), and a generation about a third of the way in is interrupted, the
    first of such a pair, so the next run of that pipeline reuses the interrupted controller.
    """
    names = pipelines or ("tiny_wan", "tiny_hunyuan", "bundled")
    configs = sorted(_configs())
    steps, guidance, batches = (1, 3, 6, 9, 14), (1.0, 5.0, 3.5), (1, 2, 3)
    pair = 2 * len(names)
    out: list[Setting] = []
    for i in range(generations):
        pipe = names[i % len(names)]
        config = configs[(i // pair) % len(configs)]
        n = steps[(i // 2) % len(steps)]
        g = guidance[(i // len(names)) % len(guidance)]
        batch = batches[(i // 4) % len(batches)]
        if pipe == "bundled":  # the bundled model at few steps (it is 8 blocks, 192 wide)
            n, batch = min(n, 4), min(batch, 2)
        out.append(Setting(pipe, config, n, g, batch, seed=i % 4))
    k = generations // 3
    k -= k % pair  # first run of its pair: the next run on that pipeline keeps the handle
    if 0 <= k < len(out):
        out[k] = dataclasses.replace(out[k], steps=max(out[k].steps, 4), interrupt_at=2)
    return out


class SoakFailure(AssertionError):
    """A soak generation differed from its fresh reference, or memory grew."""


@dataclass
class SoakResult:
    """What :func:`run_soak` measured."""

    generations: int
    interrupted: int
    live_tensors: list[int]  # after each cycle of settings
    cache_bytes: dict[tuple[Any, ...], int]
    seconds: float


class _Interrupt(RuntimeError):
    pass


def _live_tensors() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance on deprecated torch module attributes warns
        warnings.simplefilter("ignore")
        return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


def _generate(pipe: Any, kwargs_of: Callable[..., dict[str, Any]], prompt: str, s: Setting) -> Any:
    kwargs = kwargs_of(s.guidance, s.steps, s.batch)
    if s.interrupt_at is not None:

        def stop(_pipe: Any, i: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if i == s.interrupt_at:
                raise _Interrupt(f"deliberate interruption at step {i}")
            return tensors

        kwargs["callback_on_step_end"] = stop
    generator = torch.Generator().manual_seed(s.seed)
    return pipe(prompt, generator=generator, **kwargs).frames


def _iter_chunks(items: list[Setting], size: int) -> Iterator[list[Setting]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_soak(
    generations: int = 100,
    pipelines: tuple[str, ...] | None = None,
    log: Callable[[str], None] | None = None,
    cycle: int | None = None,
) -> SoakResult:
    """Run the soak; raise :class:`SoakFailure` at the first difference or growth.

    Live tensors are counted every ``cycle`` generations (default: one config on every
    pipeline, twice); from the second count on they must never exceed it.
    """
    say = log or (lambda _msg: None)
    start = time.perf_counter()
    settings = plan(generations, pipelines)
    builders = _builders()
    configs = _configs()
    used = sorted({s.pipeline for s in settings})
    pipes = {name: builders[name][0]() for name in used}
    pristine = {name: copy.deepcopy(pipe) for name, pipe in pipes.items()}

    # References: a pristine copy + a fresh MixCache per distinct setting (see module docstring).
    refs: dict[tuple[Any, ...], tuple[torch.Tensor, int, list[dict[str, Any]]]] = {}
    for s in settings:
        if s.interrupt_at is not None or s.key() in refs:
            continue
        fresh = copy.deepcopy(pristine[s.pipeline])
        _, kwargs_of, prompt = builders[s.pipeline]
        with apply_mixcache(fresh, configs[s.config]) as handle:
            out = _generate(fresh, kwargs_of, prompt, s)
        stats = handle.stats()
        refs[s.key()] = (out, stats.cache_bytes, [r.to_dict() for r in stats.records])
        del fresh
    del pristine
    say(f"{len(refs)} references computed in {time.perf_counter() - start:.1f} s")

    handles: dict[str, tuple[str, MixCacheHandle]] = {}
    live: list[int] = []
    interrupted = 0
    cycle = cycle or 2 * len(used)
    done = 0
    for chunk in _iter_chunks(settings, cycle):
        for s in chunk:
            current = handles.get(s.pipeline)
            if current is None or current[0] != s.config:
                if current is not None:
                    current[1].remove()
                handles[s.pipeline] = (
                    s.config,
                    apply_mixcache(pipes[s.pipeline], configs[s.config]),
                )
            handle = handles[s.pipeline][1]
            _, kwargs_of, prompt = builders[s.pipeline]
            try:
                out = _generate(pipes[s.pipeline], kwargs_of, prompt, s)
            except _Interrupt:
                if s.interrupt_at is None:
                    raise
                interrupted += 1
                say(f"[{done}] {s}: interrupted as planned")
                done += 1
                continue
            if s.interrupt_at is not None:
                raise SoakFailure(f"{s}: the interruption did not happen")
            ref_out, ref_bytes, ref_records = refs[s.key()]
            stats = handle.stats()
            if not torch.equal(out, ref_out):
                diff = (out.float() - ref_out.float()).abs().max().item()
                raise SoakFailure(f"generation {done} {s}: output differs (max |diff| {diff:.3g})")
            if [r.to_dict() for r in stats.records] != ref_records:
                raise SoakFailure(f"generation {done} {s}: decisions differ from the reference")
            if stats.cache_bytes != ref_bytes:
                raise SoakFailure(
                    f"generation {done} {s}: cache peak {stats.cache_bytes} B, fresh {ref_bytes} B"
                )
            held = sum(c._held_bytes() for c in handle.controllers.values())
            if held:
                raise SoakFailure(f"generation {done} {s}: {held} B still cached after the run")
            say(f"[{done}] {s}: identical, cache peak {stats.cache_bytes} B")
            done += 1
        live.append(_live_tensors())
        say(f"live tensors after {done} generations: {live[-1]}")
    for _, handle in handles.values():
        handle.remove()
    # The first cycle may create lazily cached tensors (rotary tables, ...); after it, no cycle
    # may leave more tensors alive than the second one did.
    if len(live) >= 2 and max(live[1:]) > live[1]:
        raise SoakFailure(f"live tensors grew across cycles: {live}")
    return SoakResult(
        generations=len(settings),
        interrupted=interrupted,
        live_tensors=live,
        cache_bytes={k: v[1] for k, v in refs.items()},
        seconds=time.perf_counter() - start,
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m mixcache_lab.soak [--generations N] [--pipelines a,b]``."""
    parser = argparse.ArgumentParser(prog="python -m mixcache_lab.soak", description=__doc__)
    parser.add_argument("--generations", type=int, default=100)
    parser.add_argument("--pipelines", default="tiny_wan,tiny_hunyuan,bundled")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Per-generation notices (budget missed, nothing reused) are expected on random weights;
    # the soak judges outputs, decisions and memory, not them.
    logging.getLogger("mixcache").setLevel(logging.ERROR)
    try:
        result = run_soak(args.generations, tuple(args.pipelines.split(",")), log=print)
    except SoakFailure as exc:
        print(f"SOAK FAILED: {exc}", file=sys.stderr)
        return 1
    print(
        f"soak passed: {result.generations} generations ({result.interrupted} interrupted), "
        f"live tensors per cycle {result.live_tensors}, {result.seconds:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
