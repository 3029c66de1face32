"""The library stays a library: src/mixcache never imports mixcache_lab and holds no harness.

Two distributions share this repository: ``mixcache`` (src/mixcache) and ``mixcache-lab``
(lab/src/mixcache_lab, the command line, bundled models, benchmark, tiny pipelines). The lab
imports the library, never the other way round, so ``pip install mixcache`` alone works; and the
core wheel carries no weights (``.ci/check_core_wheel.py``, checked here on a wheel built from a
copy of the library's files).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "mixcache"
LAB = ROOT / "lab" / "src" / "mixcache_lab"
WHEEL_CHECK = ROOT / ".ci" / "check_core_wheel.py"
HARNESS = ("bench", "bundled", "cli", "tiny", "soak", "_entry")
WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".png"}


def lab_references(package: Path) -> list[str]:
    """``file:line`` of every import of mixcache_lab (or module-path string naming it) in a tree.

    Strings count too: ``importlib.import_module("mixcache_lab.x")`` is an import the AST does
    not show as one.
    """
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.startswith("mixcache_lab") else []
            if any(n == "mixcache_lab" or n.startswith("mixcache_lab.") for n in names):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return found


def harness_files(package: Path) -> list[str]:
    """Weight/image files and harness modules or folders inside a package directory."""
    found = []
    for path in sorted(package.rglob("*")):
        rel = path.relative_to(package)
        if "__pycache__" in rel.parts:
            continue
        # A harness module (tiny.py) or package (bench/) directly under the package.
        harness = len(rel.parts) == 1 and (path.stem if path.is_file() else path.name) in HARNESS
        if harness or path.suffix.lower() in WEIGHT_SUFFIXES:
            found.append(str(rel))
    return found


def test_the_core_never_imports_the_lab():
    assert lab_references(CORE) == []


def test_the_lab_imports_the_core_so_the_scan_sees_real_imports():
    # The same scanner finds the lab's own absolute imports of mixcache_lab (cli -> bench,
    # bundled): a scanner that found nothing anywhere would pass the test above.
    assert any("cli/" in ref for ref in lab_references(LAB))


def test_the_scanner_reports_every_kind_of_import(tmp_path):
    pkg = tmp_path / "mixcache"
    pkg.mkdir()
    (pkg / "ok.py").write_text("import mixcache\nfrom . import x\nname = 'mixcache_labs'\n")
    (pkg / "a.py").write_text("import os\nimport mixcache_lab.tiny\n")
    (pkg / "b.py").write_text("def f():\n    from mixcache_lab import tiny\n")
    (pkg / "c.py").write_text("import importlib\nimportlib.import_module('mixcache_lab.cli')\n")
    assert lab_references(pkg) == ["mixcache/a.py:2", "mixcache/b.py:2", "mixcache/c.py:2"]


def test_the_core_package_holds_no_weights_and_no_harness():
    assert harness_files(CORE) == []
    # The moved parts are in the lab, with the bundled weights as its package data.
    assert sorted(
        p for p in HARNESS if (LAB / p).is_dir() or (LAB / f"{p}.py").is_file()
    ) == sorted(HARNESS)
    assert (
        LAB / "bundled" / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    ).is_file()


def test_the_harness_check_reports_weights_and_harness_modules(tmp_path):
    pkg = tmp_path / "mixcache"
    (pkg / "bench").mkdir(parents=True)
    (pkg / "profiles").mkdir()
    for rel in ("__init__.py", "bench/__init__.py", "tiny.py", "profiles/wan.json", "stats.py"):
        (pkg / rel).write_text("")
    (pkg / "profiles" / "w.safetensors").write_bytes(b"\0")
    assert harness_files(pkg) == ["bench", "profiles/w.safetensors", "tiny.py"]


# The wheel check (.ci/check_core_wheel.py), on real and synthetic wheels.


def check_wheel(wheel: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WHEEL_CHECK), str(wheel), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def fake_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def core_wheel(tmp_path_factory) -> Path:
    """The core wheel, built from a copy of what the root pyproject.toml packages."""
    if shutil.which("pip") is None and not (Path(sys.executable).parent / "pip").exists():
        pytest.skip("pip is not available")
    work = tmp_path_factory.mktemp("core-wheel")
    repo = work / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "src", repo / "src", ignore=ignore)
    # Offline: build with the setuptools installed here (no isolated build env to download).
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         str(repo), "-w", str(work / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (wheel,) = (work / "dist").glob("mixcache-*.whl")
    return wheel


def test_the_built_core_wheel_passes_the_check(core_wheel):
    proc = check_wheel(core_wheel)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    size = core_wheel.stat().st_size
    assert f"{size} bytes" in proc.stdout and "core wheel ok" in proc.stdout
    names = zipfile.ZipFile(core_wheel).namelist()
    assert "mixcache/profiles/wan.json" in names and "mixcache/py.typed" in names
    assert not [n for n in names if n.startswith("mixcache_lab")]


def test_the_built_core_wheel_fails_a_limit_below_its_size(core_wheel):
    size = core_wheel.stat().st_size
    proc = check_wheel(core_wheel, "--max-bytes", str(size - 1))
    assert proc.returncode == 1
    assert f"wheel is {size} bytes, over the limit of {size - 1}" in proc.stderr


def test_the_wheel_check_reports_each_weight_and_harness_file(tmp_path):
    files = {
        "mixcache/__init__.py": b"",
        "mixcache/stats.py": b"",
        "mixcache/profiles/wan.json": b"{}",
        "mixcache/bundled/model/transformer/diffusion_pytorch_model.safetensors": b"\0",
        "mixcache/bench/__init__.py": b"",
        "mixcache/tiny.py": b"",
        "mixcache/_entry.py": b"",
        "mixcache/loss.png": b"\0",
        "mixcache_lab/__init__.py": b"",
    }
    proc = check_wheel(fake_wheel(tmp_path / "mixcache-0.3.0-py3-none-any.whl", files))
    assert proc.returncode == 1
    failed = sorted(line for line in proc.stderr.splitlines() if "check failed" in line)
    prefix = "core wheel check failed: "
    assert failed == sorted(
        prefix + p
        for p in (
            "weight or image file: mixcache/bundled/model/transformer/"
            "diffusion_pytorch_model.safetensors",
            "harness module: mixcache/bundled/model/transformer/"
            "diffusion_pytorch_model.safetensors",
            "harness module: mixcache/bench/__init__.py",
            "harness module: mixcache/tiny.py",
            "harness module: mixcache/_entry.py",
            "weight or image file: mixcache/loss.png",
            "mixcache-lab file: mixcache_lab/__init__.py",
        )
    )


def test_the_wheel_check_refuses_bad_arguments(tmp_path):
    good = fake_wheel(tmp_path / "mixcache-0.3.0-py3-none-any.whl", {"mixcache/__init__.py": b""})
    assert check_wheel(good).returncode == 0
    missing = check_wheel(tmp_path / "nope.whl")
    assert missing.returncode == 2 and "is not a file" in missing.stderr
    zero = check_wheel(good, "--max-bytes", "0")
    assert zero.returncode == 2 and "--max-bytes must be positive" in zero.stderr
    other = fake_wheel(tmp_path / "other-1.0-py3-none-any.whl", {"other/__init__.py": b""})
    assert "not the core wheel" in check_wheel(other).stderr


# No import circle inside the bundled package (hunyuan.py and pipeline.py used to import each
# other; what both need is in bundled/common.py).


def import_graph(package: Path) -> dict[str, set[str]]:
    """Module -> sibling modules it imports (at module level or lazily inside a function)."""
    name = package.name
    modules = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in package.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom):
                continue
            parts = (node.module or "").split(".")
            if node.level == 1:
                sub = parts[0] if node.module else None
            elif node.level == 0 and name in parts:
                rest = parts[parts.index(name) + 1 :]
                sub = rest[0] if rest else None
            else:
                continue
            if sub is None:  # from . import x: a module, or a name of the package's __init__
                deps |= {a.name if a.name in modules else "__init__" for a in node.names}
            else:
                deps.add(sub)
        graph[path.stem] = deps - {path.stem}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep] if dep in path else [node, dep]
            if dep not in state and (found := visit(dep, [*path, dep])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_bundled_package_has_no_import_cycle():
    graph = import_graph(LAB / "bundled")
    assert graph["hunyuan"] >= {"common"} and "pipeline" not in graph["hunyuan"]
    assert graph["pipeline"] >= {"common", "hunyuan"}
    assert cycle(graph) is None, cycle(graph)


def test_the_cycle_finder_reports_lazy_and_absolute_cycles(tmp_path):
    pkg = tmp_path / "bundled"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from mixcache_lab.bundled.c import g\n")
    (pkg / "c.py").write_text("def g():\n    from . import a, X\n")
    graph = import_graph(pkg)
    assert graph == {"__init__": set(), "a": {"b"}, "b": {"c"}, "c": {"a", "__init__"}}
    assert cycle(graph) == ["a", "b", "c", "a"]
    (pkg / "c.py").write_text("from . import X\n")
    assert cycle(import_graph(pkg)) is None
