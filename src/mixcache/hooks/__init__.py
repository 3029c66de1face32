"""Thin interception on diffusers' hook core (``HookRegistry`` / ``ModelHook``).

One stateful hook on the transformer (it receives diffusers' ``cache_context`` and the end-of-
pipeline reset) and one hook per block; both only forward to the :class:`~mixcache.controller.
Controller`, which holds all logic. The calibration adds one more, outermost, while it runs
(:mod:`.prefix`: its runs replay the exact run's prefix).
"""

from .transformer import BLOCK_HOOK_NAME, TRANSFORMER_HOOK_NAME, BlockHook, TransformerHook

__all__ = ["BLOCK_HOOK_NAME", "TRANSFORMER_HOOK_NAME", "BlockHook", "TransformerHook"]
