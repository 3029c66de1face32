"""The ``mixcache`` command group: every subcommand is listed and resolvable."""

from __future__ import annotations

from click.testing import CliRunner

from mixcache_lab.cli import _COMMANDS, main


def test_help_lists_every_subcommand() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for name in _COMMANDS:
        assert name in result.output


def test_every_subcommand_resolves_to_a_click_command() -> None:
    for name in _COMMANDS:
        result = CliRunner().invoke(main, [name, "--help"])
        assert result.exit_code == 0, f"{name}: {result.output}"
        assert "Usage:" in result.output


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.output
