"""The methods the benchmark compares, as a registry keyed by config type.

A *method* is one named setting (``fbc-0.10``, ``mixcache-balanced``, ``half-steps``...): a
:class:`MethodSpec` whose ``build`` turns the run's :class:`BenchContext` into a config object.
How a config is applied to a pipeline, removed again, tagged and described is decided by the
:class:`Adapter` registered for the config's *type* — adding a method is one ``MethodSpec`` entry,
adding a new kind of cache is one ``@register_adapter(ConfigType)`` class.

Peers are configured the way their docs intend for a Wan-style pipeline; every choice that is
not a library default says why next to it. Every peer is swept over three or more settings, so
the report can compare MixCache with a peer's whole trade-off curve, not one point.
A method that cannot run here (library not installed, CFG not batched, core not importable)
raises :class:`MethodUnavailable` from ``build``; the runner reports it with the reason instead of
failing the whole benchmark.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import Any

import torch

__all__ = [
    "BUDGETS",
    "Adapter",
    "BenchContext",
    "CacheDitConfig",
    "HalfStepsConfig",
    "Installed",
    "MethodSpec",
    "MethodUnavailable",
    "NoCacheConfig",
    "adapter_for",
    "default_methods",
    "mixcache_variant",
    "module_layout",
    "register_adapter",
    "restore_module_layout",
    "select_methods",
    "tensor_bytes",
]


class MethodUnavailable(Exception):
    """A method cannot run in this environment; ``str(exc)`` is the reason shown in the report."""


# ----------------------------------------------------------------------------------------------
# Config types owned by the benchmark (the peers bring their own)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoCacheConfig:
    """The uncached reference every quality number is measured against."""


@dataclass(frozen=True)
class HalfStepsConfig:
    """The same sampler with ``fraction`` of the steps: the free baseline every cache must beat.

    Attributes:
        fraction: share of the profile's ``num_inference_steps`` to run (rounded, at least 1).
    """

    fraction: float = 0.5


@dataclass(frozen=True)
class CacheDitConfig:
    """cache-dit's DBCache, optionally with its TaylorSeer calibrator (two configs, one method).

    Attributes:
        cache_config: a ``cache_dit.DBCacheConfig``.
        calibrator_config: a ``cache_dit.TaylorSeerCalibratorConfig`` or ``None``.
    """

    cache_config: Any
    calibrator_config: Any = None


# ----------------------------------------------------------------------------------------------
# Context, installed handles, adapters
# ----------------------------------------------------------------------------------------------


@dataclass
class BenchContext:
    """What a method's ``build`` may look at: the pipeline and the profile's settings.

    Attributes:
        pipe: the pipeline every method runs on.
        steps: ``num_inference_steps`` of the profile.
        dtype: the transformer's dtype.
        cfg_batched: whether the pipeline runs cond and uncond in one batched forward.
        calibrate: runs one full generation on the profile's tuning prompt (never a benchmark
            prompt) with whatever is currently installed; used by calibrating peers (MagCache).
        memo: per-run cache for expensive shared results (e.g. calibrated ratios).
    """

    pipe: Any
    steps: int
    dtype: torch.dtype = torch.float32
    cfg_batched: bool = False
    calibrate: Callable[[], None] | None = None
    memo: dict[str, Any] = field(default_factory=dict)

    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks in the pipeline's block lists."""
        # Every block list counts: HunyuanVideo's dual- and single-stream blocks are one stack.
        t = self.pipe.transformer
        names = ("blocks", "transformer_blocks", "single_transformer_blocks")
        return sum(len(getattr(t, n, None) or ()) for n in names)


@dataclass
class Installed:
    """A method applied to a pipeline.

    Attributes:
        remove: undoes the installation.
        call_overrides: pipeline call arguments this method changes (``half-steps``).
        cache_bytes: bytes the cache holds right now (``None`` if it cannot be measured).
        stats: the method's own statistics after a run (JSON-able), or ``None``.
        records: per-forward decision records (MixCache only), or ``None``.
        before_run: called before every generation (e.g. to reset state).
    """

    remove: Callable[[], None]
    call_overrides: dict[str, Any] = field(default_factory=dict)
    cache_bytes: Callable[[], int | None] = lambda: None
    stats: Callable[[], dict[str, Any] | None] = lambda: None
    records: Callable[[], list[dict[str, Any]] | None] = lambda: None
    before_run: Callable[[], None] = lambda: None


