"""Model facts as data: one file per family registers a :class:`ModelSpec`.

Adding a family is one file here that calls :func:`register` (and an import line below).
"""

from __future__ import annotations

from .spec import ArgRef, ModelSpec, find_spec, register, registered_specs, supported_class_names

__all__ = [
    "ArgRef",
    "ModelSpec",
    "find_spec",
    "register",
    "registered_specs",
    "supported_class_names",
]

# Registration happens on import; keep one line per family.
from . import hunyuan_video, wan  # noqa: F401
