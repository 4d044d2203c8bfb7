"""`edgecls compare`: McNemar's exact test on real models' paired predictions, the verdict, the exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import cli_error, run_cli

from edgecls.compare import Paired, decide, mcnemar

# Two-sided exact McNemar for 15 fixed and 2 broken: 2 * P(X <= 2), X ~ Binomial(17, 1/2) = 2 * 154 / 2**17.
P_15_2 = 2 * (1 + 17 + 136) / 2**17


def test_the_exact_test_matches_the_binomial_tail_by_hand():
    a_right = [True] * 40 + [False] * 15 + [True] * 2 + [False] * 3
    b_right = [True] * 40 + [True] * 15 + [False] * 2 + [False] * 3
    test = mcnemar(a_right, b_right)
    assert (test.fixed, test.broken) == (15, 2)
    assert test.p_value == pytest.approx(P_15_2, rel=1e-12)
    assert P_15_2 < 0.01
    assert mcnemar([True, False], [True, False]).p_value == 1.0  # no discordant pair
    assert mcnemar([True] * 5 + [False] * 5, [False] * 5 + [True] * 5).p_value == pytest.approx(1.0)


def test_the_verdict_names_the_better_model_only_when_the_test_says_so():
    truth = ["a"] * 20
    fixed_one = Paired([f"{i}.png" for i in range(20)], truth, ["b"] + ["a"] * 19, ["a"] * 20)
    result = decide(fixed_one, ("A", "B"))
    assert result.better is None and result.verdict.startswith("no difference (p = 1.000")
    assert "1 images fixed, 0 broken" in result.verdict
    b_worse = Paired([f"{i}.png" for i in range(20)], truth, ["a"] * 20, ["b"] * 10 + ["a"] * 10)
    result = decide(b_worse, ("A", "B"))
    assert result.better == "A" and result.verdict.startswith("A is better: -50.0 points, p = 0.002")


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory, shapes_folder) -> Path:
    """A second real run on the same classes that disagrees with the tiny run on many images (16 px, 1 epoch)."""
    from edgecls.train import TrainConfig, train

    out = tmp_path_factory.mktemp("weak") / "weak"
    train(
        TrainConfig(
            data=str(shapes_folder),
            out=str(out),
            image_size=16,
            epochs=1,
            seed=3,
            model_options={"widths": (4,)},
            verbose=0,
        )
    )
    return out


def _predictions(run: Path, folder: Path) -> dict:
    from edgecls.compare.models import RunModel, truth_images

    images, _ = truth_images(folder)
    by_path = RunModel(run).predict(images)
    return {p: (Path(p), label) for p, label in by_path.items()}


def _held_out(tmp_path: Path, shapes_folder: Path, a: Path, b: Path, fixed: int, broken: int) -> Path:
    """Every shapes image, filed under a truth chosen from the two models' own predictions: `fixed` images where
    they disagree go under B's label, `broken` under A's, the other disagreements under a third class (both
    wrong), and agreements under their common label (both right)."""
    pa, pb = _predictions(a, shapes_folder), _predictions(b, shapes_folder)
    labels = sorted(p.name for p in shapes_folder.iterdir() if p.is_dir())
    differ = sorted(name for name in pa if pa[name][1] != pb[name][1])
    assert len(differ) >= fixed + broken + 1, f"the runs disagree on only {len(differ)} images"
    out = tmp_path / "held-out"
    for i, name in enumerate(sorted(pa)):
        path, label_a = pa[name]
        label_b = pb[name][1]
        if name not in differ:
            truth = label_a
        elif differ.index(name) < fixed:
            truth = label_b
        elif differ.index(name) < fixed + broken:
            truth = label_a
        else:
            truth = next(l for l in labels if l not in (label_a, label_b))
        (out / truth).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, out / truth / f"{i:03d}{path.suffix}")
    return out


def test_b_fixing_15_and_breaking_2_is_better_at_p_below_001(tmp_path, shapes_folder, tiny_run_dir, weak_run):
    held_out = _held_out(tmp_path, shapes_folder, weak_run, tiny_run_dir, fixed=15, broken=2)
    sheet = tmp_path / "disagreements.png"
    args = ("compare", weak_run, tiny_run_dir, "--data", held_out)
    result = run_cli(*args, "--json", "--require-better", "--sheet", sheet)
    assert result.returncode == 0, result.stderr[-2000:]
    doc = json.loads(result.stdout)
    assert (doc["test"]["fixed"], doc["test"]["broken"]) == (15, 2)
    assert doc["test"]["p_value"] == pytest.approx(P_15_2, rel=1e-9)
    assert doc["better"] == "B" and doc["verdict"].startswith("B is better: +")
    assert "p = 0.002, 15 images fixed, 2 broken" in doc["verdict"]
    assert doc["images"] == 72 and len(doc["disagreements"]) >= 17
    assert {row["class"] for row in doc["per_class"]} == {"circle", "square", "triangle"}
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{min(60, len(doc['disagreements']))} disagreement(s)" in result.stderr

    swapped = run_cli("compare", tiny_run_dir, weak_run, "--data", held_out, "--require-better")
    assert swapped.returncode == 3, swapped.stderr[-2000:]  # not better: 3, apart from an error's 1
    assert swapped.stdout.splitlines()[-1].startswith("A is better: -")
    assert "--require-better: B is not better than A" in swapped.stderr
    assert "Traceback" not in swapped.stderr


def test_two_identical_models_make_no_difference_with_p_1(tmp_path, shapes_folder, tiny_run_dir):
    result = run_cli("compare", tiny_run_dir, tiny_run_dir, "--data", shapes_folder)
    assert result.returncode == 0, result.stderr[-2000:]
    last = result.stdout.splitlines()[-1]
    assert last.startswith("no difference (p = 1.000"), last
    assert "0 images fixed, 0 broken" in last
    assert "0 images where A and B disagree" in result.stdout
    strict = run_cli("compare", tiny_run_dir, tiny_run_dir, "--data", shapes_folder, "--require-better")
    assert strict.returncode == 3 and strict.stdout.splitlines()[-1].startswith("no difference")
    broken = run_cli("compare", tiny_run_dir, tmp_path / "gone", "--data", shapes_folder, "--require-better")
    assert "does not exist" in cli_error(broken)  # an error exits 1, as every edgecls command's errors do


def test_a_run_and_its_bundle_compare_on_the_runs_recorded_test_split(tiny_run_dir, tiny_bundle):
    """Without --data a bundle has no recorded split: the one-line error says to give held-out images."""
    from edgecls.compare import compare

    result = compare(tiny_run_dir, tiny_run_dir)
    assert result.data == f"the test split of {tiny_run_dir}"
    assert 0 < result.images <= 72 * 0.3 and result.test.p_value == 1.0
    bundle = next(p for p in (tiny_bundle, tiny_bundle.with_suffix(".tar")) if p.exists())
    error = cli_error(run_cli("compare", tiny_run_dir, bundle))
    assert "is a bundle: give held-out images with --data FOLDER" in error


def test_a_bundle_is_run_by_the_devices_runtime_on_the_same_images(tiny_run_dir, tiny_bundle, shapes_folder):
    from edgecls.compare import compare

    bundle = next(p for p in (tiny_bundle, tiny_bundle.with_suffix(".tar")) if p.exists())
    result = compare(tiny_run_dir, bundle, data=str(shapes_folder))
    assert result.images == 72
    assert abs(result.accuracy_a - result.accuracy_b) < 0.1  # the int8 artifact stays close to Keras
    fixed = sum(d["b"] == d["truth"] != d["a"] for d in result.disagreements)
    broken = sum(d["a"] == d["truth"] != d["b"] for d in result.disagreements)
    assert (result.test.fixed, result.test.broken) == (fixed, broken)
    assert all(d["a"] != d["b"] for d in result.disagreements)


def test_latency_comes_from_both_bench_jsons_side_by_side(tmp_path, tiny_run_dir, shapes_folder):
    def bench(path: Path, p50: float) -> Path:
        record = {"file": "m.tflite", "format": "tflite", "precision": "int8", "threads": 1}
        doc = {"format": "edgecls-bench/1", "records": [{**record, "p50_ms": p50, "p90_ms": p50, "p99_ms": p50}]}
        path.write_text(json.dumps(doc))
        return path

    a, b = bench(tmp_path / "a.json", 2.0), bench(tmp_path / "b.json", 3.0)
    result = run_cli("compare", tiny_run_dir, tiny_run_dir, "--data", shapes_folder, "--bench-a", a, "--bench-b", b)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "latency tflite-int8 threads=1: p50 2.000 -> 3.000 ms (+50.0%)" in result.stdout
    error = cli_error(run_cli("compare", tiny_run_dir, tiny_run_dir, "--bench-a", a))
    assert "give --bench-a A.json and --bench-b B.json" in error


def test_the_sheet_never_replaces_a_file_compare_did_not_write(tmp_path, tiny_run_dir, shapes_folder):
    theirs = tmp_path / "holiday.png"
    theirs.write_bytes(b"\x89PNG\r\n\x1a\nsomeone's photo")
    error = cli_error(run_cli("compare", tiny_run_dir, tiny_run_dir, "--data", shapes_folder, "--sheet", theirs))
    assert "is not a sheet edgecls compare wrote" in error
    assert theirs.read_bytes().endswith(b"someone's photo")
    ours = tmp_path / "sheet.png"
    for _ in range(2):  # a sheet of ours is replaced
        result = run_cli("compare", tiny_run_dir, tiny_run_dir, "--data", shapes_folder, "--sheet", ours)
        assert result.returncode == 0, result.stderr[-2000:]


def test_a_path_that_is_neither_a_run_nor_a_bundle_is_one_line(tmp_path, tiny_run_dir):
    (tmp_path / "photos").mkdir()
    error = cli_error(run_cli("compare", tiny_run_dir, tmp_path / "photos", "--data", tmp_path))
    assert "B " in error and "is neither a run directory" in error
    error = cli_error(run_cli("compare", tmp_path / "gone", tiny_run_dir))
    assert "A " in error and "does not exist" in error


def test_only_a_png_whose_software_chunk_is_compares_counts_as_our_sheet(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgecls.compare.sheet import SHEET_MARK, check_sheet_path
    from edgecls.runtime.errors import EdgeclsError

    gate = tmp_path / "gate.sh"
    gate.write_text("#!/bin/sh\nedgecls compare runs/v1 runs/v2 --require-better\n")
    fig = plt.figure(figsize=(1, 1))
    for name, metadata in (("comment.png", {"Comment": SHEET_MARK}), ("other.png", {"Software": SHEET_MARK + "x"})):
        fig.savefig(tmp_path / name, metadata=metadata)
    for path in (gate, tmp_path / "comment.png", tmp_path / "other.png"):
        with pytest.raises(EdgeclsError, match="is not a sheet edgecls compare wrote"):
            check_sheet_path(path)
    fig.savefig(tmp_path / "ours.png", metadata={"Software": SHEET_MARK})
    assert check_sheet_path(tmp_path / "ours.png") == tmp_path / "ours.png"


def _relabelled_bundle(tmp_path: Path, tiny_bundle: Path, labels: list) -> Path:
    """A copy of the tiny bundle whose manifest and labels.txt name its outputs `labels` (sha256 kept right)."""
    from edgecls.runtime.bundle import sha256_file

    bundle = tmp_path / "relabelled"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "labels.txt").write_text("\n".join(labels) + "\n")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["labels"] = labels
    manifest["files"]["labels.txt"] = sha256_file(bundle / "labels.txt")
    manifest.pop("checks", None)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return bundle


def test_each_model_names_its_outputs_in_its_own_label_order(tmp_path, shapes_folder, tiny_run_dir, tiny_bundle):
    from test_train_init_from import _captures, _train

    from edgecls.compare import compare
    from edgecls.runtime.bundle import LABELS, _lines

    captures = _captures(tmp_path / "captures", {"circle": ("circle", 3), "blob": ("triangle", 6)})
    child = tmp_path / "child"  # a grown child: [circle, square, triangle, blob], not sorted; the parent's weights
    _train(child, (str(shapes_folder), str(captures)), tiny_run_dir, learning_rate=1e-12)
    result = compare(tiny_run_dir, child, data=str(shapes_folder))
    assert result.accuracy_a > 0.8 and abs(result.accuracy_b - result.accuracy_a) < 0.1, result.verdict
    bundle = next(p for p in (tiny_bundle, tiny_bundle.with_suffix(".tar")) if p.is_dir())
    assert _lines((bundle / LABELS).read_text()) == ["circle", "square", "triangle"]
    shuffled = _relabelled_bundle(tmp_path, bundle, ["square", "triangle", "circle"])  # output 0 now says square
    on_shapes = compare(tiny_run_dir, shuffled, data=str(shapes_folder))
    assert on_shapes.accuracy_b < 0.3 and on_shapes.test.fixed + on_shapes.test.broken > 30


def test_runs_tested_on_other_images_are_refused_without_data(tiny_run_dir, weak_run):
    from edgecls.compare import compare
    from edgecls.runtime.errors import DataError

    with pytest.raises(DataError, match=r"A and B were not tested on the same images .*--data FOLDER"):
        compare(tiny_run_dir, weak_run)


def test_a_run_whose_test_images_are_gone_is_refused_without_data(tmp_path, shapes_folder):
    from conftest import train_on_private_copy

    run, data = train_on_private_copy(shapes_folder, tmp_path)
    first = json.loads((run / "split.json").read_text())["splits"]["test"][0][0]
    (data / first).unlink()
    error = cli_error(run_cli("compare", run, run))
    assert "test image(s) of" in error and "are gone or changed" in error


def test_no_image_read_by_both_models_is_an_error_not_a_verdict():
    from edgecls.runtime.errors import DataError

    with pytest.raises(DataError, match="no image was read by both models"):
        decide(Paired([], [], [], []), ("A", "B"))


def test_a_sheet_path_that_is_a_folder_is_refused_naming_a_file(tmp_path):
    from edgecls.compare.sheet import check_sheet_path
    from edgecls.runtime.errors import EdgeclsError

    with pytest.raises(EdgeclsError, match=r"is a folder: give a file name, e.g. .*disagreements\.png"):
        check_sheet_path(tmp_path)


def test_images_a_run_trained_on_given_as_data_are_counted_in_a_warning(tmp_path, tiny_run_dir, shapes_folder, capfd):
    from edgecls.compare import compare

    doc = json.loads((tiny_run_dir / "split.json").read_text())
    record, labels = doc["splits"], doc["labels"]
    seen = len({d for name in ("train", "val") for _, d, _ in record[name]})
    compare(tiny_run_dir, tiny_run_dir, data=str(shapes_folder))
    err = capfd.readouterr().err
    for which in ("A", "B"):
        assert f"warning: {seen} of the 72 images of {shapes_folder} are images {which} ({tiny_run_dir}) " in err, err
    held_out = tmp_path / "held-out"
    for path, _, label in record["test"]:
        (held_out / labels[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shapes_folder / path, held_out / labels[label] / Path(path).name)
    compare(tiny_run_dir, tiny_run_dir, data=str(held_out))
    assert "trained or validated on" not in capfd.readouterr().err


def test_latency_says_which_side_holds_an_artifact_in_a_and_b_words(tmp_path):
    from edgecls.compare import latency_lines

    def bench(path: Path, host: str, rows: dict) -> Path:
        records = [
            {"file": f"m.{f}", "format": f, "precision": "int8", "threads": 1, "p50_ms": p, "p90_ms": p, "p99_ms": p}
            for f, p in rows.items()
        ]
        path.write_text(json.dumps({"format": "edgecls-bench/1", "machine": {"hostname": host}, "records": records}))
        return path

    a = bench(tmp_path / "a.json", "pi", {"tflite": 2.0, "onnx": 4.0})
    b = bench(tmp_path / "b.json", "laptop", {"tflite": 1.0, "openvino": 1.5})
    lines = latency_lines(a, b)
    assert "tflite-int8 threads=1: p50 2.000 -> 1.000 ms (-50.0%)" in lines
    assert "only A's bench has onnx-int8 threads=1; only B's has openvino-int8 threads=1" in lines
    assert any(line.startswith("note: A's bench ran on pi") and "B's on laptop" in line for line in lines), lines
    assert not any("baseline" in line or "REGRESSION" in line or "this run" in line for line in lines), lines


def test_a_parent_whose_model_changed_since_its_child_started_is_warned_about(
    tmp_path, shapes_folder, tiny_run_dir, capfd
):
    from test_train_init_from import _train

    from edgecls.compare import compare
    from edgecls.models import create_model

    parent, child = tmp_path / "v1", tmp_path / "v2"
    shutil.copytree(tiny_run_dir, parent)
    _train(child, str(shapes_folder), parent, learning_rate=1e-12)
    compare(parent, child)
    assert "changed since" not in capfd.readouterr().err
    create_model("simple", 3, (32, 32, 3), widths=(4,)).save(parent / "model.keras")
    compare(parent, child)
    err = capfd.readouterr().err
    assert f"warning: A's model {parent / 'model.keras'} changed since B ({child}) was started from it" in err, err