class Adapter:
    """How one config type is applied, removed, tagged and described. Subclass and register."""

    def apply(self, pipe: Any, config: Any, ctx: BenchContext) -> Installed:
        """Install ``config`` on ``pipe`` and return the handle to remove it."""
        raise NotImplementedError

    def tag(self, config: Any) -> str:
        """A short string naming the config's settings (file names, tables)."""
        return type(config).__name__

    def settings(self, config: Any) -> dict[str, Any]:
        """The config's settings as JSON-able values."""
        return _jsonable_fields(config)


_ADAPTERS: dict[type, Adapter] = {}


def register_adapter(*config_types: type) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator: register an :class:`Adapter` for one or more config types."""

    def deco(cls: type[Adapter]) -> type[Adapter]:
        for t in config_types:
            _ADAPTERS[t] = cls()
        return cls

    return deco


def adapter_for(config: Any) -> Adapter:
    """The adapter registered for ``type(config)`` (or its nearest registered base class)."""
    _register_optional_adapters()
    for t in type(config).__mro__:
        if t in _ADAPTERS:
            return _ADAPTERS[t]
    known = ", ".join(sorted(t.__name__ for t in _ADAPTERS))
    raise TypeError(f"no benchmark adapter for {type(config).__name__}; registered: {known}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return [round(float(v), 5) for v in value.flatten().tolist()]
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if callable(value):
        return "<callable>"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int)):  # enums
        return value.value
    return repr(value)


def _jsonable_fields(config: Any) -> dict[str, Any]:
    if hasattr(config, "to_dict"):
        with contextlib.suppress(Exception):
            return _jsonable(config.to_dict())
    if dataclasses.is_dataclass(config):
        return {f.name: _jsonable(getattr(config, f.name)) for f in dataclasses.fields(config)}
    return {"repr": repr(config)}


def tensor_bytes(obj: Any, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of the distinct tensors reachable from ``obj`` (not through ``nn.Module``s).

    Used to measure what a cache *holds*: walks hook and state objects, lists, tuples, dicts
    and plain attributes up to a small depth; modules are skipped so weights are never counted,
    and each storage is counted once.
    """
    seen = set() if seen is None else seen
    if depth > 6 or obj is None or isinstance(obj, (torch.nn.Module, str, bytes, int, float)):
        return 0
    if isinstance(obj, torch.Tensor):
        try:
            storage = obj.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError):
            key, size = id(obj), obj.numel() * obj.element_size()
        if key in seen:
            return 0
        seen.add(key)
        return int(size)
    if isinstance(obj, dict):
        return sum(tensor_bytes(v, seen, depth + 1) for v in list(obj.values()))
    if isinstance(obj, (list, tuple, set)):
        return sum(tensor_bytes(v, seen, depth + 1) for v in list(obj))
    if id(obj) in seen or (callable(obj) and not hasattr(obj, "__dict__")):
        return 0
    seen.add(id(obj))
    attrs = getattr(obj, "__dict__", None)
    if not attrs:
        return 0
    return sum(
        tensor_bytes(v, seen, depth + 1)
        for k, v in list(attrs.items())
        if k not in ("fn_ref", "_module_ref", "_metadata")
    )


# ----------------------------------------------------------------------------------------------
# Built-in adapters: none, half-steps
# ----------------------------------------------------------------------------------------------


@register_adapter(NoCacheConfig)
class _NoCacheAdapter(Adapter):
    def apply(self, pipe: Any, config: Any, ctx: BenchContext) -> Installed:
        return Installed(remove=lambda: None, cache_bytes=lambda: 0)

    def tag(self, config: Any) -> str:
        return "none"


@register_adapter(HalfStepsConfig)
class _HalfStepsAdapter(Adapter):
    def apply(self, pipe: Any, config: HalfStepsConfig, ctx: BenchContext) -> Installed:
        steps = max(1, round(ctx.steps * config.fraction))
        return Installed(
            remove=lambda: None,
            call_overrides={"num_inference_steps": steps},
            cache_bytes=lambda: 0,
        )

    def tag(self, config: HalfStepsConfig) -> str:
        return f"steps_x{config.fraction:g}"


# ----------------------------------------------------------------------------------------------
# diffusers' caches
# ----------------------------------------------------------------------------------------------


