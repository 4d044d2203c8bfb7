"""edgecls.cli help: each command says what it does, each option what it is for; `--help` runs in a fresh process."""

import click
import pytest

from edgecls.cli import cli
from tests.conftest import run_cli


def _commands():
    for name, command in sorted(cli.commands.items()):
        if isinstance(command, click.Group):
            yield [name], command
            for sub, subcommand in sorted(command.commands.items()):
                yield [name, sub], subcommand
        else:
            yield [name], command


def test_every_command_and_option_has_help():
    undocumented = []
    for path, command in _commands():
        if not (command.help or command.short_help):
            undocumented.append(" ".join(path))
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden and not param.help:
                undocumented.append(f"{' '.join(path)} {param.opts[0]}")
    assert not undocumented, f"no help text: {undocumented}"


@pytest.mark.parametrize("path", [path for path, _ in _commands()], ids=" ".join)
def test_help_runs_and_lists_every_option(path):
    result = run_cli(*path, "--help", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("Usage: ") and not result.stderr
    command = cli
    for name in path:
        command = command.commands[name]
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[0] in result.stdout, f"{param.opts[0]} missing from `edgecls {' '.join(path)} --help`"


def test_top_level_help_lists_every_command():
    result = run_cli("--help", timeout=120)
    assert result.returncode == 0
    for name in cli.commands:
        assert f"  {name} " in result.stdout, name
