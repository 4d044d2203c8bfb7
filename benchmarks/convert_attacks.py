"""Attacks on `edgecls convert` (issue 31), repeated through the CLI after the fixes.

1. Test splits that are not the run's own: shrunken, changed (re-encoded), one class left, two images
   left, an old run (no split.json) whose folder changed, a split tiny at training: refused, or flagged with
   the real counts in the manifest under --allow-partial-test.
2. Outputs: --tar and --out at a user's file, a folder, a link, `.`: no file outside the bundle replaced.
3. kill -9 at 20 moments of a convert (--tar, int8 TFLite and ONNX), then the same convert again: what is
   left beside the bundle and in TMPDIR.
4. The second review's: a FIFO at BUNDLE.tar or in place of a test image (hung), an edgecls archive holding
   a user's notes.txt under --tar --overwrite (replaced), nan and negative limits and seeds (accepted).

    python benchmarks/convert_attacks.py [--work DIR] [--kills 20] [--sections splits,outputs,options,kills]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._runs import work_folder  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "convert_attacks.txt"
CODE = Path(__file__).resolve().parents[1]  # the checkout whose edgecls runs (--code: another one, e.g. the base)
FAST = ["--formats", "tflite-fp32", "--max-drop", "100", "--check-images", "2"]


def cli(*args, env=None, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """`edgecls ARGS` of CODE (`python -m` puts the working folder first: it is CODE unless `cwd` is given).
    A command still running after `timeout` s is killed and reads as exit 124, "HUNG"."""
    cmd = [sys.executable, "-m", "edgecls.cli", *map(str, args)]
    environment = {**os.environ, "PYTHONPATH": str(CODE), **(env or {})}
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=environment, cwd=cwd or CODE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"error: HUNG (killed after {timeout} s)")


def last_error(done) -> str:
    lines = [l for l in done.stderr.splitlines() if l.startswith("error:")]
    return (lines[-1] if lines else done.stderr.strip().splitlines()[-1])[:230]


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if not p.is_symlink()
    }


def test_entries(run: Path) -> list:
    return json.loads((run / "split.json").read_text())["splits"]["test"]


class Data:
    """The run's dataset folder, changed by an attack and put back afterwards."""

    def __init__(self, root: Path):
        self.root, self.saved = root, {}

    def keep(self, rel):
        path = self.root / rel
        if rel not in self.saved:
            self.saved[rel] = path.read_bytes() if path.exists() else None
        return path

    def restore(self):
        for rel, data in self.saved.items():
            path = self.root / rel
            path.unlink(missing_ok=True)  # first: it may be a FIFO now (writing to it would block)
            if data is not None:
                path.write_bytes(data)
        self.saved = {}


def split_attacks(work: Path, run: Path, data: Data, lines: list) -> None:
    entries = test_entries(run)
    metrics = json.loads((run / "metrics.json").read_text())
    lines.append(f"## test splits (run: {len(entries)} test images, test accuracy {metrics['test_accuracy']:.4f})")
    by_class: dict = {}
    for rel, _, label in entries:
        by_class.setdefault(label, []).append(rel)

    def shrink():
        for i, (rel, _, _) in enumerate(entries):
            if i % 5 < 2:  # 40 %, from every class
                data.keep(rel).unlink()

    def reencode():
        for rel, _, _ in entries[:10]:
            path = data.keep(rel)
            image = cv2.imread(str(path))
            ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
            path.write_bytes(buf.tobytes())

    def one_class():
        for label, rels in by_class.items():
            if label != 1:
                for rel in rels:
                    data.keep(rel).unlink()

    def two_left():
        for rel, _, _ in entries[2:]:
            data.keep(rel).unlink()

    def fifo():
        path = data.keep(entries[0][0])
        path.unlink()
        os.mkfifo(path)

    for name, attack in [
        ("40% of the test files deleted", shrink),
        ("10 test PNGs re-encoded", reencode),
        ('only class "1" left in the test split', one_class),
        ("2 test images left", two_left),
        ("a test image replaced by a FIFO", fifo),
    ]:
        attack()
        try:
            report_convert(work, run, name, lines)
        finally:
            data.restore()

    old = work / "old-run"
    shutil.rmtree(old, ignore_errors=True)
    shutil.copytree(run, old)
    (old / "split.json").unlink()
    for rel, _, _ in entries[:6]:
        copy = Path(rel).with_name("copy-" + Path(rel).name)
        data.keep(str(copy))
        shutil.copy(data.root / rel, data.root / copy)
    try:
        report_convert(work, old, "old run (no split.json), 6 images added to its folder", lines)
    finally:
        data.restore()


