"""The ``mixcache`` command group: lazy subcommands, each wired to its own module's command.

What each subcommand does is tested with it (``tests/bundled/test_cli_generate.py``: generate,
adherence, calibrate; ``tests/bench/``: bench); here, the group itself.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from mixcache_lab.cli import _COMMANDS, _HELP, main

SRC = Path(__file__).resolve().parents[1] / "lab" / "src"


def test_help_lists_every_subcommand_without_importing_any() -> None:
    """``mixcache --help`` stays fast: it names every subcommand with its short help and
    imports none of the subcommand modules (a fresh interpreter)."""
    code = (
        "import json, sys\n"
        "from mixcache_lab.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "from mixcache_lab.cli import _COMMANDS\n"
        "heavy = sorted({m for m, _ in _COMMANDS.values()})\n"
        "print(json.dumps([m for m in heavy if m in sys.modules]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
    )
    assert proc.returncode == 0, proc.stderr
    *help_lines, imported = proc.stdout.strip().splitlines()
    assert json.loads(imported) == []
    text = "\n".join(help_lines)
    for name in _COMMANDS:
        assert name in text and _HELP[name] in text, name


def test_every_subcommand_is_its_modules_command() -> None:
    ctx = click.Context(main)
    for name, (module, attr) in _COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is getattr(importlib.import_module(module), attr), name
        assert command.name == name  # what the user types is what the module calls itself
    assert main.list_commands(ctx) == sorted(_COMMANDS) == sorted(_HELP)


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.output
