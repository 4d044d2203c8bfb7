"""`edgecls rollback TARGET`: make the previous version current again (devices/flash.py)."""

from __future__ import annotations

import click

from edgecls.commands._options import examples, target_options, with_target_options


@click.command()
@click.argument("target")
@with_target_options
@examples(
    "edgecls rollback pi@kitchen.local",
    "edgecls rollback ./device-folder",
)
def rollback(target, **kw):
    """Switch TARGET's `current` back to `previous` atomically (and restart the daemon's service if installed)."""
    from edgecls.devices.flash import printable as p
    from edgecls.devices.flash import rollback as run_rollback

    done = run_rollback(target, target_options(**kw))  # its fields come from the device: printed escaped
    now = p(done["slot"] or "nothing (no `current`)")
    if done.get("replaced") == done["slot"]:  # an interrupted flash abandoned before it switched
        click.echo(f"{p(target)}: current is {now}: {p(done.get('reason') or '')}")
    else:
        click.echo(f"{p(target)}: current is now {now} (was {p(done.get('replaced') or 'nothing')})")
