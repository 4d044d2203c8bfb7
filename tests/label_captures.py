"""Label a capture folder the way a person would on `edgecls label`'s page, for tests with no person.

    python tests/label_captures.py CAPTURES RESULTS.jsonl [--browser]

Serves CAPTURES with the real `edgecls label` command (its own token file, a free port, --exit-when-done) and
answers every frame through the page's HTTP API (GET /api/state, POST /api/decide: the calls its keys make) or,
with --browser, on the page itself in headless Chromium (tests/browser.py): the key of the true class among the
frame's keys 1-9, else `n` and the class name typed in. The truth comes from the frame's source file: the
sidecar's frame number -> the daemon's result line for it (`edgecls run --results`) -> the image's class folder
(`photos/<class>/x.png`) or a `c<class>-` file name.
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


def _by_keyboard(url: str, captures: Path, truth: dict) -> int:
    """Every frame decided with the page's keys in headless Chromium; returns how many."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from tests.browser import chromium, wait_for

    shown = "return (typeof state !== 'undefined' && state) ? (state.frame ? state.frame : 'done') : null"
    done = 0
    with chromium() as browser:
        browser.get(f"{url}/?token={TOKEN}")
        while (frame := wait_for(browser, lambda d: d.execute_script(shown), 30, "the page shows no state")) != "done":
            sidecar = json.loads((Path(captures) / ".unlabelled" / frame["id"]).with_suffix(".json").read_text())
            label = truth[(sidecar["source"], sidecar["frame"])]
            body = browser.find_element(By.TAG_NAME, "body")
            if label in frame["keys"]:
                body.send_keys(str(frame["keys"].index(label) + 1))
            else:
                body.send_keys("n")
                browser.find_element(By.ID, "newname").send_keys(label + Keys.ENTER)
            now = "return state && state.frame ? state.frame.id : 'done'"
            wait_for(browser, lambda d: d.execute_script(now) != frame["id"], 30, "the page did not move on")
            done += 1
            if done % 100 == 0:
                print(f"labelled {done} frames on the page", flush=True)
    return done


def label(captures: Path, results: Path, browser: bool = False) -> int:
    """Label every frame waiting in CAPTURES/.unlabelled on the page's server; returns how many."""
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
            if browser:
                done = _by_keyboard(url, captures, truth)
                server.wait(timeout=60)
                return done
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
    count = label(captures_dir, results_file, browser="--browser" in sys.argv[3:])
    print(f"labelled {count} frames on the page's server")