def report_convert(work: Path, run: Path, name: str, lines: list) -> None:
    out = work / "bundle"
    shutil.rmtree(out, ignore_errors=True)
    refused = cli("convert", run, "--out", out, *FAST, timeout=300)
    verdict = "REFUSED" if refused.returncode else "CONVERTED (not refused)"
    lines.append(f"- {name}: {verdict}: {last_error(refused) if refused.returncode else ''}")
    allowed = cli("convert", run, "--out", out, *FAST, "--allow-partial-test", "--overwrite", timeout=300)
    if allowed.returncode:
        lines.append(f"    --allow-partial-test: refused too: {last_error(allowed)}")
        return
    manifest = json.loads((out / "manifest.json").read_text())
    split = manifest["source"]["test_split"]
    lines.append(
        f"    --allow-partial-test: manifest source.test_split: images {split['images']} of {split.get('recorded')}"
        f" recorded, missing {split['missing']}, missing classes {split.get('missing_classes', [])}, "
        f"per class {split['per_class']}; source.accuracy {manifest['source']['accuracy']}"
    )
    lines.append(f"    verification.txt: {(out / 'verification.txt').read_text().splitlines()[0][:200]}")
    warnings = [l for l in allowed.stderr.splitlines() if l.startswith("WARNING")]
    lines.append(f"    warnings said: {len(warnings)}" + (f" (first: {warnings[0][:160]})" if warnings else ""))


def tiny_run(work: Path, digits: Path, lines: list) -> None:
    """A run whose test split is tiny at training (3 classes x 8 images, 10 % test): flagged, not refused."""
    data = work / "tiny-data"
    if not data.exists():
        for label in ("0", "1", "2"):
            (data / label).mkdir(parents=True)
            for f in sorted((digits / label).iterdir())[:8]:
                shutil.copy(f, data / label / f.name)
    run = work / "tiny-run"
    if not (run / "metrics.json").is_file():
        done = cli("train", "--data", data, "--out", run, "--image-size", 16, "--epochs", 2, "--test-fraction", 0.1)
        if done.returncode:
            lines.append(f"- tiny run: training failed: {last_error(done)}")
            return
    out = work / "tiny-bundle"
    shutil.rmtree(out, ignore_errors=True)
    done = cli("convert", run, "--out", out, *FAST)
    warnings = [l for l in done.stderr.splitlines() if l.startswith("WARNING")]
    if done.returncode:
        lines.append(f"- split tiny at training: refused: {last_error(done)}")
        return
    split = json.loads((out / "manifest.json").read_text())["source"]["test_split"]
    lines.append(
        f"- split tiny at training ({split['images']} images, per class {split['per_class']}): converted, "
        f"{len(warnings)} warning(s): {' | '.join(w[:120] for w in warnings)}"
    )


