"""Result sinks (runtime/daemon/sinks.py): what is rotated, and what is only written to."""

import json
import os
import stat
import threading

import pytest

from edgecls.runtime.daemon.sinks import JsonlFileSink
from tests.conftest import run_cli
from tests.daemon_helpers import write_test_video


def _fill(sink, lines=200):
    for i in range(lines):
        sink.write({"frame": i, "label": "x" * 40})


def test_a_fifo_given_as_results_file_is_written_to_and_never_rotated(tmp_path):
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
    reader.start()
    sink = JsonlFileSink(fifo, max_bytes=300, backups=2)
    _fill(sink)
    sink.close()
    reader.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.fifo"]
    assert got and got[0].count(b"\n") == 200


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_a_null_device_given_as_results_file_is_never_renamed_and_closes_without_error(tmp_path, caplog):
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a real /dev/null, in a folder of the test's own
    sink = JsonlFileSink(null, max_bytes=300, backups=2)
    _fill(sink)
    sink.close()  # fsync of a device is EINVAL: it must not be tried
    assert stat.S_ISCHR(os.lstat(null).st_mode), "the device node was renamed and replaced by a regular file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]


def test_a_regular_results_file_is_still_rotated_by_size(tmp_path):
    path = tmp_path / "r.jsonl"
    sink = JsonlFileSink(path, max_bytes=300, backups=2)
    _fill(sink, 20)
    sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]


def test_results_keep_flowing_to_the_file_when_rotation_fails(tmp_path, caplog):
    """A rotation that cannot rename (here path.1 is a folder) used to close the file and lose every later result."""
    path = tmp_path / "results.jsonl"
    (tmp_path / "results.jsonl.1").mkdir()
    (tmp_path / "results.jsonl.1" / "keep").write_text("x")
    sink = JsonlFileSink(path, max_bytes=200, backups=1)
    for i in range(20):
        sink.write({"frame": i, "pad": "x" * 20})
    sink.close()
    assert [json.loads(line)["frame"] for line in path.read_text().splitlines()] == list(range(20))
    assert len([r for r in caplog.records if "cannot rotate" in r.getMessage()]) == 1  # said once, not per line


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("sinks") / "clip.avi", pattern="ramp")


def test_a_simple_line_records_the_view_when_the_source_is_turned_or_cropped(tiny_bundle, video):
    """Per-source settings keep the simple mode; its lines say what the model saw, and stay as before without."""
    turned = run_cli(
        "run", tiny_bundle, "--source", video, "--every-frame", "--max-frames", "2", "--set", "rotate=180",
        timeout=120,
    )  # fmt: skip
    assert turned.returncode == 0, turned.stderr[-2000:]
    rows = [json.loads(line) for line in turned.stdout.splitlines()]
    assert len(rows) == 2 and all(r["view"]["rotate"] == 180 and r["view"]["flip"] == "none" for r in rows)
    plain = run_cli("run", tiny_bundle, "--source", video, "--every-frame", "--max-frames", "1", timeout=120)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "view" not in json.loads(plain.stdout.splitlines()[0])