def _diffusers_hook_bytes(transformer: torch.nn.Module) -> int:
    """Bytes held by every diffusers hook (states of all contexts) on ``transformer``."""
    seen: set[int] = set()
    total = 0
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for hook in registry.hooks.values():
            total += tensor_bytes(hook, seen)
    return total


class _DiffusersCacheAdapter(Adapter):
    """Any cache that ``ModelMixin.enable_cache`` accepts; ``tag_fn`` names its knobs."""

    def __init__(self, tag_fn: Callable[[Any], str]) -> None:
        self._tag_fn = tag_fn

    def apply(self, pipe: Any, config: Any, ctx: BenchContext) -> Installed:
        transformer = pipe.transformer
        # enable_cache mutates some configs (PAB fills defaults): install a copy so the spec's
        # config stays as declared.
        transformer.enable_cache(dataclasses.replace(config))

        def before_run() -> None:
            # Pipelines reset stateful hooks at the *end* of a call; resetting before as well
            # makes every measured run start clean even after an interrupted one.
            transformer._reset_stateful_cache()

        return Installed(
            remove=transformer.disable_cache,
            cache_bytes=lambda: _diffusers_hook_bytes(transformer),
            before_run=before_run,
        )

    def tag(self, config: Any) -> str:
        return self._tag_fn(config)


def _tag_pab(c: Any) -> str:
    parts = ["pab"]
    if c.spatial_attention_block_skip_range:
        parts.append(f"s{c.spatial_attention_block_skip_range}")
    if c.cross_attention_block_skip_range:
        parts.append(f"x{c.cross_attention_block_skip_range}")
    lo, hi = c.spatial_attention_timestep_skip_range
    parts.append(f"t{lo}-{hi}")
    return "_".join(parts)


def _tag_taylorseer(c: Any) -> str:
    ids = "+".join(
        "attn" if "attn" in p else "ffn" if "ffn" in p else "x" for p in c.cache_identifiers or []
    )
    return f"taylorseer_i{c.cache_interval}_o{c.max_order}_w{c.disable_cache_before_step}_{ids}"


_DIFFUSERS_TAGS: dict[str, Callable[[Any], str]] = {
    "FirstBlockCacheConfig": lambda c: f"fbc_t{c.threshold:g}",
    "MagCacheConfig": lambda c: (
        f"mag_t{c.threshold:g}_k{c.max_skip_steps}_r{c.retention_ratio:g}"
        + ("_calib" if c.calibrate else "")
    ),
    "SeaCacheConfig": lambda c: (
        f"sea_t{c.threshold:g}_o{c.residual_order}_c{c.max_consecutive_cached}"
    ),
    "TaylorSeerCacheConfig": _tag_taylorseer,
    "PyramidAttentionBroadcastConfig": _tag_pab,
    "FasterCacheConfig": lambda c: "fastercache",
}


# ----------------------------------------------------------------------------------------------
# Optional adapters (registered on first use so importing this module stays cheap)
# ----------------------------------------------------------------------------------------------

_OPTIONAL_DONE = False


def _register_optional_adapters() -> None:
    global _OPTIONAL_DONE
    if _OPTIONAL_DONE:
        return
    _OPTIONAL_DONE = True
    import diffusers

    for name, tag_fn in _DIFFUSERS_TAGS.items():
        config_type = getattr(diffusers, name, None)
        if config_type is not None:
            _ADAPTERS[config_type] = _DiffusersCacheAdapter(tag_fn)
    with contextlib.suppress(ImportError):
        from mixcache import MixCacheConfig

        _ADAPTERS[MixCacheConfig] = _MixCacheAdapter()


class _MixCacheAdapter(Adapter):
    def apply(self, pipe: Any, config: Any, ctx: BenchContext) -> Installed:
        from mixcache import apply_mixcache

        handle = apply_mixcache(pipe, config)
        return Installed(
            remove=handle.remove,
            cache_bytes=lambda: _mixcache_bytes(handle),
            stats=lambda: _jsonable(handle.stats().to_dict()),
            records=lambda: [_record_dict(r) for r in handle.stats().records],
        )

    def tag(self, config: Any) -> str:
        return str(config.tag())


def _record_dict(record: Any) -> dict[str, Any]:
    if isinstance(record, dict):
        return dict(record)
    if dataclasses.is_dataclass(record):
        return {f.name: _jsonable(getattr(record, f.name)) for f in dataclasses.fields(record)}
    return dict(vars(record))


