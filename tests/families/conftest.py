"""Family tests share the core tests' helpers (tiny configs, the apply/remove context manager)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

_BUILT: dict[str, object] = {}


@pytest.fixture(scope="session")
def family_pipe():
    """``family_pipe(name)``: the tiny pipeline of ``name`` (built once per session; tests must
    leave it unhooked)."""
    from mixcache_lab.tiny import TINY_PIPELINES

    def get(name: str):
        if name not in _BUILT:
            _BUILT[name] = TINY_PIPELINES[name].build()
        return _BUILT[name]

    return get
