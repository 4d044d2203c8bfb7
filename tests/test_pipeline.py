"""convert's pipeline: the test split it verifies on, where it writes, and what a kill leaves behind."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, cli_error, run_cli, train_on_private_copy


@pytest.fixture(scope="module")
def private_run(tmp_path_factory, shapes_folder):
    """A 16 px run on its own copy of the shapes: tests may change its data (and put it back)."""
    return train_on_private_copy(shapes_folder, tmp_path_factory.mktemp("private"))


def _test_files(run: Path, data: Path) -> list:
    record = json.loads((run / "split.json").read_text())
    return [(data / e[0] if isinstance(e, list) else data / e["path"]) for e in record["splits"]["test"]]


def _convert(run, out, **options):
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    return convert(run, out, ConvertOptions(formats=parse_formats("tflite-fp32"), max_drop=100.0, **options))


def test_convert_refuses_a_test_split_that_lost_images_and_records_them_when_allowed(private_run, tmp_path, capsys):
    from edgecls.runtime.errors import DataError

    run, data = private_run
    files = _test_files(run, data)
    gone = {f: f.read_bytes() for f in files[:3]}
    try:
        for f in gone:
            f.unlink()
        with pytest.raises(DataError) as refused:
            _convert(run, tmp_path / "b")
        assert f"3 of the {len(files)} test images the run was tested on are gone" in str(refused.value)
        assert "--allow-partial-test" in str(refused.value)
        assert not (tmp_path / "b").exists()
        _convert(run, tmp_path / "b", allow_partial_test=True)
    finally:
        for f, data_ in gone.items():
            f.write_bytes(data_)
    split = json.loads((tmp_path / "b" / "manifest.json").read_text())["source"]["test_split"]
    assert split["images"] == len(files) - 3 and split["recorded"] == len(files) and split["missing"] == 3
    assert split["allowed_partial"] and sum(split["per_class"].values()) == len(files) - 3
    text = (tmp_path / "b" / "verification.txt").read_text()
    assert f"verified on {len(files) - 3} test images" in text and "PARTIAL" in text
    assert "per-class recall" in text and all(label in text for label in split["per_class"])
    assert f"WARNING: only {len(files) - 3} test images" in capsys.readouterr().err  # tiny: flagged loudly


def test_convert_refuses_a_test_split_that_lost_a_whole_class(private_run, tmp_path):
    from edgecls.runtime.errors import DataError

    run, data = private_run
    labels = json.loads((run / "metadata.json").read_text())["labels"]
    circles = [f for f in _test_files(run, data) if f.parent.name == labels[0]]
    saved = {f: f.read_bytes() for f in circles}
    try:
        for f in circles:
            f.write_bytes(b"not an image any more")  # changed since training: dropped as changed
        with pytest.raises(DataError, match=f"class\\(es\\) {labels[0]} lost every test image"):
            _convert(run, tmp_path / "b")
    finally:
        for f, data_ in saved.items():
            f.write_bytes(data_)
    assert not (tmp_path / "b").exists()


def test_convert_of_an_old_run_refuses_when_its_dataset_changed(private_run, tmp_path):
    """No split.json: the split is recomputed from the folder; a folder that changed would mix training images in."""
    from edgecls.runtime.errors import DataError

    run, data = private_run
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    (old / "split.json").unlink()
    added = []
    try:
        for f in sorted(data.rglob("*.png"))[:6]:
            added.append(f.with_name("copy-" + f.name))
            shutil.copy(f, added[-1])
        with pytest.raises(DataError, match="no split.json and its dataset changed since training"):
            _convert(old, tmp_path / "b")
    finally:
        for f in added:
            f.unlink()
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("case", ["user-file", "folder", "link"])
def test_tar_never_replaces_what_is_not_an_edgecls_archive(private_run, tmp_path, case):
    run, _ = private_run
    target = tmp_path / "b.tar"
    if case == "user-file":
        target.write_bytes(b"years of work")
    elif case == "folder":
        target.mkdir()
        (target / "notes.txt").write_text("mine")
    else:
        (tmp_path / "elsewhere").write_text("mine")
        target.symlink_to(tmp_path / "elsewhere")
    before = sorted(p.name for p in tmp_path.iterdir())
    error = cli_error(run_cli("convert", run, "--out", tmp_path / "b", "--formats", "tflite-fp32", "--tar"))
    assert "(--tar)" in error and "choose another --out" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before any work: no bundle, no partial
    assert case != "user-file" or target.read_bytes() == b"years of work"


def test_convert_out_dot_with_tar_writes_the_archive_beside_the_folder(private_run, tmp_path):
    run, _ = private_run
    here = tmp_path / "here"
    here.mkdir()
    args = ["--out", ".", "--formats", "tflite-fp32", "--max-drop", "100", "--tar"]
    done = run_cli("convert", run, *args, cwd=here, env={"PYTHONPATH": str(REPO)})  # this checkout's edgecls
    assert done.returncode == 0, done.stderr[-2000:]
    assert (here / "manifest.json").is_file() and (tmp_path / "here.tar").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "here.tar"]  # no partial left


def test_a_test_file_that_stops_decoding_mid_run_is_dropped_from_every_side(private_run, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGECLS_IN_MEMORY_MB", "0")  # streamed: files are decoded in each pass
    from edgecls.converters.formats import parse_formats
    from edgecls.converters.pipeline import ConvertOptions, convert

    run, data = private_run
    victim = _test_files(run, data)[0]
    saved, out, stop = victim.read_bytes(), tmp_path / "b", threading.Event()

    def spoil_after_the_first_artifact():
        while not stop.is_set():
            if list(tmp_path.glob(".b.*.partial/model_fp32.tflite")):
                victim.write_bytes(saved[:20])
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=spoil_after_the_first_artifact)
    watcher.start()
    try:
        options = ConvertOptions(
            formats=parse_formats("tflite-fp32,onnx-fp32"), max_drop=100.0, allow_partial_test=True
        )
        convert(run, out, options)
    finally:
        stop.set()
        watcher.join()
        victim.write_bytes(saved)
    split = json.loads((out / "manifest.json").read_text())["source"]["test_split"]
    assert split["dropped"] == [str(victim)] and split["images"] == len(_test_files(run, data)) - 1


def test_two_converts_racing_to_one_out_the_second_names_the_first(private_run, tmp_path):
    run, _ = private_run
    out = tmp_path / "b"
    args = [sys.executable, "-m", "edgecls.cli", "convert", str(run), "--out", str(out), "--formats", "tflite-fp32"]
    first = subprocess.Popen([*args, "--max-drop", "100"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".b.*.partial")) and time.monotonic() < deadline:
            time.sleep(0.05)
        error = cli_error(run_cli("convert", run, "--out", out, "--formats", "tflite-fp32", "--max-drop", "100"))
        assert f"another convert or import (pid {first.pid}) is writing {out}" in error
    finally:
        first.communicate(timeout=300)
    assert first.returncode == 0 and (out / "manifest.json").is_file()


def test_kill_9_leaves_nothing_that_a_rerun_does_not_remove(private_run, tmp_path):
    """The ONNX export of the model is written in the stage, which the next convert into the folder removes."""
    run, _ = private_run
    temp, parent = tmp_path / "tmp", tmp_path / "out"
    temp.mkdir()
    parent.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    args = [sys.executable, "-m", "edgecls.cli", "convert", str(run), "--out", str(parent / "b")]
    args += ["--formats", "onnx-fp32", "--max-drop", "100"]
    victim = subprocess.Popen(args, env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not [*temp.rglob("*.onnx"), *parent.rglob("*.onnx")]:
        time.sleep(0.02)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    again = run_cli(*args[3:], env={"TMPDIR": str(temp)}, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert [p.name for p in parent.iterdir()] == ["b"]
    assert not [p for p in temp.iterdir() if p.name.startswith("edgecls-convert-") or p.suffix == ".onnx"]


def test_max_drop_nan_or_negative_is_refused_before_any_work(private_run, tmp_path):
    run, _ = private_run
    for value in ("nan", "-1"):
        error = cli_error(run_cli("convert", run, "--out", tmp_path / "b", "--max-drop", value))
        assert f"--max-drop {float(value)} is not a number of accuracy points of 0 or more" in error
    assert list(tmp_path.iterdir()) == []


def test_every_numeric_option_of_convert_refuses_nan_and_negatives_before_any_work(private_run, tmp_path):
    """`drop > nan` is always false: --max-prune-drop nan turned the pruning gate off and a 10 % model shipped."""
    from edgecls.converters.pipeline import ConvertOptions, convert
    from edgecls.runtime.errors import EdgeclsError

    run, _ = private_run
    args = ["--formats", "tflite-fp32", "--max-drop", "100", "--prune", "sparsity=0.5", "--prune-epochs", "1"]
    for value in ("nan", "-1"):
        error = cli_error(run_cli("convert", run, "--out", tmp_path / "b", *args, "--max-prune-drop", value))
        assert f"--max-prune-drop {float(value)} is not a number of accuracy points of 0 or more" in error
    assert "-1 is not in the range x>=0" in cli_error(run_cli("convert", run, "--out", tmp_path / "b", "--seed", "-1"))
    bad = [
        {"max_prune_drop": float("nan")},
        {"max_drop": float("inf")},
        {"calibration_size": 0},
        {"check_images": -1},
        {"seed": -1},
        {"workers": 0},
        {"prune_epochs": 0},
        {"qat_epochs": 2.5},
    ]
    for fields in bad:
        with pytest.raises(EdgeclsError, match="is not a (number of accuracy points|whole number of)"):
            convert(run, tmp_path / "b", ConvertOptions(**fields))
    assert list(tmp_path.iterdir()) == []


def test_a_library_convert_leaves_other_threads_temp_files_and_tempfile_tempdir_alone(private_run, tmp_path):
    """tempfile.tempdir belongs to the whole process: a convert in one thread must not redirect another's."""
    import tempfile

    run, _ = private_run
    before, errors, mine = tempfile.tempdir, [], None
    worker = threading.Thread(target=lambda: _record_error(errors, _convert, run, tmp_path / "b"))
    worker.start()
    try:
        while worker.is_alive() and not list(tmp_path.glob(".b.*.partial/.work")):
            time.sleep(0.01)
        mine = Path(tempfile.mkdtemp(prefix="user-cache-"))  # another part of the program, meanwhile
        (mine / "data").write_text("important")
    finally:
        worker.join(300)
    assert not errors, errors
    assert (tmp_path / "b" / "manifest.json").is_file()
    assert tmp_path not in mine.parents and (mine / "data").read_text() == "important"
    shutil.rmtree(mine)
    assert tempfile.tempdir == before