def _mixcache_bytes(handle: Any) -> int | None:
    stats = handle.stats()
    for name in ("peak_cache_bytes", "cache_bytes", "bytes_held"):
        value = getattr(stats, name, None)
        if isinstance(value, int):
            return value
    return None


_MISSING = object()


@register_adapter(CacheDitConfig)
class _CacheDitAdapter(Adapter):
    def apply(self, pipe: Any, config: CacheDitConfig, ctx: BenchContext) -> Installed:
        import cache_dit
        from cache_dit import BlockAdapter, ForwardPattern

        _quiet_loggers("cache_dit")

        # The adapters cache-dit registers for WanPipeline and HunyuanVideoPipeline, built
        # explicitly so they also cover pipelines of those transformers under another class
        # name (the bundled ones).
        t = pipe.transformer
        layout_before = module_layout(t)
        forward_before = t.__dict__.get("forward", _MISSING)
        if hasattr(t, "single_transformer_blocks"):  # HunyuanVideo: dual- then single-stream
            layout: dict[str, Any] = {
                "blocks": [t.transformer_blocks, t.single_transformer_blocks],
                "forward_pattern": [ForwardPattern.Pattern_0, ForwardPattern.Pattern_0],
                # cache-dit's own HunyuanVideo adapter: diffusers' output type hint is wrong.
                "check_num_outputs": False,
            }
        else:
            layout = {"blocks": t.blocks, "forward_pattern": ForwardPattern.Pattern_2}
        adapter = BlockAdapter(
            pipe=pipe,
            transformer=t,
            check_forward_pattern=True,
            has_separate_cfg=not ctx.cfg_batched,
            **layout,
        )
        cache_dit.enable_cache(
            adapter,
            cache_config=config.cache_config,
            calibrator_config=config.calibrator_config,
        )

        def cache_bytes() -> int | None:
            manager = _find_attr(pipe.transformer, "_context_manager") or _find_attr(
                pipe, "_context_manager"
            )
            return tensor_bytes(manager) if manager is not None else None

        def remove() -> None:
            with contextlib.redirect_stderr(io.StringIO()):
                cache_dit.disable_cache(adapter)
            # cache-dit swaps the block lists in with ``mock.patch.object``, whose exit deletes
            # and re-adds them: they come back *last* among the transformer's children, so a
            # HunyuanVideo transformer lists single- before dual-stream blocks afterwards and
            # any later cache that takes "the first block" hooks the wrong one. Its release also
            # leaves a bound ``forward`` on the instance. Put both back as they were.
            restore_module_layout(t, layout_before)
            if forward_before is _MISSING:
                t.__dict__.pop("forward", None)
            else:
                t.__dict__["forward"] = forward_before

        return Installed(remove=remove, cache_bytes=cache_bytes)

    def tag(self, config: CacheDitConfig) -> str:
        c = config.cache_config
        tag = (
            f"dbcache_F{c.Fn_compute_blocks}B{c.Bn_compute_blocks}"
            f"_t{float(c.residual_diff_threshold):g}_w{c.max_warmup_steps}"
        )
        if config.calibrator_config is not None:
            tag += f"_ts{config.calibrator_config.taylorseer_order}"
        return tag

    def settings(self, config: CacheDitConfig) -> dict[str, Any]:
        out = {"cache_config": _jsonable_fields(config.cache_config)}
        if config.calibrator_config is not None:
            out["calibrator_config"] = _jsonable_fields(config.calibrator_config)
        return out


ModuleLayout = dict[str, tuple[str, ...]]


def module_layout(module: torch.nn.Module) -> ModuleLayout:
    """The order of every submodule's children, by qualified name.

    Removing a cache must leave this unchanged: code that finds blocks by walking the children
    (diffusers' FirstBlockCache takes the first and last block it meets, the bench's timer too)
    depends on the order, while outputs do not.
    """
    return {name: tuple(m._modules) for name, m in module.named_modules()}


def restore_module_layout(module: torch.nn.Module, layout: ModuleLayout) -> list[str]:
    """Put children back in ``layout``'s order; the names of the modules that were reordered.

    Only a pure reordering is undone: a module whose set of children changed is left as is (and
    reported by the caller's comparison of :func:`module_layout`).
    """
    fixed = []
    for name, order in layout.items():
        try:
            m = module.get_submodule(name)
        except AttributeError:
            continue
        children = m._modules
        if tuple(children) != order and set(children) == set(order):
            items = [(k, children.pop(k)) for k in order]
            children.update(items)
            fixed.append(name or "<root>")
    return fixed


