"""README.md and README.zh-CN.md: every shell command in them is run, so neither can drift from the code.

Every fenced block tagged `bash`, `sh` or `shell` is split into commands (tests/readme_blocks.py) and each runs
through `bash -euo pipefail` with a timeout and must exit 0, in README order, in one temporary working directory
(later sections use what earlier ones made: runs/digits, bundles/digits, ...). HOME is a temporary folder and no
EDGECLS_* variable is set, so `~/.cache/edgecls/...` is where the README says and nothing of the user's is touched.
A section's test first runs the sections above it (once per session), so `-k flash` alone works too.

What a user has and this machine has not (their image folders, a camera, a Pi, a second machine) is made here, and
the few places where the README's command cannot run as written are rewritten by the table QUICK below: that table
is the only place commands change, and the README says near such commands that tests run them with quicker
settings. Three harness rules are not textual: a block's `export`, `cd` and `.`/`source` lines hold for the rest of
the block, as in the one shell a reader types it into; a daemon (`edgecls run ... --port`) runs in the background
while the rest of its block (the `curl`s) runs, then gets SIGTERM and must exit 0; a block that exports a TF_CONFIG
for worker `"index": 0` runs twice at once, the second as index 1, as its comment says. Commands nothing can run
here are listed, with why, in NOT_RUN; any other command that fails fails the test.

README.zh-CN.md, the Chinese quick start, holds the same commands with translated comments: each of its shell blocks
has the commands of one README.md block, exactly (test_chinese_readme_blocks_are_english_blocks), and its section's
test passes once the English sections holding those blocks ran and passed in this workspace. Its commands run once,
not twice.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, write_image
from tests.readme_blocks import SHELL_LANGUAGES, read_blocks, sections, shell_commands, strip_comment

README = REPO / "README.md"
README_ZH = REPO / "README.zh-CN.md"
COMMAND_TIMEOUT_S = 420
PI_SECTION = "Try it on an emulated Raspberry Pi"  # its commands start, flash and stop the emulated Pi
SECTION_TIMEOUT_S = {PI_SECTION: 3600}  # pip installs and predicts under qemu


@dataclass(frozen=True)
class Rewrite:
    pattern: str  # a regular expression searched in each command (as the README writes it, comments stripped)
    replacement: str  # re.sub's; {name} is filled from the workspace (ports, paths of the stand-ins)
    why: str


# Every change the test makes to a README command, in the order applied. A rule that matches no command fails
# test_readme_rewrites_are_all_used_and_not_run_is_short, so this table cannot outlive the commands it is for.
QUICK = [
    # Installation: a clone of this checkout (no network here; its folder is the one the README's `cd` names), then
    # the README's own venv command in it. The install into that venv is not run: .ci/run installed .[all] into the
    # venv the tests run from, reinstalling is slow, and a non-editable `pip install .` would replace the checkout's
    # editable install. Instead the test checks the extra's requirements are installed.
    Rewrite(
        r"^git clone https://github\.com/edgecls/edgecls\.git$",
        "git clone --quiet --depth 1 file://{repo} edgecls",
        "no network: a shallow clone of this checkout",
    ),
    Rewrite(
        r'^python3 -m pip install -e "\.\[all\]"$',
        'test "$VIRTUAL_ENV" -ef .venv',
        "installed by .ci/run (checked installed instead); here: the venv the block made is the active one",
    ),
    Rewrite(r'^pip install "\.\[runtime\]"$', "true", "same, for .[runtime]; checked installed instead"),
    # Quick settings: tiny training.
    Rewrite(r"^(edgecls train --data digits --out runs/digits --seed 0)$", r"\1 --epochs 2", "quick: 2 epochs"),
    Rewrite(r"^(edgecls quickstart --out quickstart)$", r"\1 --quick", "quick: --quick"),
    Rewrite(r"--teacher runs/flowers --epochs 20", "--teacher runs/flowers --epochs 1", "quick: 1 epoch"),
    Rewrite(r"--image-size 96 --epochs 40", "--image-size 16 --epochs 1", "quick: 16 px, 1 epoch"),
    Rewrite(
        r"--trials 20 --search bayesian --max-epochs 10",
        "--trials 2 --search bayesian --max-epochs 1 --image-size 16",
        "quick: 2 trials of 1 epoch at 16 px",
    ),
    # Several machines: two workers on this machine's loopback, a tiny MobileNetV2 on the generated folder.
    Rewrite(r"10\.0\.0\.1:2222", "127.0.0.1:{worker0}", "the first machine: a free local port"),
    Rewrite(r"10\.0\.0\.2:2222", "127.0.0.1:{worker1}", "the second machine: another free local port"),
    Rewrite(
        r"--data /data/pets --out /runs/pets (--model mobilenetv2 --strategy multiworker)",
        r"--data {work}/flowers --out runs/pets \1 --image-size 32 --alpha 0.35 --epochs 1",
        "the generated folder at one path for both workers; quick: 32 px, alpha 0.35, 1 epoch",
    ),
    # Bring your own model: the .keras import converts like `convert`; one float format is enough here.
    Rewrite(
        r"^(edgecls import shapes\.keras .*)$",
        r"\1 --formats tflite-fp32",
        "quick: float TFLite only (the Teachable Machine import above runs every format)",
    ),
    # Running: the README's placeholder bundle, a camera and its streams stand-ins, bounded runs.
    Rewrite(r"\bBUNDLE\b", "bundles/digits", "the placeholder: the bundle the Quick start made"),
    Rewrite(r"http://127\.0\.0\.1:8080/stream\.mjpg", "{mjpeg_url}", "a camera's MJPEG stream: tests/mjpeg_server.py"),
    Rewrite(
        r"--source 0 --source rtsp://cam2/stream",
        "--source clip.mp4 --loop --source {mjpeg_url}",
        "no camera or RTSP server here: a looping video and the MJPEG server stand in",
    ),
    Rewrite(r"(--port |127\.0\.0\.1:)8080\b", r"\g<1>{daemon_port}", "the daemon on a free port"),
    Rewrite(
        r"^(edgecls run (?!.*--port).*(?:--loop|\.mjpg).*)$",
        r"\1 --max-frames 5",
        "a live source never ends: stop after 5 frames",
    ),
    Rewrite(
        r"\| sudo tee /etc/systemd/system/edgecls\.service >/dev/null",
        "> edgecls.service",
        "not this machine's systemd",
    ),
    # Benchmarks: short timings (they are not the point here), a loose gate on a noisy shared machine.
    Rewrite(
        r"^(edgecls bench .*)$",
        r"\1 --repeats 1 --runs 10 --time-budget 0.5 --max-warmup 0.5",
        "quick: one process, 10 timed runs",
    ),
    Rewrite(
        r"--compare baseline\.json --max-regression 10%",
        "--compare bench/bench.json --max-regression 1000%",
        "the baseline is the first bench's result; 10 runs on a shared 2-core machine vary more than 10% "
        "(tests/test_bench.py checks the gate itself)",
    ),
    # Devices: the real OpenSSH server on 127.0.0.1 (tests/sshd.py) stands in for the Pi, with a root in tmp.
    Rewrite(r"--device pi@kitchen\.local", "--device {ssh_device} --ssh-config {ssh_config}", "the local sshd"),
    Rewrite(
        r"^(edgecls (?:flash|status|rollback) .*)pi@kitchen\.local(.*)$",
        r"\1{ssh_target}\2 --ssh-config {ssh_config}",
        "the local sshd, install root in tmp",
    ),
    Rewrite(
        r"(--targets fleet\.txt.*)$",
        r"\1 --ssh-config {ssh_config}",
        "fleet.txt (made here) names the local sshd and a local folder",
    ),
    Rewrite(
        r"^edgecls label captures/$",
        "python {repo}/tests/label_captures.py captures/ loop.jsonl --browser",
        "no person here: the page's keys pressed in headless Chromium, the truth from the daemon's results "
        "(the README says so)",
    ),
    Rewrite(
        r"^edgecls fleet prometheus-targets fleet\.txt",
        "edgecls fleet prometheus-targets fleet-metrics.txt",
        "fleet.txt (made here) has no metrics= words: fleet-metrics.txt names the device's daemon address",
    ),
    # The emulated Pi (marker arm64): root already, packages checked not installed, the rootfs and wheels that
    # tests/test_arm64_pi.py caches (building one takes 15-20 minutes), a free port.
    Rewrite(r"^sudo ", "", "the arm64 tests run as root"),
    Rewrite(
        r"^apt-get install (qemu-user-static debootstrap)$",
        r"dpkg -s \1 > /dev/null",
        "never install system packages from a test: .ci/run does; checked installed instead",
    ),
    Rewrite(r"/var/tmp/pi-root", "{pi_rootfs}", "the rootfs tests/test_arm64_pi.py built and caches"),
    Rewrite(r"\b2222\b", "{pi_port}", "a free port for the emulated Pi's sshd"),
]

# Commands that are not run, with why. Keep it short: anything else that cannot run must fail the test.
NOT_RUN = {
    "python3 -m pytest -q": "the test command itself (it would run this test again); .ci/run runs exactly it",
    "sudo systemctl daemon-reload && sudo systemctl enable --now edgecls": (
        "would install a service on this machine; tests/test_daemon_systemd.py verifies the unit with systemd-analyze"
    ),
}

# Sections whose commands need more than this test can give everywhere: pytest marks, as for the test they mirror.
MARKS = {PI_SECTION: [pytest.mark.arm64]}

FOREIGN_BUNDLES = ("bundles/teachable", "bundles/shapes", "bundles/flowers-onnx", "bundles/flowers-tflite")
# Cheap checks that a command made what the README says it makes: (pattern in the README's command, paths).
WHAT_YOU_GET = "What you get"  # the README's table of a run's files, checked after the Quick start's train
EXPECT = [
    (
        r"^edgecls convert runs/digits --out bundles/digits",
        ["bundles/digits/manifest.json", "bundles/digits/labels.txt", "bundles/digits/verification.txt"],
    ),
    (r"--data flowers --out runs/flowers ", ["runs/flowers/model.keras", "runs/flowers/metrics.json"]),
    (r"--strategy multiworker", ["runs/pets/model.keras"]),
    (
        r"explain runs/flowers photos/odd-ones/ --out explain/",
        ["explain/contact_sheet.png", "explain/explanations.json"],
    ),
    (
        r"edgecls tune ",
        [
            "runs/flowers-tuned/model.keras",
            "runs/flowers-tuned/tuning/trials.csv",
            "runs/flowers-tuned/tuning/trials.json",
            "runs/flowers-tuned/tuning/trials.png",
        ],
    ),
    (r"--out bench/", ["bench/bench.json", "bench/bench.csv", "bench/bench.md", "bench/bench.png"]),
    (r"--json pi\.json", ["pi.json"]),
    (r"--results results\.jsonl", ["results.jsonl"]),
    (r"edgecls service unit", ["edgecls.service"]),
    *((rf"^edgecls import .* --out {out} ", [f"{out}/manifest.json"]) for out in FOREIGN_BUNDLES),
]
# And what the README's comments say a command prints or writes: (pattern in the README's command, file or
# "stdout", texts that must appear).
EXPECT_TEXT = [
    (r"edgecls predict .*--json", "stdout", ['"top1"', '"score"', '"topk"', '"latency_ms"']),
    (r"curl .*/metrics", "stdout", ["edgecls_frames_processed_total", "edgecls_inference_seconds"]),
    (r"curl .*/latest", "stdout", ['"top1"']),
    (
        r"edgecls service unit",
        "edgecls.service",
        ["Type=notify", "WatchdogSec=", "DynamicUser=yes", "SupplementaryGroups=video", "ProtectSystem=strict"],
    ),
    (
        r"edgecls devices list",
        "stdout",
        ["raspberry-pi-4", "raspberry-pi-5", "jetson-nano", "jetson-orin-nano", "desktop-cpu", "desktop-gpu"],
    ),
]


def shell_sections(path: Path = README) -> list:
    return [s for s in sections(path) if s.commands]


def english_twin(block):
    """The README.md block with exactly `block`'s commands (a README.zh-CN.md block's comments are translated)."""
    return next((b for b in read_blocks(README) if b.commands and b.commands == block.commands), None)


def translated_sections() -> list:
    """README.zh-CN.md's sections with commands, with the pytest marks of the English sections they run; ids in ASCII
    (pytest escapes Chinese): `README.zh-CN.md:LINE = the English sections`."""
    params = []
    for section in shell_sections(README_ZH):
        twins = [english_twin(b) for b in section.blocks if b.commands]
        english = list(dict.fromkeys(t.section if t else "(none)" for t in twins))
        marks = [m for title in english for m in MARKS.get(title, [])]
        name = f"{README_ZH.name}:{section.blocks[0].line} = {' + '.join(english)}"
        params.append(pytest.param(README_ZH.name, section.title, marks=marks, id=name))
    return params


def readme_file_table() -> list:
    """The file names in the first column of the README's "What you get" table."""
    text = README.read_text().split(f"## {WHAT_YOU_GET}", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    return [name for row in rows for name in re.findall(r"`([^`]+)`", row.split("|")[1])]


def apply_quick(command: str, values: dict, used: set | None = None) -> str:
    """`command` after every matching rule of QUICK, with {name}s filled from `values`; `used` collects the rules."""
    for rule in QUICK:
        if re.search(rule.pattern, command) and used is not None:
            used.add(rule)
        replacement = re.sub(r"\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), rule.replacement)
        command = re.sub(rule.pattern, replacement, command)
    return command


def extra_is_installed(extra: str) -> None:
    """pyproject.toml has edgecls[extra] and each of its requirements (nested extras followed) is installed in a
    version it accepts: what the README's install command would leave behind."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli, in the dev extra there
        import tomli as tomllib
    from packaging.requirements import Requirement

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extra in extras, f"the README installs edgecls[{extra}], which pyproject.toml does not define"
    pending, seen, missing = [extra], set(), []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in map(Requirement, extras[name]):
            if req.marker and not req.marker.evaluate():
                continue
            if req.name == "edgecls":
                pending.extend(req.extras)
                continue
            try:
                if not req.specifier.contains(version(req.name), prereleases=True):
                    missing.append(f"{req} (have {version(req.name)})")
            except PackageNotFoundError:
                missing.append(str(req))
    assert not missing, f"edgecls[{extra}] is not installed as the README's command would install it: {missing}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_user_files(work: Path, home: Path) -> None:
    """What the README assumes a user has: image folders, a photo, a video, a signing key, a fleet list."""
    import cv2
    import numpy as np

    from tests.conftest import render_fixture_image

    rng = np.random.default_rng(0)
    flower_kinds = {"daisy": "circle", "tulip": "triangle"}  # classes named like the README's
    for folder, count in (("flowers", 24), ("other", 4), ("photos/odd-ones", 2)):
        for label, kind in flower_kinds.items():
            for i in range(count):
                name = f"{label}-{i:02d}.jpg" if folder == "photos/odd-ones" else f"{label}/{i:03d}.png"
                write_image(work / folder / name, render_fixture_image(kind, rng, 40))
    write_image(work / "tulip.jpg", render_fixture_image("triangle", rng, 40))
    # photos/: a few digits in class folders (the digits bundle's accuracy in `bench --data photos/`)
    digits = home / ".cache" / "edgecls" / "datasets" / "digits-v1"
    for label in sorted(p.name for p in digits.iterdir() if p.is_dir()):
        (work / "photos" / label).mkdir(parents=True)
        for image in sorted((digits / label).iterdir())[:2]:
            shutil.copy(image, work / "photos" / label / image.name)
    writer = cv2.VideoWriter(str(work / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 20.0, (64, 48))
    assert writer.isOpened()
    for i in range(40):
        frame = np.zeros((48, 64, 3), np.uint8)
        cv2.circle(frame, (32, 24), 6 + i % 12, (255, 255, 255), -1)
        writer.write(frame)
    writer.release()
    (home / ".ssh").mkdir(mode=0o700, exist_ok=True)
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "release@example.com",
            "-f",
            str(home / ".ssh" / "release_ed25519"),
        ],
        check=True,
        capture_output=True,
    )


def make_foreign_models(work: str) -> None:
    """The models the README's "Bring your own model" imports, made offline by the importer tests' factories: a
    Teachable Machine export and a .keras fitted to shapes/ (5 generated classes), a PyTorch-style ONNX and a TFLite
    with metadata fitted to flowers/ (make_user_files). Run in a subprocess of its own (Workspace.start_foreign)."""
    from tests import foreign_keras, foreign_onnx, foreign_tflite

    work = Path(work)
    shapes = foreign_keras.shapes_folder(work / "shapes")
    (work / "shapes.txt").write_text("\n".join(foreign_keras.LABELS) + "\n")
    foreign_keras.teachable_folder(work / "teachable_export", shapes)
    (work / "made").mkdir()
    foreign_keras.mobilenetv3_keras(work / "made", shapes).rename(work / "shapes.keras")
    model, labels = foreign_onnx.pytorch_style(work / "made", work / "flowers")
    model.rename(work / "flowers.onnx")
    labels.rename(work / "flowers.txt")
    foreign_tflite.with_metadata(work / "made", work / "flowers").rename(work / "flowers.tflite")
    shutil.rmtree(work / "made")


class Workspace:
    """The README's working directory and everything its commands talk to; runs sections in order, once each."""

    def __init__(self, root: Path, sshd):
        self.root, self.sshd = root, sshd
        self.work, self.home = root / "work", root / "home"
        self.work.mkdir()
        self.home.mkdir()
        (self.work / "devices").symlink_to(REPO / "devices")  # the README's commands run in a checkout
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("EDGECLS_", "XDG_")) and k not in ("TF_CONFIG", "PYTHONPATH", "VIRTUAL_ENV")
        }
        self.env.update(
            HOME=str(self.home),
            PYTHONPATH=str(REPO),
            PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        )
        self.values = {
            "work": self.work,
            "worker0": free_port(),
            "worker1": free_port(),
            "daemon_port": free_port(),
            "ssh_config": sshd.ssh_config,
            "ssh_device": f"{sshd.user}@{sshd.host}:{sshd.port}",
            "ssh_target": sshd.target(root / "pi-root"),
            "pi_port": free_port(),
            "repo": REPO,
        }
        self.done: dict = {}  # section title -> None (passed) or the failure
        self.user_files_made = self.pi_has_earlier = False
        self.foreign = None  # the process making the models to import (make_foreign_models), started early
        self.why = ""  # why the command being run differs from the README's (QUICK), for failure messages
        self.log: list = []

    def run_through(self, title: str) -> None:
        for section in shell_sections():
            if any(m.name == "arm64" for m in MARKS.get(section.title, [])) and section.title != title:
                continue  # the emulated Pi is nobody's prerequisite
            if section.title not in self.done:
                try:
                    self.run_section(section)
                    self.done[section.title] = None
                except BaseException as failure:  # noqa: B036  (a timeout is a failure too)
                    self.done[section.title] = failure
                    raise
            elif self.done[section.title] is not None and section.title != title:
                pytest.fail(f"an earlier README section failed: {section.title!r}")
            if section.title == title:
                if self.done[title] is not None:
                    raise self.done[title]
                return

    def run_translated(self, title: str) -> None:
        """A README.zh-CN.md section: the README.md sections holding its blocks, run (once) and passed."""
        section = next(s for s in shell_sections(README_ZH) if s.title == title)
        for block in section.blocks:
            if block.commands:
                twin = english_twin(block)
                assert twin is not None, f"{README_ZH.name}:{block.line}: no README.md block has these commands"
                self.run_through(twin.section)

    def run_section(self, section) -> None:
        if section.title == PI_SECTION:
            return self._run_pi_section(section)
        for block in section.blocks:
            if block.language in SHELL_LANGUAGES:
                self.run_block(section.title, block)

    def _run_pi_section(self, section) -> None:
        """The Pi's commands while no other test uses its rootfs (tests/emulated_pi.py); stopped however they end."""
        from tests.emulated_pi import in_use

        with in_use() as root:
            self._prepare_pi(root)
            try:
                for block in section.blocks:
                    if block.language in SHELL_LANGUAGES:
                        self.run_block(section.title, block)
            finally:
                self._stop_pi(root)

    def run_block(self, title: str, block) -> None:
        commands = [c for c in block.commands if c not in NOT_RUN]
        if any(re.search(r"TF_CONFIG=.*\"index\": 0", c) for c in commands):
            return self._run_workers(title, block, commands)
        exports, daemons = [], []  # exports: the block's `export` and `cd` lines so far, run before each command
        try:
            for original in commands:
                used: set = set()
                command = apply_quick(original, self.values, used)
                self.why = "; ".join(rule.why for rule in QUICK if rule in used) or "as written"
                self._before(original)
                if command.startswith(("export ", "cd ", ". ", "source ")):
                    self._run(title, original, command, exports)  # a `cd` to a missing folder fails here
                    exports.append(command)
                elif re.match(r"edgecls run .*--port ", command):
                    daemons.append((original, self._start_daemon(exports, command)))
                else:
                    self._after(original, self._run(title, original, command, exports))
                    # `python3 -m venv .venv && . .venv/bin/activate`: the activation holds for the rest too
                    exports.extend(re.findall(r"&& ((?:\.|source) [^&|;]+?)\s*(?=&&|$)", command))
        finally:
            for original, daemon in daemons:
                self._stop_daemon(title, original, daemon)
                self._after(original)

    def _script(self, exports: list, command: str) -> list:
        return ["bash", "-euo", "pipefail", "-c", "\n".join([*exports, command])]

    def _run(self, title, original, command, exports) -> str:
        started, limit = time.monotonic(), SECTION_TIMEOUT_S.get(title, COMMAND_TIMEOUT_S)
        try:
            done = subprocess.run(
                self._script(exports, command),
                cwd=self.work,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=limit,
            )
        except subprocess.TimeoutExpired as e:
            pytest.fail(
                f"README [{title}] `{original}` (run as `{command}`) took over {limit} s:\n"
                f"{(e.stderr or b'')[-3000:]!r}"
            )
        self.log.append((title, command, round(time.monotonic() - started, 1)))
        assert done.returncode == 0, (
            f"README [{title}] `{original}` (run as `{command}`: {self.why}) exited "
            f"{done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
        )
        return done.stdout

    def _start_daemon(self, exports, command) -> subprocess.Popen:
        log = open(self.root / f"daemon-{len(self.log)}.log", "w+")
        process = subprocess.Popen(
            self._script(exports, f"exec {command}"),
            cwd=self.work,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
        process.log, process.command, process.started = log, command, time.monotonic()
        # The block's next commands (curl) are typed once it runs: /healthz 200 (every source delivers frames) and
        # a frame of each classified.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.values['daemon_port']}/healthz", timeout=2) as r:
                    counts = re.findall(r'"classified": (\d+)', r.read().decode())
                if counts and min(map(int, counts)) > 0:
                    return process
            except (OSError, urllib.error.URLError):
                pass  # not listening yet, or 503: a source without frames so far
            time.sleep(0.2)
        if process.poll() == 0 and "--max-frames" in command:
            return process  # it classified its --max-frames and ended before a poll came: done, as the README says
        process.kill()
        process.wait()
        log.seek(0)
        pytest.fail(f"the README's daemon `{command}` never answered /healthz with 200:\n{log.read()[-3000:]}")

    def _stop_daemon(self, title, original, process) -> None:
        time.sleep(1)  # a few frames into results.jsonl
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = "none within 15 s of SIGTERM"
        self.log.append((title, f"{process.command} (in the background)", round(time.monotonic() - process.started, 1)))
        process.log.seek(0)
        output = process.log.read()
        process.log.close()
        assert code == 0, (
            f"README [{title}] daemon `{original}` (run as `{process.command}`) exit: {code}\n{output[-3000:]}"
        )

    def _run_workers(self, title, block, commands) -> None:
        """The block on each of two machines: here, two processes at once, the second with "index": 1."""
        script = "\n".join(apply_quick(c, self.values) for c in commands)
        for original in commands:
            self._before(original)
        workers, started = [], time.monotonic()
        for index in (0, 1):
            log = open(self.root / f"worker-{index}.log", "w+")
            text = script.replace('"index": 0', f'"index": {index}')
            workers.append(
                (
                    subprocess.Popen(
                        ["bash", "-euo", "pipefail", "-c", text],
                        cwd=self.work,
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        text=True,
                    ),
                    log,
                )
            )
        try:
            for index, (process, log) in enumerate(workers):
                code = process.wait(timeout=COMMAND_TIMEOUT_S)
                log.seek(0)
                assert code == 0, f"README [{title}] worker {index} of `{script}` exited {code}:\n{log.read()[-4000:]}"
            self.log.append((title, f"two workers: {script}", round(time.monotonic() - started, 1)))
        finally:
            for process, log in workers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                log.close()
        for original in commands:
            self._after(original)

    def _before(self, original: str) -> None:
        match = re.match(r'^(?:python3 -m )?pip install (?:-e )?"\.\[([\w,-]+)\]"', original)
        if match:
            extra_is_installed(match.group(1))
        if original.startswith("edgecls import "):
            self._await_foreign()
        if re.match(r"^edgecls flash bundles/digits pi@kitchen\.local", original) and not self.pi_has_earlier:
            self._flash_earlier_version()

    def _start_foreign(self) -> None:
        """make_foreign_models in the background (a few minutes of training), while the sections before the
        imports run: their commands spend much of their time waiting on servers and subprocesses."""
        log = open(self.root / "foreign-models.log", "w+")
        code = f"from tests.test_readme import make_foreign_models; make_foreign_models({str(self.work)!r})"
        self.foreign = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        self.foreign.log, self.foreign.started = log, time.monotonic()

    def _await_foreign(self) -> None:
        if self.foreign is None or self.foreign.log.closed:
            return
        waited = time.monotonic()
        try:
            code = self.foreign.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.foreign.kill()
            code = f"none within {COMMAND_TIMEOUT_S} s"
        ran = round(time.monotonic() - self.foreign.started)  # in the background; the log counts only the wait
        waited = round(time.monotonic() - waited, 1)
        self.log.append(("Bring your own model", f"make_foreign_models (ran {ran} s in the background)", waited))
        self.foreign.log.seek(0)
        output = self.foreign.log.read()
        self.foreign.log.close()
        assert code == 0, f"making the models to import failed (exit {code}):\n{output[-3000:]}"

    def _flash_earlier_version(self) -> None:
        """The README's Pi was flashed before, so `rollback` has a previous version: an earlier copy of the bundle."""
        import json

        earlier = self.root / "earlier-digits"
        shutil.copytree(self.work / "bundles" / "digits", earlier)
        for signature in earlier.glob("*.sig"):
            signature.unlink()  # its manifest changes below; the Pi does not ask for signatures
        manifest = json.loads((earlier / "manifest.json").read_text())
        (earlier / "manifest.json").write_text(json.dumps({**manifest, "created": "2026-01-01T00:00:00+00:00"}))
        command = [
            "edgecls",
            "flash",
            str(earlier),
            self.values["ssh_target"],
            "--device",
            "raspberry-pi-5",
            "--ssh-config",
            str(self.sshd.ssh_config),
        ]
        done = subprocess.run(
            command, cwd=self.work, env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S
        )
        assert done.returncode == 0, f"flashing the Pi's earlier version failed: {done.stdout}{done.stderr[-3000:]}"
        self.pi_has_earlier = True

    def _after(self, original: str, stdout: str = "") -> None:
        if not self.user_files_made and re.search(r"\bedgecls train --data digits", original):
            make_user_files(self.work, self.home)  # needs the digits the train just wrote under ~/.cache
            self.user_files_made = True
            self._start_foreign()
            run = self.work / "runs" / "digits"
            missing = [name for name in readme_file_table() if not (run / name).exists()]
            assert not missing, f"the README's '{WHAT_YOU_GET}' table names files a run lacks: {missing}"
        for pattern, paths in EXPECT:
            if re.search(pattern, original):
                missing = [p for p in paths if not (self.work / p).is_file() or not (self.work / p).stat().st_size]
                assert not missing, f"README `{original}` did not make {missing}"
        for pattern, where, texts in EXPECT_TEXT:
            if re.search(pattern, original):
                text = stdout if where == "stdout" else (self.work / where).read_text()
                missing = [t for t in texts if t not in text]
                assert not missing, f"README `{original}`: {where} lacks {missing}:\n{text[-2000:]}"

    def _prepare_pi(self, root: Path) -> None:
        from tests.conftest import require_tool

        if os.geteuid() != 0:
            pytest.fail("the emulated Pi needs root (debootstrap, chroot, binfmt_misc): run the arm64 tests as root")
        require_tool("qemu-aarch64-static", package="qemu-user-static")
        require_tool("debootstrap", package="debootstrap")
        self.values["pi_rootfs"] = root
        # The wheels `flash --setup` fetched for the Pi before (tests/test_arm64_pi.py) are reused, not downloaded.
        real = Path(os.path.expanduser("~")) / ".cache" / "edgecls" / "wheels"
        real.mkdir(parents=True, exist_ok=True)
        (self.home / ".cache" / "edgecls").mkdir(parents=True, exist_ok=True)
        if not (self.home / ".cache" / "edgecls" / "wheels").exists():
            (self.home / ".cache" / "edgecls" / "wheels").symlink_to(real)

    def _stop_pi(self, root: Path) -> None:
        from tests.emulated_pi import script

        if (root / ".edgecls-built").exists():
            script("stop", root, timeout=120)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from tests.mjpeg_server import MjpegServer
    from tests.sshd import SshServer, require_sshd

    require_sshd()
    root = tmp_path_factory.mktemp("readme")
    server = SshServer(root / "sshd").start()
    camera = MjpegServer().start()
    space = Workspace(root, server)
    space.values["mjpeg_url"] = camera.url
    fleet_root = root / "fleet"
    (space.work / "fleet.txt").write_text(f"# two devices\n{server.target(fleet_root / 'pi-a')}\n{fleet_root / 'sd'}\n")
    (space.work / "fleet-metrics.txt").write_text(
        f"{server.target(fleet_root / 'pi-a')} name=pi-a metrics=http://127.0.0.1:8080\n"
    )
    try:
        yield space
    finally:
        if space.foreign is not None and space.foreign.poll() is None:
            space.foreign.kill()  # a failure before the imports: the models are not needed
            space.foreign.wait()
        camera.kill()
        server.stop()
        for title, command, seconds in space.log:
            print(f"{seconds:7.1f} s  [{title}] {command}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "readme, title",
    [
        *(pytest.param(README.name, s.title, marks=MARKS.get(s.title, []), id=s.title) for s in shell_sections()),
        *translated_sections(),
    ],
)
def test_readme_section_commands_run(workspace, readme, title):
    if readme == README_ZH.name:
        workspace.run_translated(title)
    else:
        workspace.run_through(title)


def test_readme_install_block_fails_when_the_install_is_not_in_its_activated_venv(tmp_path):
    """The install block as written passes; pip run before the venv is made and activated fails."""
    from types import SimpleNamespace

    from tests.readme_blocks import Block

    sshd = SimpleNamespace(ssh_config="", user="u", host="h", port=0, target=lambda root: "")
    install = next(b for b in read_blocks(README) if b.section == "Install" and b.commands)
    for name in ("as-written", "reordered"):
        (tmp_path / name).mkdir()
    Workspace(tmp_path / "as-written", sshd).run_block("Install", install)
    clone, cd, _, pip = install.commands  # the reviewer's order: pip first, then a venv nobody activates
    reordered = "\n".join([clone, cd, pip, "python3 -m venv .venv"])
    with pytest.raises(AssertionError, match="VIRTUAL_ENV"):
        Workspace(tmp_path / "reordered", sshd).run_block("Install", Block("Install", "bash", 0, reordered))


def test_every_readme_block_names_its_language():
    """A block without a language could hide commands from the test: each says bash, text, yaml, python, ..."""
    unnamed = [
        f"{p.name}:{b.line} ({b.section})" for p in (README, README_ZH) for b in read_blocks(p) if not b.language
    ]
    assert not unnamed, f"fenced blocks without a language: {unnamed}"


def test_chinese_readme_blocks_are_english_blocks():
    """Each shell block of README.zh-CN.md has exactly the commands of a README.md block (only comments are
    translated), so the English sections' run runs them too; both READMEs link each other at the top."""
    blocks = [b for b in read_blocks(README_ZH) if b.commands]
    assert blocks, "README.zh-CN.md has no shell commands?"
    strays = [f"README.zh-CN.md:{b.line}: {b.commands}" for b in blocks if english_twin(b) is None]
    assert not strays, f"README.zh-CN.md blocks whose commands no README.md block has (copy them exactly): {strays}"
    assert "(README.zh-CN.md)" in "\n".join(README.read_text().splitlines()[:5])
    assert "(README.md)" in "\n".join(README_ZH.read_text().splitlines()[:5])


# README.md's sections that README.zh-CN.md translates, with their Chinese headings: every shell block of these has a
# Chinese twin (the same commands), so the quick start cannot lose a block or re-fence it out of the test.
TRANSLATED = {
    "Install": "安装",
    "Quick start": "快速开始",
    "Your own images": "用你自己的图片",
    "Bring your own model": "导入你自己的模型（import）",
    "Flash to devices: atomic slots, signatures, smoke test, rollback": "部署到设备（flash）",
    "As a daemon: several cameras, HTTP status, Prometheus, preview, systemd": "作为守护进程运行（run）",
    "Running as a service": "以系统服务运行",
    "Benchmark on the target": "基准测试（bench）",
    "Troubleshooting": "常见问题",
    "Contributing": "参与开发",
}
COMMAND_LIKE = re.compile(r"^\s*(?:\$ |# )?(?:edgecls|sudo|cd|git|pip|python3?|curl|export|systemctl|ssh)\b")


def test_chinese_readme_keeps_a_twin_of_every_translated_english_block():
    def headings(path):
        return {line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("##")}

    lost = set(TRANSLATED.values()) - headings(README_ZH)
    assert not lost, f"README.zh-CN.md lost these sections: {lost}"
    renamed = set(TRANSLATED) - headings(README)
    assert not renamed, f"README.md renamed translated sections (rename them in TRANSLATED too): {renamed}"
    chinese = [b.commands for b in read_blocks(README_ZH) if b.commands]
    missing = [
        f"README.md:{b.line} ({b.section}): {b.commands[0]}"
        for b in read_blocks(README)
        if b.section in TRANSLATED and b.commands and b.commands not in chinese
    ]
    assert not missing, f"README.zh-CN.md has no shell block with the commands of {missing}"


def test_chinese_readme_has_commands_only_in_shell_blocks():
    """A command re-fenced as `text` or `shell-session` is not run, so it could drift from the English."""
    hidden = [
        f"README.zh-CN.md:{b.line} ({b.language}): {line.strip()}"
        for b in read_blocks(README_ZH)
        if b.language not in SHELL_LANGUAGES
        for line in b.text.splitlines()
        if COMMAND_LIKE.match(line)
    ]
    assert not hidden, f"commands outside a bash block (fence them as bash, as README.md does): {hidden}"


def test_only_a_space_or_a_tab_before_hash_starts_a_comment():
    """bash splits words on space, tab and newline only: `quickstart　# ...` (an ideographic space) is one word."""
    assert strip_comment("edgecls quickstart --out quickstart\t# 一条命令") == "edgecls quickstart --out quickstart"
    assert strip_comment("edgecls quickstart --out quickstart　# 一条命令") == (
        "edgecls quickstart --out quickstart　# 一条命令"
    )
    assert shell_commands("edgecls a　# b") == ["edgecls a　# b"]


def test_readme_names_every_system_package_ci_installs():
    """The apt packages .ci/run installs for the tests are the ones the README tells a contributor to install."""
    ci = (REPO / ".ci" / "run").read_text().replace("\\\n", " ")
    line = next(l for l in ci.splitlines() if "apt-get install" in l)
    packages = [w for w in line.split("--no-install-recommends", 1)[1].split() if re.fullmatch(r"[a-z0-9][\w.+-]*", w)]
    assert "qemu-user-static" in packages and "mosquitto" in packages, packages
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    missing = [p for p in packages if f"`{p}`" not in layout]
    assert not missing, f"README's Layout section does not name these packages .ci/run installs: {missing}"


# The programs README commands run that a clean Debian machine may lack: the apt package .ci/run installs for each.
SYSTEM_TOOLS = {"git": "git", "curl": "curl", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}
# What the shell, the venv or a QUICK/NOT_RUN rule provides.
SHELL_OR_VENV = {
    "cd",
    ".",
    "source",
    "export",
    "printf",
    "true",
    "test",
    "python3",
    "pip",
    "edgecls",
    "sudo",
    "tee",
    "apt-get",
}


def test_ci_installs_every_program_readme_commands_run():
    """A README command's program that is neither the shell's, the venv's nor skipped is installed by .ci/run's apt
    line (a clean Debian has wget, not curl: a missing one exits 127 and fails every later section)."""
    ci = (REPO / ".ci" / "run").read_text().replace("\\\n", " ")
    line = next(l for l in ci.splitlines() if "apt-get install" in l)
    programs = {
        part.split()[0]
        for s in shell_sections()
        for command in s.commands
        if command not in NOT_RUN
        for part in re.split(r"&&|\|\||[|;]", command)
        if part.split()
    }
    unknown = sorted(programs - SHELL_OR_VENV - set(SYSTEM_TOOLS))
    assert not unknown, f"README commands run {unknown}: add each to SYSTEM_TOOLS and .ci/run's apt line"
    missing = sorted({SYSTEM_TOOLS[p] for p in programs & set(SYSTEM_TOOLS)} - set(line.split()))
    assert not missing, f".ci/run's apt line lacks {missing}, which README commands need"


def test_ci_refuses_to_empty_a_venv_it_did_not_make(tmp_path):
    """EDGECLS_CI_VENV=.venv would have emptied a developer's own venv (`venv --clear`): refused before anything
    runs. apt-get is a failing stand-in here, so nothing is installed on this machine whatever the script does."""
    theirs = tmp_path / "venv"
    theirs.mkdir()
    (theirs / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "apt-get").write_text("#!/bin/sh\nexit 97\n")
    (tmp_path / "bin" / "apt-get").chmod(0o755)
    env = {**os.environ, "EDGECLS_CI_VENV": str(theirs), "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not a venv .ci/run made" in done.stderr, done.stderr[-2000:]
    assert (theirs / "pyvenv.cfg").read_text() == "home = /usr/bin\n"


def test_readme_rewrites_are_all_used_and_not_run_is_short():
    commands = [c for s in shell_sections() for c in s.commands]
    assert commands, "the README has no shell commands?"
    used: set = set()
    for command in commands:
        apply_quick(command, {}, used)
    unused = [rule.pattern for rule in QUICK if rule not in used]
    assert not unused, f"QUICK rules that match no README command (remove them): {unused}"
    assert len(NOT_RUN) <= 3
    for command in NOT_RUN:
        assert command in commands, f"NOT_RUN lists {command!r}, which the README no longer has"
    ci = (REPO / ".ci" / "run").read_text()
    assert "\npython3 -m pytest -q\n" in ci + "\n", ".ci/run no longer runs the README's test command"
    # The README's notes on quick settings name only settings QUICK really uses.
    replacements = " ".join(rule.replacement for rule in QUICK)
    notes = [line for line in README.read_text().splitlines() if line.startswith("*Tests ")]
    assert notes, "the README no longer says that tests run its commands with quick settings"
    for quoted in re.findall(r"`(--[^`]+)`", "\n".join(notes)):
        for setting in re.findall(r"--[\w-]+ [^-\s]\S*", quoted):
            assert setting in replacements, f"the README says tests use `{setting}`, QUICK does not"
    # Synopses ([--option]) and placeholders other than BUNDLE are not commands: they belong in `text` blocks.
    for command in commands:
        assert not re.search(r"\s\[--", command), f"a synopsis in a shell block (fence it as text): {command}"


def test_readme_teachable_machine_import_runs_as_written():
    """It runs as the README shows it (no rewrite), with the float formats the README names: the barely trained
    stand-in's fp16/int8 answers move by several of the 75 test images (1.33 points each), past any sensible gate."""
    command = next(c for s in shell_sections() for c in s.commands if c.startswith("edgecls import teachable_export/"))
    assert apply_quick(command, {}) == command
    assert "--formats tflite-fp32,onnx-fp32" in command


def test_what_readme_commands_write_in_a_checkout_is_ignored_by_git():
    """A newcomer runs the Quick start in the clone: `git status` must stay clean (quickstart/ showed as `??`)."""
    outputs = {
        m.group(1)
        for s in shell_sections()
        if s.title == "Quick start"
        for c in s.commands
        for m in re.finditer(r"--out (\w+)/", c + "/")
    }
    assert "quickstart" in outputs and "runs" in outputs, outputs
    for folder in sorted(outputs):
        done = subprocess.run(["git", "check-ignore", "-q", f"{folder}/x"], cwd=REPO, timeout=60)
        assert done.returncode == 0, f"{folder}/, which the Quick start writes, is not in .gitignore"


def test_readme_quick_rewrites_keep_the_command():
    """The rewrites change settings, not what runs: each rewritten command still starts with the same program."""
    values = {
        k: "X"
        for k in (
            "work",
            "worker0",
            "worker1",
            "daemon_port",
            "ssh_config",
            "ssh_device",
            "ssh_target",
            "pi_port",
            "pi_rootfs",
            "mjpeg_url",
            "repo",
        )
    }
    rewritten = apply_quick("edgecls train --data flowers --out runs/flowers --image-size 96 --epochs 40", values)
    assert rewritten == "edgecls train --data flowers --out runs/flowers --image-size 16 --epochs 1"
    assert apply_quick("edgecls bench BUNDLE --device pi@kitchen.local --json pi.json", values) == (
        "edgecls bench bundles/digits --device X --ssh-config X --json pi.json --repeats 1 --runs 10 "
        "--time-budget 0.5 --max-warmup 0.5"
    )
