"""Label a capture folder the way a person would on `edgecls label`'s page, for tests with no person.

    python tests/label_captures.py CAPTURES RESULTS.jsonl

Serves CAPTURES with the real `edgecls label` command (its own token file, a free port, --exit-when-done) and
answers every frame through the page's HTTP API (GET /api/state, POST /api/decide: the calls its keys make),
with the truth known from the frame's source file: the sidecar's frame number -> the daemon's result line for
it (`edgecls run --results`) -> the image's class folder (`photos/<class>/x.png`) or a `c<class>-` file name.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

TOKEN = "label-captures-token"


def truth_by_frame(results: Path) -> dict:
    """(source, frame number) -> class, from the result lines of image sources (they name their file)."""
    truth = {}
    for line in Path(results).read_text().splitlines():
        record = json.loads(line)
        if "name" not in record:
            continue
        name = Path(record["name"])
        prefix = re.match(r"c(\w+)-", name.name)
        truth[(record["source"], record["frame"])] = prefix.group(1) if prefix else name.parent.name
    return truth


def _url(server: subprocess.Popen) -> str:
    while True:
        line = server.stdout.readline()
        if not line:
            raise SystemExit(f"edgecls label ended before serving: {server.stderr.read()[-2000:]}")
        found = re.search(r"(http://[^\s/]+)", line)
        if found:
            return found.group(1)


def label(captures: Path, results: Path) -> int:
    """Label every frame waiting in CAPTURES/.unlabelled through the page's server; returns how many."""
    truth = truth_by_frame(results)
    with tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text(TOKEN + "\n")
        command = [sys.executable, "-m", "edgecls.cli", "label", str(captures), "--port", "0"]
        server = subprocess.Popen(
            [*command, "--token-file", str(token), "--exit-when-done"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            url = _url(server)
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}

            def call(path, body=None):
                data = None if body is None else json.dumps(body).encode()
                with urllib.request.urlopen(urllib.request.Request(url + path, data, headers), timeout=30) as reply:
                    return json.loads(reply.read())

            done = 0
            while (state := call("/api/state"))["frame"] is not None:
                frame = state["frame"]["id"]
                sidecar = json.loads((Path(captures) / ".unlabelled" / frame).with_suffix(".json").read_text())
                call("/api/decide", {"frame": frame, "label": truth[(sidecar["source"], sidecar["frame"])]})
                done += 1
            server.wait(timeout=60)
            return done
        finally:
            if server.poll() is None:
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    captures_dir, results_file = map(Path, sys.argv[1:3])
    print(f"labelled {label(captures_dir, results_file)} frames on the page's server")