def output_attacks(work: Path, run: Path, lines: list) -> None:
    lines.append("## outputs (each refused before any work; every file outside the bundle compared by sha256)")
    area = work / "outputs"
    shutil.rmtree(area, ignore_errors=True)
    area.mkdir()
    (area / "victim.tar").write_bytes(b"a user's archive")
    (area / "folder.tar").mkdir()
    (area / "folder.tar" / "notes.txt").write_text("mine")
    (area / "elsewhere.txt").write_text("mine")
    (area / "link.tar").symlink_to(area / "elsewhere.txt")
    (area / "userfile").write_text("not a bundle")
    (area / "busy").mkdir()
    (area / "busy" / "photo.jpg").write_bytes(b"\xff\xd8 a photo")
    (area / "empty").mkdir()
    os.mkfifo(area / "fifo.tar")
    cases = [
        ("--tar onto a FIFO BUNDLE.tar", ["--out", area / "fifo", "--tar"], None),
        ("--tar onto a user's victim.tar", ["--out", area / "victim", "--tar"], None),
        ("--tar onto a folder BUNDLE.tar", ["--out", area / "folder", "--tar"], None),
        ("--tar onto a symlink BUNDLE.tar", ["--out", area / "link", "--tar"], None),
        ("--tar onto a user's victim.tar with --overwrite", ["--out", area / "victim", "--tar", "--overwrite"], None),
        ("--out at a user's file", ["--out", area / "userfile"], None),
        ("--out . in a folder holding a photo, --tar", ["--out", ".", "--tar"], area / "busy"),
        ("--out . in an empty folder, --tar", ["--out", ".", "--tar"], area / "empty"),
        ("the same again (bundle and tar exist)", ["--out", ".", "--tar"], area / "empty"),
        ("the same with --overwrite (ours: replaced)", ["--out", ".", "--tar", "--overwrite"], area / "empty"),
        ("--tar --overwrite onto our archive holding a user's notes.txt", ["--out", area / "notes", "--tar"], None),
    ]
    replaced = 0
    for name, args, cwd in cases:
        if "notes.txt" in name:  # empty.tar, as its convert wrote it, with the user's notes added
            _archive_with_notes(area / "empty.tar", area / "notes.tar", "notes")
            args = [*args, "--overwrite"]
        before = snapshot(area)
        done = cli("convert", run, *FAST, *args, cwd=cwd, timeout=300)
        after = snapshot(area)
        ours = {k for k in after if k.startswith(("empty/", "empty.tar"))}
        changed = [k for k, v in before.items() if k not in ours and after.get(k) != v]
        replaced += len(changed)
        outcome = "written" if done.returncode == 0 else f"refused: {last_error(done)[:170]}"
        lines.append(f"- {name}: {outcome}; files outside the bundle changed: {len(changed)}")
    leftovers = [p.name for p in area.iterdir() if p.name.endswith((".partial", ".old"))]
    lines.append(f"files outside the bundle replaced or changed in all: {replaced}; partials left: {leftovers}")


