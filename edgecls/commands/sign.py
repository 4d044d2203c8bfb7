"""`edgecls sign BUNDLE --key KEY`: sign a bundle's manifest with an OpenSSH key (devices/sign.py)."""

from __future__ import annotations

import click

from edgecls.commands._options import examples


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.option(
    "--key",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Private OpenSSH key (ssh-keygen -t ed25519), or its .pub with the key in ssh-agent.",
)
@click.option("--principal", default=None, help="Also print the allowed-signers line for this name.")
@examples(
    "edgecls sign bundles/digits --key ~/.ssh/release_ed25519 --principal release@example.com",
)
def sign(bundle, key, principal):
    """Write BUNDLE/manifest.json.sig; devices with an allowed_signers file accept only bundles it trusts."""
    from pathlib import Path

    from edgecls.devices.sign import sign_bundle, trusted_line

    where = sign_bundle(bundle, key)
    click.echo(f"signed: {where}")
    if principal:
        pub = Path(key) if key.endswith(".pub") else Path(key + ".pub")
        click.echo("allowed_signers line: " + trusted_line(pub, principal).strip())
