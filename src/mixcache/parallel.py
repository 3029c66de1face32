"""MixCache under diffusers' context parallelism (sequence parallel, ``enable_parallelism``).

Two things make a data-dependent cache safe when the sequence is split over several ranks:

- **One decision on every rank.** Each rank sees only its shard of the hidden states, so every
  signal is a sum that must be all-reduced over the ranks that share the sequence before it is
  turned into a Python number. :func:`sequence_parallel_group` finds that group on a
  parallelised diffusers model (the context-parallel mesh, not the whole world, which may hold
  data-parallel replicas too); :class:`ParallelSignals` looks it up at every reduction point, so
  ``enable_parallelism`` may be called before or after ``apply_mixcache``. A user-given
  ``MixCacheConfig.process_group`` always wins.
- **Hooks in the right order.** diffusers wraps a module's forward once per registered hook, so
  the hook registered last runs outermost. Context parallelism splits the sequence in a hook on
  the first block (Wan: ``blocks.0``); MixCache's block hook must run *inside* it, on the shard,
  or it would add a residual of one size to a hidden state of another and, when it skips block
  0, bypass the split altogether. :func:`reseat_after` removes the context-parallel hooks of a
  module, lets MixCache register its own, and puts them back on top, so that applying MixCache to
  an already parallelised transformer is the same as applying it first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from .errors import UnsupportedModelError
from .policy.signals import PendingSignals

logger = logging.getLogger("mixcache")

__all__ = [
    "ParallelSignals",
    "global_max",
    "group_size",
    "reseat_after",
    "reseat_all",
    "sequence_parallel_group",
    "sequence_ranks",
    "shard_position",
    "sketch_of",
]


def _cp_hook_types() -> tuple[type, ...]:
    try:
        from diffusers.hooks.context_parallel import (
            ContextParallelGatherHook,
            ContextParallelSplitHook,
        )
    except ImportError:  # pragma: no cover - diffusers without context parallelism
        return ()
    return (ContextParallelSplitHook, ContextParallelGatherHook)


def sequence_parallel_group(module: torch.nn.Module) -> Any | None:
    """The process group a parallelised diffusers model splits its sequence over, or ``None``.

    diffusers records the resolved config on the model as ``_parallel_config`` (set by
    ``enable_parallelism`` or ``from_pretrained(..., parallel_config=...)``); its context-parallel
    part holds the ring x ulysses mesh, flattened: the ranks that each hold one shard of the same
    sequence. A tensor-parallel-only model has replicated activations; its mesh is returned so the
    ranks still reduce (and so agree) by construction. ``None`` when the model is not parallel.
    """
    config = getattr(module, "_parallel_config", None)
    if config is None:
        return None
    cp = getattr(config, "context_parallel_config", None)
    mesh = getattr(cp, "_flattened_mesh", None) if cp is not None else None
    if mesh is None:
        tp = getattr(config, "tensor_parallel_config", None)
        mesh = getattr(tp, "_mesh", None) if tp is not None else None
    if mesh is None:
        return None
    return mesh.get_group()


def group_size(group: Any) -> int:
    """Number of ranks in ``group`` (1 when it is ``None`` or distributed is not initialised)."""
    if group is None:
        return 1
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def sequence_ranks(module: torch.nn.Module, config: Any) -> int:
    """Ranks MixCache reduces over for ``module``: ``config.process_group`` or the model's group."""
    explicit = getattr(config, "process_group", None)
    return group_size(explicit if explicit is not None else sequence_parallel_group(module))


def shard_position(group: Any) -> tuple[int, int]:
    """``(rank, ranks)`` of this process in ``group``: which shard of the sequence it holds.

    diffusers' sharder gives rank ``r`` of the context-parallel group the ``r``-th equal chunk.
    ``(0, 1)`` without a group (the whole sequence).
    """
    ranks = group_size(group)
    if ranks <= 1:
        return 0, 1
    import torch.distributed as dist

    return dist.get_rank(group), ranks


