"""converters.output: what `convert --tar` may replace at BUNDLE.tar, and how the finished archive lands there."""

import json
import os
import tarfile
import threading

import pytest

from edgecls.converters import output
from edgecls.converters.output import check_tar_output, publish_tar
from edgecls.core.outputs import bundle_contents
from edgecls.runtime.atomic import check_output
from edgecls.runtime.errors import EdgeclsError


def _bundle_tar(tmp_path, extra: dict | None = None):
    """tmp_path/b.tar as `--tar` writes it (b/ with a manifest, labels, an artifact), plus `extra` files."""
    folder = tmp_path / "src" / "b"
    folder.mkdir(parents=True)
    manifest = {"format": "edgecls-bundle/1", "files": {"labels.txt": "0" * 64}, "artifacts": [{"file": "m.tflite"}]}
    files = {"manifest.json": json.dumps(manifest), "labels.txt": "a\nb\n", "m.tflite": "model", **(extra or {})}
    for name, text in files.items():
        (folder / name).write_text(text)
    with tarfile.open(tmp_path / "b.tar", "w") as tar:
        tar.add(folder, arcname="b")
    return tmp_path / "b.tar"


def test_tar_check_refuses_a_fifo_at_bundle_tar_instead_of_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "b.tar"
    os.mkfifo(fifo)
    errors = []
    worker = threading.Thread(target=lambda: _record(errors, check_tar_output, tmp_path / "b", True), daemon=True)
    worker.start()
    worker.join(20)
    if worker.is_alive():  # blocked in open(): release it with a writer that closes at once, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(5)
        pytest.fail("checking BUNDLE.tar blocked on a FIFO")
    assert errors and "(--tar) exists and is not a regular file" in errors[0], errors
    assert fifo.exists()


def _record(errors: list, check, *args):
    try:
        check(*args)
    except EdgeclsError as exc:
        errors.append(str(exc))


def test_overwrite_refuses_a_bundle_archive_that_also_holds_the_users_own_files(tmp_path):
    archive = _bundle_tar(tmp_path, {"notes.txt": "field notes, 3 months"})
    before = archive.read_bytes()
    with pytest.raises(EdgeclsError, match=r"also holds b/notes.txt, which edgecls did not write"):
        check_tar_output(tmp_path / "b", overwrite=True)
    assert archive.read_bytes() == before


def test_overwrite_replaces_a_bundle_archive_holding_only_what_its_manifest_lists(tmp_path):
    archive = _bundle_tar(tmp_path)
    with pytest.raises(EdgeclsError, match="pass --overwrite"):
        check_tar_output(tmp_path / "b")
    assert check_tar_output(tmp_path / "b", overwrite=True) == archive
    assert check_tar_output(tmp_path / "c", overwrite=True) is None  # a free name


def test_publish_never_replaces_a_file_that_takes_the_name_after_the_check(tmp_path, monkeypatch):
    """Another process writes BUNDLE.tar between publish's check and its rename: its file stays, ours goes."""
    check = output.check_tar_output

    def check_then_someone_writes(out, overwrite=False):
        found = check(out, overwrite)
        (tmp_path / "b.tar").write_bytes(b"someone else's archive")
        return found

    monkeypatch.setattr(output, "check_tar_output", check_then_someone_writes)
    holder = tmp_path / ".b.tar.1@h.x.partial"
    holder.mkdir()
    (holder / "b.tar").write_bytes(b"our archive")
    with pytest.raises(EdgeclsError, match="appeared while this convert ran"):
        publish_tar(holder / "b.tar", tmp_path / "b", overwrite=True)
    assert (tmp_path / "b.tar").read_bytes() == b"someone else's archive"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.tar"]  # the holder is cleaned


def test_overwrite_keeps_a_bundle_holding_files_its_manifest_does_not_list(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    manifest = {
        "format": "edgecls-bundle/1",
        "artifacts": [{"file": "model_fp32.tflite"}],
        "files": {"labels.txt": "0"},
    }
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for name in ("model_fp32.tflite", "labels.txt", "verification.txt"):
        (bundle / name).write_text("x")
    check_output(bundle, True, marker="manifest.json", contents=bundle_contents)  # only its own files: replaceable
    (bundle / "notes.md").write_text("mine")
    with pytest.raises(EdgeclsError, match="also holds notes.md"):
        check_output(bundle, True, marker="manifest.json", contents=bundle_contents)
