"""On a lent GPU machine: the real daemon (`edgecls run`, daemon mode) on a video, CUDA vs CPU profile.

Run there from the repository root with a bundle in benchmarks/gpu/bundle (MobileNetV2 224) and onnxruntime-gpu on
PYTHONPATH: python3 benchmarks/gpu/daemon_gpu.py; writes $OUT/daemon_gpu.json (see
benchmarks/results/gpu_daemon_h100.txt).
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

here = Path(__file__).parent
bundle = here / "bundle"
video = Path("/tmp/camera.avi")
frames = [cv2.resize(cv2.imread(str(p)), (640, 480)) for p in sorted(bundle.glob("check-*.jpg"))]
w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
for i in range(900):
    w.write(frames[(i // 30) % len(frames)])
w.release()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, r.read().decode()


def frames_total(port):
    _, body = get(f"http://127.0.0.1:{port}/metrics")
    return sum(float(l.split()[-1]) for l in body.splitlines() if l.startswith("edgecls_frames_processed_total"))


results = {}
for profile, artifact, port in (
    ("desktop-gpu", "onnx-fp32", 8091),
    ("desktop-cpu", "onnx-fp32", 8092),
    ("desktop-gpu", "onnx-int8", 8093),
):
    log = open(f"/tmp/daemon-{profile}-{artifact}.log", "w")
    cmd = [
        sys.executable,
        "-m",
        "edgecls.cli",
        "-v",
        "run",
        str(bundle),
        "--source",
        str(video),
        "--loop",
        "--every-frame",
        "--device",
        profile,
        "--artifact",
        artifact,
        "--port",
        str(port),
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    t0 = time.time()
    while time.time() - t0 < 60:
        try:
            if frames_total(port) > 20:
                break
        except Exception:
            time.sleep(0.3)
    time.sleep(2)
    a, ta = frames_total(port), time.time()
    time.sleep(10)
    b, tb = frames_total(port), time.time()
    status, health = get(f"http://127.0.0.1:{port}/healthz")
    _, latest = get(f"http://127.0.0.1:{port}/latest")
    t1 = time.time()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(30)
    stop = time.time() - t1
    log.close()
    text = Path(log.name).read_text()
    prov = [l for l in text.splitlines() if "running on" in l or "could not" in l.lower()]
    results[f"{profile}/{artifact}"] = {
        "fps": round((b - a) / (tb - ta), 1),
        "healthz": status,
        "health": json.loads(health).get("status"),
        "latest": json.loads(latest) if latest.strip().startswith(("{", "[")) else latest[:300],
        "exit": rc,
        "stop_s": round(stop, 2),
        "provider_log": prov[:4],
    }
    print(profile, artifact, json.dumps(results[f"{profile}/{artifact}"])[:1500], flush=True)
out = Path(os.environ.get("OUT", "/tmp")) / "daemon_gpu.json"
out.write_text(json.dumps(results, indent=1))

# ONNX int8 vs fp32 on this CPU (AVX-512 VNNI), one thread, interleaved rounds (issue 8's question)
import onnxruntime as ort  # noqa: E402 (onnxruntime-gpu from PYTHONPATH)

opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = {
    n: ort.InferenceSession(str(bundle / f"model_{n}.onnx"), opts, providers=["CPUExecutionProvider"])
    for n in ("fp32", "int8")
}
x = np.random.default_rng(0).uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
for s in sess.values():
    for _ in range(20):
        s.run(None, {s.get_inputs()[0].name: x})
rounds = []
for _r in range(5):
    t = {n: [] for n in sess}
    for _ in range(200):
        for n, s in sess.items():
            t0 = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            t[n].append((time.perf_counter() - t0) * 1e3)
    rounds.append({n: statistics.median(v) for n, v in t.items()})
ratios = [r["fp32"] / r["int8"] for r in rounds]
cpu = {"onnxruntime": ort.__version__, "rounds_ms": rounds, "fp32_over_int8": [round(v, 2) for v in ratios]}
print("cpu int8", json.dumps(cpu), flush=True)
results["onnx_int8_cpu_1thread"] = cpu
out.write_text(json.dumps(results, indent=1))
