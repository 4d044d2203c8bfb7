"""The daemon under connection attacks: threads and frames/s with slowloris and idle connections (issue 22).

    python3 benchmarks/daemon_attacks.py BUNDLE [--rounds 5] [--seconds 8] [--slow 50] [--idle 200] [--repo DIR]

A real daemon (`edgecls run BUNDLE --source clip --loop --every-frame --port P`, a subprocess) classifies a
looping 320x240 MJPG clip as fast as it can. In one run, rounds alternate (order flipped each round) between
no HTTP client at all and an attack: `--slow` connections sending one header byte a second (reconnecting when
dropped) plus `--idle` connections that never send (reconnecting when dropped). Each window measures frames/s
from /metrics (edgecls_frames_processed_total over `--seconds`, after 2 s to settle), the daemon's threads
(/proc/PID/status, every 0.2 s: the maximum), and how long a /healthz request takes meanwhile.
Medians over rounds. `--repo` runs another checkout's daemon (e.g. the code before the fix).
Writes benchmarks/results/daemon_attacks.txt (or --out).
"""

from __future__ import annotations

import argparse
import errno
import os
import platform
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_clip(path: Path, frames: int = 60) -> Path:
    import cv2
    import numpy as np

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    y, x = np.mgrid[0:240, 0:320]
    for i in range(frames):
        image = np.stack([(x + i) % 256, y % 256, ((x + y) // 3) % 256], axis=-1).astype(np.uint8)
        cv2.circle(image, (60 + 3 * i, 120), 40, (40, 200, 255), -1)
        writer.write(image)
    writer.release()
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise RuntimeError("no Threads line")


def frames_total(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        body = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("edgecls_frames_processed_total{")
    )


def healthz_s(url: str) -> float:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=30) as response:
            response.read()
    except OSError:
        return float("inf")
    return time.perf_counter() - started


class Attack:
    """`slow` slowloris and `idle` silent connections, kept up (reconnected when dropped) by one thread."""

    def __init__(self, port: int, slow: int, idle: int):
        self.port, self.slow, self.idle = port, slow, idle
        self.reconnects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Attack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _connect(self, slow: bool):
        sock = socket.socket()
        sock.setblocking(False)
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return None
        return [sock, slow, False]  # socket, slowloris?, request line sent?

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        conns = [c for c in (self._connect(i < self.slow) for i in range(self.slow + self.idle)) if c]
        for conn in conns:
            selector.register(conn[0], selectors.EVENT_READ, conn)
        next_byte = time.monotonic()
        while not self._stop.is_set():
            for key, _ in selector.select(0.1):  # readable: the server answered or closed: reconnect
                conn = key.data
                try:
                    data = conn[0].recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    continue
                selector.unregister(conn[0])
                conn[0].close()
                fresh = self._connect(conn[1])
                self.reconnects += 1
                if fresh:
                    conn[:] = fresh
                    selector.register(conn[0], selectors.EVENT_READ, conn)
            if time.monotonic() >= next_byte:  # each slowloris sends one more byte of its headers
                next_byte += 1.0
                for conn in [c for c in conns if c[1]]:
                    try:
                        conn[0].send(b"X-a: b\r\n" if conn[2] else b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                        conn[2] = True
                    except OSError:
                        pass
        for conn in conns:
            conn[0].close()
        selector.close()


def window(url: str, pid: int, seconds: float, attack: Attack | None) -> dict:
    if attack:
        attack.start()
    time.sleep(2.0)
    threads = [threads_of(pid)]
    start_frames, started = frames_total(url), time.monotonic()
    health = healthz_s(url)
    while time.monotonic() - started < seconds:
        time.sleep(0.2)
        threads.append(threads_of(pid))
    end_frames, ended = frames_total(url), time.monotonic()
    if attack:
        attack.stop()
        time.sleep(1.0)
    return {"fps": (end_frames - start_frames) / (ended - started), "threads": max(threads), "healthz_s": health}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--slow", type=int, default=50)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose daemon runs (default: this one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "daemon_attacks.txt")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="edgecls-attacks-"))
    clip = write_clip(tmp / "clip.avi")
    port = free_port()
    command = [sys.executable, "-m", "edgecls.cli", "run", str(Path(args.bundle).resolve()), "--source", str(clip)]
    command += ["--loop", "--every-frame", "--port", str(port)]
    daemon = subprocess.Popen(command, cwd=args.repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    lines = []
    try:
        deadline = time.monotonic() + 120
        while healthz_s(url) == float("inf"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the daemon did not start: {daemon.stderr.read()[-2000:]}")
            time.sleep(0.5)
        time.sleep(3.0)  # warm-up
        calm_threads = threads_of(daemon.pid)
        rows = {"idle": [], "attack": []}
        for r in range(args.rounds):
            order = ("idle", "attack") if r % 2 == 0 else ("attack", "idle")
            for mode in order:
                attack = Attack(port, args.slow, args.idle) if mode == "attack" else None
                row = window(url, daemon.pid, args.seconds, attack)
                row["reconnects"] = attack.reconnects if attack else 0
                rows[mode].append(row)
            i, a = rows["idle"][-1], rows["attack"][-1]
            lines.append(
                f"round {r + 1}: no clients {i['fps']:.1f} frames/s ({i['threads']} threads); attack {a['fps']:.1f}"
                f" frames/s, max {a['threads']} threads, /healthz in {a['healthz_s'] * 1000:.0f} ms,"
                f" {a['reconnects']} attack reconnects; ratio {a['fps'] / i['fps']:.3f}"
            )
            print(lines[-1], flush=True)
    finally:
        daemon.terminate()
        daemon.wait(20)

    def med(mode, key):
        return statistics.median(row[key] for row in rows[mode])

    ratio = med("attack", "fps") / med("idle", "fps")
    most = max(r["threads"] for r in rows["attack"])
    lines.append(
        f"median: no clients {med('idle', 'fps'):.1f} frames/s, attack {med('attack', 'fps'):.1f} frames/s,"
        f" ratio {ratio:.3f} (target >= 0.90); threads: {calm_threads} calm, max {most}"
        f" under attack (target <= 40); /healthz under attack {med('attack', 'healthz_s') * 1000:.0f} ms (median)"
    )
    print(lines[-1])
    cpu = f"{platform.machine()}, {os.cpu_count()} cores, {cpu_name()}"
    head = [
        f"# daemon under {args.slow} slowloris + {args.idle} idle connections: {Path(args.bundle).name},"
        f" looping 320x240 MJPG clip, every frame; daemon from {args.repo}",
        f"# {cpu} (shared, noisy: other work ran on the same 2 cores); Python {platform.python_version()},"
        f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {args.rounds} rounds x {args.seconds:.0f} s"
        " per window, interleaved",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(head + lines) + "\n")


def cpu_name() -> str:
    sys.path.insert(0, str(REPO))
    from edgecls.runtime.bench.machine import cpu_model

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return (cpu_model() or platform.processor() or "unknown CPU") + (
        " with AVX-512 VNNI" if "avx512_vnni" in flags else ""
    )


if __name__ == "__main__":
    main()
