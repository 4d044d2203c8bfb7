"""`edgecls status TARGET`: what is installed on a device and how the last flash went (devices/flash.py)."""

from __future__ import annotations

import json

import click

from edgecls.commands._options import examples, json_flag, target_options, with_target_options


@click.command()
@click.argument("target", required=False)
@click.option(
    "--targets",
    "targets_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A fleet file: one table of every device (version, health, fps per source, drift, last rollout step).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="With --targets: a file holding the bearer token of the daemons' --token-file.  [default: $EDGECLS_TOKEN]",
)
@with_target_options
@json_flag
@examples(
    "edgecls status pi@kitchen.local",
    "edgecls status ./device-folder --json",
    "edgecls status --targets fleet.txt",
    "edgecls status --targets fleet.txt --token-file daemon-token.txt",
)
def status(target, targets_file, token_file, as_json, **kw):
    """Installed versions, which is current, signature state, health, and the last flash result with its reason.

    With --targets FLEET: every device of the fleet in one table, from its own status and its daemon's /metrics.
    """
    from edgecls.devices.flash import printable as p
    from edgecls.devices.flash import status as run_status
    from edgecls.runtime.errors import EdgeclsError

    if bool(target) == bool(targets_file):
        raise EdgeclsError("give one TARGET or --targets FLEET")
    if targets_file:
        _fleet(targets_file, target_options(**kw), token_file, as_json)
        return
    info = run_status(target, target_options(**kw))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    # Every field below may come from a manifest or a device: printed with control characters escaped.
    click.echo(f"{p(target)} (root {p(info['root'])}){'  signatures required' if info['requires_signature'] else ''}")
    for v in info["versions"]:
        mark = (
            "current " if v["slot"] == info["current"] else "previous" if v["slot"] == info["previous"] else "        "
        )
        sig = v.get("signature") or {}
        signed = f"signed by {p(sig['signer'])}" if sig.get("signer") else "unsigned"
        click.echo(f"  {mark} {p(v['slot'])}  {p(v['created'] or '-')}  {p(','.join(v['artifacts']))}  {signed}")
    if "health" in info:
        h = info["health"]
        click.echo(
            f"  health: {p(h['url'])} -> {p(h.get('status'))}" + (f" ({p(h['error'])})" if h.get("error") else "")
        )
        if isinstance(h.get("serving"), str):
            off = "" if h["serving"] == info["current"] else f" (not current {p(info['current'] or 'none')})"
            click.echo(f"  daemon serves: {p(h['serving'])}{off}")
        if isinstance(h.get("refused"), str):
            click.echo(f"  daemon refused: {p(h['refused'])}: {p(h.get('refused_error') or '')}")
    last = info.get("last_flash")
    if last:
        click.echo(
            f"  last flash: {p(last['result'])} {p(last.get('slot') or '')} at {p(last.get('time', ''))}"
            + (f": {p(last['reason'])}" if last.get("reason") else "")
        )
    if isinstance(info.get("state_error"), str):
        click.echo(f"  {p(info['state_error'])}: rollback refused until a flash records a new one")
    pending = info.get("pending")
    if info.get("in_progress"):  # its `pending` record is its own, not a leftover of a killed one
        click.echo(f"  in progress: {p(info['in_progress'])}; run status again when it has ended")
    elif pending and pending.get("kind") == "rollback":
        click.echo(
            f"  interrupted rollback to {p(pending['slot'])}: run `edgecls rollback` again (or any flash) to finish it"
        )
    elif pending:
        unchecked = info["current"] == pending["slot"]
        serving = (
            f"current is {p(pending['slot'])}, never verified"
            if unchecked
            else f"current is {p(info['current'] or 'none')}"
        )
        old = p(pending.get("old") or "nothing")
        undo = f"`edgecls rollback` to return to {old}" if unchecked else "`edgecls rollback` to abandon it"
        click.echo(
            f"  interrupted flash of {p(pending['slot'])} ({serving}): run that flash again to finish it, or "
            f"{undo}; a flash of another version first restores {old}"
        )


def _fleet(targets_file, options, token_file, as_json: bool) -> None:
    from edgecls.devices.rollout.status import fleet_status, format_fleet
    from edgecls.runtime.daemon.config import read_token

    rows = fleet_status(targets_file, options, read_token(token_file))
    click.echo(json.dumps(rows, indent=2) if as_json else format_fleet(rows))
