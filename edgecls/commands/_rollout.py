"""`edgecls flash`'s staged-rollout options (--canary, --watch, ...) and the shell over devices/rollout."""

from __future__ import annotations

import json

import click

_OPTIONS = (
    click.option(
        "--canary",
        default=None,
        metavar="SHARE",
        help="Start a staged rollout: flash this share (10%) or count (2) of the --targets first; devices marked "
        "canary=true in the fleet file first, then the first watched ones in file order.  [rollout default: 10%]",
    ),
    click.option(
        "--watch",
        "watch",
        default=None,
        metavar="DURATION",
        help="How long to watch the canaries' live /metrics before judging (20s, 15m).  [rollout default: 15m]",
    ),
    click.option(
        "--waves",
        default=None,
        help="After the canaries, cumulative shares of the rest flashed wave by wave (25%,100%).  [default: 100%]",
    ),
    click.option(
        "--watch-waves",
        default=None,
        metavar="DURATION",
        help="How long each later wave is watched (0: not watched).  [default: --watch]",
    ),
    click.option(
        "--baseline",
        default=None,
        metavar="DURATION",
        help="How long every device is watched before anything is flashed (its own 'before').  "
        "[default: --watch, at most 5m]",
    ),
    click.option(
        "--promote-if",
        default=None,
        metavar="CRITERIA",
        help="Override criteria: fps>=RATIO (to its own before), others>=RATIO (its fps change to the "
        "not-yet-updated devices' median change over the same watch), confidence>=DELTA (to its own before), "
        "drift=on|off, reloads=on|off, health=on|off. "
        "[default: fps>=0.8,others>=0.8,confidence>=-0.1,drift=on,reloads=on,health=on]",
    ),
    click.option(
        "--prometheus",
        default=None,
        metavar="URL",
        help="Read the devices' series from this Prometheus server's HTTP API instead of their /metrics "
        "(a device is its instance label, the HOST:PORT of its metrics= URL).",
    ),
    click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False),
        default=None,
        help="A file holding the bearer token of the daemons' --token-file, sent to their /metrics, /healthz and "
        "/latest.  [default: $EDGECLS_TOKEN]",
    ),
    click.option(
        "--journal",
        type=click.Path(dir_okay=False),
        default=None,
        help="The rollout journal (JSON lines).  [default: ~/.local/state/edgecls/rollouts/FLEET-HASH/VERSION.jsonl]",
    ),
    click.option(
        "--abandon", is_flag=True, help="Leave an unfinished rollout of this fleet as it is and start this one."
    ),
)


def with_rollout_options(f):
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def rollout_requested(values: dict) -> bool:
    """--canary or --watch start a rollout; the other rollout options alone are refused (they would be ignored
    and every device flashed at once)."""
    from edgecls.runtime.errors import EdgeclsError

    if values.get("canary") or values.get("watch"):
        return True
    given = [name for name, value in values.items() if value not in (None, False)]
    if given:
        option = "--" + given[0].replace("_", "-")
        raise EdgeclsError(
            f"{option} is an option of a staged rollout: add --canary SHARE (and --watch DURATION) to start one, "
            f"or leave {option} out to flash every target at once"
        )
    return False


def run_rollout(bundle, targets, targets_file, flash_options, values: dict, as_json: bool) -> None:
    """Run the rollout that `values` (the options above) describe; exit 1 when it rolled back."""
    from edgecls.devices.flash import printable
    from edgecls.devices.rollout.plan import parse_criteria, parse_duration
    from edgecls.devices.rollout.run import RolloutOptions, rollout
    from edgecls.runtime.errors import EdgeclsError

    if targets or not targets_file:
        raise EdgeclsError("a staged rollout (--canary/--watch) takes its devices from --targets FLEET only")
    watch = parse_duration(values.get("watch") or "15m", "--watch")

    def seconds(name: str, option: str):
        return None if values.get(name) is None else parse_duration(values[name], option)

    options = RolloutOptions(
        canary=values.get("canary") or "10%",
        waves=values.get("waves") or "100%",
        watch_s=watch,
        watch_waves_s=seconds("watch_waves", "--watch-waves"),
        baseline_s=seconds("baseline", "--baseline"),
        criteria=parse_criteria(values.get("promote_if")),
        prometheus=values.get("prometheus"),
        token_file=values.get("token_file"),
        journal=values.get("journal"),
        abandon=values["abandon"],
        say=lambda message: flash_options.say(printable(message)),  # device replies and names reach the terminal
    )
    result = rollout(bundle, targets_file, flash_options, options)
    if as_json:
        click.echo(json.dumps({"result": result.result, "lines": result.lines, "journal": result.journal}, indent=2))
    else:
        for line in result.lines:
            click.echo(printable(line))
        click.echo(f"rollout {result.result} (journal {printable(result.journal)})")
    if result.result != "promoted":
        raise SystemExit(1)
