"""Model facts as data: one file per family registers a :class:`ModelSpec`.

Adding a family is one file here that calls :func:`register` (and an import line below).
"""

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
from . import cogvideox, hunyuan_video, hunyuan_video_1_5, ltx, mochi, skyreels_v2, wan  # noqa: F401
