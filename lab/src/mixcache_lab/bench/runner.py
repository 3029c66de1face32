"""Run every method of a profile on the same pipeline, prompts and seeds, in one process.

Protocol (the same for every method, peers included):

1. build each method's config once (a method that cannot run here is recorded as
   ``unavailable`` with why; MagCache calibrates here, on the tuning prompt);
2. round 1, method by method: apply; one warm-up generation on the first prompt, excluded
   from timing (``warmup="method"``), which also measures the peak RSS growth and the most
   bytes the cache holds at any step; one timed generation per prompt (``time.perf_counter``
   around the whole pipeline call) whose output is the one whose quality is measured; remove;
3. rounds 2..repeats: apply, one timed generation per prompt, remove — method after method, in
   reverse order on even rounds, so the repeats of all methods are interleaved in time and a
   load drift on a shared machine hits early and late methods alike; the reported time is the
   median over rounds, and every round must reproduce the first round's latents exactly
   (``deterministic``);
4. after every removal, the transformer's module tree must be as the method found it (a child
   list put back in another order computes the same but makes the next cache hook the wrong
   "first block"): a reordering is undone and noted on the method, any other change fails it.

Block compute is counted by the benchmark itself, identically for every method: a forward
pre-hook on the *first* ``nn.Linear`` of every compute unit of every block (``attn1``, ``attn2``,
``ffn`` in Wan). Caches replace a block's or an attention module's forward (diffusers'
``HookRegistry``, cache-dit's patched forwards), so a hook on the block or the attention module
itself still fires when the cache skipped the work; the projections inside only run when the
unit really computes. Each unit is weighted by its FLOPs, measured once with
``torch.utils.flop_counter`` on a real forward (with a formula for the CPU SDPA kernel, which the
counter does not know), so "fraction of block compute" is a FLOP fraction relative to ``none``
on the same prompt.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import resource
import statistics
import sys
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .methods import (
    BenchContext,
    Installed,
    MethodSpec,
    MethodUnavailable,
    adapter_for,
    module_layout,
    restore_module_layout,
    select_methods,
)
from .metrics import lpips_status, quality_metrics, rel_l2
from .profiles import Profile
from .report import clip_image

__all__ = [
    "BenchSession",
    "BlockComputeCounter",
    "PeakMemory",
    "RunOutput",
    "device_sync",
    "machine_info",
    "run_bench",
    "run_methods",
]

_BLOCK_LISTS = ("blocks", "transformer_blocks", "single_transformer_blocks")


# ----------------------------------------------------------------------------------------------
# Block compute counting
# ----------------------------------------------------------------------------------------------


def _sdpa_cpu_flops(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kwargs: Any) -> int:
    # QK^T and PV, 2 FLOPs per multiply-add; the flop counter has no entry for this CPU kernel.
    b, h, lq, d = q_shape
    lk, dv = k_shape[-2], v_shape[-1]
    return 2 * b * h * lq * lk * d + 2 * b * h * lq * lk * dv


def _block_lists(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.ModuleList]]:
    return [
        (name, mod)
        for name, mod in transformer.named_children()
        if name in _BLOCK_LISTS and isinstance(mod, torch.nn.ModuleList) and len(mod) > 0
    ]


@dataclass
class _Unit:
    name: str  # e.g. "blocks.3.attn1"
    probe: torch.nn.Module  # the first nn.Linear inside
    flops: float = 1.0
    rows: int | None = None  # the input's leading dimension when its FLOPs were measured

    def share(self, rows: int | None) -> float:
        """Share of the measured FLOPs a call on ``rows`` input rows costs."""
        return rows / self.rows if rows and self.rows else 1.0


class BlockComputeCounter:
    """Counts the block compute a transformer really executes, per forward.

    Attach it for the whole benchmark; :meth:`begin` starts a new generation's log.
    """

    def __init__(self, transformer: torch.nn.Module, current_timestep: Callable[[], Any]) -> None:
        self.transformer = transformer
        self._current_timestep = current_timestep
        self.units: list[_Unit] = []
        for list_name, blocks in _block_lists(transformer):
            for i, block in enumerate(blocks):
                for child_name, child in block.named_children():
                    probe = next(
                        (m for m in child.modules() if isinstance(m, torch.nn.Linear)), None
                    )
                    if probe is not None:
                        self.units.append(_Unit(f"{list_name}.{i}.{child_name}", probe))
        if not self.units:
            raise ValueError(f"no transformer blocks found in {type(transformer).__name__}")
        self.flops_measured = False
        self.captured: tuple[tuple, dict] | None = None
        self.forwards: list[dict[str, Any]] = []
        self._handles: list[Any] = []
        self._last_t: float | None = None

    # -- hooks --
    def attach(self) -> None:
        """Install the counting hooks (idempotent)."""
        if self._handles:
            return
        self._handles.append(
            self.transformer.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        )
        for idx, unit in enumerate(self.units):
            self._handles.append(
                unit.probe.register_forward_pre_hook(lambda m, a, idx=idx: self._on_unit(idx, a))
            )

    def detach(self) -> None:
        """Remove every hook this counter installed."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def begin(self) -> None:
        """Start the log of a new generation."""
        self.forwards = []
        self._last_t = None

    def _on_forward(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.captured is None and not self.flops_measured:
            self.captured = (args, dict(kwargs))
        t = self._current_timestep()
        t = float(t) if t is not None else None
        if t != self._last_t or not self.forwards:
            step = self.forwards[-1]["step"] + 1 if self.forwards else 0
            branch = 0
        else:
            step = self.forwards[-1]["step"]
            branch = self.forwards[-1]["branch_index"] + 1
        self._last_t = t
        self.forwards.append({"step": step, "branch_index": branch, "units": []})

    def _on_unit(self, idx: int, args: tuple) -> None:
        if self.forwards:
            self.forwards[-1]["units"].append((idx, _rows(args)))

    # -- weights --
    def measure_flops(self) -> None:
        """Weight each unit by its FLOPs on the first captured forward (run once, uncached)."""
        if self.flops_measured or self.captured is None:
            return
        from torch.utils.flop_counter import FlopCounterMode

        mapping = {}
        op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
        if op is not None:
            mapping[op] = _sdpa_cpu_flops
        args, kwargs = self.captured
        self.detach()
        # The rows each unit ran on in the measured forward: FLOPs scale with them, so a unit
        # run on half the batch (batched CFG's cfg reuse) counts half.
        rows = [
            unit.probe.register_forward_pre_hook(
                lambda m, a, unit=unit: setattr(unit, "rows", unit.rows or _rows(a))
            )
            for unit in self.units
        ]
        try:
            with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
                self.transformer(*args, **kwargs)
        finally:
            for handle in rows:
                handle.remove()
            self.attach()
        counts = fc.get_flop_counts()
        root = type(self.transformer).__name__
        for unit in self.units:
            per_op = counts.get(f"{root}.{unit.name}", {})
            unit.flops = float(sum(per_op.values())) or 1.0
        self.flops_measured = True
        self.captured = None  # do not keep the inputs alive

    @property
    def full_forward_flops(self) -> float:
        """Block FLOPs of one forward that computes everything."""
        return sum(u.flops for u in self.units)

    def summarize(self) -> tuple[float, list[dict[str, Any]]]:
        """(executed block FLOPs of the generation, per-forward trace)."""
        total = 0.0
        full = self.full_forward_flops
        trace = []
        for f in self.forwards:
            executed = sum(
                self.units[i].flops * self.units[i].share(rows) for i, rows in f["units"]
            )
            total += executed
            branch = ("cond", "uncond")[f["branch_index"]] if f["branch_index"] < 2 else "extra"
            trace.append(
                {"step": f["step"], "branch": branch, "fraction": round(executed / full, 4)}
            )
        return total, trace


def _rows(args: tuple) -> int | None:
    """Leading dimension of a unit's input (its batch, or batch x tokens when flattened)."""
    x = args[0] if args else None
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 1 else None


def device_sync(module: torch.nn.Module) -> Callable[[], None]:
    """A function that waits for ``module``'s device to finish queued work (no-op on CPU)."""
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


class _BlockTimer:
    """Wall time spent between entering the first block and leaving the last (``none`` only)."""

    def __init__(
        self, transformer: torch.nn.Module, sync: Callable[[], None] = lambda: None
    ) -> None:
        self._sync = sync
        lists = _block_lists(transformer)
        self.first, self.last = lists[0][1][0], lists[-1][1][-1]
        self.seconds = 0.0
        self._t0 = 0.0
        self._handles: list[Any] = []

    def __enter__(self) -> _BlockTimer:
        self.seconds = 0.0
        self._handles = [
            self.first.register_forward_pre_hook(self._start),
            self.last.register_forward_hook(self._stop),
        ]
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()

    def _start(self, *args: Any) -> None:
        self._sync()
        self._t0 = time.perf_counter()

    def _stop(self, *args: Any) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._t0


def portable_traceback(frames: int = 8) -> str:
    """The current exception's innermost ``frames`` frames, without this machine's paths.

    Innermost, because where a peer fails is deep inside it (the outermost frames are the
    bench's own); results files are committed, so the working directory and the environment's
    prefix are cut from the file names.
    """
    text = traceback.format_exc(limit=-frames)
    for prefix in sorted({os.getcwd(), sys.prefix, sys.base_prefix}, key=len, reverse=True):
        text = text.replace(prefix.rstrip(os.sep) + os.sep, "")
    return text


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _proc_status_kb("VmHWM") is not None


class PeakMemory:
    """Peak memory growth over a block of code, from a counter that sees every allocation.

    ``peak_delta`` (bytes) = peak during the block - usage when it started; ``source`` names
    the counter (see the module docstring). ``device``: the pipeline's device.
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.peak_delta = 0
        self.source = ""

    @staticmethod
    def rss() -> int:
        """Current resident set size in bytes (0 if unknown)."""
        kb = _proc_status_kb("VmRSS")
        return kb * 1024 if kb is not None else 0

    @staticmethod
    def _maxrss() -> int:
        scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.source = "torch.cuda.max_memory_allocated"
        elif _reset_rss_peak():
            self._base = self.rss()
            self.source = "VmHWM (reset by /proc/self/clear_refs)"
        else:
            self._base = max(self.rss(), self._maxrss())
            self.source = "ru_maxrss (process-lifetime max: growth beyond earlier peaks only)"
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self.source.startswith("VmHWM"):
            peak = (_proc_status_kb("VmHWM") or 0) * 1024
        else:
            peak = self._maxrss()
        self.peak_delta = max(0, peak - self._base)


# ----------------------------------------------------------------------------------------------
# One generation
# ----------------------------------------------------------------------------------------------


@dataclass
class RunOutput:
    """What one generation produced and cost."""

    seconds: float
    frames: np.ndarray | None
    latents: torch.Tensor | None
    block_flops: float
    forwards: list[dict[str, Any]]
    block_seconds: float | None = None
    cache_bytes: int | None = None
    rss_peak_delta: int | None = None
    records: list[dict[str, Any]] | None = None
    stats: dict[str, Any] | None = None


class _Generator:
    """Calls the pipeline the same way for every method."""

    def __init__(
        self,
        pipe: Any,
        profile: Profile,
        counter: BlockComputeCounter,
        sync: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.pipe = pipe
        self.profile = profile
        self.counter = counter
        # Waits for the device before every clock read (no-op on CPU; injectable for tests).
        self.sync = device_sync(pipe.transformer) if sync is None else sync
        self.clock = clock
        self.memory_source = ""

    def __call__(
        self,
        prompt: str,
        seed: int,
        installed: Installed,
        *,
        heavy: bool = False,
        time_blocks: bool = False,
        overrides: dict[str, Any] | None = None,
    ) -> RunOutput:
        kwargs = dict(self.profile.call_kwargs)
        kwargs.setdefault("output_type", "np" if self.profile.decode else "latent")
        kwargs.update(self.profile.prompt_kwargs(prompt))
        kwargs.update(installed.call_overrides)
        kwargs.update(overrides or {})
        kwargs["generator"] = torch.Generator("cpu").manual_seed(seed)
        box: dict[str, Any] = {"bytes": None}

        def on_step(pipe: Any, i: int, t: Any, cb: dict[str, Any]) -> dict[str, Any]:
            box["latents"] = cb["latents"]
            if heavy:
                # Cache bytes are read while the cache is live: pipelines reset cache state at
                # the end of the call.
                b = installed.cache_bytes()
                if b is not None:
                    box["bytes"] = max(b, box["bytes"] or 0)
            return {}

        kwargs["callback_on_step_end"] = on_step
        kwargs["callback_on_step_end_tensor_inputs"] = ["latents"]
        installed.before_run()
        self.counter.begin()
        timer = (
            _BlockTimer(self.pipe.transformer, self.sync)
            if time_blocks
            else contextlib.nullcontext()
        )
        rss = PeakMemory(self.pipe.transformer.device) if heavy else contextlib.nullcontext()
        with torch.no_grad(), timer, rss:
            self.sync()
            t0 = self.clock()
            out = self.pipe(**kwargs)
            self.sync()
            seconds = self.clock() - t0
        if heavy:
            self.memory_source = rss.source
        video = out.frames if hasattr(out, "frames") else out[0]
        frames = None
        if kwargs["output_type"] == "np":
            frames = np.asarray(video[0], dtype=np.float32)
        latents = box.get("latents")
        latents = latents.detach().float().clone() if latents is not None else None
        flops, forwards = self.counter.summarize()
        records = installed.records()
        if records is not None and len(records) > len(forwards):
            records = records[-len(forwards) :]  # stats accumulated over runs: keep this one's
        stats = installed.stats()
        if stats is not None:
            stats = {k: v for k, v in stats.items() if k != "records"}  # stored separately
        return RunOutput(
            seconds=seconds,
            frames=frames,
            latents=latents,
            block_flops=flops,
            forwards=forwards,
            block_seconds=timer.seconds if time_blocks else None,
            cache_bytes=box["bytes"],
            rss_peak_delta=rss.peak_delta if heavy else None,
            records=records,
            stats=stats,
        )


# ----------------------------------------------------------------------------------------------
# Machine info
# ----------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """CPU model, cores, threads and library versions (stored in every record)."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import diffusers

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "platform": platform.platform(),
        "cuda": torch.cuda.is_available(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    with contextlib.suppress(Exception):
        import cache_dit

        info["cache_dit"] = getattr(cache_dit, "__version__", "installed")
    return info


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------


@dataclass
class _MethodResult:
    spec: MethodSpec
    config: Any = None
    status: str = "ok"
    reason: str = ""
    tag: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    runs: dict[int, list[RunOutput]] = field(default_factory=dict)  # prompt index -> repeats
    cache_bytes: int | None = None
    rss_peak_delta: int | None = None
    error: dict[str, Any] | None = None


def _prepare(spec: MethodSpec, ctx: BenchContext) -> _MethodResult:
    """Build the method's config once (calibrating peers calibrate here)."""
    res = _MethodResult(spec)
    try:
        res.config = spec.build(ctx)
    except MethodUnavailable as exc:
        res.status, res.reason = "unavailable", str(exc)
        return res
    adapter = adapter_for(res.config)
    res.tag, res.settings = adapter.tag(res.config), adapter.settings(res.config)
    return res


def _run_round(
    res: _MethodResult,
    ctx: BenchContext,
    gen: _Generator,
    prompts: list[str],
    seeds: list[int],
    profile: Profile,
    first: bool,
    tick: Callable[[str], None],
) -> None:
    """Apply the method, time one generation per prompt, remove it.

    The first round also runs the excluded warm-up (which measures cache bytes and memory) and
    keeps the outputs whose quality is measured; later rounds only add timings, so repeats of
    different methods are interleaved in time and share the machine's load drifts.
    """
    spec = res.spec
    layout = module_layout(ctx.pipe.transformer)
    try:
        installed = adapter_for(res.config).apply(ctx.pipe, res.config, ctx)
    except Exception as exc:  # a peer refusing this model is a result, not a crash
        res.status, res.reason = "failed", f"apply: {type(exc).__name__}: {exc}"
        return
    try:
        if first and profile.warmup == "method":
            w = gen(prompts[0], seeds[0], installed, heavy=True)
            res.cache_bytes, res.rss_peak_delta = w.cache_bytes, w.rss_peak_delta
        for p, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            heavy = first and profile.warmup != "method" and p == 0
            out = gen(prompt, seed, installed, heavy=heavy, time_blocks=spec.name == "none")
            if heavy:
                res.cache_bytes, res.rss_peak_delta = out.cache_bytes, out.rss_peak_delta
            if not first:  # later repeats: keep their time and latents (determinism check)
                out = RunOutput(
                    out.seconds, None, out.latents, out.block_flops, [], out.block_seconds
                )
            res.runs.setdefault(p, []).append(out)
            if first:
                tick(spec.name)
    except Exception as exc:
        res.status = "failed"
        res.reason = f"run: {type(exc).__name__}: {exc}"
        res.error = {"traceback": portable_traceback()}
    finally:
        try:
            installed.remove()
        except Exception as exc:
            res.reason += f" (remove failed: {exc})"
        _check_removal(res, ctx.pipe.transformer, layout)


def _check_removal(res: _MethodResult, transformer: torch.nn.Module, layout: Any) -> None:
    """A removed method must leave the transformer's module tree as it found it.

    Outputs alone do not show this (a reordered child list computes the same), but every later
    method that locates blocks by walking the children would then hook the wrong ones. A pure
    reordering is undone and noted on the method; any other change fails it.
    """
    if module_layout(transformer) == layout:
        return
    fixed = restore_module_layout(transformer, layout)
    if module_layout(transformer) == layout:
        res.reason += f" (its removal reordered the children of {', '.join(fixed)}: restored)"
    else:
        res.status = "failed"
        res.reason += " (its removal left the transformer's modules changed)"


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _records(
    results: list[_MethodResult],
    profile: Profile,
    prompts: list[str],
    seeds: list[int],
    settings: dict[str, Any],
    machine: dict[str, Any],
    counter: BlockComputeCounter,
    adherence: Callable[[np.ndarray, str], dict[str, float]] | None,
) -> list[dict[str, Any]]:
    ref = next(r for r in results if r.spec.name == "none")
    _lp_model, lp_status = lpips_status() if profile.quality else (None, "not measured")
    out = []
    for res in results:
        for p, prompt in enumerate(prompts):
            rec: dict[str, Any] = {
                "method": res.spec.name,
                "family": res.spec.family,
                "knob": res.spec.knob,
                "note": res.spec.note,
                "target_speedup": res.spec.target_speedup,
                "tag": res.tag,
                "status": res.status,
                "reason": res.reason,
                "error": res.error,
                "prompt": prompt,
                "prompt_index": p,
                "seed": seeds[p],
                "method_settings": res.settings,
                "profile": settings,
                "machine": machine,
            }
            runs = res.runs.get(p)
            ref_runs = ref.runs.get(p)
            if res.status != "ok" or not runs or not ref_runs:
                out.append(rec)
                continue
            first, ref_first = runs[0], ref_runs[0]
            t = _median([r.seconds for r in runs])
            t_ref = _median([r.seconds for r in ref_runs])
            fraction = first.block_flops / ref_first.block_flops if ref_first.block_flops else None
            share = _median([r.block_seconds / r.seconds for r in ref_runs])
            ideal = 1.0 / (1.0 - share * (1.0 - fraction)) if fraction is not None else None
            speedup = t_ref / t
            rec.update(
                time_s=t,
                times_s=[r.seconds for r in runs],
                ref_time_s=t_ref,
                speedup=speedup,
                block_fraction=fraction,
                block_time_share_ref=share,
                ideal_speedup=ideal,
                efficiency=speedup / ideal if ideal else None,
                deterministic=all(
                    r.latents is not None and torch.equal(r.latents, first.latents) for r in runs
                ),
                cache_bytes=res.cache_bytes,
                peak_rss_mb=(res.rss_peak_delta or 0) / 2**20,
                forwards=first.forwards,
                forwards_total=len(first.forwards),
                mixcache_records=first.records,
                method_stats=first.stats,
            )
            if profile.quality:
                rec.update(
                    quality_metrics(
                        first.frames, ref_first.frames, first.latents, ref_first.latents
                    )
                )
                rec["lpips_status"] = lp_status
            else:
                rec["rel_l2_latent"] = rel_l2(first.latents, ref_first.latents)
            if adherence is not None and first.frames is not None:
                rec.update(adherence(first.frames, prompt))
                rec.update({f"{k}_ref": v for k, v in adherence(ref_first.frames, prompt).items()})
            out.append(rec)
    return out


class BenchSession:
    """One pipeline with the counting hooks, shared by every run on it (the matrix's cells).

    Building it builds the pipeline, attaches the :class:`BlockComputeCounter`, runs a 1-step
    uncached warm-up (allocator, kernels) and weights the counter's units by the FLOPs of that
    warm-up's forward; the weights hold for every step count and guidance scale on the same
    model and resolution.
    """

    def __init__(self, profile: Profile, log: Callable[[str], None] = lambda s: None) -> None:
        if not profile.prompts:
            raise RuntimeError(f"profile {profile.name!r} has no prompts (is its model available?)")
        log(f"building the {profile.name} pipeline")
        self.pipe = profile.make_pipeline()
        if hasattr(self.pipe, "set_progress_bar_config"):
            self.pipe.set_progress_bar_config(disable=True)  # one bar: the benchmark's
        self.counter = BlockComputeCounter(
            self.pipe.transformer, lambda: getattr(self.pipe, "current_timestep", None)
        )
        self.counter.attach()
        self.memo: dict[str, Any] = {}  # shared by every run on this pipeline (keys say steps)
        log("warm-up generation (1 step, excluded)")
        gen = self.generator(profile)
        gen(
            profile.prompts[0],
            profile.seed,
            Installed(remove=lambda: None),
            overrides={"num_inference_steps": 1},
        )
        self.counter.measure_flops()

    def generator(self, profile: Profile) -> _Generator:
        """A generator calling this session's pipeline with ``profile``'s call settings."""
        return _Generator(self.pipe, profile, self.counter)

    def close(self) -> None:
        """Remove the counting hooks."""
        self.counter.detach()


def run_methods(
    profile: Profile,
    session: BenchSession,
    specs: list[MethodSpec],
    prompts: int | None = None,
    repeats: int | None = None,
    tick: Callable[[str, int], None] = lambda name, n: None,
    log: Callable[[str], None] = lambda s: None,
    command: str | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], OrderedDict[str, Any]]:
    """Run ``specs`` on ``session``'s pipeline with ``profile``'s settings.

    Returns ``(records, settings, samples)``: one record per method x prompt, the settings
    every record carries, and the first prompt's clip per method (for the grid picture).
    ``tick(method, n)`` is called as ``n`` more generations of the progress total are done
    (``len(specs) * prompts + (repeats - 1) * len(specs)``).
    """
    wall0 = time.perf_counter()
    prompt_list = list(profile.prompts[: prompts or len(profile.prompts)])
    seeds = [profile.seed + i for i in range(len(prompt_list))]
    repeats = repeats or profile.repeats
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    specs = sorted(specs, key=lambda s: s.name != "none")  # the reference runs first
    if not specs or specs[0].name != "none":
        raise ValueError("the method list must contain 'none' (the reference)")
    gen = session.generator(profile)
    none_installed = Installed(remove=lambda: None)

    def calibrate() -> None:
        # Calibration runs on the tuning prompt with a seed outside the benchmark's.
        gen(profile.tuning_prompt, profile.seed + 10_000, none_installed)

    ctx = BenchContext(
        pipe=session.pipe,
        steps=profile.steps,
        dtype=session.pipe.transformer.dtype,
        cfg_batched=profile.cfg_batched,
        calibrate=calibrate,
        memo=session.memo,
    )
    results: list[_MethodResult] = []
    for spec in specs:
        res = _prepare(spec, ctx)
        if res.status == "ok":
            _run_round(res, ctx, gen, prompt_list, seeds, profile, True, lambda n: tick(n, 1))
        if res.status != "ok":
            tick(spec.name, len(prompt_list) - len(res.runs) + repeats - 1)
            log(f"{spec.name}: {res.status}: {res.reason}")
        results.append(res)
    for r in range(1, repeats):
        # Alternate the order (reverse, forward, ...): a load drift over the run then affects
        # early and late methods alike instead of always favouring one end.
        for res in reversed(results) if r % 2 else results:
            if res.status == "ok":
                _run_round(res, ctx, gen, prompt_list, seeds, profile, False, lambda n: None)
                tick(res.spec.name, 1)

    # Removing every method must give back the uncached pipeline exactly.
    check = gen(prompt_list[0], seeds[0], none_installed)
    ref0 = results[0].runs[0][0].latents
    restored = bool(ref0 is not None and torch.equal(check.latents, ref0))

    settings = profile.settings(len(prompt_list), repeats)
    settings["block_units"] = len(session.counter.units)
    settings["block_flops_per_forward"] = session.counter.full_forward_flops
    settings["restored_exactly_after_all_methods"] = restored
    settings["peak_memory_source"] = gen.memory_source
    settings["command"] = command if command is not None else command_line()
    machine = machine_info()
    adherence = profile.adherence() if profile.quality else None
    records = _records(
        results, profile, prompt_list, seeds, settings, machine, session.counter, adherence
    )
    samples = OrderedDict(
        (r.spec.name, clip_image(r.runs[0][0].frames, r.runs[0][0].latents))
        for r in results
        if r.status == "ok" and 0 in r.runs
    )
    settings["wall_seconds"] = time.perf_counter() - wall0
    return records, settings, samples


def command_line() -> str:
    """This process's command line as ``mixcache ...`` (when no caller passes one)."""
    return " ".join(["mixcache", *sys.argv[1:]]) if sys.argv else ""


def progress_total(n_specs: int, n_prompts: int, repeats: int) -> int:
    """Generations :func:`run_methods` reports through ``tick`` (the progress bar's total)."""
    return n_specs * n_prompts + (repeats - 1) * n_specs


def run_bench(
    profile: Profile,
    out_dir: str | Path,
    methods: str | None = None,
    prompts: int | None = None,
    repeats: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: None,
    extra_methods: list[MethodSpec] | None = None,
    command: str | None = None,
) -> list[dict[str, Any]]:
    """Run ``profile`` and write every output into ``out_dir``; returns the records.

    Args:
        profile: the profile to run.
        out_dir: folder for results.jsonl, results.md and the pictures (created).
        methods: comma-separated method names / families / globs (``none`` is always run).
        prompts: use only the first N prompts of the profile.
        repeats: timed runs per (method, prompt); default: the profile's.
        progress: show a tqdm bar over method x prompt.
        log: where to send short status lines.
        extra_methods: more methods to run (e.g. MixCache variants while tuning).
        command: the command line to record (default: this process's).
    """
    from tqdm.auto import tqdm

    from .report import write_outputs

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (repeats or profile.repeats) < 1:
        raise ValueError("repeats must be >= 1")
    specs = select_methods(profile.methods(profile.steps), methods) + list(extra_methods or [])
    wall0 = time.perf_counter()
    session = BenchSession(profile, log)
    n_prompts = len(profile.prompts[: prompts or len(profile.prompts)])
    bar = tqdm(
        total=progress_total(len(specs), n_prompts, repeats or profile.repeats),
        disable=not progress,
        desc="bench",
        unit="run",
    )

    def tick(name: str, n: int) -> None:
        bar.set_postfix_str(name)
        bar.update(n)

    try:
        records, settings, samples = run_methods(
            profile, session, specs, prompts, repeats, tick, log, command
        )
    finally:
        bar.close()
        session.close()
    settings["wall_seconds"] = time.perf_counter() - wall0  # records share this dict
    write_outputs(records, out_dir, settings, records[0]["machine"], samples)
    return records
