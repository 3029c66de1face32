"""``mixcache bench``: MixCache against the caches users would pick instead, side by side.

Everything here is benchmark harness: the core library never imports this package.

- :mod:`.methods`  the method registry (keyed by config type) and the method list per profile;
- :mod:`.profiles` the ``tiny`` / ``bundled`` / ``wan-1.3b-shape`` settings;
- :mod:`.runner`   timing, warm-up, repeats, block-compute counting with hooks on the blocks;
- :mod:`.metrics`  PSNR / SSIM / MS-SSIM / rel-L2 (LPIPS when it can load);
- :mod:`.report`   results.jsonl, results.md, the terminal table and the pictures.
"""

from __future__ import annotations

__all__ = ["run_bench"]


def run_bench(*args, **kwargs):
    """Run a benchmark profile; see :func:`mixcache.bench.runner.run_bench`."""
    from .runner import run_bench as _run

    return _run(*args, **kwargs)
