"""The ``mixcache`` command line: ``generate``, ``bench``, ``calibrate`` and ``adherence``.

Subcommands live in their own modules and are imported only when invoked, so ``mixcache --help``
stays fast (torch and diffusers are heavy imports).
"""

from __future__ import annotations

import importlib

import click

# name -> (module, attribute): the one place that lists the subcommands.
_COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("mixcache_lab.cli.generate", "generate"),
    "adherence": ("mixcache_lab.cli.generate", "adherence"),
    "bench": ("mixcache_lab.cli.bench", "bench"),
    "calibrate": ("mixcache_lab.cli.calibrate", "calibrate"),
    "plan": ("mixcache_lab.cli.plan", "plan"),
}

_HELP = {
    "generate": "Generate a video with MixCache (bundled model by default).",
    "adherence": "Score a bundled model's prompt adherence on held-out prompts.",
    "bench": "Benchmark MixCache against other caches, side by side.",
    "calibrate": "Measure a model's reuse errors for the planner.",
    "plan": "Print and plot the schedule a preset plans for a model.",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        module_name, attr = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module_name), attr)
        if not isinstance(command, click.Command):  # pragma: no cover - wiring error
            raise TypeError(f"{module_name}.{attr} is not a click command")
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every subcommand module.
        with formatter.section("Commands"):
            formatter.write_dl([(name, _HELP[name]) for name in sorted(_COMMANDS)])


@click.group(cls=_LazyGroup)
@click.version_option(package_name="mixcache")
def main() -> None:
    """mixcache: step / CFG / block caching for video diffusion transformers."""