def _record_error(errors: list, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001  (reported by the test's thread)
        errors.append(repr(exc))


def test_a_convert_that_puts_temp_files_in_its_stage_restores_tempfile_tempdir_when_it_fails(private_run, tmp_path):
    import tempfile

    from edgecls.runtime.errors import DataError

    run, data = private_run
    before, files = tempfile.tempdir, _test_files(run, data)
    gone = {f: f.read_bytes() for f in files[:3]}
    try:
        for f in gone:
            f.unlink()
        with pytest.raises(DataError, match="are gone"):  # refused inside the redirected block
            _convert(run, tmp_path / "b", temp_in_stage=True)
    finally:
        for f, data_ in gone.items():
            f.write_bytes(data_)
    assert tempfile.tempdir == before
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_a_class_name_holding_a_line_break_before_any_work(private_run, tmp_path):
    """labels.txt holds one label a line: such a bundle would be refused by predict and flash as edited."""
    from edgecls.runtime.errors import EdgeclsError

    run, _ = private_run
    broken = tmp_path / "run"
    shutil.copytree(run, broken)
    meta = json.loads((broken / "metadata.json").read_text())
    meta["labels"][0] = "circ\nle"
    (broken / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(EdgeclsError, match=r"class name 'circ\\nle' holds a line break"):
        _convert(broken, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_an_imported_models_manifest_names_the_model_and_no_accuracy_without_data():
    from edgecls.converters.pipeline import _imported
    from edgecls.runtime.bundle import Manifest
    from edgecls.runtime.preprocess import PreprocessSpec

    record = {"kind": "import", "framework": "keras", "file": "m.keras", "verified_on_data": False, "data": None}
    manifest = Manifest(
        ["a", "b"],
        PreprocessSpec(8, 8),
        "softmax",
        [],
        reference_accuracy=1.0,
        source={"run": "/tmp/work/run", "model_sha256": "x", "accuracy": 1.0, "test_images": 32, "macs": 5},
    )
    _imported(manifest, record)
    assert manifest.source == {**record, "accuracy": None, "test_images": 32, "macs": 5}
    assert manifest.reference_accuracy is None
    verified = Manifest(["a", "b"], PreprocessSpec(8, 8), "softmax", [], 0.9, source={"accuracy": 0.9})
    _imported(verified, {**record, "verified_on_data": True})
    assert (verified.reference_accuracy, verified.source["accuracy"]) == (0.9, 0.9)
