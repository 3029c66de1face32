"""The exception hierarchy of mixcache.

Every error a user can trigger is one of these, raised with an actionable message *before* any
hook is installed (docs/design.md, "Apply and remove": fail at apply time, never at the first
forward).
"""

from __future__ import annotations

__all__ = [
    "AlreadyAppliedError",
    "ConfigError",
    "ConflictingCacheError",
    "MixCacheError",
    "NotAppliedError",
    "UnsupportedModelError",
]


class MixCacheError(Exception):
    """Base class of every error raised by mixcache."""


class ConfigError(MixCacheError, ValueError):
    """A configuration value is invalid; the message names the field and its allowed range."""


class UnsupportedModelError(MixCacheError, TypeError):
    """The target is not a supported transformer (or a pipeline holding one)."""


class AlreadyAppliedError(MixCacheError, RuntimeError):
    """MixCache is already applied to this transformer; remove it first."""


class NotAppliedError(MixCacheError, ValueError):
    """``remove_mixcache`` was called on a target that has no MixCache hooks."""


class ConflictingCacheError(MixCacheError, RuntimeError):
    """Another diffusers cache is enabled on the transformer; only one cache can act at a time."""