def _quiet_loggers(prefix: str) -> None:
    # cache-dit gives each module its own INFO logger that does not propagate: silence them so
    # the progress bar stays readable (failures still surface as method statuses).
    import logging

    for name in list(logging.root.manager.loggerDict):
        if name.startswith(prefix):
            logging.getLogger(name).setLevel(logging.ERROR)


def _find_attr(obj: Any, name: str) -> Any:
    return getattr(obj, name, None)


# ----------------------------------------------------------------------------------------------
# Method specs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodSpec:
    """One named method setting.

    Attributes:
        name: unique name (``fbc-0.10``); what ``--methods`` filters on.
        family: the group it belongs to (``mixcache``, ``fbc``...): one colour / curve in plots.
        build: returns the config to install, or raises :class:`MethodUnavailable`.
        knob: the swept setting in words (``threshold=0.1``), for tables.
        note: why it is configured this way (shown in results.md).
        target_speedup: the block-compute speedup a budget method was asked for (``None`` for
            every other method); the report checks how close it lands.
    """

    name: str
    family: str
    build: Callable[[BenchContext], Any]
    knob: str = ""
    note: str = ""
    target_speedup: float | None = None


def _require(module: str, what: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise MethodUnavailable(f"{what} is not installed ({exc})") from exc


def _mixcache_spec(
    name: str,
    preset: str | None,
    granularities: tuple[str, ...] | None = None,
    overrides: dict[str, Any] | None = None,
    family: str | None = None,
) -> MethodSpec:
    def build(ctx: BenchContext) -> Any:
        try:
            from mixcache import MixCacheConfig
        except ImportError as exc:
            raise MethodUnavailable(f"mixcache core not importable: {exc}") from exc
        fields = dict(overrides or {})
        if isinstance(fields.get("impact"), str):
            from mixcache.profiles import ImpactProfile

            fields["impact"] = ImpactProfile.load(fields["impact"])
        if granularities is not None:
            fields["granularities"] = granularities
        unknown = set(fields) - {f.name for f in dataclasses.fields(MixCacheConfig)}
        if unknown:  # e.g. block_speedup on a core that has no speed budget yet
            raise MethodUnavailable(
                f"this mixcache core's MixCacheConfig has no field {', '.join(sorted(unknown))}"
            )
        if preset is None:  # the paper's reading (its thresholds, no budget)
            return MixCacheConfig.preset("paper", **fields)
        return MixCacheConfig.preset(preset, **fields)

    knob = f"preset={preset}" + (f", only {granularities[0]}" if granularities else "")
    knob += "".join(f", {k}={v}" for k, v in (overrides or {}).items())
    if family is None:
        family = "mixcache" if granularities is None else "mixcache-1g"
    return MethodSpec(name, family, build, knob)


def mixcache_variant(text: str) -> MethodSpec:
    """A MixCache method from ``NAME=PRESET[:field=value,...]`` (for tuning sweeps).

    Example: ``b-long=balanced:interval_max=8,trigger_threshold=0.2`` adds the method
    ``mixcache-b-long``. Values are Python literals (numbers, strings, tuples); ``impact=PATH``
    loads an impact profile JSON (as written by ``mixcache calibrate``).
    """
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"--mixcache-variant {text!r}: expected NAME=PRESET[:field=value,...]")
    preset, _, fields_text = rest.partition(":")
    overrides: dict[str, Any] = {}
    # Split on commas outside parentheses, so tuple values like ('step','cfg') stay whole.
    for item in filter(None, (f.strip() for f in re.split(r",(?![^()]*\))", fields_text))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--mixcache-variant {text!r}: {item!r} is not field=value")
        key, value = key.strip(), value.strip()
        if key == "impact":  # a profile JSON file (e.g. written by `mixcache calibrate`)
            from mixcache.profiles import ImpactProfile

            ImpactProfile.load(value)  # fail now, with the file's problem, not mid-run
            overrides[key] = value  # the path (readable in tables); loaded again by build()
            continue
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return _mixcache_spec(
        f"mixcache-{name.strip()}", preset.strip(), None, overrides, family="mixcache-variant"
    )


def mag_ratios(ctx: BenchContext) -> list[float]:
    """MagCache's magnitude ratios for this pipeline, calibrated the way its docs say.

    Runs ``MagCacheConfig(calibrate=True)`` for one generation on the profile's tuning prompt
    (never a benchmark prompt) and reads the ratios MagCache prints at the end of the run (the
    documented interface). The ``cond`` trajectory ends first, so its list is printed first;
    diffusers applies one list to both branches, so the ``cond`` list is used.
    """
    # Ratios belong to one step count (one value per step): a run over several step counts
    # calibrates once per count.
    key = f"mag_ratios@{ctx.steps}"
    if key in ctx.memo:
        return ctx.memo[key]
    from diffusers import MagCacheConfig

    if ctx.calibrate is None:
        raise MethodUnavailable("MagCache needs a calibration run; none is available here")
    transformer = ctx.pipe.transformer
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=ctx.steps))
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            ctx.calibrate()
    finally:
        transformer.disable_cache()
    lists = [
        ast.literal_eval(line.strip())
        for line in buf.getvalue().splitlines()
        if line.strip().startswith("[") and line.strip().endswith("]")
    ]
    if not lists or len(lists[0]) != ctx.steps:
        raise MethodUnavailable(
            f"MagCache calibration printed no usable ratios: {buf.getvalue()!r}"
        )
    ctx.memo[key] = [float(v) for v in lists[0]]
    return ctx.memo[key]


