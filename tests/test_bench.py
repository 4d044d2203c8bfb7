"""`edgecls bench` and edgecls.runtime.bench: records, report files, --compare for CI, one-line errors on bad input.

One real bench of the tiny bundle (every artifact, the Keras baseline, accuracy on the shapes folder) is shared
by the module; timings are never asserted here (benchmarks/bench_reference.py checks their stability).
"""

import csv
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from edgecls.runtime.bench.runner import ROUNDS_P50
from tests.conftest import REPO, cli_error, make_home_like, run_cli

FAST = ("--repeats", "2", "--runs", "15", "--frame-runs", "8", "--time-budget", "2")
QUICK = ("--repeats", "1", "--runs", "10", "--frame-runs", "10", "--time-budget", "1", "--max-warmup", "1")


def _device_bench(bundle, *args, timeout=180):
    return subprocess.run(
        [sys.executable, "-m", "edgecls.runtime.bench", str(bundle), *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, tiny_bundle, shapes_folder):
    """One device-side bench of two artifacts with --data holding a misspelt class folder; (proc, doc, json path)."""
    tmp = tmp_path_factory.mktemp("device-bench")
    data = tmp / "data"
    shutil.copytree(shapes_folder / "circle", data / "circle")
    shutil.copytree(shapes_folder / "square", data / "sqaure")  # a typo: 24 images silently left out
    out = tmp / "bench.json"
    proc = _device_bench(tiny_bundle, "--artifacts", "tflite-int8,onnx-int8", *QUICK, "--data", data, "--json", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, json.loads(out.read_text()), out


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory, tiny_bundle, tiny_run_dir, shapes_folder):
    out = tmp_path_factory.mktemp("bench")
    paths = {k: out / f"bench.{k}" for k in ("json", "csv", "md", "png")}
    # --keras: a cached fixture bundle may name a source run of an earlier session (see test_keras_source_*)
    result = run_cli(
        "bench",
        tiny_bundle,
        *FAST,
        "--keras",
        tiny_run_dir / "model.keras",
        "--data",
        shapes_folder,
        "--json",
        paths["json"],
        "--csv",
        paths["csv"],
        "--markdown",
        paths["md"],
        "--plot",
        paths["png"],
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result, paths, json.loads(paths["json"].read_text())


def test_every_artifact_and_the_keras_baseline_get_a_record(bench_run, tiny_bundle):
    _, _, doc = bench_run
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    # each artifact in its default engine, then (ONNX) in OpenVINO where it is installed: one row each
    extra = ["openvino"] if importlib.util.find_spec("openvino") else []
    rows = [(a, e) for a in manifest["artifacts"] for e in [None] + (extra if a["format"] == "onnx" else [])]
    assert [r["artifact"] for r in doc["records"]] == [a["name"] + (f"@{e}" if e else "") for a, e in rows] + ["keras"]
    assert [r["engine"] for r in doc["records"][:-1]] == [e for _, e in rows]
    for r, (a, _) in zip(doc["records"], rows):
        assert (r["file"], r["format"], r["precision"], r["size_bytes"], r["macs"]) == (
            a["file"],
            a["format"],
            a["precision"],
            a["size_bytes"],
            a["macs"],
        )
    keras = doc["records"][-1]
    assert keras["format"] == "keras" and keras["file"] == "model.keras" and keras["backend"] == "keras"


def test_keras_source_is_the_bundles_run_while_it_is_unchanged(tiny_bundle, tiny_run_dir, tmp_path):
    import shutil

    from edgecls.bench_keras import source_model
    from edgecls.runtime.bundle import load_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    run = tmp_path / "run"
    shutil.copytree(tiny_run_dir, run)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["source"]["run"] = str(run)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    assert source_model(load_bundle(bundle)) == (run / "model.keras", "")
    (run / "model.keras").write_bytes((run / "model.keras").read_bytes() + b"\0")  # retrained since, say
    path, why = source_model(load_bundle(bundle))
    assert path is None and "changed since this bundle was converted" in why
    shutil.rmtree(run)
    path, why = source_model(load_bundle(bundle))
    assert path is None and "--keras MODEL.keras" in why


def test_records_hold_sane_statistics_from_fresh_processes(bench_run):
    _, _, doc = bench_run
    for r in doc["records"]:
        assert r["threads"] == 1 and r["repeats"] == 2 and r["p99_runs"] == r["runs"]
        if r["format"] == "keras":  # fresh processes only: 2 repeats of 10 to 15 runs
            assert 2 * 10 <= r["runs"] <= 2 * 15
        else:  # the interleaved pass: 10 rounds of 3 (the budget's share spent) to 20 runs
            assert 10 * 3 <= r["runs"] <= 10 * 20
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"], r
        assert r["std_ms"] >= 0 and r["min_ms"] <= r["mean_ms"] <= r["max_ms"]
        assert len(r["p50_repeats_ms"]) == 2 and r["p50_spread_pct"] >= 0
        assert r["load_ms"] > 0 and r["first_inference_ms"] > 0 and r["warmup_runs"] >= 10
        assert r["throughput_ips"] == pytest.approx(1000 / r["mean_ms"])
        assert r["gmacs_per_s"] == pytest.approx(r["macs"] / (r["p50_ms"] / 1000) / 1e9)
        # peak RSS of a process that loaded this artifact: more than the interpreter alone, far less than TF
        assert r["rss_before_load_mb"] < r["peak_rss_mb"] and (r["format"] == "keras" or r["peak_rss_mb"] < 500)
        frame = r["frame"]
        for stage in ("decode", "preprocess", "invoke", "postprocess", "frame", "total", "overhead"):
            assert 0 < frame[stage]["p50_ms"] <= frame[stage]["p90_ms"] <= frame[stage]["p99_ms"], (
                stage,
                r["artifact"],
            )
        # The whole frame is timed end to end, decode included: every frame is at least its decode + preprocess +
        # invoke, so the fastest frame is no faster than the fastest of each stage together.
        assert (r["frame_p50_ms"], r["frame_p90_ms"], r["frame_p99_ms"]) == (
            frame["frame"]["p50_ms"],
            frame["frame"]["p90_ms"],
            frame["frame"]["p99_ms"],
        )
        assert (
            frame["frame"]["min_ms"]
            >= frame["decode"]["min_ms"] + frame["preprocess"]["min_ms"] + frame["invoke"]["min_ms"]
        )
        assert frame["frame"]["min_ms"] > frame["total"]["min_ms"] >= frame["invoke"]["min_ms"]
        assert r["overhead_pct_of_invoke"] == pytest.approx(100 * frame["overhead"]["p50_ms"] / r["p50_ms"])
        assert r["machine"] == doc["machine"]
    records = {r["artifact"]: r for r in doc["records"]}
    assert records["onnx-fp32"]["provider"] == "CPUExecutionProvider" and records["tflite-int8"]["backend"] == "litert"
    # A fresh process per repeat and per artifact: every worker's pid differs.
    pids = [pid for r in doc["records"] for pid in r["pids"]]
    assert all(len(r["pids"]) == 2 for r in doc["records"]) and len(set(pids)) == len(pids), pids
    # ... and each loaded only its own engine, so its RSS and start-up are its own (sys.modules, read in the worker).
    for r in doc["records"]:
        expected = {"tflite": ["ai_edge_litert"], "onnx": [r["engine"] or "onnxruntime"]}.get(r["format"])
        assert r["engines_loaded"] == (expected or r["engines_loaded"]), (r["artifact"], r["engines_loaded"])
    assert {"tensorflow", "keras"} <= set(records["keras"]["engines_loaded"])  # the probe does see an engine


def test_accuracy_on_data_matches_the_bundle_and_pids_differ(bench_run, tiny_bundle, shapes_folder):
    _, _, doc = bench_run
    images = sum(1 for p in shapes_folder.rglob("*") if p.is_file())
    for r in doc["records"]:
        assert r["accuracy_images"] == images and 0.0 <= r["accuracy"] <= 1.0
    acc = {r["artifact"]: r["accuracy"] for r in doc["records"]}
    assert acc["tflite-fp32"] == pytest.approx(acc["keras"], abs=0.02)  # the same model, two engines
    assert acc["keras"] > 0.6  # the fixture model is well above chance (1/3) on its own classes


def test_bench_describes_the_machine(bench_run):
    _, _, doc = bench_run
    m = doc["machine"]
    assert m["hostname"] == socket.gethostname() and m["cores"] >= 1 and m["arch"]
    assert m["cpu"] and m["os"] and m["python"].split()[-1].count(".") == 2
    assert {"onnxruntime", "ai-edge-litert", "numpy"} <= set(m["versions"])


def test_table_csv_markdown_and_plot_are_written(bench_run):
    result, paths, doc = bench_run
    assert "tflite-int8" in result.stdout and "machine:" in result.stdout
    # Keras: 2 x <= 15 runs, so its p99 is about the slowest run, and the table marks it (and any other such row)
    from edgecls.runtime.bench.table import few_runs

    marked = sum(few_runs(r) for r in doc["records"])
    assert marked >= 1 and "* p99 from fewer than 100 runs" in result.stdout and result.stdout.count("*  ") >= marked
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["artifact"] for r in rows] == [r["artifact"] for r in doc["records"]]
    assert float(rows[0]["p50_ms"]) == pytest.approx(doc["records"][0]["p50_ms"], rel=1e-3) and rows[0]["cpu"]
    markdown = paths["md"].read_text()
    assert markdown.count("\n| ") == 1 + len(doc["records"]) and doc["machine"]["cpu"] in markdown

    import cv2

    png = cv2.imread(str(paths["png"]))
    assert png is not None and png.shape[0] > 200 and png.shape[1] > 600
    ink = (png < 200).any(axis=2)  # bars, marks and text on a white figure
    assert 0.02 < ink.mean() < 0.6
    assert ink[:, : png.shape[1] // 2].any() and ink[:, png.shape[1] // 2 :].any()  # latency and accuracy panels


def _edited(doc: dict, factor: float) -> dict:
    doc = json.loads(json.dumps(doc))
    for r in doc["records"]:
        for key in ("p50_ms", "p90_ms", "p99_ms"):
            r[key] *= factor
    return doc


def test_compare_exits_zero_against_itself_and_one_on_a_30pc_faster_baseline(bench_run, tmp_path):
    _, paths, doc = bench_run
    same = run_cli("bench", "--from-json", paths["json"], "--compare", paths["json"], "--max-regression", "10%")
    assert same.returncode == 0, same.stderr[-2000:]
    assert same.stdout.count("(+0.0%) ok") == len(doc["records"])
    faster = tmp_path / "faster.json"
    faster.write_text(json.dumps(_edited(doc, 0.7)))  # the baseline was 30 % faster: now 43 % slower
    result = run_cli("bench", "--from-json", paths["json"], "--compare", faster, "--max-regression", "10%")
    error = cli_error(result)
    assert "regressed beyond 10%" in error and "tflite-int8 threads=1 +42.9%" in error
    assert result.stdout.count("REGRESSION") == len(doc["records"])
    within = run_cli("bench", "--from-json", paths["json"], "--compare", faster, "--max-regression", "50%")
    assert within.returncode == 0, within.stderr[-2000:]


def test_a_fresh_bench_fails_against_a_much_faster_baseline(bench_run, tiny_bundle, tmp_path):
    _, _, doc = bench_run
    baseline = tmp_path / "base.json"
    baseline.write_text(json.dumps(_edited(doc, 0.2)))  # far beyond any noise of this machine
    result = run_cli(
        "bench",
        tiny_bundle,
        "--artifacts",
        "tflite-int8",
        "--repeats",
        "1",
        "--runs",
        "20",
        "--no-keras",
        "--compare",
        baseline,
        timeout=120,
    )
    assert "p50 regressed beyond 10%: tflite-int8 threads=1" in cli_error(result)
    # only the benchmarked artifact is compared; the others are listed as not asked for, not as regressions
    tail = result.stdout.split("machine:")[1]
    assert not [l for l in tail.splitlines() if l.startswith("onnx")], tail
    assert "onnx-fp32 threads=1 (not selected by --artifacts)" in tail and "missing" not in cli_error(result)


def _records(doc: dict, keep=None, threads=(1,), artifacts="same") -> dict:
    """A copy of a bench document with only the artifacts in `keep`, at each of `threads`, as a run of them."""
    doc = json.loads(json.dumps(doc))
    doc["records"] = [
        dict(r, threads=t) for t in threads for r in doc["records"] if keep is None or r["artifact"] in keep
    ]
    doc["settings"]["threads"] = list(threads)
    if artifacts != "same":
        doc["settings"]["artifacts"] = artifacts
    return doc


def test_compare_an_artifact_on_one_side_only(bench_run):
    """Missing from the baseline: listed. Missing from the run: a regression (a failed conversion must fail CI),
    unless the run did not ask for it (--artifacts, or no Keras baseline there)."""
    from edgecls.bench_report import compare

    _, _, doc = bench_run
    everything = [r["artifact"] for r in doc["records"]]
    lines, regressions = compare(doc, _records(doc, keep=everything[1:]), 10)
    assert f"{everything[0]} threads=1: not in the baseline" in lines and regressions == []
    lines, regressions = compare(_records(doc, keep=everything[1:]), doc, 10)
    assert regressions == [f"{everything[0]} threads=1 missing from this run"]
    assert f"{everything[0]} threads=1: in the baseline, missing from this run REGRESSION" in lines
    limited = _records(doc, keep=everything[1:], artifacts=everything[1:])
    lines, regressions = compare(limited, doc, 10)
    assert regressions == [] and f"{everything[0]} threads=1 (not selected by --artifacts)" in lines[-1]
    lines, regressions = compare(_records(doc, keep=everything[:-1]), doc, 10)  # the run had no Keras baseline
    assert regressions == [] and "keras threads=1 (no Keras baseline in this run)" in lines[-1]


def test_compare_with_different_thread_sets(bench_run):
    from edgecls.bench_report import compare

    _, _, doc = bench_run
    both = _records(doc, threads=(1, 2))
    lines, regressions = compare(doc, both, 10)  # the baseline also ran 2 threads; this run only 1
    assert regressions == [] and "tflite-int8 threads=2 (--threads 1 did not include 2)" in lines[-1]
    assert sum(l.endswith(" ok") for l in lines) == len(doc["records"])
    lines, regressions = compare(both, doc, 10)
    assert regressions == [] and "tflite-int8 threads=2: not in the baseline" in lines
    with pytest.raises(Exception, match="nothing to compare"):
        compare(_records(doc, threads=(2,)), doc, 10)


def test_a_run_missing_a_baseline_artifact_exits_one(bench_run, tmp_path):
    _, paths, doc = bench_run
    current = tmp_path / "current.json"
    current.write_text(
        json.dumps(_records(doc, keep=[r["artifact"] for r in doc["records"] if r["artifact"] != "onnx-int8"]))
    )
    error = cli_error(run_cli("bench", "--from-json", current, "--compare", paths["json"]))
    assert "onnx-int8 threads=1 missing from this run" in error


@pytest.mark.parametrize(
    "case", ["missing-bundle", "unknown-artifact", "foreign-out", "not-json", "not-bench-json", "no-p50", "out-is-dir"]
)
def test_bad_bench_input_gives_one_line_errors(case, tiny_bundle, tmp_path):
    base = tmp_path / "base.json"
    args = {
        "missing-bundle": [tmp_path / "nope"],
        "unknown-artifact": [tiny_bundle, "--artifacts", "tflite-int4"],
        "foreign-out": [tiny_bundle, "--out", make_home_like(tmp_path / "home")],
        "not-json": [tiny_bundle, "--compare", base],
        "not-bench-json": [tiny_bundle, "--compare", base],
        "no-p50": [tiny_bundle, "--compare", base],
        "out-is-dir": [tiny_bundle, "--json", tmp_path],
    }[case]
    base.write_text(
        {
            "not-json": "{not json",
            "not-bench-json": '{"records": []}',
            "no-p50": '{"format": "edgecls-bench/1", "records": [{"file": "m", "format": "tflite", '
            '"precision": "int8", "threads": 1, "p90_ms": 1, "p99_ms": 2}]}',
        }.get(case, "{}")
    )
    before = sorted(p.name for p in tmp_path.rglob("*"))
    error = cli_error(run_cli("bench", *args, "--runs", "5", "--repeats", "1", "--no-keras", timeout=120))
    expected = {
        "missing-bundle": "does not exist",
        "unknown-artifact": "has no artifact 'tflite-int4'",
        "foreign-out": "did not write",
        "not-json": "is not valid JSON",
        "not-bench-json": "is not an edgecls bench result",
        "no-p50": "lacks a usable p50_ms",
        "out-is-dir": "is a folder",
    }[case]
    assert expected in error, error
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # refused before anything was written


def test_runtime_bench_runs_without_the_cli(tiny_bundle, tmp_path):
    """The device-side entry point: `python3 -m edgecls.runtime.bench` writes the same document."""
    import subprocess
    import sys

    from tests.conftest import REPO

    out = tmp_path / "r.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecls.runtime.bench",
            str(tiny_bundle),
            "--artifacts",
            "onnx-int8",
            "--threads",
            "1,2",
            "--repeats",
            "1",
            "--runs",
            "10",
            "--engines",
            "",
            "--json",
            str(out),
            "--quiet",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [(r["artifact"], r["threads"]) for r in doc["records"]] == [("onnx-int8", 1), ("onnx-int8", 2)]
    assert doc["format"] == "edgecls-bench/1" and "onnx-int8" in proc.stdout


def test_out_dir_counts_a_killed_writes_temp_file_as_ours(tmp_path):
    """A kill -9 while bench writes bench.json leaves `.bench.json.XXXX.tmp` (write_bytes' temp file): ours, like
    edgecls.runtime.atomic.check_output has it, so the folder stays reusable; anyone else's file still refuses it."""
    from edgecls.bench_report import check_out_dir
    from edgecls.runtime.errors import EdgeclsError

    out = tmp_path / "bench"
    out.mkdir()
    (out / ".bench.json.k1lled_x.tmp").write_text("{")
    assert check_out_dir(out) == out  # only a temp file: nothing of value, as if empty
    (out / "bench.json").write_text(json.dumps({"format": "edgecls-bench/1", "records": []}))
    (out / ".bench.png.a1b2c3d4.tmp").write_bytes(b"\x89PNG")
    assert check_out_dir(out) == out
    for name in (".notes.txt.k1lled_x.tmp", "notes.txt"):  # a temp file of a name bench never writes is not ours
        (out / name).write_text("mine")
        with pytest.raises(EdgeclsError, match=name.replace(".", r"\.")):
            check_out_dir(out)
        (out / name).unlink()
    (out / "bench.json").unlink()
    (out / "bench.csv").write_text("artifact\n")  # a product file without our bench.json: not ours
    with pytest.raises(EdgeclsError, match="no bench.json of ours"):
        check_out_dir(out)


def test_whole_frame_percentiles_include_decode(quick_run):
    """Issue 8 p1: the whole frame is decode -> preprocess -> invoke -> top-k. `frame_p50_ms` (and p90/p99, the
    table's "frame p50") is measured from t1, after decode, so no whole-frame percentile exists anywhere, and it
    cannot be rebuilt from the stage percentiles (a p99 of a sum is not the sum of p99s)."""
    _, doc, _ = quick_run
    for r in doc["records"]:
        stages = r["frame"]
        assert r["frame_p50_ms"] >= stages["decode"]["p50_ms"] + stages["invoke"]["p50_ms"], (
            r["artifact"],
            r["frame_p50_ms"],
            stages["decode"]["p50_ms"],
        )


def test_data_folders_that_are_not_classes_are_reported(quick_run):
    """--data with a misspelt class folder: a third of the images are silently left out of the accuracy; the
    skipped folder is buried in the JSON (`skipped_folders`) and never said on the terminal."""
    proc, doc, _ = quick_run
    assert doc["records"][0]["skipped_folders"] == ["sqaure"]
    assert "sqaure" in proc.stderr + proc.stdout


def test_compare_names_baseline_artifacts_missing_from_the_run(quick_run, tmp_path):
    """--compare in CI: an artifact the baseline has but this run lacks (its conversion failed, a bundle lost it)
    passes silently with exit 0; not even a line names it."""
    _, doc, baseline = quick_run
    current = json.loads(json.dumps(doc))
    current["records"] = [r for r in current["records"] if r["artifact"] != "onnx-int8"]
    path = tmp_path / "current.json"
    path.write_text(json.dumps(current))
    result = run_cli("bench", "--from-json", path, "--compare", baseline, timeout=120)
    assert "onnx-int8" in result.stdout + result.stderr, result.stdout


def test_from_json_plots_a_precision_it_does_not_know_in_an_other_colour(quick_run, tmp_path):
    """A results file with a precision the chart has no colour for (a newer edgecls's, or edited by hand) still
    plots: its bar gets the fallback colour and the legend says 'other p50'."""
    from edgecls.bench_report import latency_figure

    _, doc, _ = quick_run
    odd = json.loads(json.dumps(doc))
    odd["records"][0]["precision"] = "uint8"
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(odd))
    result = run_cli("bench", "--from-json", path, "--plot", tmp_path / "odd.png", timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "odd.png").stat().st_size > 1000
    legend = [t.get_text() for t in latency_figure(odd).axes[0].get_legend().get_texts()]
    assert "other p50" in legend and "int8 p50" in legend, legend


def test_repeated_thread_counts_are_not_pooled_twice(tiny_bundle, tmp_path):
    """`--threads 1,1` benchmarks every artifact twice per repeat, pools both into one key and prints two identical
    records each claiming `repeats: 2` for `--repeats 1`."""
    out = tmp_path / "b.json"
    proc = _device_bench(
        tiny_bundle, "--artifacts", "tflite-int8", "--threads", "1,1", *QUICK, "--json", out, "--quiet"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads(out.read_text())["records"]
    assert [(r["threads"], r["repeats"]) for r in records] == [(1, 1)]


def test_warm_up_does_not_settle_on_a_ramp(monkeypatch):
    """A latency that falls 4 % per window (caches filling, a CPU governor ramping up) passes the "settled" test
    of two consecutive windows within 5 % at once: timing starts at twice the steady-state latency.

    The calls advance a clock of their own (not the machine's): on a busy shared CPU, preemption made the
    busy-waited ramp noisy enough to look settled early, so the test failed by chance, not by the code.
    """
    import types

    import edgecls.runtime.bench.stats as stats

    clock = [0.0]
    monkeypatch.setattr(stats, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = [0]

    def call():
        window = calls[0] // 10
        calls[0] += 1
        clock[0] += 0.004 * 0.96 ** min(window, 17)  # 4 ms falling to 2 ms, then flat

    result = stats.warm_up(call, max_seconds=5.0)
    assert result["settled"] and 170 <= result["warmup_runs"] <= 220, result  # off the ramp (window 17), soon after


def test_an_output_path_under_a_file_is_refused_before_timing(tiny_bundle, tmp_path):
    """`check_file_output` promises "its folder can be made" but checks nothing: `--json FILE/x.json` benchmarks
    every artifact first and only then fails, losing the results."""
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    result = run_cli(
        "bench",
        tiny_bundle,
        "--artifacts",
        "tflite-int8",
        "--no-keras",
        "--repeats",
        "1",
        "--runs",
        "5",
        "--time-budget",
        "1",
        "--json",
        blocker / "bench.json",
        timeout=120,
    )
    cli_error(result)
    assert "[1/1]" not in result.stderr, "benchmarked before refusing the output path"


def test_a_mismatched_keras_model_is_a_clear_error(tiny_bundle, tmp_path):
    """--keras with a model that does not fit the bundle (10 classes against 3 labels): the worker dies on an
    IndexError and the error reads "benchmarking None failed: IndexError: list index out of range" (the Keras job
    has no "artifact" key), after TensorFlow loaded, instead of naming the mismatch up front."""
    import keras

    labels = (tiny_bundle / "labels.txt").read_text().split()
    assert len(labels) == 3
    model = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")]
    )
    path = tmp_path / "other.keras"
    model.save(path)
    result = run_cli(
        "bench",
        tiny_bundle,
        "--artifacts",
        "tflite-int8",
        "--keras",
        path,
        "--repeats",
        "1",
        "--runs",
        "5",
        "--frame-runs",
        "5",
        "--time-budget",
        "1",
        timeout=300,
    )
    error = cli_error(result)
    assert "None" not in error and "IndexError" not in error, error
    assert "10" in error and "3" in error, error  # names the two class counts


PROBE = """import importlib.util, json
import edgecls
print(json.dumps({"edgecls": edgecls.__file__, "top_level": [n for n in ("runtime", "core", "converters", "devices")
      if importlib.util.find_spec(n) is not None]}))
"""


def test_a_bench_worker_of_an_installed_edgecls_sees_only_the_edgecls_package(tmp_path):
    """Installed as a wheel (site-packages/edgecls/runtime/..., no links), the worker's path gets the folder that
    holds edgecls, not edgecls/ itself (where runtime/ or core/ would import as top-level packages)."""
    site = tmp_path / "site-packages"
    shutil.copytree(
        REPO / "edgecls",
        site / "edgecls",
        symlinks=False,  # the links to ../runtime and the others become folders, as in the wheel
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (site / "probe_paths.py").write_text(PROBE)
    script = (
        "import json, sys\n"
        "from edgecls.runtime.bench.runner import run_worker\n"
        "print(json.dumps(run_worker({'artifact': 'probe'}, sys.executable, 60, module='probe_paths')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"edgecls": str(site / "edgecls" / "__init__.py"), "top_level": []}, seen


def test_interleaved_rounds_time_every_row_in_turn_a_b_c_a_b_c():
    """The interleaved pass's schedule, and the calls really made in that order: round r times A's runs, then B's,
    then C's, before round r+1 starts (a burst of load falls on one round of every row, not on one row)."""
    from edgecls.runtime.bench.rounds import interleave

    made = []
    calls = {name: (lambda name=name: made.append(name)) for name in ("A", "B", "C")}
    schedule, samples = interleave(calls, rounds=3, round_runs=4, budget_s=None)
    assert schedule == [[r, name] for r in range(3) for name in ("A", "B", "C")]
    assert made == [name for _ in range(3) for name in ("A", "B", "C") for _ in range(1 + 4)]  # 1: untimed
    assert {name: [len(s) for s in rounds] for name, rounds in samples.items()} == {n: [4, 4, 4] for n in "ABC"}


def test_the_round_statistic_is_the_median_of_round_medians_with_their_spread_and_iqr():
    from edgecls.runtime.bench.runner import interleaved_latency
    from edgecls.runtime.bench.stats import round_statistic

    stat = round_statistic([2.0, 10.0, 3.0, 4.0, 5.0])  # one round hit by a burst (10 ms)
    assert stat["p50_ms"] == 4.0 and stat["rounds"] == 5
    assert stat["round_spread_pct"] == pytest.approx(100 * (10 - 2) / 4) and stat["round_iqr_ms"] == 2.0
    # Per row: each round's median first, then the median of those; percentiles from every sample together.
    rounds = [[1.0, 2.0, 9.0], [3.0, 3.0, 3.0], [2.0, 2.5, 50.0]]
    latency = interleaved_latency(rounds)
    assert latency["round_p50s_ms"] == [2.0, 3.0, 2.5] and latency["p50_ms"] == 2.5
    assert latency["runs"] == 9 and latency["max_ms"] == 50.0
    assert latency["p50_method"] == ROUNDS_P50


def test_a_bench_reports_the_interleaved_p50_and_how_it_was_obtained(quick_run):
    proc, doc, _ = quick_run
    latency = doc["settings"]["latency"]
    assert latency["rounds"] == 10 and latency["runs_per_round"] == 20 and "A, B, C, A, B, C" in latency["p50"]
    labels = [r["artifact"] for r in doc["records"]]
    assert doc["schedules"]["1"] == [[r, label] for r in range(10) for label in labels]  # one process, in turn
    for r in doc["records"]:
        assert len(r["round_p50s_ms"]) == r["rounds"] == 10
        assert r["p50_ms"] == pytest.approx(float(np.median(r["round_p50s_ms"])))
        spread = 100 * (max(r["round_p50s_ms"]) - min(r["round_p50s_ms"])) / r["p50_ms"]
        assert r["round_spread_pct"] == pytest.approx(spread)
        assert r["p50_method"] == ROUNDS_P50 and r["fresh_p50_ms"] > 0
        assert r["load_ms"] > 0 and r["peak_rss_mb"] > 0  # still from the fresh process
    assert "median of 10 round medians of an interleaved pass" in proc.stdout


def test_without_rounds_the_p50_is_the_fresh_processes_as_before(tiny_bundle, tmp_path):
    out = tmp_path / "b.json"
    proc = _device_bench(tiny_bundle, "--artifacts", "tflite-int8", *QUICK, "--rounds", "0", "--json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    (record,) = doc["records"]
    assert record["p50_method"] == "median of fresh processes' samples" and "rounds" not in record
    assert record["p50_ms"] == record["fresh_p50_ms"] and doc["schedules"] == {}
    assert "pooled over 1 repeat(s)" in proc.stdout


def test_openvino_gets_its_own_row_beside_onnx_runtime_on_the_same_artifact(quick_run):
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'edgecls[openvino]'")
    _, doc, _ = quick_run
    rows = {r["artifact"]: r for r in doc["records"]}
    assert list(rows) == ["tflite-int8", "onnx-int8", "onnx-int8@openvino"]
    ov, ort = rows["onnx-int8@openvino"], rows["onnx-int8"]
    assert (ov["engine"], ov["backend"], ov["provider"], ov["file"]) == ("openvino", "openvino", "CPU", ort["file"])
    assert ov["engines_loaded"] == ["openvino"] and ort["engines_loaded"] == ["onnxruntime"] and ort["engine"] is None
    assert ov["accuracy"] == pytest.approx(ort["accuracy"], abs=0.05)


@pytest.mark.parametrize(
    "args, message",
    [
        (("--engines", "tensorrt"), "--engines tensorrt: the engines to add are openvino"),
        (("--rounds", "-1"), "--rounds must be at least 0"),
    ],
)
def test_bad_engine_or_rounds_are_one_line_errors(tiny_bundle, args, message):
    proc = _device_bench(tiny_bundle, "--artifacts", "onnx-int8", *QUICK, *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, proc.stderr[-2000:]


def _broken_openvino(folder) -> dict:
    """An environment whose `openvino` is installed but cannot be imported, as with a missing shared library."""
    package = folder / "broken" / "openvino"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('raise ImportError("libopenvino.so.2540: cannot open shared object file")\n')
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder / "broken"), os.environ.get("PYTHONPATH", "")])}


def test_a_failing_opt_in_engine_row_is_left_out_with_a_note_and_the_others_are_timed(tiny_bundle, tmp_path):
    out = tmp_path / "b.json"
    args = ("bench", tiny_bundle, "--artifacts", "onnx-int8", *QUICK, "--rounds", "2", "--round-runs", "3")
    done = run_cli(*args, "--no-keras", "--json", out, env=_broken_openvino(tmp_path), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    notes = [line for line in done.stderr.splitlines() if "onnx-int8@openvino left out" in line]
    assert len(notes) == 1 and "openvino is installed but cannot be imported (libopenvino.so.2540" in notes[0]
    doc = json.loads(out.read_text())
    assert [r["artifact"] for r in doc["records"]] == ["onnx-int8"] and doc["records"][0]["rounds"] == 2
    assert [g["row"] for g in doc["left_out"]] == ["onnx-int8@openvino"]
    assert doc["schedules"]["1"] == [[0, "onnx-int8"], [1, "onnx-int8"]]


def test_the_cli_passes_engines_and_rounds_here_and_to_a_device(tiny_bundle, tmp_path):
    from edgecls.bench_remote import runner_args
    from edgecls.runtime.bench.runner import BenchOptions

    out = tmp_path / "b.json"
    args = ("--artifacts", "onnx-int8", *QUICK, "--engines", "", "--rounds", "3", "--round-runs", "4")
    done = run_cli("bench", tiny_bundle, *args, "--no-keras", "--json", out, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert [r["artifact"] for r in doc["records"]] == ["onnx-int8"]  # '' adds no opt-in engine
    assert doc["settings"]["engines"] == [] and doc["settings"]["latency"]["rounds"] == 3
    assert [len(s) for s in [doc["records"][0]["round_p50s_ms"]]] == [3]
    remote = runner_args(BenchOptions(engines=["openvino"], rounds=0, round_runs=5))
    assert remote[remote.index("--engines") + 1] == "openvino" and remote[remote.index("--rounds") + 1] == "0"
    assert remote[remote.index("--round-runs") + 1] == "5"
    assert "--rounds" not in runner_args(BenchOptions()) and "--engines" not in runner_args(BenchOptions())


def test_a_baseline_row_of_an_opt_in_engine_absent_from_this_run_is_not_run_not_a_regression(quick_run):
    """A baseline made where OpenVINO was installed, a run where it is not (or not asked, or left out): its
    `artifact@openvino` rows are listed as not run, with why; a default engine's row missing still regresses."""
    from edgecls.bench_report import compare

    _, doc, _ = quick_run
    current = json.loads(json.dumps(doc))
    current["records"] = [r for r in current["records"] if not r.get("engine")]
    current["settings"].update(engines=None, artifacts=None)  # every artifact, every installed engine
    baseline = json.loads(json.dumps(current))
    ort = next(r for r in baseline["records"] if r["artifact"] == "onnx-int8")
    baseline["records"].append(dict(ort, artifact="onnx-int8@openvino", engine="openvino"))
    lines, regressions = compare(current, baseline, 10)
    assert regressions == [], lines
    assert "onnx-int8@openvino threads=1 (an opt-in engine's row: openvino is not installed" in lines[-1]
    current["settings"]["engines"] = []
    assert "onnx-int8@openvino threads=1 (--engines did not include openvino)" in compare(current, baseline, 10)[0][-1]
    current["left_out"] = [{"row": "onnx-int8@openvino", "threads": 1, "why": "benchmarking it failed: no NPU"}]
    assert "(left out of this run: benchmarking it failed: no NPU)" in compare(current, baseline, 10)[0][-1]
    current["records"] = [r for r in current["records"] if r["artifact"] != "onnx-int8"]
    assert compare(current, baseline, 10)[1] == ["onnx-int8 threads=1 missing from this run"]


def test_the_interleaved_p90_and_p99_never_fall_below_the_p50_when_rounds_hold_unequal_samples():
    """Slow rounds cut short by the time budget hold 3 samples, fast ones 20: pooled as they came, the fast rounds
    outnumbered the slow ones and p90 (1 ms) fell below the p50 of round medians (30 ms)."""
    from edgecls.runtime.bench.runner import interleaved_latency

    latency = interleaved_latency([[1.0, 30.0, 30.0]] * 7 + [[1.0] * 20] * 6)
    assert latency["p50_ms"] == 30.0 and latency["rounds"] == 13
    assert latency["p50_ms"] <= latency["p90_ms"] <= latency["p99_ms"], latency
    assert latency["runs"] == 13 * 3 and latency["p90_p99_method"].startswith("the first 3 samples of every round")


def test_an_interleaved_pass_killed_by_a_signal_says_so_and_keeps_the_fresh_results(tiny_bundle, tmp_path):
    """SIGKILL (the OOM killer) on the interleaved pass's process: the bench still writes every row from its fresh
    processes, notes `killed by signal 9` (not the engine's last log line), and says whose p50 that is."""
    import signal
    import time

    from tests.test_bench_remote import _descendants

    out = tmp_path / "b.json"
    args = ("--artifacts", "tflite-int8,onnx-int8", *QUICK, "--engines", "", "--time-budget", "0")
    bench = subprocess.Popen(
        [sys.executable, "-m", "edgecls.runtime.bench", str(tiny_bundle), *args, "--rounds", "500", "--json", str(out)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline, killed = time.monotonic() + 120, None
    while killed is None and time.monotonic() < deadline and bench.poll() is None:
        rounds = [pid for pid, cmd in _descendants(bench.pid) if "edgecls.runtime.bench.rounds" in cmd]
        if rounds:
            time.sleep(0.5)  # inside its rounds, engines loaded
            os.kill(rounds[0], signal.SIGKILL)
            killed = rounds[0]
        time.sleep(0.02)
    stdout, stderr = bench.communicate(timeout=120)
    assert killed and bench.returncode == 0, stderr[-3000:]
    notes = [line for line in stderr.splitlines() if "the interleaved pass failed" in line]
    assert len(notes) == 1 and "killed by signal 9" in notes[0] and "fresh processes'" in notes[0], stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [r["artifact"] for r in doc["records"]] == ["tflite-int8", "onnx-int8"] and doc["schedules"] == {}
    assert all(r["p50_method"] == "median of fresh processes' samples" and r["p50_ms"] > 0 for r in doc["records"])
    assert doc["settings"]["latency"]["interleaved_failed_threads"] == [1]
    assert "the pass failed at threads=1" in stdout


def test_markdown_and_csv_describe_the_interleaved_p50_and_the_json_holds_the_raw_rounds(quick_run):
    """bench.md said '1 repeat(s) ... p50 spread: per-repeat p50s' and showed '– %' beside a round spread; the CSV
    had no engine, round spread or p50 method; the JSON now holds each round's samples, to check the medians by."""
    from edgecls.bench_report import to_csv, to_markdown

    _, doc, _ = quick_run
    markdown = to_markdown(doc)
    assert "p50 = median of 10 round medians of an interleaved pass" in markdown
    for r in doc["records"]:
        assert f"| {r['round_spread_pct']:.1f} % |" in markdown
        assert [float(np.median(s)) for s in r["round_samples_ms"]] == pytest.approx(r["round_p50s_ms"])
    rows = list(csv.DictReader(io.StringIO(to_csv(doc))))
    assert [row["artifact"] for row in rows] == [r["artifact"] for r in doc["records"]]
    for row, r in zip(rows, doc["records"]):
        assert row["engine"] == (r["engine"] or "") and row["p50_method"] == ROUNDS_P50
        assert float(row["round_spread_pct"]) == pytest.approx(r["round_spread_pct"], abs=1e-4)
        assert row["rounds"] == "10" and float(row["fresh_p50_ms"]) == pytest.approx(r["fresh_p50_ms"], abs=1e-4)


def test_an_engine_named_twice_is_timed_once(tiny_bundle, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed: pip install 'edgecls[openvino]'")
    out = tmp_path / "b.json"
    args = ("--artifacts", "onnx-int8", *QUICK, "--engines", "openvino,openvino", "--rounds", "2", "--round-runs", "3")
    proc = _device_bench(tiny_bundle, *args, "--json", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert [(r["artifact"], r["repeats"]) for r in doc["records"]] == [("onnx-int8", 1), ("onnx-int8@openvino", 1)]
    assert doc["settings"]["engines"] == ["openvino"]


def test_each_round_of_a_row_starts_with_an_untimed_call_that_the_percentiles_never_see():
    """A row's first call after the other rows ran is slow (they took its caches): timed, it sat in every round
    and pulled the pooled p90/p99 up; it is each round's warm-up now."""
    import time as clock

    from edgecls.runtime.bench.rounds import interleave

    last = []

    def row(name):
        def call():
            if last and last[-1] != name:  # the first call after another row: 20 ms instead of ~0
                clock.sleep(0.02)
            last.append(name)

        return call

    _, samples = interleave({"A": row("A"), "B": row("B")}, rounds=4, round_runs=5, budget_s=None)
    for name, rounds in samples.items():
        assert [len(r) for r in rounds] == [5] * 4
        assert max(x for r in rounds for x in r) < 10, (name, rounds)
