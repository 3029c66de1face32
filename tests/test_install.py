"""A library-sized install: the core needs no extra, and the console script says what is missing.

The real check, a fresh venv with ``pip install .`` and no extras, is ``.ci/core_install.sh core``
(run by ``.ci/run``); these tests simulate the missing packages inside the dev venv, where they
are installed, by putting ``None`` in ``sys.modules`` (``import`` then raises
``ModuleNotFoundError`` and ``importlib.util.find_spec`` reports the package absent).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from mixcache_lab._entry import EXTRA_OF_MODULE, main, missing_extra_message

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


def run_hidden(hidden: list[str], code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the ``hidden`` modules cannot be imported."""
    prelude = f"import sys\nfor _m in {hidden!r}:\n    sys.modules[_m] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(req: str) -> str:
    return re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0].lower()


def test_console_script_without_click_gives_the_install_hint():
    code = "from mixcache_lab._entry import main\nsys.argv = ['mixcache', '--help']\nmain()"
    proc = run_hidden(["click"], code)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'mixcache[cli]'" in proc.stderr
    assert "'click'" in proc.stderr and "Traceback" not in proc.stderr


def test_console_script_without_the_bundled_models_packages_gives_the_hint(tmp_path):
    code = (
        "from mixcache_lab._entry import main\n"
        f"sys.argv = ['mixcache', 'generate', 'a red circle moving right', '--out', "
        f"{str(tmp_path / 'x.mp4')!r}]\nmain()"
    )
    proc = run_hidden(["tokenizers", "transformers"], code)
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'mixcache[cli]'" in proc.stderr and "Traceback" not in proc.stderr
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
    ("module", "extra"),
    [
        ("click", "cli"),
        ("tokenizers.models", "cli"),
        ("torchmetrics", "bench"),
        ("skimage", "bench"),
        ("cache_dit", "peers"),
        ("numpy", None),
    ],
)
def test_missing_extra_message_names_the_extra(module, extra):
    message = missing_extra_message(ModuleNotFoundError(f"No module named {module!r}", name=module))
    if extra is None:
        assert message is None
    else:
        assert f"pip install 'mixcache[{extra}]'" in message
        assert repr(module.split(".")[0]) in message


def test_core_dependencies_are_library_sized():
    project = pyproject()["project"]
    core = {requirement_name(r): r for r in project["dependencies"]}
    assert set(core) == {"torch", "diffusers", "safetensors", "numpy"}
    assert "<" in core["diffusers"] and ">=" in core["diffusers"]  # a tested range, bounded
    assert project["scripts"]["mixcache"] == "mixcache_lab._entry:main"


def test_each_optional_module_is_in_the_extra_the_hint_names():
    extras = pyproject()["project"]["optional-dependencies"]

    def names(extra: str) -> set[str]:
        out = set()
        for req in extras[extra]:
            match = re.fullmatch(r"mixcache\[(\w+)\]", req)
            out |= names(match.group(1)) if match else {requirement_name(req)}
        return out

    for module, extra in EXTRA_OF_MODULE.items():
        dist = DIST_OF_MODULE.get(module, module)
        assert dist in names(extra), (module, extra)
    assert names("cli") <= names("bench") and names("cli") <= names("dev")


def test_core_check_passes_with_every_extra_hidden():
    hidden = sorted(set(EXTRA_OF_MODULE) - HUB_DEPENDENCIES)
    script = str(CORE_CHECK)
    code = f"import runpy\nsys.argv = [{script!r}]\nrunpy.run_path({script!r}, run_name='__main__')"
    proc = run_hidden(hidden, code)
    assert proc.returncode == 0, proc.stderr
    assert "core install ok" in proc.stdout
