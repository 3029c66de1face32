"""Two distributions: the library needs no extra, and the lab's console script says what is missing.

``mixcache`` (pyproject.toml, src/mixcache) is the library; ``mixcache-lab`` (lab/pyproject.toml,
lab/src/mixcache_lab) the command line, bundled models, benchmark and tiny pipelines. The real
check, the core wheel installed alone in a fresh venv, is ``.ci/core_install.sh core`` (run by
``.ci/run``); these tests simulate the missing packages inside the dev venv, where they are
installed, by putting ``None`` in ``sys.modules`` (``import`` then raises ``ModuleNotFoundError``
and ``importlib.util.find_spec`` reports the package absent).
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from mixcache_lab._entry import EXTRA_OF_MODULE, install_command, main, missing_extra_message

ROOT = Path(__file__).resolve().parents[1]
CORE_CHECK = ROOT / ".ci" / "check_core_install.py"
# Distribution name of each optional top-level module, where they differ.
DIST_OF_MODULE = {
    "skimage": "scikit-image",
    "imageio_ffmpeg": "imageio-ffmpeg",
    "cache_dit": "cache-dit",
}
# tqdm and click are also dependencies of huggingface_hub, which diffusers imports: they are
# always present with the core, so hiding them would break diffusers, not mixcache.
HUB_DEPENDENCIES = {"tqdm", "click"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def with_dependents(hidden: list[str]) -> list[str]:
    """``hidden`` plus the top-level modules of every installed package that requires one of them.

    A package absent from a real install takes what requires it along: in a venv where peft is
    installed (its hard requirement is transformers), diffusers imports peft on sight, so hiding
    transformers alone would break diffusers for a reason no real install has. What the core
    install brings (the library's requirements and theirs) stays, as it would in a real install,
    and so does mixcache-lab itself: these tests simulate it installed without its dependencies.
    """
    modules_of: dict[str, set[str]] = {}
    for module, dists in metadata.packages_distributions().items():
        for dist in dists:
            modules_of.setdefault(_canonical(dist), set()).add(module)
    # Only unconditional requirements (an extra's or a marker's may not apply).
    needs = {
        _canonical(d.metadata["Name"]): {
            _canonical(requirement_name(r)) for r in d.requires or () if ";" not in r
        }
        for d in metadata.distributions()
    }
    kept = {"mixcache-lab"}
    todo = [_canonical(requirement_name(r)) for r in pyproject()["project"]["dependencies"]]
    while todo:  # the core install's closure
        name = todo.pop()
        if name not in kept:
            kept.add(name)
            todo += needs.get(name, set())
    gone = {_canonical(DIST_OF_MODULE.get(m, m)) for m in hidden}
    changed = True
    while changed:  # to a fixed point: what requires a dependent goes too
        changed = False
        for name, required in needs.items():
            if name not in gone | kept and required & gone:
                gone.add(name)
                changed = True
    out = set(hidden)
    for dist in gone:
        out |= modules_of.get(dist, set())
    return sorted(out)


def run_hidden(hidden: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the ``hidden`` modules cannot be imported."""
    hidden = with_dependents(hidden)
    prelude = f"import sys\nfor _m in {hidden!r}:\n    sys.modules[_m] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def pyproject(folder: str = ".") -> dict:
    """The parsed pyproject.toml of the library (``"."``) or of mixcache-lab (``"lab"``)."""
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / folder / "pyproject.toml").read_text())


def requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0].lower()


def test_console_script_without_click_gives_the_install_hint():
    code = "from mixcache_lab._entry import main\nsys.argv = ['mixcache', '--help']\nmain()"
    proc = run_hidden(["click"], code)
    assert proc.returncode == 1, proc.stderr
    assert "Install it with: pip install mixcache-lab\n" in proc.stderr
    assert "'click'" in proc.stderr and "Traceback" not in proc.stderr


def test_console_script_without_the_bundled_models_packages_gives_the_hint(tmp_path):
    code = (
        "from mixcache_lab._entry import main\n"
        f"sys.argv = ['mixcache', 'generate', 'a red circle moving right', '--out', "
        f"{str(tmp_path / 'x.mp4')!r}]\nmain()"
    )
    proc = run_hidden(["tokenizers", "transformers"], code)
    assert proc.returncode == 1, proc.stderr
    assert "pip install mixcache-lab" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.mp4").exists()


