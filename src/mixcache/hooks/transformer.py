"""The transformer-level hook and the per-block hook."""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks.hooks import CacheContext, ModelHook, StateManager

from ..controller import Controller, _sample_of

__all__ = ["BLOCK_HOOK_NAME", "TRANSFORMER_HOOK_NAME", "BlockHook", "TransformerHook"]

TRANSFORMER_HOOK_NAME = "mixcache_transformer"
BLOCK_HOOK_NAME = "mixcache_block"


class _NoState:
    def reset(self) -> None:  # pragma: no cover - never instantiated with state
        return None


class _ContextReceiver(StateManager):
    """Receives diffusers' :class:`CacheContext` (pushed into every ``StateManager`` of a stateful
    hook by ``transformer.cache_context(...)``); ``None`` outside any context."""

    def __init__(self) -> None:
        super().__init__(_NoState)  # type: ignore[arg-type]

    @property
    def current(self) -> CacheContext | None:
        return self._context


class TransformerHook(ModelHook):
    """Wraps the transformer forward: begin (branch, step, decision) → blocks → end (record)."""

    _is_stateful = True

    def __init__(self, controller: Controller, installed: Any = None) -> None:
        super().__init__()
        self.controller = controller
        self.installed = installed  # api._Installed record, for exact removal
        self.context = _ContextReceiver()

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        ctrl = self.controller
        try:
            ready = ctrl.begin_forward(self.context.current, args, kwargs)
            if ready is not None:
                # cfg reuse at model-output level: the forward is skipped entirely.
                output = _wrap_output(ready, kwargs)
            elif ctrl.fw.half:
                # Batched-CFG cfg step: the cond half runs, the uncond half is rebuilt.
                half_args, half_kwargs = ctrl.cond_half_call(args, kwargs)
                cond = self.fn_ref.original_forward(*half_args, **half_kwargs)
                output = _with_sample(cond, ctrl.whole_batch(_sample_of(cond)))
            else:
                output = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            ctrl.abort_forward()
            raise
        ctrl.end_forward(output)
        return output

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        # Called by DiffusionPipeline.maybe_free_model_hooks() at the end of every pipeline call:
        # the generation is complete.
        self.controller.end_generation()
        self.context.reset()
        return module


class BlockHook(ModelHook):
    """Asks the controller to run, skip or replace one block."""

    def __init__(self, controller: Controller, index: int) -> None:
        super().__init__()
        self.controller = controller
        self.index = index

    # Not traced (its index would become a guard); the block's own forward, called from
    # Controller.run_block, is (regional compilation: docs/compatibility.md).
    @torch.compiler.disable(recursive=False)
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.controller.run_block(self.index, self.fn_ref.original_forward, args, kwargs)


def _wrap_output(sample: torch.Tensor, kwargs: dict[str, Any]) -> Any:
    """Package ``sample`` the way the transformer would (``return_dict`` defaults to True)."""
    if kwargs.get("return_dict", True):
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=sample)
    return (sample,)


def _with_sample(output: Any, sample: torch.Tensor) -> Any:
    """``output`` (a dataclass or a tuple, as the transformer returned it) with another sample."""
    if hasattr(output, "sample"):
        return type(output)(sample=sample)
    return (sample, *tuple(output)[1:])
