"""The inference threads' CPU priority: a few nice levels above the daemon's other threads and other processes.

On a busy device the scheduler gives every runnable thread the same share of the cores: beside one CPU-bound
process on 2 cores, the thread running the model got about 80 % of a core and the daemon classified 0.77 of the
model's own rate (MobileNetV2-224 int8, median of 5 rounds, benchmarks/results/daemon_throughput_priority.txt).
Raising only that thread by 5 nice levels (3x the weight) took it to 0.85, ahead in every round; raising the
preparing threads too, or by 10 levels, added nothing measurable. Decoding, preparing and the HTTP server keep
the daemon's priority, so a model too slow for its camera still leaves the other cores to the rest of the device.
An engine's own worker threads (--threads 2 and more) are made when the model loads and keep the daemon's.

Raising a priority needs CAP_SYS_NICE or a nice limit that allows it: the systemd unit `edgecls service unit`
writes sets LimitNICE=-5. Without either the threads keep the daemon's priority, and the daemon says so once.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("edgecls.daemon")

RAISE = 5  # nice levels above the daemon's own
_said = threading.Lock()
_told = False


def raise_this_thread(by: int = RAISE) -> bool:
    """Give the calling thread `by` nice levels more than it has (Linux: nice is per thread); False, said once per
    process, when not permitted or not Linux."""
    global _told
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(-20, os.getpriority(os.PRIO_PROCESS, tid) - by))
        return True
    except (AttributeError, OSError) as exc:  # EPERM/EACCES without CAP_SYS_NICE or LimitNICE; no setpriority
        with _said:
            if not _told:
                _told = True
                log.info(
                    "the inference threads keep the daemon's CPU priority (%s): raising it by %d needs "
                    "CAP_SYS_NICE or LimitNICE=-%d, as the unit `edgecls service unit` writes; beside other busy "
                    "processes the daemon then keeps less of the model's rate",
                    getattr(exc, "strerror", None) or type(exc).__name__,
                    by,
                    by,
                )
        return False
