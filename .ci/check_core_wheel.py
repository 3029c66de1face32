"""Check the core wheel is a library: no weights, no harness module, and small.

Usage: ``python .ci/check_core_wheel.py WHEEL [--max-bytes N]``, on the wheel
``pip wheel --no-deps .`` builds at the repository root (``.ci/core_install.sh core`` does that;
``tests/test_core_wheel.py`` builds one in a temporary folder). It prints the wheel's size and
exits with status 1, listing every problem, if the wheel

- holds a weight or image file (``.safetensors``, ``.bin``, ``.pt``, ``.pth``, ``.ckpt``,
  ``.png``): the bundled models ship with mixcache-lab;
- holds a harness module (``bench``, ``bundled``, ``cli``, ``tiny``, ``soak``, ``_entry``, or
  anything of ``mixcache_lab``): those are mixcache-lab's;
- is larger than ``--max-bytes`` (default :data:`MAX_BYTES`).
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path, PurePosixPath

# The 0.3.0 core wheel measures about 98 kB (41 files, the README included as its long
# description); the limit leaves room to grow about threefold, while one bundled model's
# weights (16 MB and 20 MB) would exceed it a hundredfold.
MAX_BYTES = 300_000
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".png")
# Top-level names under mixcache/ that belong to mixcache-lab (a package or a module).
HARNESS_NAMES = ("bench", "bundled", "cli", "tiny", "soak", "_entry")


def wheel_problems(wheel: Path, max_bytes: int = MAX_BYTES) -> list[str]:
    """Every reason ``wheel`` is not a library-sized core wheel (empty when it is one)."""
    problems: list[str] = []
    size = wheel.stat().st_size
    if size > max_bytes:
        problems.append(f"wheel is {size} bytes, over the limit of {max_bytes}")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    for name in names:
        path = PurePosixPath(name)
        if path.suffix.lower() in WEIGHT_SUFFIXES:
            problems.append(f"weight or image file: {name}")
        parts = path.parts
        if parts and parts[0] == "mixcache_lab":
            problems.append(f"mixcache-lab file: {name}")
        elif len(parts) >= 2 and parts[0] == "mixcache":
            # mixcache/bench/x.py -> "bench"; mixcache/tiny.py -> "tiny".
            top = parts[1] if len(parts) > 2 else PurePosixPath(parts[1]).stem
            if top in HARNESS_NAMES:
                problems.append(f"harness module: {name}")
    if not any(name == "mixcache/__init__.py" for name in names):
        problems.append("no mixcache/__init__.py: not the core wheel")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path, help="the core wheel (mixcache-*.whl)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES, help="size limit in bytes")
    args = parser.parse_args(argv)
    if not args.wheel.is_file():
        parser.error(f"{args.wheel} is not a file")
    if args.max_bytes <= 0:
        parser.error(f"--max-bytes must be positive, got {args.max_bytes}")
    size = args.wheel.stat().st_size
    print(
        f"core wheel {args.wheel.name}: {size} bytes ({size / 1000:.1f} kB), "
        f"limit {args.max_bytes} bytes"
    )
    problems = wheel_problems(args.wheel, args.max_bytes)
    for problem in problems:
        print(f"core wheel check failed: {problem}", file=sys.stderr)
    if not problems:
        print("core wheel ok: no weights, no harness module, within the size limit")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
