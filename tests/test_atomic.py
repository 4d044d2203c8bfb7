"""edgecls.runtime.atomic: what `--overwrite` may replace, and the stages an interrupted run leaves behind."""

import json
import os
import subprocess
import sys

import pytest

from edgecls.runtime.atomic import check_output, host_tag, remove_stale_stages, staged_dir
from edgecls.runtime.errors import EdgeclsError
from tests.conftest import make_home_like, snapshot


def our_run(path, fmt="edgecls-run/1"):
    path.mkdir(parents=True)
    (path / "metadata.json").write_text(json.dumps({"format": fmt, "labels": ["a", "b"]}))
    (path / "model.keras").write_bytes(b"old model")
    return path


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("marker", [None, "metadata.json", "manifest.json"])
def test_overwrite_refuses_a_folder_that_is_not_ours_and_keeps_every_file(tmp_path, marker):
    home = make_home_like(tmp_path / "home")
    before = snapshot(home)
    with pytest.raises(EdgeclsError, match="not .*--overwrite will not replace it"):
        with staged_dir(home, overwrite=True, marker=marker) as stage:
            (stage / "model.keras").write_bytes(b"new")
    assert snapshot(home) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no stage left either


def test_overwrite_refuses_a_run_of_another_format_or_a_bundle_for_a_run(tmp_path):
    foreign = our_run(tmp_path / "foreign", fmt="someone-else/1")
    with pytest.raises(EdgeclsError, match="not an edgecls run"):
        check_output(foreign, overwrite=True, marker="metadata.json")
    run = our_run(tmp_path / "run")
    with pytest.raises(EdgeclsError, match="not an edgecls bundle"):
        check_output(run, overwrite=True, marker="manifest.json")
    (tmp_path / "file").write_text("x")
    with pytest.raises(EdgeclsError, match="not a folder"):
        check_output(tmp_path / "file", overwrite=True, marker="metadata.json")
    (tmp_path / "link").symlink_to(run)
    with pytest.raises(EdgeclsError, match="symbolic link"):
        check_output(tmp_path / "link", overwrite=True, marker="metadata.json")
    assert (run / "model.keras").read_bytes() == b"old model"


def test_overwrite_replaces_our_run_and_an_empty_folder_needs_no_flag(tmp_path):
    run = our_run(tmp_path / "run")
    with pytest.raises(EdgeclsError, match="pass --overwrite"):
        check_output(run, overwrite=False, marker="metadata.json")
    with staged_dir(run, overwrite=True, marker="metadata.json") as stage:
        (stage / "model.keras").write_bytes(b"new model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in run.iterdir()] == ["model.keras"] and (run / "model.keras").read_bytes() == b"new model"

    empty = tmp_path / "empty"
    empty.mkdir()
    with staged_dir(empty, marker="metadata.json") as stage:
        (stage / "metadata.json").write_text("{}")
    assert [p.name for p in empty.iterdir()] == ["metadata.json"]


@pytest.mark.parametrize("out, relation", [("data", "is"), ("data/run", "lies inside"), (".", "contains")])
def test_output_may_not_be_contain_or_lie_inside_a_protected_folder(tmp_path, out, relation):
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "1.png").write_bytes(b"png")
    before = snapshot(tmp_path)
    with pytest.raises(EdgeclsError, match=f"{relation} the dataset"):
        with staged_dir(tmp_path / out, overwrite=True, marker="metadata.json", protect={"the dataset": data}):
            pass
    assert snapshot(tmp_path) == before


def test_something_foreign_appearing_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(EdgeclsError, match="not an edgecls run"):
        with staged_dir(out, overwrite=True, marker="metadata.json") as stage:
            (stage / "metadata.json").write_text("{}")
            out.mkdir()
            (out / "notes.txt").write_text("the user's")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "notes.txt").read_text() == "the user's"


def test_stale_stages_of_dead_processes_are_removed_live_and_foreign_ones_kept(tmp_path):
    host, pid = host_tag(), dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = tmp_path / f".run.{pid}@{host}.abcd1234.partial"
        alive = tmp_path / f".run.{live.pid}@{host}.efgh5678.partial"
        other_host = tmp_path / f".run.{pid}@{host}x.ijkl9012.partial"
        old_style = tmp_path / ".run.mnop3456.partial"  # before pids were recorded: cannot tell, kept
        user = tmp_path / ".config"
        for d in (stale, alive, other_host, old_style, user):
            (d / "sub").mkdir(parents=True)
        with staged_dir(tmp_path / "another", marker="metadata.json") as stage:
            (stage / "f").write_text("x")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert names == sorted(["another", alive.name, other_host.name, old_style.name, ".config"])
    finally:
        live.kill()
        live.wait()


def test_a_stale_replacement_puts_the_previous_product_back(tmp_path):
    previous = tmp_path / f".run.{dead_pid()}@{host_tag()}.abcd1234.old"
    (previous / "model.keras").parent.mkdir()
    (previous / "model.keras").write_bytes(b"previous")
    assert remove_stale_stages(tmp_path) == []
    assert (tmp_path / "run" / "model.keras").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_stage_is_removed_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_dir(tmp_path / "out") as stage:
            (stage / "half").write_text("x")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    assert os.path.basename(str(stage)).startswith(f".out.{os.getpid()}@")


def test_a_dead_stage_whose_name_holds_a_newline_is_removed_and_its_temp_files_are_not_foreign(tmp_path):
    """`--out $'b\\nx'`: the stage and write_bytes' temp file of a killed run carry the newline in their names."""
    stage = tmp_path / f".b\nx.{dead_pid()}@{host_tag()}.abc123.partial"
    stage.mkdir()
    (stage / "model.tflite").write_bytes(b"half")
    assert remove_stale_stages(tmp_path) == [stage]
    assert list(tmp_path.iterdir()) == []
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"format": "edgecls-bundle/1"}))
    (bundle / ".labels\nv2.txt.k3j_9.tmp").write_bytes(b"half")  # a kill during write_bytes of `labels\nv2.txt`
    check_output(bundle, overwrite=True, marker="manifest.json", contents={"manifest.json", "labels\nv2.txt"})
