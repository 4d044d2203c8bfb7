"""The on-device half of `edgecls bench`: time every artifact of a bundle, honestly, and write JSON.

    python3 -m edgecls.runtime.bench BUNDLE [--threads 1,2] [--repeats 3] [--runs 200] [--rounds 10]
        [--engines openvino] [--data FOLDER] [--json PATH|-]

For each artifact and thread count, in a fresh process per repeat: load time, first inference, warm-up
until the latency settles, then timed runs of the engine alone (invoke) and of the whole frame (decode ->
preprocess + quantize -> invoke -> top-k, through the public runtime API), peak RSS, accuracy on a
folder. Then one interleaved pass per thread count (every artifact loaded in one process, timed in rounds
A, B, C, A, B, C...): its median of round medians is the records' p50, which holds up when other processes
load the machine. Each artifact runs in its default engine and, as `artifact@engine` rows, in every
installed opt-in engine (OpenVINO for ONNX). TensorFlow-free: this is what a device runs; `edgecls bench`
drives it locally or over SSH.
"""

from edgecls.runtime.bench.runner import FORMAT, BenchOptions, run_bench

__all__ = ["FORMAT", "BenchOptions", "run_bench"]
