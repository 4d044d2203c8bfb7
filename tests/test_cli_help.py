"""edgecls.cli help: each command says what it does, each option what it is for; `--help` runs in a fresh process."""

import re
import shlex

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


def _examples(help_text: str) -> list:
    """The command lines of a help's `Examples:` block (a shell comment or redirection cut off)."""
    lines = [line.strip() for line in help_text.splitlines()]
    block = lines[lines.index("Examples:") + 1 : lines.index("Options:")] if "Examples:" in lines else []
    # the edgecls command ends at a redirection or a pipe (`... | sudo tee FILE`)
    return [shlex.split(re.split(r" [>|]", line)[0], comments=True) for line in block if line]


@pytest.mark.parametrize("path", [path for path, c in _commands() if not isinstance(c, click.Group)], ids=" ".join)
def test_every_command_help_has_examples_that_its_options_parse(path):
    """Each example names the command and only its options, with valid choices and numbers, and no stray argument."""
    command = cli
    for name in path:
        command = command.commands[name]
    help_text = command.get_help(click.Context(command, info_name=" ".join(["edgecls", *path])))
    examples = _examples(help_text)
    assert examples, f"`edgecls {' '.join(path)} --help` has no Examples block"
    for words in examples:
        assert words[: len(path) + 1] == ["edgecls", *path], words
        ctx = click.Context(command, info_name=" ".join(path))
        values, rest, _ = command.make_parser(ctx).parse_args(words[len(path) + 1 :])  # an unknown option raises
        assert not rest, f"stray arguments {rest} in {' '.join(words)}"
        for param in command.params:
            if param.required:
                assert values.get(param.name) is not None, f"{' '.join(words)} lacks {param.name}"
            if values.get(param.name) is not None and isinstance(
                param.type, (click.Choice, click.types._NumberParamTypeBase)
            ):
                param.type_cast_value(ctx, values[param.name])  # a wrong choice or number raises


def test_top_level_help_says_where_to_start():
    result = run_cli("--help", timeout=120)
    line = next(line for line in result.stdout.splitlines() if line.strip().startswith("quickstart "))
    assert "Start here" in line, line
