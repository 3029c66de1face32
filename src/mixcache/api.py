"""``apply_mixcache`` / ``remove_mixcache`` and the handle they return.

Everything is validated before the first hook is installed (unsupported class, config that does
not fit the model, already applied, another cache active); installation is atomic (any failure
rolls back every hook installed so far); removal leaves the modules as they were (the forward is
restored bit-exactly; the only trace is diffusers' own ``_diffusers_hook`` registry on the
transformer, which diffusers creates itself on the first ``cache_context``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
import warnings
import weakref
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from diffusers.hooks import HookRegistry
from diffusers.models.cache_utils import CacheMixin

from .config import MixCacheConfig
from .controller import Controller
from .errors import (
    AlreadyAppliedError,
    ConfigError,
    ConflictingCacheError,
    NotAppliedError,
    UnsupportedModelError,
)
from .hooks import BLOCK_HOOK_NAME, TRANSFORMER_HOOK_NAME, BlockHook, TransformerHook
from .models import ModelSpec, check_supported, supported_class_names
from .parallel import ParallelSignals, reseat_all, sequence_ranks
from .profiles import PROFILE_FILE, ImpactProfile, find_profile
from .stats import CacheStats

logger = logging.getLogger("mixcache")

__all__ = [
    "MixCacheHandle",
    "apply_mixcache",
    "apply_mixcache_to_transformer",
    "remove_mixcache",
    "summary",
]

# The last handle applied to each pipeline / transformer, for summary(pipe) (weak: a handle never
# keeps a pipeline alive).
_LAST_HANDLE: weakref.WeakKeyDictionary[Any, MixCacheHandle] = weakref.WeakKeyDictionary()

_TRANSFORMER_ATTRS = ("transformer", "transformer_2")


@dataclass
class _Installed:
    """What was installed on one transformer, to undo it exactly."""

    name: str
    module: torch.nn.Module
    controller: Controller
    blocks: list[torch.nn.Module]
    created_registries: list[torch.nn.Module] = field(default_factory=list)
    had_forward_attr: dict[int, bool] = field(default_factory=dict)
    cache_slot_before: tuple[bool, Any] | None = None  # see _claim_cache_slot
    disable_before: tuple[bool, Any] | None = None  # the instance's own disable_cache, if any
    removed: bool = False


class MixCacheHandle:
    """What :func:`apply_mixcache` returns: stats, removal and the config in use.

    Also a context manager: ``with apply_mixcache(pipe, "fast") as handle: ...`` removes the
    hooks on exit (the stats stay available).
    """

    def __init__(self, config: MixCacheConfig, installed: list[_Installed]) -> None:
        self.config = config
        self._all = list(installed)

    @property
    def _installed(self) -> list[_Installed]:
        return [i for i in self._all if not i.removed]

    @property
    def _controllers(self) -> dict[str, Controller]:
        """One controller per hooked transformer, by attribute name (internal)."""
        return {i.name: i.controller for i in self._all}

    # Internal, kept for the tests, bench and calibration that read it; not part of the API.
    controllers = _controllers

    @property
    def active(self) -> bool:
        """True while any hook of this handle is installed."""
        return bool(self._installed)

    def stats(
        self, current: bool = False, wall_clock: tuple[float, float] | None = None
    ) -> CacheStats:
        """Stats of the last completed generation (``current=True``: the one in progress).

        Before any generation has completed, the one in progress is returned. ``print()`` it
        for a few lines (preset, block-compute speedup, wall clock, reuses, budget, profile);
        ``.table()`` is the per-step table, ``.records()`` a list of dicts.

        Args:
            current: the generation in progress instead of the last completed one.
            wall_clock: ``(uncached_seconds, cached_seconds)`` the caller measured; the stats
                then report the wall-clock speedup next to the block-compute one.
        """
        parts = []
        for inst in self._all:
            ctrl = inst.controller
            if current or ctrl.last_stats is None:
                parts.append(ctrl.current_stats())
            else:
                parts.append(ctrl.last_stats)
        merged = CacheStats.merge(parts)
        # Context parallel: every rank caches only its shard, so the bytes are this rank's.
        ranks = max(sequence_ranks(i.module, i.controller.config) for i in self._all)
        merged = dataclasses.replace(merged, ranks=ranks) if ranks > 1 else merged
        return merged.with_wall_clock(*wall_clock) if wall_clock is not None else merged

    def remove(self) -> None:
        """Remove every hook (idempotent). Outputs are then bit-identical to an unhooked model."""
        for inst in reversed(self._installed):
            _uninstall(inst)

    def __enter__(self) -> MixCacheHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        names = ", ".join(i.name for i in self._installed) or "removed"
        return f"MixCacheHandle({self.config.tag()}, {names})"


def _transformers_of(target: Any) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) pairs to hook: a pipeline's transformer(s), or the module itself."""
    if isinstance(target, torch.nn.Module):
        return [("transformer", target)]
    found = [(a, getattr(target, a, None)) for a in _TRANSFORMER_ATTRS]
    found = [(a, m) for a, m in found if m is not None]
    if not found:
        raise UnsupportedModelError(
            f"{type(target).__name__} has no 'transformer' (or 'transformer_2') to hook; pass a "
            f"diffusers pipeline or one of the supported transformers: "
            f"{', '.join(supported_class_names())}"
        )
    return found


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "_orig_mod", module)  # torch.compile's OptimizedModule


