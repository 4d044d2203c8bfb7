"""How many threads one inference gets in LiteRT and ONNX Runtime when neither the caller nor the device profile
says: every usable core but one, leaving a core to the daemon's own decoding and preparing (a camera device is
never idle).

The engines' own defaults were a poor fit both ways: LiteRT's is 1 thread whatever the machine; ONNX Runtime's is a
spinning thread per core, which beside one CPU-bound process took 6.2 ms a frame against 3.7 ms at 1 thread (11.9
ms at 4; MobileNetV2-224 int8 on a 2-core Zen 4, benchmarks/results/threads.txt). On those 2 cores this gives 1
thread: beside two busy processes 1 thread was the fastest in every engine, beside one LiteRT's 2 threads were
faster in 2 rounds of 3 (2.70 against 3.28 ms, spread 65 %). Above 2 cores the choice is not measured. OpenVINO
keeps its own default: its scheduler held up under the same load (4.0 ms at 2 threads against 4.3 at 1).
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