def _threshold_sweep(
    family: str,
    thresholds: tuple[float, ...],
    make: Callable[[BenchContext, float], Any],
    note: str,
) -> list[MethodSpec]:
    """One spec per threshold: ``<family>-<threshold>``."""
    return [
        MethodSpec(
            f"{family}-{t:g}", family, lambda ctx, t=t: make(ctx, t), f"threshold={t:g}", note
        )
        for t in thresholds
    ]


# Speed budgets the bench asks MixCache for (``mixcache-x1.5`` ...): block-compute speedups.
BUDGETS: tuple[float, ...] = (1.5, 2.0, 2.5, 3.0)


# The block lists of the supported transformers (Wan's, HunyuanVideo's dual and single stream).
_BLOCK_LISTS = r"(blocks|transformer_blocks|single_transformer_blocks)"


def default_methods(steps: int) -> list[MethodSpec]:
    """The full method list for a profile with ``steps`` denoising steps, in report order."""
    import diffusers

    specs: list[MethodSpec] = [
        MethodSpec("none", "none", lambda ctx: NoCacheConfig(), note="uncached reference"),
    ]
    for preset in ("quality", "balanced", "fast"):
        specs.append(_mixcache_spec(f"mixcache-{preset}", preset, None))
    # The speed budget: balanced asked for a block-compute speedup; the family's curve is what
    # peers and ablations are compared with at equal compute.
    for s in BUDGETS:
        spec = _mixcache_spec(
            f"mixcache-x{s:g}", "balanced", None, {"block_speedup": s}, "mixcache-budget"
        )
        specs.append(
            dataclasses.replace(
                spec,
                knob=f"balanced, block_speedup={s:g}",
                note=f"speed budget: block compute planned at 1/{s:g} of the uncached run",
                target_speedup=s,
            )
        )
    # Single-granularity ablations, each at a budget it can reach: step reuse reaches any
    # budget, so it runs balanced's (x2.25); a cfg or block reuse saves at most half a step (the
    # uncond branch, the middle half of the stack), so those run x1.5 and are compared with the
    # hybrid's own x1.5 point, not left to miss balanced's and reuse at every step they can.
    for g in ("step", "cfg", "block"):
        over = None if g == "step" else {"block_speedup": 1.5}
        specs.append(_mixcache_spec(f"mixcache-{g}-only", "balanced", (g,), over))
    # The frontier's schedule search (LeMiCa: step reuse only, plain reuse, the schedule that
    # minimises the worst single segment's error) on the same calibration as the presets, at
    # balanced's budget: what planning all three granularities and forms adds over it.
    lemica = _mixcache_spec(
        "lemica-style",
        "balanced",
        ("step",),
        {"plan_objective": "max", "plan_forms": ("plain",)},
        "lemica-style",
    )
    specs.append(
        dataclasses.replace(
            lemica,
            knob="balanced budget, step only, plain reuse, minimax plan",
            note="LeMiCa-style planner (step-only minimax DAG) on MixCache's calibration",
            target_speedup=2.25,
        )
    )
    # The "paper" preset is the paper's reading (first-block probe, P = D*I, x5 repeat penalty, its
    # own thresholds); the presets replace some of it with choices measured on the bundled model.
    paper = _mixcache_spec("mixcache-paper-choices", None, None, None, "mixcache-alt")
    specs.append(
        dataclasses.replace(
            paper,
            knob='MixCacheConfig.preset("paper")',
            note="the paper's choices, untuned: what the presets are measured against",
        )
    )
    # Overhead probe: every hook installed and every signal measured, nothing reused, so its
    # "speedup" below 1 is MixCache's bookkeeping cost alone (not a point on the trade-off).
    dry = _mixcache_spec("mixcache-dry-run", "balanced", None, {"dry_run": True}, "diagnostic")
    specs.append(dataclasses.replace(dry, note="dry run: measures MixCache's own overhead"))

    specs += _threshold_sweep(
        "fbc",
        (0.05, 0.1, 0.2),
        lambda ctx, t: diffusers.FirstBlockCacheConfig(threshold=t),
        "0.05 is the documented default; higher thresholds skip more",
    )
    specs += _threshold_sweep(
        "magcache",
        (0.06, 0.12, 0.24),
        lambda ctx, t: diffusers.MagCacheConfig(
            threshold=t, num_inference_steps=ctx.steps, mag_ratios=mag_ratios(ctx)
        ),
        "ratios calibrated (calibrate=True) on a tuning prompt outside the benchmark set",
    )
    specs += _threshold_sweep(
        "seacache",
        (0.1, 0.25, 0.5),
        _build_seacache,
        "Wan adapter; step_index/sigma/num_inference_steps come from cache_context",
    )
    # TaylorSeer's default identifiers match no Wan module (docs/peers.md, "TaylorSeer"): name
    # the blocks' attention modules, and (as in the TaylorSeer paper, which forecasts attention
    # and MLP features) their feed-forward modules. The patterns are fullmatched, so one list
    # names Wan's (blocks.N.attn1/attn2/ffn) and HunyuanVideo's (transformer_blocks.N.attn/ff/
    # ff_context, single_transformer_blocks.N.attn/proj_mlp) modules and nothing else. Factors
    # are stored in the model's dtype, as in the docs' example.
    for interval, ids in ((5, "attn"), (3, "attn+ffn"), (5, "attn+ffn")):
        patterns = [_BLOCK_LISTS + r"\.\d+\.attn\d?"] + (
            [_BLOCK_LISTS + r"\.\d+\.(ffn|ff|ff_context|proj_mlp)"] if "ffn" in ids else []
        )
        specs.append(
            MethodSpec(
                f"taylorseer-{ids}-i{interval}",
                "taylorseer",
                lambda ctx, interval=interval, patterns=patterns: diffusers.TaylorSeerCacheConfig(
                    cache_interval=interval,
                    disable_cache_before_step=3,
                    max_order=1,
                    taylor_factors_dtype=ctx.dtype,
                    cache_identifiers=list(patterns),
                ),
                f"interval={interval}, {ids}",
                "cache_identifiers name Wan's modules; the default matches none",
            )
        )
    # PAB decides by timestep, so it needs the pipeline's current timestep; the skip ranges are
    # the documented example's (self-attention every 2nd call) and a more aggressive one.
    for spatial, cross in ((2, None), (3, 5), (4, 6)):
        specs.append(
            MethodSpec(
                f"pab-s{spatial}" + (f"x{cross}" if cross else ""),
                "pab",
                lambda ctx, spatial=spatial, cross=cross: diffusers.PyramidAttentionBroadcastConfig(
                    spatial_attention_block_skip_range=spatial,
                    cross_attention_block_skip_range=cross,
                    spatial_attention_timestep_skip_range=(100, 800),
                    cross_attention_timestep_skip_range=(100, 800),
                    current_timestep_callback=lambda p=ctx.pipe: p.current_timestep,
                ),
                f"spatial={spatial}" + (f", cross={cross}" if cross else ""),
                "state is per module, not per CFG branch: on separate CFG calls uncond reuses "
                "cond's attention (library behaviour, measured as is)",
            )
        )
    specs.append(MethodSpec("fastercache", "fastercache", _build_fastercache, "default"))

    for t in (0.08, 0.16, 0.24):
        for calib in (False, True):
            specs.append(
                MethodSpec(
                    f"dbcache-{t:g}" + ("-taylorseer" if calib else ""),
                    "dbcache" + ("-ts" if calib else ""),
                    lambda ctx, t=t, calib=calib: _build_dbcache(ctx, t, calib),
                    f"threshold={t:g}" + (", TaylorSeer order 1" if calib else ""),
                    "cache-dit (optional): F1B0, warm-up scaled to the step count",
                )
            )
    specs.append(
        MethodSpec(
            "half-steps",
            "half-steps",
            lambda ctx: HalfStepsConfig(0.5),
            "steps/2",
            "same sampler, half the steps",
        )
    )
    return specs


