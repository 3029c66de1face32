"""``mixcache bench``: MixCache against the caches users would pick instead, side by side.

Everything here is benchmark harness: the core library never imports this package.

- :mod:`.methods`  the method registry (keyed by config type) and the method list per profile;
- :mod:`.profiles` the ``tiny`` (any tiny family) / ``bundled`` / ``wan-1.3b-shape`` settings,
  prompt sets (bench, tuning, training) and the held-out matrix's steps, CFG scales and seeds;
- :mod:`.runner`   timing (device-synchronised), warm-up, repeats, peak memory, block-compute
  counting with hooks on the blocks;
- :mod:`.metrics`  PSNR / SSIM / MS-SSIM / rel-L2 (LPIPS when it can load);
- :mod:`.report`   results.jsonl, results.md, the terminal table and the pictures;
- :mod:`.matrix`   the held-out matrix (models x steps x CFG), one pipeline per model;
- :mod:`.matrix_report` its summary (margins at equal block speedup, domination, budget
  error, hybrid vs single granularity, granularity usage): pure functions, then the files.
"""

from __future__ import annotations

__all__ = ["run_bench"]


def run_bench(*args, **kwargs):
    """Run a benchmark profile; see :func:`mixcache_lab.bench.runner.run_bench`."""
    from .runner import run_bench as _run

    return _run(*args, **kwargs)
