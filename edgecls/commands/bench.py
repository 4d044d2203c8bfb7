"""`edgecls bench`: latency, memory and accuracy of every artifact of a bundle, here or on a device over SSH."""

from __future__ import annotations

import click

from edgecls.commands._options import examples


@click.command()
@click.argument("bundle", type=click.Path(), required=False)
@click.option("--artifacts", help="Comma-separated artifact names (default: all in the bundle).")
@click.option("--threads", default="1", show_default=True, help="Comma-separated thread counts, e.g. 1,2.")
@click.option(
    "--repeats",
    type=click.IntRange(1),
    default=3,
    show_default=True,
    help="Fresh processes per artifact and thread count; their p50 spread is reported.",
)
@click.option("--runs", type=click.IntRange(1), default=200, show_default=True, help="Timed runs per repeat.")
@click.option("--frame-runs", type=click.IntRange(1), help="Timed whole frames per repeat (default: --runs).")
@click.option(
    "--time-budget",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds per timed phase of one repeat (0: no limit); at least 10 runs are always timed.",
)
@click.option(
    "--max-warmup",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="Seconds of warm-up at most per process (until the latency settles).",
)
@click.option(
    "--frame", type=click.Path(), help="Image for the whole-frame timing (default: a synthetic 640x480 JPEG)."
)
@click.option("--data", type=click.Path(), help="Class-per-folder images: accuracy of each artifact.")
@click.option(
    "--engines",
    help="Opt-in engines to time beside each artifact's default, e.g. openvino (default: every installed one; "
    "'' for none). A row of one that fails is left out with a note.",
)
@click.option(
    "--rounds",
    type=click.IntRange(0),
    default=10,
    show_default=True,
    help="Rounds of the interleaved pass that gives the p50 (0: the fresh processes' p50, as before).",
)
@click.option(
    "--round-runs", type=click.IntRange(1), default=20, show_default=True, help="Timed invokes per row and round."
)
@click.option(
    "--keras",
    "keras_model",
    type=click.Path(),
    help="Source MODEL.keras for the Keras baseline (default: the bundle's source run, when TensorFlow is installed).",
)
@click.option("--no-keras", is_flag=True, help="Skip the Keras baseline.")
@click.option("--json", "json_path", type=click.Path(), help="Write one record per artifact and thread count.")
@click.option("--csv", "csv_path", type=click.Path(), help="Write the records as CSV.")
@click.option("--markdown", "markdown_path", type=click.Path(), help="Write a Markdown table with the machine.")
@click.option("--plot", "plot_path", type=click.Path(), help="Write a PNG: p50 bars, p90/p99 marks, accuracy beside.")
@click.option("--out", "out_dir", type=click.Path(), help="Folder for bench.json, .csv, .md and .png together.")
@click.option(
    "--from-json",
    "from_json",
    type=click.Path(),
    help="Report (and --compare) an earlier --json result instead of benchmarking, e.g. one from a device lab.",
)
@click.option(
    "--compare", "baseline", type=click.Path(), help="Baseline JSON from an earlier --json: print the change."
)
@click.option(
    "--max-regression", default="10%", show_default=True, help="With --compare: exit 1 if a p50 is slower by more."
)
@click.option("--device", help="Run on user@host[:port] over SSH with the device's installed runtime.")
@click.option("--ssh-config", type=click.Path(), help="ssh -F file for --device (host aliases, keys, ports).")
@click.option(
    "--remote-python",
    default="auto",
    show_default=True,
    help="The device's Python for --device; auto: /opt/edgecls/venv/bin/python (made by `flash --setup`) "
    "when it exists, else python3.",
)
@examples(
    "edgecls bench bundles/digits",
    "edgecls bench bundles/digits --threads 1,2 --out bench/",
    "edgecls bench bundles/digits --engines '' --rounds 20",
    "edgecls bench bundles/digits --device pi@kitchen.local --json pi.json",
    "edgecls bench bundles/digits --compare baseline.json --max-regression 10%",
)
def bench(
    bundle,
    artifacts,
    threads,
    repeats,
    runs,
    frame_runs,
    time_budget,
    max_warmup,
    frame,
    data,
    engines,
    rounds,
    round_runs,
    keras_model,
    no_keras,
    json_path,
    csv_path,
    markdown_path,
    plot_path,
    out_dir,
    from_json,
    baseline,
    max_regression,
    device,
    ssh_config,
    remote_python,
):
    """Benchmark every artifact of BUNDLE (and the source Keras model): invoke and whole-frame p50/p90/p99,
    load and first-inference time, peak RSS, GMAC/s, accuracy; compare with a baseline for CI."""
    from edgecls import bench_report as report
    from edgecls.runtime.bench.__main__ import parse_engines, parse_threads
    from edgecls.runtime.bench.runner import BenchOptions
    from edgecls.runtime.errors import EdgeclsError

    if bool(bundle) == bool(from_json):
        raise EdgeclsError(
            "give a BUNDLE to benchmark or --from-json RESULTS.json to report, not both"
            if bundle
            else "missing BUNDLE: give the bundle to benchmark (or --from-json RESULTS.json)"
        )
    # Everything that can be refused is refused before minutes of timing.
    limit = report.parse_percent(max_regression)
    base = report.load_results(baseline) if baseline else None
    report.check_outputs(json_path, csv_path, markdown_path, plot_path, out_dir)
    options = BenchOptions(
        artifacts=[a.strip() for a in artifacts.split(",") if a.strip()] if artifacts else None,
        threads=parse_threads(threads),
        repeats=repeats,
        runs=runs,
        frame_runs=frame_runs,
        budget_s=time_budget or None,
        max_warmup_s=max_warmup,
        frame=frame,
        data=data,
        engines=parse_engines(engines),
        rounds=rounds,
        round_runs=round_runs,
    )
    options.validate()
    say = lambda msg: click.echo(msg, err=True)  # noqa: E731
    if from_json:
        doc = report.load_results(from_json, "--from-json")
    else:
        doc = _measure(bundle, options, device, ssh_config, remote_python, keras_model, no_keras, say)
    click.echo(report.format_table(doc))
    for path in report.write_outputs(doc, json_path, csv_path, markdown_path, plot_path, out_dir):
        say(f"wrote {path}")
    if base is not None:
        lines, regressions = report.compare(doc, base, limit)
        for line in lines:
            click.echo(line)
        report.check_regressions(regressions, limit)


