"""`edgecls flash BUNDLE TARGET...`: install a bundle on devices over SSH or into local folders (devices/flash.py)."""

from __future__ import annotations

import json

import click

from edgecls.commands._options import examples, target_options, with_target_options
from edgecls.commands._rollout import rollout_requested, run_rollout, with_rollout_options


@click.command()
@click.argument("bundle", type=click.Path(exists=True))
@click.argument("targets", nargs=-1)
@click.option(
    "--targets",
    "targets_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A file with one TARGET per line (# comments).",
)
@with_target_options
@click.option(
    "--setup",
    is_flag=True,
    help="First install the profile's runtime packages on the device, offline: wheels fetched here for its platform, "
    "pushed, pip --no-index into ROOT/venv.",
)
@click.option("--install-service", is_flag=True, help="Write and enable the daemon's systemd unit on the device.")
@click.option("--no-smoke", is_flag=True, help="Skip the smoke test (check images, latency budget) after the switch.")
@click.option("--jobs", type=int, default=8, show_default=True, help="Targets flashed at once.")
@click.option(
    "--lock-timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for another flash of the same target to finish.",
)
@click.option(
    "--artifact",
    help="Artifact to send (default: the profile's first the bundle has); fastest: the fastest row of a bench "
    "result (--bench) that passed the accuracy gate, with its engine and threads, recorded as profile NAME-fastest.",
)
@click.option(
    "--bench",
    type=click.Path(dir_okay=False),
    help="With --artifact fastest: an `edgecls bench --json` result of this bundle measured on the target's kind "
    "of machine (default: the one the profile's last choice recorded).",
)
@click.option("--force-bench", is_flag=True, help="Use a --bench measured on another kind of machine (warned).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@with_rollout_options
@examples(
    "edgecls flash bundles/digits pi@kitchen.local --device raspberry-pi-5",
    "edgecls flash bundles/digits ./device-folder",
    "edgecls flash bundles/digits ./device-folder --artifact fastest --bench bench.json",
    "edgecls flash bundles/digits --targets fleet.txt --device raspberry-pi-5",
    "edgecls flash bundles/digits --targets fleet.txt --canary 10% --watch 15m --waves 25%,100%",
    "edgecls flash bundles/digits --targets fleet.txt --canary 1 --watch 10m --promote-if fps>=0.9,confidence>=-0.05",
)
def flash(
    bundle,
    targets,
    targets_file,
    device,
    profile_file,
    ssh_config,
    ssh_options,
    python,
    setup,
    install_service,
    no_smoke,
    jobs,
    lock_timeout,
    artifact,
    bench,
    force_bench,
    as_json,
    **rollout_options,
):
    """Install BUNDLE on each TARGET: user@host[:port][:/root] over SSH, or a local folder (a folder whose
    name has an @ or a : is written ./NAME or /path/NAME).

    Sends only the files the profile needs, verifies them on the device, switches `current` atomically,
    runs the smoke test and rolls back on failure. Exits 1 if any target failed or rolled back.

    With --canary or --watch (and --targets): a staged rollout. The canaries are flashed first and their live
    /metrics watched against their own window before and the devices not yet updated; every criterion holds:
    the rest follow in --waves, else the canaries are rolled back and the rest never touched (exit 1). Every
    step goes to a journal: the same command again resumes an interrupted rollout.
    """
    from edgecls.core.progress import progress
    from edgecls.devices.fastest import check_bench_option
    from edgecls.devices.flash import flash as run_flash
    from edgecls.devices.flash import format_table, read_targets_file

    check_bench_option(artifact, bench, force_bench)
    options = target_options(
        device,
        profile_file,
        ssh_config,
        ssh_options,
        python,
        setup=setup,
        install_service=install_service,
        smoke=not no_smoke,
        jobs=jobs,
        lock_timeout=lock_timeout,
        say=progress,
        artifact=artifact,
        bench=bench,
        force_bench=force_bench,
    )
    if rollout_requested(rollout_options):
        run_rollout(bundle, targets, targets_file, options, rollout_options, as_json)
        return
    all_targets = list(targets) + (read_targets_file(targets_file) if targets_file else [])
    results = run_flash(bundle, all_targets, options)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        click.echo(format_table(results))
    failed = [r for r in results if not r.ok]
    if failed:
        click.echo(
            f"error: {len(failed)} of {len(results)} target(s) not updated: "
            f"{'; '.join(f'{r.target}: {r.result}' for r in failed)}",
            err=True,
        )
        raise SystemExit(1)
