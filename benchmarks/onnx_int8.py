"""ONNX Runtime int8 vs fp32 on MobileNetV2 (alpha 1.0, 224x224, random weights), one thread (issue 8 point 6).

    python benchmarks/onnx_int8.py [--runs 200] [--rounds 5] [--accuracy-run RUN_DIR] [--out FILE] [--append]

The fp32 model and the shipped int8 variants come from the project's converter (`edgecls.converters.onnx`);
the few rows the converter has no option for (QOperator, U8U8, dedicated Q/DQ pairs, no pre-processing)
call onnxruntime.quantization on the same pre-processed graph. All sessions live in one process and are
timed interleaved, one run each in turn, so a noisy neighbour slows them alike; each round gives a
median per variant and the fp32/variant ratio of that round. Per variant it also counts the op types
of the graph ONNX Runtime's CPU provider really runs (float Conv/Add left behind is what made int8 slow).
`--accuracy-run` adds the accuracy of each quantization choice on a trained run's test split.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _raw_quantize(prepped: Path, out: Path, calibration: np.ndarray, **kwargs) -> None:
    """quantize_static on the converter's pre-processed graph, for choices OnnxQuantOptions does not offer."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_static

    from edgecls.converters.onnx import _ArrayReader

    name = onnx.load(str(prepped)).graph.input[0].name
    options = {"weight_type": QuantType.QInt8, "per_channel": True, **kwargs}
    quantize_static(str(prepped), str(out), _ArrayReader(name, calibration), **options)


def build_variants(folder: Path, calibration: np.ndarray) -> tuple[Path, dict]:
    """fp32 path and {label: (int8 path, graph optimisation level)}."""
    import keras
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType

    from edgecls.converters import onnx as co
    from edgecls.converters.quiet import quiet

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, weights=None, classes=10)
    fp32, prepped = folder / "fp32.onnx", folder / "prep.onnx"
    all_, extended = ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    O = co.OnnxQuantOptions
    shipped = {
        "S8S8, 8-bit weights (old default)": O(activation_type="int8", reduce_range=False),
        "U8S8, 8-bit weights": O(reduce_range=False),
        "U8S8, 7-bit weights (new default)": O(),
        "U8S8, 7-bit, per-tensor weights": O(per_channel=False),
        "U8S8, 7-bit, first+last in float": O(keep_ends_in_float=True),
    }
    U8, S8 = QuantType.QUInt8, QuantType.QInt8
    raw = {
        "S8S8, dedicated Q/DQ per consumer": dict(activation_type=S8, extra_options={"DedicatedQDQPair": True}),
        "U8U8 (uint8 weights)": dict(activation_type=U8, weight_type=U8),
        "QOperator U8S8": dict(activation_type=U8, quant_format=QuantFormat.QOperator),
        "QOperator S8S8": dict(activation_type=S8, quant_format=QuantFormat.QOperator),
    }
    with quiet():
        co.export_onnx(model, fp32, calibration)
        co._pre_process(fp32, prepped)
        variants = {}
        for i, (label, options) in enumerate(shipped.items()):
            variants[label] = (folder / f"s{i}.onnx", all_)
            co.quantize_int8(fp32, variants[label][0], calibration, options)
        for i, (label, kwargs) in enumerate(raw.items()):
            variants[label] = (folder / f"r{i}.onnx", all_)
            _raw_quantize(prepped, variants[label][0], calibration, **{"quant_format": QuantFormat.QDQ, **kwargs})
        variants["U8S8 7-bit, no quant_pre_process"] = (folder / "noprep.onnx", all_)
        _raw_quantize(fp32, folder / "noprep.onnx", calibration, activation_type=U8, reduce_range=True)
    new = variants["U8S8, 7-bit weights (new default)"][0]
    variants["new default, ORT_ENABLE_EXTENDED (no NHWC)"] = (new, extended)
    variants["fp32, ORT_ENABLE_EXTENDED (no NCHWc)"] = (fp32, extended)
    return fp32, variants


def runner(path: Path, level=None):
    """run(batch): the project's backend (what `edgecls run`/`bench` load), or a raw session for the level rows."""
    from edgecls.runtime.backends.onnxrt import OnnxRuntimeBackend

    if level is None:
        return OnnxRuntimeBackend(path, threads=1).run
    s = session(path, level)
    name = s.get_inputs()[0].name
    return lambda batch: s.run(None, {name: batch})[0]