def sketch_of(x: torch.Tensor, tokens: int, rank: int = 0, ranks: int = 1) -> torch.Tensor:
    """The tokens (dim 1) of shard ``rank`` that one process would sample from the whole sequence.

    One process keeps every ``stride``-th of the ``N`` tokens, ``stride = max(1, N // tokens)``,
    at most ``tokens`` of them. Under context parallel each rank holds ``N / ranks`` consecutive
    tokens and keeps those of them that one process would keep: together the ranks sketch exactly
    the single-process tokens, so the reduced sums are the single-process sums (a rank may keep
    none). Returns a view.
    """
    n = x.shape[1]
    total = n * ranks
    stride = max(1, total // tokens)
    end = min(total, stride * tokens)  # kept: global indices 0, stride, 2 stride, ... < end
    start = rank * n
    first = -(-start // stride) * stride  # first kept index at or after this shard's start
    stop = min(start + n, end)
    if first >= stop:
        return x[:, :0]
    return x[:, first - start : stop - start : stride]


def global_max(value: torch.Tensor, group: Any) -> torch.Tensor:
    """``value`` (a reduced scalar tensor) maxed over ``group``; unchanged without a group."""
    if group_size(group) <= 1:
        return value
    import torch.distributed as dist

    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX, group=group)
    return out


class ParallelSignals(PendingSignals):
    """:class:`PendingSignals` reduced over the model's sequence-parallel group.

    The group is looked up on the model at every flush rather than once at apply time:
    ``enable_parallelism`` may run after ``apply_mixcache``. ``explicit`` (the config's
    ``process_group``) replaces the lookup.
    """

    __slots__ = ("_cached", "_explicit", "_module")

    def __init__(self, module: torch.nn.Module, explicit: Any = None) -> None:
        self._module = module
        self._cached: tuple[Any, Any] = (None, None)
        self._explicit = None
        super().__init__(explicit)  # the base class assigns process_group (the setter below)

    @property  # type: ignore[override]
    def process_group(self) -> Any:
        """The explicit group if one was given, else the model's sequence-parallel group."""
        if self._explicit is not None:
            return self._explicit
        config = getattr(self._module, "_parallel_config", None)
        if self._cached[0] is not config:
            self._cached = (config, sequence_parallel_group(self._module))
        return self._cached[1]

    @process_group.setter
    def process_group(self, value: Any) -> None:
        self._explicit = value


def _is_cp_hook(hook: Any) -> bool:
    types = _cp_hook_types()
    return bool(types) and isinstance(hook, types)


@contextmanager
def reseat_after(module: torch.nn.Module) -> Iterator[None]:
    """Hooks registered on ``module`` inside this block end up inside its context-parallel hooks.

    On entry the context-parallel hooks of ``module`` (and any hook registered after the first of
    them) are removed, newest first; on exit they are registered again in their original order,
    which wraps them around whatever was registered in between. A module without such hooks is
    left alone. Hooks registered after a context-parallel hook must all be context-parallel hooks
    (re-initialising an arbitrary hook is not known to be safe): otherwise
    :class:`~mixcache.errors.UnsupportedModelError` is raised before anything is changed.
    """
    registry = getattr(module, "_diffusers_hook", None)
    order = list(registry._hook_order) if registry is not None else []
    first = next((i for i, name in enumerate(order) if _is_cp_hook(registry.hooks[name])), None)
    if first is None:
        yield
        return
    tail = order[first:]
    foreign = [name for name in tail if not _is_cp_hook(registry.hooks[name])]
    if foreign:
        raise UnsupportedModelError(
            f"{type(module).__name__} has hooks {foreign} registered after diffusers' context "
            "parallel hooks; MixCache cannot be placed inside them. Apply MixCache before "
            "enable_parallelism() and before the other hooks"
        )
    hooks = [(name, registry.hooks[name]) for name in tail]
    # Removing the outermost hook first is the only case diffusers' remove_hook handles for any
    # hook kind (it re-links the next hook's forward otherwise).
    for name, _ in reversed(hooks):
        registry.remove_hook(name, recurse=False)
    try:
        yield
    finally:
        for name, hook in hooks:
            registry.register_hook(hook, name)


def reseat_all(modules: list[torch.nn.Module], install: Callable[[], Any]) -> Any:
    """Run ``install`` with every module's context-parallel hooks lifted (see :func:`reseat_after`).

    Returns what ``install`` returns. The hooks are put back even if ``install`` fails.
    """
    with ExitStack() as stack:
        for m in modules:
            stack.enter_context(reseat_after(m))
        return install()