def _check_fits(config: MixCacheConfig, spec: ModelSpec, module: torch.nn.Module) -> None:
    """Config values that depend on the model (number of blocks)."""
    n = len(spec.blocks(module))
    if n < 2:
        raise UnsupportedModelError(
            f"{type(module).__name__} has {n} block(s); MixCache needs >= 2"
        )
    # With other granularities enabled the block granularity is only n/a on such a model (the
    # controller says so in its stats); as the only one it could never act: refuse.
    too_few = config.head_blocks + config.tail_blocks >= n
    if config.granularities == ("block",) and too_few:
        raise ConfigError(
            f"head_blocks + tail_blocks = {config.head_blocks + config.tail_blocks} is out of "
            f"range for {type(module).__name__} with {n} blocks: must be <= {n - 1} so the "
            f"reused span keeps at least one block"
        )


def _check_can_act(
    config: MixCacheConfig, spec: ModelSpec, module: torch.nn.Module, name: str, is_pipeline: bool
) -> None:
    """Refuse a config none of whose granularities can act on this model; log the ones that
    cannot (the others act). Known before the first step: too few blocks for a block span,
    and cfg on a pipeline that batches cond and uncond into one forward (CogVideoX, LTX-Video,
    Mochi) with ``step_probe="first_block"``, whose decision comes after block 0 has already
    run on the whole batch, too late to run the cond half alone."""
    n = len(spec.blocks(module))
    cannot: dict[str, str] = {}
    if "block" in config.granularities and config.head_blocks + config.tail_blocks >= n:
        cannot["block"] = (
            f"{n} blocks leave no span between head_blocks={config.head_blocks} and "
            f"tail_blocks={config.tail_blocks}"
        )
    if (
        "cfg" in config.granularities
        and is_pipeline
        and spec.batch_layout is not None
        and config.step_probe == "first_block"
    ):
        cannot["cfg"] = (
            f"{type(module).__name__}'s pipeline runs cond and uncond as one batched forward and "
            "step_probe='first_block' decides after block 0 has run on the whole batch, too late "
            "to run its cond half alone"
        )
    if not cannot:
        return
    acting = [g for g in config.granularities if g not in cannot]
    why = "; ".join(f"{g}: {text}" for g, text in cannot.items())
    if not acting:
        fixes = []
        if "cfg" in cannot:
            fixes.append("step_probe='none' (the default) lets cfg act here")
        if "block" in cannot:
            fixes.append(f"head_blocks + tail_blocks <= {n - 1} lets block act here")
        fixes.append("granularities including 'step' act on every model")
        raise ConfigError(
            f"granularities={config.granularities} cannot act on {name} "
            f"({type(module).__name__}): {why}. What works: {'; '.join(fixes)}"
        )
    logger.warning(
        "mixcache: %s cannot act on %s (%s); %s act",
        ", ".join(cannot),
        name,
        why,
        ", ".join(acting),
    )