def _build_fastercache(ctx: BenchContext) -> Any:
    if not ctx.cfg_batched:
        raise MethodUnavailable(
            "not applicable: this pipeline runs cond and uncond as separate transformer calls; "
            "FasterCache's CFG reuse needs a batched-CFG forward (it fails on Wan's separate "
            "calls unless is_guidance_distilled=True, which turns its CFG part off)"
        )
    import diffusers

    return diffusers.FasterCacheConfig(current_timestep_callback=lambda: ctx.pipe.current_timestep)


def _build_seacache(ctx: BenchContext, threshold: float) -> Any:
    """diffusers' SeaCache where it can gate; unavailable (with why) where it would run full.

    Outside Wan text-to-video (and Cosmos 3) diffusers' SeaCache has no adapter that finds the
    noisy latents its indicator is built from, and HunyuanVideoPipeline's ``cache_context``
    carries no step index, sigma or step count: SeaCache then "fails open" -- it logs a warning
    once and computes every step. Benchmarked anyway it would look like a method that never
    finds a step to skip, which says nothing about SeaCache.
    """
    import diffusers

    t = ctx.pipe.transformer
    wan_t2v = isinstance(t, diffusers.WanTransformer3DModel) and (
        t.config.in_channels == t.config.out_channels
    )
    if not wan_t2v:
        why = (
            f"diffusers' SeaCache has no adapter for {type(t).__name__} (it ships one for Wan "
            "text-to-video and Cosmos 3)"
        )
        if isinstance(t, diffusers.HunyuanVideoTransformer3DModel):
            why += ", and HunyuanVideoPipeline passes no step index or sigma to cache_context"
        raise MethodUnavailable(why + ": it would run every step in full (fail-open)")
    return diffusers.SeaCacheConfig(threshold=threshold)


