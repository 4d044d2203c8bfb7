"""edgecls.explain: Grad-CAM (`edgecls explain`) on real trained runs."""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError
from tests.conftest import cli_error, make_home_like, run_cli, snapshot, write_image

SIZE = 32
KINDS = ("circle", "square", "triangle")


def _quadrant_image(kind: str, quadrant: int, rng) -> np.ndarray:
    """Noise everywhere; one black or white shape (the class) entirely inside `quadrant` (0 1 / 2 3)."""
    import cv2

    image = rng.normal(128, 40, (SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    half, r = SIZE // 2, rng.uniform(5.5, 6.5)
    qy, qx = divmod(quadrant, 2)
    cx, cy = qx * half + rng.uniform(r + 1, half - r - 1), qy * half + rng.uniform(r + 1, half - r - 1)
    colour = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
    if kind == "circle":
        cv2.circle(image, (int(cx * 16), int(cy * 16)), int(r * 16), colour, -1, cv2.LINE_AA, shift=4)
    else:
        n = 4 if kind == "square" else 3
        t = (np.pi / 4 if n == 4 else -np.pi / 2) + np.arange(n) * 2 * np.pi / n
        points = np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
        cv2.fillPoly(image, [np.round(points * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)
    return image


def _write_quadrant_set(root, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for i in range(per_class):
            quadrant = int(rng.integers(4))
            write_image(root / kind / f"q{quadrant}_{i:03d}.png", _quadrant_image(kind, quadrant, rng))


def _quadrant_mass(heatmap: np.ndarray, quadrant: int) -> float:
    half = heatmap.shape[0] // 2
    qy, qx = divmod(quadrant, 2)
    return float(heatmap[qy * half : (qy + 1) * half, qx * half : (qx + 1) * half].sum() / max(heatmap.sum(), 1e-12))


@pytest.mark.slow
def test_gradcam_mass_lies_in_the_objects_quadrant(tmp_path):
    """The only informative object sits in one quadrant of noise: most of the heatmap must lie there (chance: 25 %)."""
    from edgecls.core.augment import AugmentSpec
    from edgecls.explain import explain_run
    from edgecls.train import TrainConfig, train

    _write_quadrant_set(tmp_path / "train", 60, seed=0)
    _write_quadrant_set(tmp_path / "held", 12, seed=1)  # images the model never saw
    started = time.perf_counter()
    train(
        TrainConfig(
            data=str(tmp_path / "train"),
            out=str(tmp_path / "run"),
            image_size=SIZE,
            epochs=12,
            batch_size=16,
            learning_rate=3e-3,
            patience=0,
            seed=0,
            model_options={"widths": (16, 32, 64)},
            augment=AugmentSpec.off(),
            verbose=0,
        )
    )
    trained = time.perf_counter()
    result = explain_run(tmp_path / "run", [tmp_path / "held"], tmp_path / "cams")
    assert result.layer == "block2_relu1"  # the last conv block's activation, found automatically
    right = [e for e in result.explanations if e.predicted == e.image.parent.name]
    masses = [_quadrant_mass(e.heatmap, int(e.image.name[1])) for e in right]
    print(
        f"\ngrad-cam: {len(right)}/{len(result.explanations)} held-out images right; mean mass in the object's "
        f"quadrant {np.mean(masses):.3f} (min {np.min(masses):.3f}); train {trained - started:.1f}s, "
        f"explain {time.perf_counter() - trained:.1f}s"
    )
    assert len(right) >= 0.6 * len(result.explanations)  # the model learned the shapes
    assert np.mean(masses) >= 0.5
    assert len(list((tmp_path / "cams").glob("*.png"))) == len(result.explanations) + 1  # + the contact sheet


def test_explain_cli_writes_a_png_per_image_a_contact_sheet_and_a_manifest(tmp_path, tiny_run_dir, shapes_folder):
    import cv2

    single = shapes_folder / "square" / "000.png"
    out = tmp_path / "cams"
    result = run_cli("explain", tiny_run_dir, shapes_folder / "circle", single, "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "explanations.json").read_text())
    assert manifest["format"].startswith("edgecls-explain/") and manifest["layer"] == "block1_relu1"
    circles = len(list((shapes_folder / "circle").iterdir()))
    assert len(manifest["images"]) == circles + 1
    assert manifest["contact_sheets"] == ["contact_sheet.png"]
    for item in manifest["images"]:
        picture = cv2.imread(str(out / item["png"]))
        assert picture.shape[1] > 2 * 224 and picture.shape[0] > 224  # image | heat map, the caption above
        assert item["class"] == item["predicted"] and 0 <= item["score"] <= 1
        assert item["true"] == ("square" if item["image"] == str(single) else "circle")  # the folder's name
        assert f"{out / item['png']}" in result.stdout
    assert picture[0, 0].min() == 255  # the caption's band is white, above the pictures
    np.testing.assert_array_equal(
        picture[-224:, :224], _display(tiny_run_dir, single)
    )  # the image itself, not hidden by heat
    assert sum(i["predicted"] == "circle" for i in manifest["images"]) > circles / 2  # a trained model, not noise
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[0] >= 128 and _caption_height(sheet) >= 12  # readable at the sheet's own size
    assert "already exists" in cli_error(run_cli("explain", tiny_run_dir, single, "--out", out))


def _display(run_dir, path):
    """The image as the explanation's left half shows it (the run's crop and fit at 224, BGR as cv2 reads it)."""
    import cv2

    from edgecls.core.rundir import open_run
    from edgecls.explain import _display_image
    from edgecls.runtime.preprocess import load_image

    return cv2.cvtColor(_display_image(load_image(path), open_run(run_dir).preprocess), cv2.COLOR_RGB2BGR)


def _caption_height(sheet) -> int:
    """Rows of dark text in the caption under the sheet's first tile (between the tile and the next row)."""
    band = sheet[128 : 128 + 40, :250].min(axis=(1, 2)) < 128
    rows = np.flatnonzero(band)
    return int(rows[-1] - rows[0] + 1) if rows.size else 0


def test_caption_says_true_then_predicted_and_marks_a_wrong_answer():
    from edgecls.explain import Explanation, caption

    right = Explanation(Path("a/7.png"), "7", 0.9, "7", 0.9, np.zeros((2, 2)), "7.png", truth="7")
    assert caption(right) == [("7 → 7 (0.90)", (0, 0, 0))]
    wrong = Explanation(Path("a/3.png"), "8", 0.1, "3", 0.85, np.zeros((2, 2)), "3.png", truth="8")
    assert caption(wrong) == [("8 → 3 (0.85)", (200, 0, 0)), ("map of 8 (0.10)", (0, 0, 160))]
    unknown = Explanation(Path("x/cat.png"), "dog", 0.6, "dog", 0.6, np.zeros((2, 2)), "cat.png")
    assert caption(unknown)[0][0] == "cat: dog (0.60)"


def test_gradcam_maps_of_two_classes_on_the_same_image_differ(tiny_run_dir, shapes_folder):
    """A model that tells the classes apart looks at different evidence for each: the maps of the predicted class
    and of another class on one image are far apart, and the predicted class's maps differ from image to image."""
    from edgecls.core.rundir import open_run
    from edgecls.explain import GradCam, find_layer
    from edgecls.runtime.preprocess import load_image, preprocess

    run = open_run(tiny_run_dir)
    model = run.load_model()
    files = [sorted((shapes_folder / kind).iterdir())[i] for kind in ("circle", "square", "triangle") for i in range(3)]
    x = np.stack([preprocess(load_image(f), run.preprocess, order="rgb") for f in files])
    cam = GradCam(model, find_layer(model))
    own, probs = cam(x)
    right = probs.argmax(1) == np.repeat(np.arange(3), 3)
    assert right.sum() >= 6  # trained enough to tell them apart
    other, _ = cam(x, 1)  # "square" for every image; for the squares, compare with "circle"
    other[3:6] = cam(x[3:6], 0)[0]
    differences = np.abs(own - other).mean(axis=(1, 2))[right]
    print(f"\nmean |own - other class map| per image: {np.round(differences, 3)}")
    assert np.median(differences) > 0.1, differences
    flat = own.reshape(len(own), -1)
    same = np.corrcoef(flat[right])[np.triu_indices(int(right.sum()), 1)]
    assert np.nanmean(same) < 0.8  # not one central blob for every image


def test_the_automatic_layer_keeps_a_grid_fine_enough_to_localise():
    """At 16 pixels the last block's grid is 4x4 (one central blob on every image): Grad-CAM takes the block before,
    at 8x8; at 32 pixels the last block is 8x8 and is taken."""
    from edgecls.explain import MIN_GRID, find_layer
    from edgecls.models import create_model

    small = create_model("simple", 10, (16, 16, 1), widths=(8, 16, 32))
    assert small.get_layer("block2_relu1").output.shape[1] == 4
    assert find_layer(small).name == "block1_relu1" and MIN_GRID <= 8
    assert find_layer(create_model("simple", 10, (32, 32, 1), widths=(8, 16, 32))).name == "block2_relu1"


def test_the_automatic_layer_of_a_pretrained_backbone_at_its_usual_size_stays_late():
    """MobileNetV2 at 96 pixels ends on a 3x3 grid: Grad-CAM takes the deepest convolution still at 6x6 (block 13's
    expansion), not block 6 at 12x12 halfway through the network; at 192 pixels the last 6x6 grid is kept."""
    import keras

    from edgecls.explain import find_layer

    def nested(size: int):
        backbone = keras.applications.MobileNetV2(input_shape=(size, size, 3), weights=None, include_top=False)
        inputs = keras.Input((size, size, 3))
        outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
        return keras.Model(inputs, outputs)

    assert find_layer(nested(96)).name.endswith("/block_13_expand_relu")
    assert find_layer(nested(192)).name.endswith("/out_relu")


def test_explain_asked_class_and_overwrite_replace_only_ours(tmp_path, tiny_run_dir, shapes_folder):
    from edgecls.explain import explain_run

    out = tmp_path / "cams"
    image = shapes_folder / "circle" / "000.png"
    first = explain_run(tiny_run_dir, [image], out)
    a = first.explanations[0]
    other = next(label for label in ("circle", "square", "triangle") if label != a.predicted)
    b = explain_run(tiny_run_dir, [image], out, class_label=other, overwrite=True).explanations[0]
    assert (b.label, b.predicted) == (other, a.predicted) and b.score + a.score <= 1.0 + 1e-6
    assert not np.allclose(a.heatmap, b.heatmap)  # another class, another gradient
    assert sorted(p.name for p in out.iterdir()) == ["000.png", "explanations.json"]  # the old set is gone, one image
    (out / "notes.txt").write_text("mine")
    with pytest.raises(EdgeclsError, match="notes.txt"):
        explain_run(tiny_run_dir, [image], out, overwrite=True)


@pytest.mark.parametrize("case", ["class", "layer", "unreadable", "out-file", "out-home", "out-in-images", "out-run"])
def test_explain_refuses_bad_input_in_one_line_and_writes_nothing(tmp_path, tiny_run_dir, shapes_folder, case):
    from edgecls.explain import explain_run

    images = tmp_path / "images"
    shutil.copytree(shapes_folder / "circle", images)
    out, kwargs = tmp_path / "out", {}
    if case == "class":
        kwargs["class_label"] = "hexagon"
    elif case == "layer":
        kwargs["layer"] = "block9_conv0"
    elif case == "unreadable":
        (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    elif case == "out-file":
        out.write_text("a file")
    elif case == "out-home":
        out = make_home_like(tmp_path / "home")
    elif case == "out-in-images":
        out = images / "cams"
    elif case == "out-run":
        out = tiny_run_dir
    before = [snapshot(tmp_path), snapshot(tiny_run_dir)]
    with pytest.raises(EdgeclsError) as error:
        explain_run(tiny_run_dir, [images], out, **kwargs)
    message = str(error.value)
    assert "\n" not in message
    expected = {
        "class": "circle, square, triangle",
        "layer": "block1_relu1",
        "unreadable": "broken.png",
        "out-file": "not a folder",
        "out-home": "not an edgecls explanation folder",
        "out-in-images": "the images",
        "out-run": "the run directory",
    }[case]
    assert expected in message, message
    assert [snapshot(tmp_path), snapshot(tiny_run_dir)] == before


def test_explain_cli_unknown_layer_is_one_error_line(tmp_path, tiny_run_dir, shapes_folder):
    message = cli_error(
        run_cli(
            "explain", tiny_run_dir, shapes_folder / "circle" / "000.png", "--out", tmp_path / "o", "--layer", "nope"
        )
    )
    assert "layer 'nope' is not in the model" in message and "block1_relu1" in message
    assert not (tmp_path / "o").exists()
    from edgecls.core.rundir import open_run
    from edgecls.explain import resolve_layer

    with pytest.raises(EdgeclsError, match="'gap' has no spatial output"):
        resolve_layer(open_run(tiny_run_dir).load_model(), "gap")


def test_gradcam_of_a_nested_backbone_equals_the_flat_model(tiny_run_dir):
    """Keras 3 keeps a nested model's layers in its own graph; the re-traced model must give the same maps."""
    import keras

    from edgecls.core.rundir import open_run
    from edgecls.explain import GradCam, find_layer, resolve_layer

    flat = open_run(tiny_run_dir).load_model()
    backbone = keras.Model(flat.inputs, flat.get_layer("block1_relu1").output, name="backbone")
    x = keras.Input(shape=flat.input_shape[1:])
    y = backbone(x)
    for name in ("block1_pool", "gap", "head_dropout", "predictions"):
        y = flat.get_layer(name)(y)
    nested = keras.Model(x, y)
    assert find_layer(nested).name == "backbone/block1_relu1"
    assert resolve_layer(nested, "block0_relu1").name == "backbone/block0_relu1"
    images = np.random.default_rng(0).uniform(0, 1, (4, *flat.input_shape[1:])).astype(np.float32)
    expected, probs = GradCam(flat, find_layer(flat))(images)
    got, nested_probs = GradCam(nested, find_layer(nested))(images)
    assert expected.shape == (4, 16, 16) and expected.max() > 0
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(nested_probs, flat.predict(images, verbose=0), atol=1e-5)


def test_gradcam_nested_frozen_mobilenetv2_and_sigmoid_head():
    """The transfer-learning pattern: a frozen keras.applications backbone as one layer, and a 2-class sigmoid head."""
    import keras

    from edgecls.explain import GradCam, find_layer

    keras.utils.set_random_seed(0)  # random weights: some draws give an all-negative (ReLU'd to zero) map
    base = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False, weights=None)
    base.trainable = False  # no trainable variable below the head: the tape must still follow the input
    x = keras.Input((64, 64, 3))
    y = keras.layers.Dense(1, activation="sigmoid", name="predictions")(keras.layers.GlobalAveragePooling2D()(base(x)))
    model = keras.Model(x, y)
    ref = find_layer(model)
    assert ref.name == f"{base.name}/block_6_expand_relu"  # the last 8x8 grid (out_relu is 2x2 at 64 pixels)
    images = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)
    cam = GradCam(model, ref)
    maps1, probs = cam(images, 1)
    maps0, _ = cam(images, 0)
    p = model.predict(images, verbose=0)[:, 0]
    np.testing.assert_allclose(probs, np.stack([1 - p, p], 1), atol=1e-5)
    assert maps1.shape == (3, 8, 8) and np.isfinite(maps1).all() and maps1.max() > 0
    assert not np.allclose(maps0, maps1)  # class 0's evidence is the opposite gradient


@pytest.mark.slow
def test_explain_mobilenetv2_run_finds_its_layer(tmp_path, shapes_folder):
    from edgecls.explain import explain_run
    from edgecls.train import TrainConfig, train

    train(
        TrainConfig(
            data=str(shapes_folder),
            out=str(tmp_path / "run"),
            model="mobilenetv2",
            image_size=32,
            epochs=1,
            batch_size=16,
            seed=0,
            model_options={"alpha": 0.35},
            verbose=0,
        )
    )
    result = explain_run(tmp_path / "run", [shapes_folder / "square"], tmp_path / "cams")
    assert result.layer == "block_3_expand_relu"  # flat MobileNetV2 at 32 pixels: the last 8x8 grid (out_relu 1x1)
    pngs = sorted(p.name for p in (tmp_path / "cams").glob("*.png"))
    assert len(pngs) == len(list((shapes_folder / "square").iterdir())) + 1 and "contact_sheet.png" in pngs


def test_an_input_named_like_a_contact_sheet_keeps_its_own_png(tmp_path):
    """contact_sheet.jpg and contact_sheet_2.png would be written under the sheets' names, then overwritten."""
    from edgecls.explain import image_paths

    for name in ("contact_sheet.jpg", "Contact_Sheet_2.png", "cat.png"):
        write_image(tmp_path / name, np.zeros((8, 8, 3), np.uint8))
    names = [png for _, png in image_paths([tmp_path])]
    assert names == ["Contact_Sheet_2-2.png", "cat.png", "contact_sheet-2.png"], names


def test_explain_image_named_contact_sheet_is_not_overwritten_by_the_sheet(tmp_path, tiny_run_dir):
    """An input called contact_sheet.jpg gets the PNG name the contact sheet then overwrites (edgecls/explain.py:
    image_paths does not reserve contact_sheet*.png); the manifest lists one file twice."""
    from edgecls.explain import explain_run

    rng = np.random.default_rng(0)
    for name in ("contact_sheet.jpg", "cat.png"):
        write_image(tmp_path / "images" / name, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    result = explain_run(tiny_run_dir, [tmp_path / "images"], tmp_path / "cams")
    names = [e.png for e in result.explanations] + result.sheets
    assert len(set(names)) == len(names), names


def test_a_long_caption_keeps_the_arrow_both_classes_and_the_probability():
    from edgecls.explain import fit_caption

    text = "american_pit_bull_terrier → staffordshire_bull_terrier (0.61)"  # README's /data/pets labels
    for width in (180, 270, 448):
        shown = fit_caption(text, width)
        first, second = shown.removesuffix(" (0.61)").split(" → ")
        assert shown.endswith(" (0.61)") and first.startswith("am") and second.startswith("st"), shown
        assert first.endswith("r") and second.endswith("r") and "…" in shown, shown
    assert fit_caption(text, 2000) == text


def test_a_chinese_class_name_is_drawn_with_a_font_that_has_its_glyphs():
    """With a CJK font installed (.ci/run installs fonts-wqy-microhei), '猫 → 狗' draws two different glyphs where
    DejaVu Sans alone drew the same empty box for both."""
    from edgecls.explain import _caption_band, font_file

    if font_file("猫狗") is None:  # skip here, fail under CI (CI=true), which installs it, as require_tool does
        why = "no installed font has CJK glyphs (Debian package `fonts-wqy-microhei`; .ci/run installs it)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    band = lambda text: _caption_band(300, [(text, (0, 0, 0))], 16)  # noqa: E731
    assert not np.array_equal(band("猫 → 狗 (0.80)"), band("狗 → 狗 (0.80)"))
    assert not np.array_equal(band("猫 → 狗 (0.80)"), band("□ → □ (0.80)"))


def test_a_class_name_no_font_draws_is_captioned_by_its_index_said_once(monkeypatch, capsys):
    from edgecls import explain

    monkeypatch.setattr(explain, "_system_fonts", lambda: ())  # only DejaVu Sans: no CJK glyphs
    explain.font_file.cache_clear()
    monkeypatch.setattr(explain, "_UNDRAWABLE", set())
    try:
        item = explain.Explanation(Path("a/1.png"), "狗", 0.8, "狗", 0.8, np.zeros((2, 2)), "1.png", truth="猫")
        assert explain.caption(item, ["猫", "狗"]) == [("#0 → #1 (0.80)", (200, 0, 0))]
        assert explain.caption(item, ["猫", "狗"]) == [("#0 → #1 (0.80)", (200, 0, 0))]
    finally:
        explain.font_file.cache_clear()
    err = capsys.readouterr().err
    assert err.count("'猫'") == 1 and err.count("'狗'") == 1 and "fonts-wqy-microhei" in err, err