def _archive_with_notes(ours: Path, target: Path, name: str) -> None:
    with tarfile.open(ours) as src, tarfile.open(target, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            member.name = name + member.name[member.name.index("/") :] if "/" in member.name else name
            dst.addfile(member, data)
        info = tarfile.TarInfo(f"{name}/notes.txt")
        body = b"field notes, 3 months"
        info.size = len(body)
        dst.addfile(info, io.BytesIO(body))


def option_attacks(run: Path, lines: list) -> None:
    """Numbers convert must refuse before any work (nan compares false: `drop > nan` turns a gate off)."""
    lines.append("## options (each must be refused before any work)")
    cases = [
        ["--max-prune-drop", "nan", "--prune", "sparsity=0.97", "--prune-epochs", "1"],
        ["--max-prune-drop", "-5", "--prune", "sparsity=0.97", "--prune-epochs", "1"],
        ["--max-prune-drop", "inf", "--prune", "sparsity=0.97", "--prune-epochs", "1"],
        ["--max-drop", "nan"],
        ["--max-drop", "-1"],
        ["--seed", "-1"],
    ]
    accepted = 0
    for args in cases:
        out = run.parent / "option-bundle"
        shutil.rmtree(out, ignore_errors=True)
        started = time.perf_counter()
        done = cli("convert", run, "--out", out, "--formats", "tflite-fp32", "--check-images", "1", *args)
        accepted += done.returncode == 0
        outcome = "ACCEPTED" if done.returncode == 0 else f"refused in {time.perf_counter() - started:.1f} s"
        lines.append(f"- {' '.join(args[:2])}: {outcome}: {last_error(done)[:150] if done.returncode else ''}")
    lines.append(f"accepted: {accepted} of {len(cases)}")


def kill_attacks(work: Path, run: Path, kills: int, lines: list) -> None:
    args = [sys.executable, "-m", "edgecls.cli", "convert", str(run)]
    options = ["--formats", "tflite-int8,onnx-int8", "--max-drop", "100", "--tar"]
    area, temp = work / "kills", work / "kills-tmp"
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": str(CODE)}

    def fresh():
        for p in (area, temp):
            shutil.rmtree(p, ignore_errors=True)
            p.mkdir()

    fresh()
    started = time.perf_counter()
    subprocess.run([*args, "--out", str(area / "b"), *options], env=env, capture_output=True, check=True, cwd=CODE)
    full = time.perf_counter() - started
    # What an uninterrupted convert leaves in TMPDIR too (a library's session file): not a kill's leftover.
    usual = {f"TMPDIR/{p.name}" for p in temp.iterdir()}
    lines.append(
        f"## kill -9 at {kills} moments of a {full:.1f} s convert (--tar, tflite-int8 and onnx-int8), code {CODE}; "
        f"left by an uninterrupted convert too, not counted: {sorted(usual)}"
    )
    bad = 0
    for k in range(kills):
        fresh()
        moment = full * (k + 0.5) / kills
        victim = subprocess.Popen(
            [*args, "--out", str(area / "b"), *options], env=env, stderr=subprocess.DEVNULL, cwd=CODE
        )
        time.sleep(moment)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        left = sorted(p.name for p in area.iterdir()) + sorted(f"TMPDIR/{p.name}" for p in temp.iterdir())
        again = subprocess.run(
            [*args, "--out", str(area / "b"), *options, "--overwrite"], env=env, capture_output=True, cwd=CODE
        )
        after = sorted(p.name for p in area.iterdir() if p.name not in ("b", "b.tar"))
        after += sorted(f"TMPDIR/{p.name}" for p in temp.iterdir() if f"TMPDIR/{p.name}" not in usual)
        ok = again.returncode == 0 and (area / "b" / "manifest.json").is_file() and not after
        bad += not ok
        lines.append(
            f"- kill at {moment:5.1f} s: left {len(left)} ({', '.join(n[:40] for n in left[:3])}); rerun "
            f"{'ok' if again.returncode == 0 else 'FAILED: ' + last_error(again)}; left after the rerun: {after}"
        )
    lines.append(f"moments with leftovers after the rerun (or a failed rerun): {bad} of {kills}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="work folder (default: a new temp folder)")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--code", help="run the edgecls of this checkout (e.g. the base, to compare)")
    parser.add_argument("--only-kills", action="store_true", help="only the kill -9 attack (an older edgecls)")
    parser.add_argument("--sections", default="splits,outputs,options,kills", help="which attacks, comma-separated")
    parser.add_argument("--results", default=str(RESULTS))
    ns = parser.parse_args()
    global CODE
    CODE = Path(ns.code).resolve() if ns.code else CODE
    started = time.perf_counter()
    work = work_folder(ns.work, "edgecls-convert-attacks-")
    from edgecls.core.datasets.builtin import materialize

    digits = materialize("digits")
    data = work / "digits"
    if not data.exists():
        shutil.copytree(digits, data)
    run = work / "run"
    if not (run / "metrics.json").is_file():
        done = cli("train", "--data", data, "--out", run, "--image-size", 16, "--epochs", 4, "--overwrite")
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
    lines = [f"# benchmarks/convert_attacks.py: digits copied to a folder, 16 px run, {time.strftime('%Y-%m-%d')}"]
    sections = {"kills"} if ns.only_kills else set(ns.sections.split(","))
    if "splits" in sections:
        split_attacks(work, run, Data(data), lines)
        tiny_run(work, digits, lines)
    if "outputs" in sections:
        output_attacks(work, run, lines)
    if "options" in sections:
        option_attacks(run, lines)
    if "kills" in sections:
        kill_attacks(work, run, ns.kills, lines)
    lines.append(f"# {time.perf_counter() - started:.0f} s in all; work folder {work}")
    Path(ns.results).parent.mkdir(exist_ok=True)
    Path(ns.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