def _build_dbcache(ctx: BenchContext, threshold: float, calibrator: bool) -> CacheDitConfig:
    cache_dit = _require("cache_dit", "cache-dit (optional peer; `pip install cache-dit==1.5.3`)")
    # F1B0: compute block 0 as the probe, cache the rest — cache-dit's fastest DBCache setting,
    # and the only one that caches anything on an 8-block model (Fn=8 would compute all).
    # Its default warm-up of 8 steps is meant for 28-50 steps: keep the same share of steps.
    warmup = max(1, round(ctx.steps * 8 / 50))
    cache_config = cache_dit.DBCacheConfig(
        Fn_compute_blocks=1,
        Bn_compute_blocks=0,
        residual_diff_threshold=threshold,
        max_warmup_steps=warmup,
        num_inference_steps=ctx.steps,
        enable_separate_cfg=not ctx.cfg_batched,
    )
    calib = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=1) if calibrator else None
    return CacheDitConfig(cache_config, calib)


def select_methods(specs: Iterable[MethodSpec], patterns: str | None) -> list[MethodSpec]:
    """Filter ``specs`` by a comma-separated list of names, families or glob patterns.

    ``none`` (the reference) is always kept. An unknown pattern raises ``ValueError`` listing
    what exists, so a typo does not silently drop a method.
    """
    specs = list(specs)
    if not patterns:
        return specs
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    for p in wanted:
        if not any(fnmatch(s.name, p) or fnmatch(s.family, p) for s in specs):
            names = ", ".join(s.name for s in specs)
            raise ValueError(f"--methods: {p!r} matches no method; known: {names}")
    return [
        s
        for s in specs
        if s.name == "none" or any(fnmatch(s.name, p) or fnmatch(s.family, p) for p in wanted)
    ]