def _measure(bundle, options, device, ssh_config, remote_python, keras_model, no_keras, say) -> dict:
    """The bench document: on `device` over SSH (by its installed runtime), or here with the Keras baseline."""
    if device:
        from edgecls.bench_remote import run_remote

        if keras_model:
            say("note: --keras is ignored with --device (the device has no TensorFlow to run it)")
        return run_remote(device, bundle, options, ssh_config=ssh_config, python=remote_python, progress=say)
    from edgecls.runtime.bench.runner import run_bench

    keras = _keras_hook(bundle, keras_model, no_keras, say)
    return run_bench(bundle, options, progress=say, extra_jobs=keras, notify=say)


def _keras_hook(bundle, keras_model, no_keras, say):
    """The Keras baseline's hook for run_bench, or None (with a note saying why) when it cannot run."""
    from edgecls import bench_keras
    from edgecls.runtime.bundle import load_bundle

    if no_keras:
        return None
    if not bench_keras.tensorflow_installed():
        if keras_model:
            from edgecls.runtime.errors import MissingDependencyError

            raise MissingDependencyError("tensorflow", "train", "--keras times the Keras model")
        say("note: no Keras baseline (TensorFlow is not installed)")
        return None
    path, why = bench_keras.source_model(load_bundle(bundle), keras_model)
    if path is None:
        say(f"note: no Keras baseline: {why}")
        return None
    return bench_keras.keras_records(path)
