"""The ``mixcache`` console script, importable without the command line's dependencies.

The core install (``pip install mixcache``) carries only what :func:`mixcache.apply_mixcache`
needs; click, the bundled model's text encoder and the benchmark's metrics come with extras. The
console script is installed either way, so it must not import click before it can say which extra
is missing: a missing optional module becomes a one-line error naming the ``pip install`` to run,
instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["EXTRA_OF_MODULE", "main", "missing_extra_message"]

#: Top-level module -> the extra that brings it (pyproject.toml, [project.optional-dependencies]).
EXTRA_OF_MODULE: dict[str, str] = {
    "click": "cli",
    "tqdm": "cli",
    "imageio": "cli",
    "imageio_ffmpeg": "cli",
    "matplotlib": "cli",
    "transformers": "cli",
    "tokenizers": "cli",
    "scipy": "cli",
    "torchmetrics": "bench",
    "skimage": "bench",
    "cache_dit": "peers",
}


def missing_extra_message(exc: ImportError) -> str | None:
    """The install hint for an ImportError of an optional dependency, or None for any other."""
    name = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    return (
        f"mixcache: this command needs the optional package {name!r}, which the core install "
        f"does not include. Install it with: pip install 'mixcache[{extra}]'"
    )


def _load_cli() -> Callable[[], object]:
    from mixcache_lab.cli import main as cli_main

    return cli_main


def main() -> None:
    """Run the ``mixcache`` command line; exit with an install hint if an extra is missing."""
    try:
        _load_cli()()
    except ImportError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        # SystemExit with a string prints it to stderr and exits with status 1, no traceback.
        raise SystemExit(message) from None
