"""How many threads one inference gets in LiteRT and ONNX Runtime when neither the caller nor the device profile
says: every usable core but one.

A camera device is never idle: the daemon decodes and prepares the next frames beside the model, and other
services run too. Measured on a 2-core Zen 4 (benchmarks/results/threads.txt, MobileNetV2-224 int8): at rest 2
threads ran LiteRT 1.76x faster than 1, but beside one CPU-bound process 1 thread was as fast or faster in both
engines, and ONNX Runtime's default (a spinning thread per core) took 6.2 ms a frame against 3.7 ms at 1 thread
(11.9 ms at 4). OpenVINO keeps its own default: its scheduler held up under the same load (4.0 ms at 2 threads
against 4.3 ms at 1).
"""

from __future__ import annotations

import os


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or `taskset`'s limit), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """Every usable core but one, at least 1."""
    return max(1, usable_cpus() - 1)
