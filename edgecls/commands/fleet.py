"""`edgecls fleet prometheus-targets FLEET --out FILE`: Prometheus service discovery from the fleet file."""

from __future__ import annotations

import click

from edgecls.commands._options import examples


@click.group()
def fleet():
    """Tools for a fleet of devices described by a fleet file (`TARGET [PROFILE] [name=N] [metrics=URL]`)."""


@fleet.command("prometheus-targets")
@click.argument("fleet_file", metavar="FLEET", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="The JSON file a Prometheus `file_sd_configs` job reads; replaced atomically (Prometheus re-reads it).",
)
@click.option(
    "--device",
    default=None,
    help="Device profile of lines that name none; its health_url gives their metrics port (as flash --device).",
)
@examples(
    "edgecls fleet prometheus-targets fleet.txt --out /etc/prometheus/edgecls-targets.json",
    "edgecls fleet prometheus-targets fleet.txt --out targets.json --device raspberry-pi-5",
)
def prometheus_targets(fleet_file, out, device):
    """Write one Prometheus target per device (its daemon's HOST:PORT, labelled device=NAME) from FLEET.

    Devices without a metrics URL are named on stderr and left out. Run it again when the fleet file changes:
    Prometheus picks the new file up without a restart (devices/prometheus/prometheus.yml).
    """
    from edgecls.devices.flash import printable
    from edgecls.devices.fleet_prometheus import write_targets

    done = write_targets(fleet_file, out, device=device)
    for name in done.unwatched:
        click.echo(
            f"{printable(name)}: not scraped: its line names no metrics=http://HOST:PORT "
            "(nor a profile with a health_url)",
            err=True,
        )
    click.echo(f"{printable(out)}: {len(done.groups)} target(s) for Prometheus")
