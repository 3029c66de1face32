"""Model facts as data: every family is one :class:`ModelSpec` row in :mod:`.families`."""

from __future__ import annotations

from .spec import (
    ArgRef,
    BatchLayout,
    ModelSpec,
    check_supported,
    find_spec,
    register,
    registered_specs,
    supported_class_names,
)

__all__ = [
    "ArgRef",
    "BatchLayout",
    "ModelSpec",
    "check_supported",
    "find_spec",
    "register",
    "registered_specs",
    "supported_class_names",
]

# Registration happens on import; keep one line per family.
from . import families  # noqa: F401