def test_other_import_errors_are_not_hidden(monkeypatch):
    import mixcache_lab._entry as entry

    def broken():
        raise ModuleNotFoundError(
            "No module named 'mixcache_lab.cli.nope'", name="mixcache_lab.cli.nope"
        )

    monkeypatch.setattr(entry, "_load_cli", broken)
    with pytest.raises(ModuleNotFoundError, match="nope"):
        main()


@pytest.mark.parametrize(
    ("module", "install"),
    [
        ("click", "pip install mixcache-lab"),
        ("tokenizers.models", "pip install mixcache-lab"),
        ("torchmetrics", "pip install 'mixcache-lab[bench]'"),
        ("skimage", "pip install 'mixcache-lab[bench]'"),
        ("cache_dit", "pip install 'mixcache-lab[peers]'"),
        ("numpy", None),
    ],
)
def test_missing_extra_message_names_the_install(module, install):
    message = missing_extra_message(ModuleNotFoundError(f"No module named {module!r}", name=module))
    if install is None:
        assert message is None
    else:
        assert message.endswith(f"Install it with: {install}")
        assert repr(module.split(".")[0]) in message


def test_core_dependencies_are_library_sized():
    project = pyproject()["project"]
    core = {requirement_name(r): r for r in project["dependencies"]}
    assert set(core) == {"torch", "diffusers", "safetensors", "numpy"}
    assert "<" in core["diffusers"] and ">=" in core["diffusers"]  # a tested range, bounded
    assert "<" in core["torch"] and ">=" in core["torch"]  # a range: GPU users bring their own
    # The library has no extras and no console script (the command line is mixcache-lab's), and
    # ships no package data but its type marker and impact profiles.
    assert "optional-dependencies" not in project and "scripts" not in project
    package_data = pyproject()["tool"]["setuptools"]["package-data"]
    assert package_data == {"mixcache": ["py.typed", "profiles/*.json"]}


def test_the_lab_carries_the_command_line_and_follows_the_library_version():
    core, lab = pyproject()["project"], pyproject("lab")["project"]
    assert lab["name"] == "mixcache-lab" and lab["version"] == core["version"]
    assert lab["scripts"] == {"mixcache": "mixcache_lab._entry:main"}
    assert lab["readme"] == "README.md" and (ROOT / "lab" / "README.md").is_file()
    (library,) = [r for r in lab["dependencies"] if requirement_name(r) == "mixcache"]
    # A pin or compatible range that the library's own version satisfies and the next minor
    # release does not (the lab uses the library's internals).
    specifier = SpecifierSet(library.removeprefix("mixcache"))
    major, minor, _ = core["version"].split(".")
    assert specifier.contains(core["version"]), library
    assert not specifier.contains(f"{major}.{int(minor) + 1}.0"), library
    # No requirement of either distribution may pull an unpinned torch: only the library names
    # torch, as a bounded range (the Makefile repeats its CPU pin in the same pip install).
    lab_requirements = [r for group in lab["optional-dependencies"].values() for r in group]
    lab_requirements += lab["dependencies"]
    assert "torch" not in {requirement_name(r) for r in lab_requirements}
    assert set(lab["optional-dependencies"]) == {"bench", "peers", "dev"}


def test_each_optional_module_is_in_the_install_the_hint_names():
    lab = pyproject("lab")["project"]
    groups = {"": lab["dependencies"], **lab["optional-dependencies"]}

    def names(extra: str) -> set[str]:
        return {requirement_name(req) for req in groups[extra]}

    for module, extra in EXTRA_OF_MODULE.items():
        dist = DIST_OF_MODULE.get(module, module)
        assert dist in names(extra), (module, extra)
        assert install_command(extra) in missing_extra_message(ImportError(name=module))
    assert names("peers") == {"cache-dit"}


def test_core_check_lists_every_module_of_the_lab():
    """check_core_install.py cannot import mixcache_lab (not installed there): same list."""
    check = runpy.run_path(str(CORE_CHECK), run_name="core_check")
    assert check["OPTIONAL_MODULES"] == set(EXTRA_OF_MODULE) | {"mixcache_lab"}


def test_core_check_passes_with_every_extra_hidden():
    # mixcache_lab hidden too: the library's check must run without the lab importable.
    hidden = sorted((set(EXTRA_OF_MODULE) - HUB_DEPENDENCIES) | {"mixcache_lab"})
    script = str(CORE_CHECK)
    code = f"import runpy\nsys.argv = [{script!r}]\nrunpy.run_path({script!r}, run_name='__main__')"
    proc = run_hidden(hidden, code)
    assert proc.returncode == 0, proc.stderr
    assert "core install ok" in proc.stdout
