"""MobileNetV2 (alpha 1.0, 224x224, random weights): int8 vs fp32 TFLite latency with one thread.

Uses the project's own converter (`edgecls.converters.tflite.to_tflite`) and runtime backend (LiteRT).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    import keras

    from benchmarks.latency import time_session
    from edgecls.converters.quiet import quiet
    from edgecls.converters.tflite import to_tflite
    from edgecls.runtime.session import ModelSession

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, weights=None, classes=10)
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (32, 224, 224, 3)).astype(np.float32)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            path = Path(tmp) / f"mnv2_{precision}.tflite"
            with quiet():
                path.write_bytes(to_tflite(model, precision, calibration if precision == "int8" else None))
            session = ModelSession(path, "tflite", threads=1)
            results[precision] = {"size_bytes": path.stat().st_size, **time_session(session, calibration[:1], runs=200)}
            print(
                f"{precision}: {results[precision]['size_bytes']:,} bytes, "
                f"median {results[precision]['median_ms']:.2f} ms "
                f"(p90 {results[precision]['p90_ms']:.2f} ms), backend {session.backend.name}"
            )
    speedup = results["fp32"]["median_ms"] / results["int8"]["median_ms"]
    print(f"int8 speed-up with one thread: {speedup:.2f}x")
    out = Path("benchmarks/results/mobilenetv2_int8.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": platform.machine(), "threads": 1, "speedup": speedup, **results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
