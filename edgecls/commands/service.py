"""`edgecls service`: the systemd side of the daemon (`edgecls service unit` prints a hardened unit)."""

from __future__ import annotations

import click

from edgecls.commands._options import examples

INSTALL_HINT = """\
# Install:  edgecls service unit | sudo tee /etc/systemd/system/edgecls.service >/dev/null
#           put `edgecls run` options in {config} (TOML, keys = option names),
#           the token in {env_file} (EDGECLS_RUN_TOKEN=...; chmod 600),
#           then: sudo systemctl daemon-reload && sudo systemctl enable --now edgecls
"""


@click.group()
def service():
    """Run `edgecls run` as a systemd service."""


@service.command()
@click.option(
    "--exec",
    "executable",
    help="The edgecls executable ExecStart runs (default: the edgecls of the running Python, else the one on PATH).",
)
@click.option(
    "--config",
    default="/etc/edgecls/run.toml",
    show_default=True,
    help="TOML file with the `edgecls run` options (bundle, source, port, results, ...).",
)
@click.option(
    "--env-file",
    default="/etc/edgecls/edgecls.env",
    show_default=True,
    help="Optional environment file for secrets (EDGECLS_RUN_TOKEN) and other EDGECLS_RUN_* settings.",
)
@click.option(
    "--results-dir",
    default="/var/lib/edgecls",
    show_default=True,
    help="The only folder the service may write to (point --results there).",
)
@click.option("--user", help="Run as this existing system user (default: a dynamic user with the video group).")
@click.option(
    "--watchdog-sec",
    type=click.IntRange(2),
    default=30,
    show_default=True,
    help="Restart the daemon when no frame was classified for this long.",
)
@click.option("--no-hint", is_flag=True, help="Print only the unit, without the install comment.")
@examples(
    "edgecls service unit | sudo tee /etc/systemd/system/edgecls.service",
    "edgecls service unit --config /etc/edgecls/run.toml --user edgecls",
)
def unit(executable, config, env_file, results_dir, user, watchdog_sec, no_hint):
    """Print a hardened systemd unit for `edgecls run --config FILE` (Type=notify with a watchdog)."""
    from edgecls.devices.service import UnitOptions, unit_text

    text = unit_text(
        UnitOptions(
            executable=executable or "",
            config=config,
            env_file=env_file,
            results_dir=results_dir,
            user=user,
            watchdog_sec=watchdog_sec,
        )
    )
    click.echo(("" if no_hint else INSTALL_HINT.format(config=config, env_file=env_file)) + text, nl=False)