def session(path: Path, level, optimized: Path | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    options.graph_optimization_level = level
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runtime_ops(path: Path, level, folder: Path) -> Counter:
    import onnx

    optimized = folder / f"opt-{abs(hash((str(path), str(level))))}.onnx"
    session(path, level, optimized)
    return Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)


def load_ms(path: Path, level=None, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        runner(path, level)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def interleaved(runners: dict, x: np.ndarray, runs: int, rounds: int) -> dict:
    """{label: [median ms per round]}: every model runs once in turn, `runs` times per round."""
    for run in runners.values():
        for _ in range(20):
            run(x)
    medians = {k: [] for k in runners}
    for _ in range(rounds):
        times = {k: [] for k in runners}
        for _ in range(runs):
            for k, run in runners.items():
                t = time.perf_counter()
                run(x)
                times[k].append((time.perf_counter() - t) * 1000)
        for k in runners:
            medians[k].append(statistics.median(times[k]))
        print("  round:", "  ".join(f"{v[-1]:.2f}" for v in medians.values()), flush=True)
    return medians


def profile(path: Path, x: np.ndarray, folder: Path, runs: int = 50) -> dict:
    """ms per run by op type, from ONNX Runtime's own profiler (adds overhead: compare shares, not totals)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    options.enable_profiling, options.profile_file_prefix = True, str(folder / "profile")
    s = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    for _ in range(runs):
        s.run(None, feed)
    by_op = Counter()
    for event in json.loads(Path(s.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1000 / runs
    return dict(by_op.most_common())


def accuracy_table(run_dir: str) -> list[str]:
    """Test-split accuracy of the main quantization choices on a trained run, in the runtime that ships."""
    from edgecls.converters import calibration as calib
    from edgecls.converters import onnx as co
    from edgecls.converters.quiet import quiet
    from edgecls.core.metrics import probabilities
    from edgecls.core.rundata import load_run_splits
    from edgecls.core.rundir import open_run
    from edgecls.runtime.session import ModelSession

    run = open_run(run_dir)
    model = run.load_model()
    splits = load_run_splits(run, ("train", "test"), 2)
    test = splits["test"]
    ref = probabilities(model.predict(test.x, batch_size=64, verbose=0))
    calibration = calib.representative_set(splits["train"].x, 200, 0)
    lines = [
        f"accuracy on {run_dir} ({len(test.y)} test images, 200 calibration images): "
        f"Keras {np.mean(ref.argmax(1) == test.y):.4f}",
        f"{'variant':<36} {'accuracy':>8} {'agree':>7} {'max|dp|':>8}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        with quiet():
            co.export_onnx(model, fp32, test.x)
        for label, options in [
            ("S8S8, 8-bit weights (old default)", co.OnnxQuantOptions(activation_type="int8", reduce_range=False)),
            ("U8S8, 8-bit weights", co.OnnxQuantOptions(reduce_range=False)),
            ("U8S8, 7-bit weights (new default)", co.OnnxQuantOptions()),
            ("U8S8, 7-bit, per-tensor weights", co.OnnxQuantOptions(per_channel=False)),
        ]:
            with quiet():
                co.quantize_int8(fp32, int8, calibration, options)
            p = ModelSession(int8, "onnx", head=run.metadata.get("head", "softmax")).predict(test.x)
            lines.append(
                f"{label:<36} {np.mean(p.argmax(1) == test.y):>8.4f} {np.mean(p.argmax(1) == ref.argmax(1)):>7.4f} "
                f"{np.abs(p - ref).max():>8.4f}"
            )
    return lines


def main() -> None:
    import onnxruntime as ort

    from edgecls.runtime.atomic import write_text

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accuracy-run", help="a trained run directory (e.g. the digits run) for the accuracy table")
    parser.add_argument("--out", default="benchmarks/results/onnx_int8.txt")
    parser.add_argument("--append", action="store_true", help="add this run below the ones already in --out (repeats)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (32, 224, 224, 3)).astype(np.float32)
    x = calibration[:1]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("building MobileNetV2-224 fp32 and int8 variants with edgecls.converters.onnx ...", flush=True)
        fp32, variants = build_variants(folder, calibration)
        rows = {"fp32 (shipped)": (fp32, None)} | {
            k: (p, None if lvl == ort.GraphOptimizationLevel.ORT_ENABLE_ALL else lvl)
            for k, (p, lvl) in variants.items()
        }
        new = variants["U8S8, 7-bit weights (new default)"][0]
        offline = folder / "new-offline.onnx"
        session(new, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, offline)
        rows["new default, optimized offline, loaded as is"] = (offline, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
        ops = {
            k: runtime_ops(p, lvl or ort.GraphOptimizationLevel.ORT_ENABLE_ALL, folder) for k, (p, lvl) in rows.items()
        }
        loads = {k: load_ms(p, lvl) for k, (p, lvl) in rows.items()}
        sizes = {k: p.stat().st_size for k, (p, _) in rows.items()}
        print(
            f"timing {len(rows)} sessions interleaved, one thread, {args.rounds} rounds x {args.runs} runs ...",
            flush=True,
        )
        load_before = os.getloadavg()[0]
        medians = interleaved({k: runner(p, lvl) for k, (p, lvl) in rows.items()}, x, args.runs, args.rounds)
        profiles = {
            k: profile(rows[k][0], x, folder)
            for k in ("fp32 (shipped)", "S8S8, 8-bit weights (old default)", "U8S8, 7-bit weights (new default)")
        }

    base = medians["fp32 (shipped)"]
    lines = [
        "# ONNX Runtime int8 vs fp32, MobileNetV2 alpha 1.0 224x224 (random weights), one thread (issue 8 point 6)",
        f"# produced by: python benchmarks/onnx_int8.py --runs {args.runs} --rounds {args.rounds}"
        + (f" --accuracy-run {args.accuracy_run}" if args.accuracy_run else "")
        + f"  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)",
        f"# machine: {platform.machine()}, {cpu_name()}, {os.cpu_count()} cores, flags: {_simd_flags()}; "
        f"onnxruntime {ort.__version__}, Python {platform.python_version()}",
        "# interleaved in one process: per round the median of the runs; ms = median of round medians;",
        "# ratio = fp32 ms / variant ms within each round (median, and min..max over rounds).",
        "# ops = op types in the graph ONNX Runtime's CPU provider runs after its optimisations.",
        "",
        f"{'variant':<46} {'ms':>6} {'ratio':>6} {'min..max':>11} {'load ms':>8} {'MB':>5}  "
        "float Conv/Add/Mul, QLinearConv/Add, Transpose, Q, DQ",
    ]
    for k in rows:
        ratios = [b / m for b, m in zip(base, medians[k])]
        o = ops[k]
        lines.append(
            f"{k:<46} {statistics.median(medians[k]):>6.2f} {statistics.median(ratios):>5.2f}x "
            f"{min(ratios):>5.2f}..{max(ratios):<5.2f} {loads[k]:>8.0f} {sizes[k] / 1e6:>5.1f}  "
            f"{o['Conv'] + o['FusedConv']}/{o['Add']}/{o['Mul']}, "
            f"{o['QLinearConv']}/{o['QLinearAdd']}, {o['Transpose']}, "
            f"{o['QuantizeLinear']}, {o['DequantizeLinear']}"
        )
    lines += [
        "",
        "per-round medians (ms): "
        + "; ".join(
            f"{k}: {' '.join(f'{v:.2f}' for v in medians[k])}"
            for k in ("fp32 (shipped)", "S8S8, 8-bit weights (old default)", "U8S8, 7-bit weights (new default)")
        ),
        "",
        "ONNX Runtime profiler, ms per run by op type (profiling overhead included; compare shares):",
    ]
    for k, by_op in profiles.items():
        lines.append(f"  {k}: " + ", ".join(f"{op} {ms:.2f}" for op, ms in by_op.items() if ms >= 0.01))
    if args.accuracy_run:
        lines += [""] + accuracy_table(args.accuracy_run)
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():
        text = out.read_text() + "\n" + text
    write_text(out, text)
    print(f"wrote {out}")


def _simd_flags() -> str:
    try:
        flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return " ".join(f for f in wanted if f in flags) + (" (no VNNI)" if not flags & {"avx512_vnni", "avx_vnni"} else "")


def cpu_name() -> str:
    from edgecls.runtime.bench.machine import cpu_model

    return cpu_model() or platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
