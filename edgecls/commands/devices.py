"""`edgecls devices`: device profiles and installed backends."""

from __future__ import annotations

import json

import click


@click.command()
@click.option("--json", "as_json", is_flag=True)
def devices(as_json):
    """List the device profiles and which inference backends are installed here."""
    from dataclasses import asdict

    from devices import list_profiles, load_profile
    from runtime.backends import available_backends

    profiles = [load_profile(n) for n in list_profiles()]
    backends = available_backends()
    if as_json:
        click.echo(json.dumps({"profiles": [asdict(p) for p in profiles], "backends": backends}, indent=2))
        return
    for p in profiles:
        click.echo(f"{p.name:<18} {p.description}")
    click.echo("backends here: " + ", ".join(f"{n} ({'installed' if ok else 'missing'})" for n, ok in backends.items()))
