"""`edgecls devices [list | show NAME]`: device profiles and installed backends."""

from __future__ import annotations

import json

import click

from edgecls.commands._options import examples, json_flag


def _profiles_help() -> str:
    from edgecls.devices.profiles import PROFILES_ENV, user_profile_dirs

    return f"your own profiles: *.json in {user_profile_dirs()[0]} (or folders in ${PROFILES_ENV})"


@click.group(invoke_without_command=True)
@json_flag
@click.pass_context
def devices(ctx, as_json):
    """Device profiles (built-in and your own) and which inference backends are installed here."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_cmd, as_json=as_json)


@devices.command("list")
@json_flag
@examples(
    "edgecls devices list",
    "edgecls devices list --json",
)
def list_cmd(as_json):
    """List the profiles and the backends installed here."""
    from dataclasses import asdict

    from edgecls.devices.flash import printable
    from edgecls.devices.profiles import list_profiles, load_profile, profile_source
    from edgecls.runtime.backends import available_backends

    profiles = [load_profile(n) for n in list_profiles()]
    backends = available_backends()
    if as_json:
        click.echo(json.dumps({"profiles": [asdict(p) for p in profiles], "backends": backends}, indent=2))
        return
    for p in profiles:  # a user's profile file may hold anything: escaped like flash's table
        source = profile_source(p.name)
        click.echo(
            f"{p.name:<18} {printable(p.description)}" + ("" if source == "built-in" else f"  [{printable(source)}]")
        )
    click.echo("backends here: " + ", ".join(f"{n} ({'installed' if ok else 'missing'})" for n, ok in backends.items()))
    click.echo(_profiles_help())


@devices.command("show")
@click.argument("name")
@json_flag
@examples("edgecls devices show raspberry-pi-5", "edgecls devices show my-board.json --json")
def show(name, as_json):
    """Every field of one profile (NAME, or a path to a JSON file)."""
    from dataclasses import asdict

    from edgecls.devices.flash import printable
    from edgecls.devices.profiles import load_profile, profile_source

    profile = load_profile(name)
    data = asdict(profile)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(printable(f"{profile.name} ({profile_source(profile.name) if profile.name == name else name})"))
    for key, value in data.items():
        if key == "name" or value in ("", (), {}, None):
            continue
        shown = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        click.echo(f"  {key:<18} {printable(shown)}")
