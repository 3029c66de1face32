"""The ``mixcache`` console script, importable without the command line's dependencies.

The library (``pip install mixcache``) carries only what :func:`mixcache.apply_mixcache` needs;
the command line, the bundled models and the benchmark are the ``mixcache-lab`` distribution, whose
own dependencies bring click and the bundled models' text encoder, and whose extras bring the
benchmark's metrics (``bench``) and the external cache it compares against (``peers``). The script
must not import click before it can say what is missing: a missing optional module becomes a
one-line error naming the ``pip install`` to run, instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["EXTRA_OF_MODULE", "install_command", "main", "missing_extra_message"]

#: Distribution that carries the command line (lab/pyproject.toml).
LAB_DISTRIBUTION = "mixcache-lab"

#: Top-level module -> the mixcache-lab extra that brings it (lab/pyproject.toml,
#: [project.optional-dependencies]); ``""`` for mixcache-lab's own dependencies.
EXTRA_OF_MODULE: dict[str, str] = {
    "click": "",
    "tqdm": "",
    "imageio": "",
    "imageio_ffmpeg": "",
    "matplotlib": "",
    "transformers": "",
    "tokenizers": "",
    "scipy": "",
    "torchmetrics": "bench",
    "skimage": "bench",
    "cache_dit": "peers",
}


def install_command(extra: str) -> str:
    """The ``pip install`` that brings mixcache-lab with ``extra`` (``""``: no extra)."""
    if not extra:
        return f"pip install {LAB_DISTRIBUTION}"
    return f"pip install '{LAB_DISTRIBUTION}[{extra}]'"


def missing_extra_message(exc: ImportError) -> str | None:
    """The install hint for an ImportError of an optional dependency, or None for any other."""
    name = (exc.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(name)
    if extra is None:
        return None
    # The library alone (pip install mixcache) has none of these: say which install brings it.
    what = "mixcache-lab's dependencies" if not extra else f"mixcache-lab's [{extra}] extra"
    return (
        f"mixcache: this command needs the package {name!r}, which is one of {what} and is not "
        f"installed. Install it with: {install_command(extra)}"
    )


def _load_cli() -> Callable[[], object]:
    from mixcache_lab.cli import main as cli_main

    return cli_main


def main() -> None:
    """Run the ``mixcache`` command line; exit with an install hint if a dependency is missing."""
    try:
        _load_cli()()
    except ImportError as exc:
        message = missing_extra_message(exc)
        if message is None:
            raise
        # SystemExit with a string prints it to stderr and exits with status 1, no traceback.
        raise SystemExit(message) from None
