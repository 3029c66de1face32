"""The calibration's shared prefix (docs/method.md, "Planning from measured errors").

A single forced reuse at step ``s`` changes nothing before ``s``: its run can replay the exact
run's transformer outputs up to there instead of computing them again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from ..controller import _sample_of
from .transformer import _with_sample

__all__ = ["PREFIX_HOOK_NAME", "PrefixReplayHook", "shared_prefix"]

#: The shared-prefix hook's name in the transformer's ``HookRegistry``.
PREFIX_HOOK_NAME = "mixcache_calibration_prefix"


class PrefixReplayHook(ModelHook):
    """The calibration's runs share the exact run's prefix (outermost hook on the transformer).

    Recording (``start`` None), it keeps the output of every transformer forward of the exact
    run on the CPU, keyed by (step, call within the step). Replaying (``start = k``), the
    forwards of the steps before ``k`` return those outputs and run nothing: a run that differs
    from the exact one only from step ``k`` on (a single forced reuse of the calibration)
    computes only from there, and its latents up to step ``k`` are the exact run's bit for bit
    (the same outputs through the same scheduler arithmetic). MixCache's own hook, inside this
    one, sees only the steps that run; its step index comes from the scheduler.
    """

    def __init__(self, step_of: Callable[[], int | None]) -> None:
        super().__init__()
        self.step_of = step_of
        # (step, call) -> (the output, its sample moved to the CPU; the sample's device).
        self.outputs: dict[tuple[int, int], tuple[Any, torch.device]] = {}
        self.start: int | None = None
        self.replayed = 0  # forwards answered from the recording
        self._at: tuple[int | None, int] = (None, 0)

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        step = self.step_of()
        call = self._at[1] + 1 if self._at[0] == step else 0
        self._at = (step, call)
        if self.start is not None and step is not None and step < self.start:
            stored = self.outputs.get((step, call))
            if stored is not None:
                kept, device = stored
                self.replayed += 1
                return _with_sample(kept, _sample_of(kept).to(device, copy=True))
        output = self.fn_ref.original_forward(*args, **kwargs)
        if self.start is None and step is not None:
            fresh = _sample_of(output)
            kept = _with_sample(output, fresh.detach().to("cpu", copy=True))
            self.outputs[(step, call)] = (kept, fresh.device)
        return output

    def arm(self, start: int | None) -> None:
        """Record (``start`` None) or replay the steps before ``start`` in the next run."""
        self.start, self._at = start, (None, 0)


@contextlib.contextmanager
def shared_prefix(
    transformer: torch.nn.Module, hook: PrefixReplayHook | None, start: int | None
) -> Iterator[None]:
    """``hook`` installed outermost on ``transformer`` for the block, recording (``start``
    None) or replaying the steps before ``start``; nothing when ``hook`` is None."""
    if hook is None:
        yield
        return
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    hook.arm(start)
    registry.register_hook(hook, PREFIX_HOOK_NAME)
    try:
        yield
    finally:
        # Outermost: removed first, before MixCache's own hook (the order diffusers undoes).
        registry.remove_hook(PREFIX_HOOK_NAME, recurse=False)