def _num_steps_hint(target: Any) -> Any:
    """Steps the pipeline will run, read at the first forward of a generation.

    Every diffusers pipeline sets ``_num_timesteps`` before its denoising loop; it is the number
    of steps actually run (``strength < 1`` in video-to-video runs fewer than
    ``len(scheduler.timesteps)`` before truncation). The scheduler's timesteps are the fallback.
    """
    if getattr(target, "scheduler", None) is None and not hasattr(target, "_num_timesteps"):
        return None

    def hint() -> int | None:
        n = getattr(target, "_num_timesteps", None)
        if isinstance(n, int) and n > 0:
            return n
        timesteps = getattr(getattr(target, "scheduler", None), "timesteps", None)
        return len(timesteps) if timesteps is not None else None

    return hint


def _window_hint(target: Any, name: str) -> Any:
    """Steps ``[start, stop)`` that transformer ``name`` runs in each generation, or None.

    Wan2.2 splits every generation between two experts at ``boundary_ratio``:
    ``transformer`` runs the timesteps ``>= boundary_ratio * num_train_timesteps``,
    ``transformer_2`` the rest. The split is known from the scheduler before the first step, so
    each expert's budget is planned over its own steps.
    """
    ratio = getattr(getattr(target, "config", None), "boundary_ratio", None)
    if ratio is None or getattr(target, "transformer_2", None) is None:
        return None

    def hint() -> tuple[int, int] | None:
        scheduler = getattr(target, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
        if timesteps is None or train is None:
            return None
        boundary = ratio * train
        high = sum(1 for t in timesteps.tolist() if t >= boundary)
        return (0, high) if name == "transformer" else (high, len(timesteps))

    return hint


def run_taus(target: Any) -> list[float] | None:
    """Normalised time of every step of the pipeline's current (or last) call: the scheduler's
    timesteps over its number of training timesteps (1: pure noise); None when it does not say.
    A truncated run (video-to-video ``strength < 1``) runs the schedule's last
    ``_num_timesteps`` steps, and only those are returned."""
    scheduler = getattr(target, "scheduler", None)
    timesteps = getattr(scheduler, "timesteps", None)
    train = getattr(getattr(scheduler, "config", None), "num_train_timesteps", None)
    if timesteps is None or not train:
        return None
    try:
        taus = [float(t) / float(train) for t in timesteps]
    except (TypeError, ValueError):
        return None
    run = getattr(target, "_num_timesteps", None)
    if isinstance(run, int) and 0 < run < len(taus):
        taus = taus[-run:]
    return taus


def _cfg_hint(target: Any) -> bool | None:
    """Whether the pipeline runs CFG in its current call: its ``do_classifier_free_guidance``,
    else ``_guidance_scale > 1`` (CogVideoX has only the latter); None when it says neither."""
    try:
        value = target.do_classifier_free_guidance
    except AttributeError:  # no such property, or read before the call set _guidance_scale
        value = None
    if isinstance(value, bool):
        return value
    scale = getattr(target, "_guidance_scale", None)
    return scale > 1.0 if isinstance(scale, int | float) else None


def _guidance_scale(target: Any, name: str = "transformer") -> float | None:
    """The CFG scale the pipeline runs ``name`` at in its current call, or None.

    Read from pipelines whose ``_guidance_scale`` is the CFG scale (they say so with a
    ``do_classifier_free_guidance`` property, e.g. Wan, CogVideoX); Wan2.2's second expert runs
    ``_guidance_scale_2`` when it is set. HunyuanVideo's ``_guidance_scale`` is the embedded
    guidance and its true-CFG scale is only a local of the running call, so pipelines without
    that property are read there (``true_cfg_scale``, :func:`_running_call_local`): without it
    every HunyuanVideo run was planned at the calibration's scale, whatever it ran at.
    """
    if not hasattr(type(target), "do_classifier_free_guidance"):
        scale = _running_call_local(target, "true_cfg_scale")
    else:
        scale = getattr(target, "_guidance_scale", None)
        if name == "transformer_2":
            scale = getattr(target, "_guidance_scale_2", None) or scale
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        return None
    return float(scale)


#: How far up the stack :func:`_running_call_local` looks for the pipeline's call (the
#: transformer's forward, diffusers' hooks and MixCache's own frames lie between).
_CALL_SEARCH_DEPTH = 64


def _running_call_local(target: Any, name: str) -> Any:
    """The local ``name`` of ``target.__call__`` while it runs (it is on the stack when the
    transformer asks, at the first step of a generation), or None: not called from within
    that call, or no such local. Read once per generation, not per step."""
    frame = sys._getframe(1)
    for _ in range(_CALL_SEARCH_DEPTH):
        if frame is None:
            return None
        if frame.f_code.co_name == "__call__" and frame.f_locals.get("self") is target:
            return frame.f_locals.get(name)
        frame = frame.f_back
    return None


def _step_index_hint(target: Any) -> Any:
    """The current step from the pipeline's scheduler, without touching any tensor.

    diffusers' schedulers count their ``step`` calls in ``step_index`` (``None`` before the
    first); ``begin_index`` is where a truncated run (``strength``) started. Used when the
    cache context carries no ``step_index`` (HunyuanVideo, context-less pipelines), so steps are
    found without a host synchronisation on the timestep.
    """
    if getattr(target, "scheduler", None) is None:
        return None

    def hint() -> int | None:
        scheduler = getattr(target, "scheduler", None)
        if scheduler is None or not hasattr(scheduler, "step_index"):
            return None
        index = scheduler.step_index
        if index is None:
            return 0
        begin = getattr(scheduler, "begin_index", None)
        if begin is None:
            # A truncated run (strength) that did not set begin_index: the scheduler found its
            # place in the full schedule, which is longer than the run by the skipped steps.
            timesteps = getattr(scheduler, "timesteps", None)
            run = getattr(target, "_num_timesteps", None)
            begin = max(0, len(timesteps) - run) if timesteps is not None and run else 0
        return int(index) - int(begin)

    return hint


def apply_mixcache(
    target: Any,
    config: MixCacheConfig | str | None = None,
    *,
    block_speedup: float | None = None,
    speedup: float | None = None,
) -> MixCacheHandle:
    """Install MixCache on a diffusers pipeline (its ``transformer`` and ``transformer_2``) or on
    a transformer module.

    Args:
        target: a pipeline, or a supported transformer (:func:`apply_mixcache_to_transformer`
            says the same for a bare module); ``mixcache.models.supported_class_names()``.
        config: a :class:`MixCacheConfig`, a preset name (``"quality"``, ``"balanced"``,
            ``"fast"``, ``"paper"``) or ``None`` for ``"balanced"``. It is never modified.
        block_speedup: a block-compute budget that replaces the config's ``block_speedup``:
            ``apply_mixcache(pipe, block_speedup=2.0)`` spends half the uncached transformer-block
            compute (wall clock gains less: docs/benchmarks.md).
        speedup: the old name of ``block_speedup`` (DeprecationWarning; removed next release).

    Returns:
        A :class:`MixCacheHandle` (``stats()``, ``remove()``, ``config``).

    Raises:
        UnsupportedModelError: the target holds no supported transformer (lists the supported
            classes). Nothing is installed.
        AlreadyAppliedError: MixCache is already applied (remove it first).
        ConflictingCacheError: another diffusers cache is enabled on the transformer.
        ConfigError: the config is invalid, does not fit the model, or none of its
            granularities can act on this pipeline (the message lists what works). When only
            some cannot act, a warning is logged with the reason and the others act.

    A pipeline with two transformers (Wan2.2 ``transformer_2``) gets one controller per
    transformer: their block stacks differ, so no residual could be shared; ``stats()`` merges
    both, ordered by step.
    """
    cfg = MixCacheConfig.resolve(config)
    if speedup is not None:
        if block_speedup is not None:
            raise ConfigError("speedup= and block_speedup= both given: speedup is its old name")
        warnings.warn(
            "apply_mixcache(speedup=...) is deprecated: use block_speedup=... (same meaning: "
            "the block-compute speedup to plan for); speedup= will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        block_speedup = speedup
    if block_speedup is not None:
        cfg = cfg.replace(block_speedup=block_speedup)
    targets = _transformers_of(target)
    plan: list[tuple[str, torch.nn.Module, ModelSpec]] = []
    for name, module in targets:
        inner = _unwrap(module)
        # Unknown or refused transformer class, or a refused pipeline: raises with the reason.
        spec = check_supported(inner, None if target is module else target)
        registry = getattr(inner, "_diffusers_hook", None)
        if registry is not None and TRANSFORMER_HOOK_NAME in registry.hooks:
            raise AlreadyAppliedError(
                f"MixCache is already applied to {name} ({type(inner).__name__}); call "
                "handle.remove() or remove_mixcache(target) first"
            )
        if getattr(inner, "is_cache_enabled", False):
            raise ConflictingCacheError(
                f"another diffusers cache is enabled on {name}; call "
                f"{name}.disable_cache() before applying MixCache"
            )
        _check_fits(cfg, spec, inner)
        _check_can_act(cfg, spec, inner, name, is_pipeline=target is not module)
        plan.append((name, inner, spec))
    if cfg.impact is not None:
        for _, _, spec in plan:
            if cfg.impact.family != spec.family:
                warnings.warn(
                    f"impact profile measured on family {cfg.impact.family!r} used for "
                    f"{spec.family!r}",
                    stacklevel=2,
                )
    profiles: dict[str, tuple[ImpactProfile, str]] = {}
    for name, inner, spec in plan:
        if cfg.impact is not None:
            profiles[name] = (cfg.impact, f"the config's profile ({cfg.impact.measured_on})")
            continue
        prof, source, own = find_profile(inner, spec.family, None if target is inner else target)
        profiles[name] = (prof, source)
        if not prof.measured:
            logger.warning(
                "mixcache: no impact profile is shipped for %r: every granularity's impact "
                "is 1.0, so step, cfg and block reuse are compared by their measured change "
                "alone (a speed budget still lands on its target: it is priced in the run's "
                "own units). To calibrate this model once: `mixcache calibrate <pipeline dir>` "
                "(found automatically afterwards)",
                spec.family,
            )
        elif not own:
            logger.warning(
                "mixcache: no profile measured on this %s (%s) was found; using the %s. The "
                "plan's errors come from another model: calibrate this one once with "
                "`mixcache calibrate <pipeline dir>` (it writes %s beside the weights and is "
                "found automatically afterwards)",
                type(inner).__name__,
                name,
                source,
                PROFILE_FILE,
            )
        else:
            logger.info("mixcache: %s uses the profile %s", name, source)
    hint = _num_steps_hint(target)
    installed: list[_Installed] = []
    try:
        for name, inner, spec in plan:
            impact, source = profiles[name]
            # Sequence parallel: signals reduced over the model's context-parallel group (found at
            # every flush: enable_parallelism may come later); config.process_group wins.
            signals = ParallelSignals(inner, cfg.process_group)
            ctrl = Controller(
                inner,
                spec,
                cfg,
                impact,
                name=name,
                num_steps_hint=hint,
                signals=signals,
                step_hint=_step_index_hint(target),
            )
            ctrl.profile_source = source
            ctrl.window_hint = _window_hint(target, name) if len(plan) > 1 else None
            if inner is not target:  # a pipeline: it knows whether it runs CFG
                ctrl.cfg_hint = partial(_cfg_hint, target)
                ctrl.guidance_hint = partial(_guidance_scale, target, name)
                ctrl.taus_hint = partial(run_taus, target)
            # Already parallelised: MixCache's hooks go inside diffusers' context-parallel hooks,
            # where they see each rank's shard (the same order as applying MixCache first).
            modules = [inner, *spec.blocks(inner)]
            installed.append(reseat_all(modules, partial(_install, name, inner, spec, ctrl)))
    except BaseException:
        for inst in reversed(installed):
            _uninstall(inst)
        raise
    ledger: dict[int, int] = {}
    parts: list[CacheStats] = []
    for inst in installed:
        inst.controller.siblings = [o.controller for o in installed if o is not inst]
        inst.controller.ledger = ledger  # one budget for the whole generation
        inst.controller.generation_parts = parts  # its warnings checked once, on the whole
    logger.info("mixcache: applied %s to %s", cfg.tag(), ", ".join(n for n, _, _ in plan))
    handle = MixCacheHandle(cfg, installed)
    for key in (target, *(inst.module for inst in installed)):
        # An object without weak references: summary() finds the handle by its transformer.
        with contextlib.suppress(TypeError):
            _LAST_HANDLE[key] = handle
    return handle


def apply_mixcache_to_transformer(
    module: torch.nn.Module,
    config: MixCacheConfig | str | None = None,
    *,
    block_speedup: float | None = None,
) -> MixCacheHandle:
    """Install MixCache on one transformer module (diffusers' ``apply_first_block_cache(module,
    config)`` style). Same behaviour as :func:`apply_mixcache` on the module.

    A bare transformer does not tell MixCache how many steps the run has (a budget is then
    planned from the cache context's ``num_inference_steps``, or paced step by step) nor
    whether a batched forward is CFG, so apply to the pipeline when there is one.

    Raises:
        UnsupportedModelError: ``module`` is not an ``nn.Module`` (a pipeline: use
            :func:`apply_mixcache`) or not a supported transformer.
    """
    if not isinstance(module, torch.nn.Module):
        raise UnsupportedModelError(
            f"apply_mixcache_to_transformer needs a transformer module, got "
            f"{type(module).__name__}; for a pipeline call apply_mixcache(pipe, config)"
        )
    return apply_mixcache(module, config, block_speedup=block_speedup)


def summary(
    target: Any, per_step: bool = False, wall_clock: tuple[float, float] | None = None
) -> str:
    """One line on the last generation of ``target`` (a pipeline or transformer MixCache was
    applied to): preset, block-compute speedup and budget, wall clock if given, reuses.

    Args:
        target: what :func:`apply_mixcache` was called on (or one of its transformers).
        per_step: also give the per-step table (:meth:`CacheStats.table`).
        wall_clock: ``(uncached_seconds, cached_seconds)`` the caller measured.

    Raises:
        NotAppliedError: MixCache was never applied to ``target``.
    """
    handle = None
    with contextlib.suppress(TypeError):
        handle = _LAST_HANDLE.get(target)
    if handle is None:
        for attr in _TRANSFORMER_ATTRS:
            module = getattr(target, attr, None)
            if handle is None and module is not None:
                handle = _LAST_HANDLE.get(_unwrap(module))
    if handle is None:
        raise NotAppliedError(
            f"MixCache was not applied to this {type(target).__name__}: call "
            "apply_mixcache(pipe, ...) and run a generation first"
        )
    stats = handle.stats(wall_clock=wall_clock)
    return f"{stats.table()}\n{stats.headline()}" if per_step else stats.headline()


def _install(name: str, module: torch.nn.Module, spec: ModelSpec, ctrl: Controller) -> _Installed:
    blocks = spec.blocks(module)
    inst = _Installed(name, module, ctrl, blocks)
    try:
        for m in [module, *blocks]:
            inst.had_forward_attr[id(m)] = "forward" in vars(m)
            if not hasattr(m, "_diffusers_hook"):
                inst.created_registries.append(m)
        for i, block in enumerate(blocks):
            registry = HookRegistry.check_if_exists_or_initialize(block)
            registry.register_hook(BlockHook(ctrl, i), BLOCK_HOOK_NAME)
        top = HookRegistry.check_if_exists_or_initialize(module)
        top.register_hook(TransformerHook(ctrl, inst), TRANSFORMER_HOOK_NAME)
        # cache_context walks a cached list of child registries: rebuild it (see hooks.py).
        top.invalidate_child_registries_cache()
        _claim_cache_slot(inst)
    except BaseException:
        _uninstall(inst)
        raise
    return inst


def _claim_cache_slot(inst: _Installed) -> None:
    """Mark the transformer as cached, so diffusers' ``enable_cache`` refuses to stack on it.

    diffusers' ``CacheMixin.is_cache_enabled`` is ``_cache_config is not None`` and
    ``enable_cache`` raises while it is true; setting the instance attribute (no class is patched)
    is what makes a second cache refuse. What was there before is kept so that removal restores
    it exactly (usually: no instance attribute, the class's ``None``).
    """
    module = inst.module
    if not isinstance(module, CacheMixin):
        return
    inst.cache_slot_before = ("_cache_config" in vars(module), vars(module).get("_cache_config"))
    module._cache_config = inst.controller.config
    # diffusers' disable_cache() dispatches on its own config classes and raises for any other.
    # Users call it to turn a cache off, so this instance's disable_cache removes MixCache from
    # it (an instance attribute, removed with the hooks: no class is patched).
    inst.disable_before = ("disable_cache" in vars(module), vars(module).get("disable_cache"))
    module.disable_cache = partial(_disable_from_diffusers, inst)


def _disable_from_diffusers(inst: _Installed) -> None:
    """``transformer.disable_cache()`` while MixCache is applied: remove it from this
    transformer (bit-identical outputs after), as diffusers does for its own caches."""
    _uninstall(inst)
    logger.info("mixcache: removed from %s by disable_cache()", inst.name)


def _release_cache_slot(inst: _Installed) -> None:
    """Undo :func:`_claim_cache_slot` (only if the mark is still ours)."""
    module = inst.module
    if inst.disable_before is not None:
        had_disable, disable = inst.disable_before
        inst.disable_before = None
        if had_disable:
            module.disable_cache = disable
        elif "disable_cache" in vars(module):
            del module.disable_cache
    if inst.cache_slot_before is None:
        return
    had, before = inst.cache_slot_before
    inst.cache_slot_before = None
    if vars(module).get("_cache_config") is not inst.controller.config:
        return
    if had:
        module._cache_config = before
    else:
        del module._cache_config


def _uninstall(inst: _Installed) -> None:
    if inst.removed:
        return
    inst.removed = True
    module = inst.module
    _release_cache_slot(inst)
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None:
        registry.remove_hook(TRANSFORMER_HOOK_NAME, recurse=False)
    for block in inst.blocks:
        block_registry = getattr(block, "_diffusers_hook", None)
        if block_registry is not None:
            block_registry.remove_hook(BLOCK_HOOK_NAME, recurse=False)
    for m in [module, *inst.blocks]:
        # diffusers restores the forward as an instance attribute; drop it when it is just the
        # class's own forward bound to the module and we did not find one there.
        if not inst.had_forward_attr.get(id(m), True) and "forward" in vars(m):
            fwd = vars(m)["forward"]
            if (
                getattr(fwd, "__self__", None) is m
                and getattr(fwd, "__func__", None) is type(m).forward
            ):
                del m.forward
    for m in inst.created_registries:
        reg = getattr(m, "_diffusers_hook", None)
        if reg is not None and not reg.hooks:
            del m._diffusers_hook
    if registry is not None:
        registry.invalidate_child_registries_cache()
    inst.controller.end_generation()


def remove_mixcache(target: Any) -> None:
    """Remove MixCache from a pipeline or transformer (every hook; bit-identical outputs after).

    Raises:
        NotAppliedError: no MixCache hooks were found on the target.
    """
    found = False
    for _, module in _transformers_of(target):
        inner = _unwrap(module)
        registry = getattr(inner, "_diffusers_hook", None)
        hook = registry.hooks.get(TRANSFORMER_HOOK_NAME) if registry is not None else None
        if not isinstance(hook, TransformerHook):
            continue
        found = True
        _uninstall(hook.installed)
    if not found:
        raise NotAppliedError(f"MixCache is not applied to {type(target).__name__}")
