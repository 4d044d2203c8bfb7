"""`edgecls rollback TARGET`: make the previous version current again (devices/flash.py)."""

from __future__ import annotations

import click

from edgecls.commands.flash import target_options, with_target_options


@click.command()
@click.argument("target")
@with_target_options
def rollback(target, **kw):
    """Switch TARGET's `current` back to `previous` atomically (and restart the daemon's service if installed)."""
    from devices.flash import rollback as run_rollback

    done = run_rollback(target, target_options(**kw))
    click.echo(f"{target}: current is now {done['slot']} (was {done.get('replaced')})")
