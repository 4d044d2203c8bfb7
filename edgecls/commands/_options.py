"""Click options that several commands share word for word, declared once (and what they build)."""

from __future__ import annotations

import click


def examples(*lines: str):
    """Append an `Examples:` block to a command's help; click prints the lines as written (the \\b marker).

    Put it directly above the function (below the click decorators): click reads the docstring then.
    tests/test_cli_help.py parses every example line against its command's options.
    """

    def add(function):
        function.__doc__ = (function.__doc__ or "").rstrip() + examples_block(*lines)
        return function

    return add


def examples_block(*lines: str) -> str:
    """The `Examples:` paragraph itself, indented as a docstring's body (for a command whose help is a string)."""
    return "\n\n    Examples:\n\n    \b\n" + "\n".join(f"      {line}" for line in lines) + "\n"


json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")

_TARGET_OPTIONS = (
    click.option(
        "--ssh-config",
        "ssh_config",
        type=click.Path(dir_okay=False),
        default=None,
        help="An ssh_config file (`ssh -F`); default: your ~/.ssh/config.",
    ),
    click.option(
        "--ssh-option", "ssh_options", multiple=True, metavar="OPT=VALUE", help="Extra `ssh -o` option (repeatable)."
    ),
    click.option(
        "--python",
        default="auto",
        show_default=True,
        help="The device's Python; auto: ROOT/venv/bin/python when `--setup` made it, else python3.",
    ),
    click.option("--device", "device", default=None, help="Device profile name (see `edgecls devices`)."),
    click.option(
        "--profile",
        "profile_file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="A device profile JSON file of your own.",
    ),
)


def with_target_options(f):
    """How to reach a TARGET and which profile it has (flash, rollback, status); `target_options` reads them."""
    for option in reversed(_TARGET_OPTIONS):
        f = option(f)
    return f


def target_options(device, profile_file, ssh_config, ssh_options, python, **more):
    """FlashOptions from `with_target_options`' values and the command's own (`more`)."""
    from edgecls.devices.flash import FlashOptions, resolve_profile

    return FlashOptions(
        profile=resolve_profile(device, profile_file),
        ssh_config=ssh_config,
        ssh_options=tuple(ssh_options),
        python=python,
        **more,
    )
