"""Grad-CAM: which pixels made the trained Keras model say what it said.

Per image: the gradients of the class's score (the logit when the head is a softmax or sigmoid
Dense, so a confident answer does not saturate them) with respect to a convolutional layer's
activations are averaged per channel into weights, and the ReLU of the weighted sum of the
activation maps is the heatmap (Selvaraju et al., 2017). It needs the Keras model and its
gradients, so it lives with training, not in `runtime/`.

The layer is found automatically: the last convolution whose grid still has MIN_GRID (5) cells a side
(the last convolution itself unless its grid is 4x4 or coarser: a pretrained backbone at 96 pixels keeps its
6x6 late blocks, not a 12x12 grid halfway through), with the normalization, activation and residual-add
layers that directly follow it (their output is what the next block sees). A coarser last grid
(4x4 at 16 pixels) paints one central blob on every image, whatever the class or the picture. A backbone nested as a
sub-model (Keras 3) is searched too; the graph is then re-traced so that the nested layer's
activations become an output of one functional model.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.core.progress import progress
from edgecls.runtime.errors import EdgeclsError

MANIFEST = "explanations.json"
FORMAT = "edgecls-explain/1"
DISPLAY_SIDE = 224  # the longer side of each image in a PNG: small files, readable labels
TILE = 128  # contact-sheet thumbnail height
SHEET_WIDTH = 1100  # about as many tiles a row as fit this width (4 image | heat map pairs)
CAPTION_PX = 16  # caption font size: capitals and digits about 12 px high at the sheet's own size
SHEET_TILES = 64  # thumbnails per contact sheet; more images make more sheets
BATCH = 16
_CONV = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
# Layers that keep the conv's grid and only rescale or gate it: Grad-CAM reads their output instead.
_ELEMENTWISE = ("BatchNormalization", "ReLU", "Activation", "LeakyReLU", "PReLU", "ELU", "Add")
MIN_GRID = 5  # cells a side the automatic layer keeps when the model has one that fine (else its finest)
SHEET = re.compile(r"contact_sheet(_\d+)?")  # the contact sheets' names (without .png): never an image's


@dataclass
class LayerRef:
    """A layer and the chain of nested sub-models holding it (empty: a layer of the model itself)."""

    layer: object
    parents: tuple = ()

    @property
    def name(self) -> str:
        return "/".join([*(p.name for p in self.parents), self.layer.name])


@dataclass
class Explanation:
    image: Path
    label: str  # the class explained: the predicted one, or --class
    score: float  # that class's probability
    predicted: str
    predicted_score: float
    heatmap: np.ndarray  # (H, W) in [0, 1], the model's input frame
    png: str = ""
    truth: str | None = None  # the true class when known (--truth, or the image's folder is named after a label)


@dataclass
class ExplainResult:
    out: Path
    layer: str
    explanations: list = field(default_factory=list)
    sheets: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- layers


def _has_grid(layer) -> bool:
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # never called, or called more than once (no single output)
        return False


def _walk(model, parents: tuple = ()):
    """Every layer in graph order, nested sub-models expanded in place (their input layers left out)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            yield from _walk(layer, (*parents, layer))
        else:
            yield LayerRef(layer, parents)


def candidate_layers(model) -> list:
    """Layers with a spatial (batch, height, width, channels) output: what Grad-CAM can read."""
    return [ref for ref in _walk(model) if _has_grid(ref.layer)]


def _grid(layer) -> int:
    """The shorter side of a layer's output grid (None sides, an input of any size, count as fine)."""
    return min(side or MIN_GRID for side in layer.output.shape[1:3])


def find_layer(model) -> LayerRef:
    """The last convolution with a grid of MIN_GRID a side (else the finest), moved past the BatchNorm,
    activation and add layers that directly follow it."""
    refs = list(_walk(model))
    convs = [i for i, ref in enumerate(refs) if type(ref.layer).__name__ in _CONV and _has_grid(ref.layer)]
    if not convs:
        raise EdgeclsError(
            f"model {model.name} has no convolutional layer to explain: Grad-CAM needs a CNN "
            f"(name a layer with a spatial output with --layer)"
        )
    fine = [i for i in convs if _grid(refs[i].layer) >= MIN_GRID]
    i = fine[-1] if fine else max(convs, key=lambda j: (_grid(refs[j].layer), j))
    while (
        i + 1 < len(refs)
        and type(refs[i + 1].layer).__name__ in _ELEMENTWISE
        and refs[i + 1].parents == refs[i].parents
        and _has_grid(refs[i + 1].layer)
    ):
        i += 1
    return refs[i]


def resolve_layer(model, name: str | None) -> LayerRef:
    """`--layer NAME` (a layer name, or SUBMODEL/NAME inside a nested model), or the automatic choice."""
    if not name:
        return find_layer(model)
    candidates = candidate_layers(model)
    matches = [ref for ref in candidates if name in (ref.name, ref.layer.name)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise EdgeclsError(f"layer name {name!r} is ambiguous: use one of {', '.join(r.name for r in matches)}")
    shown = [r.name for r in candidates[::-1][:8]]
    more = f" and {len(candidates) - len(shown)} earlier" if len(candidates) > len(shown) else ""
    other = next((r for r in _walk(model) if name in (r.name, r.layer.name)), None)
    why = "has no spatial output" if other is not None else "is not in the model"
    raise EdgeclsError(
        f"layer {name!r} {why}: choose a layer with a spatial output (--layer), e.g. {', '.join(shown)}{more}"
    )


# ---------------------------------------------------------------------------------------------- Grad-CAM


def _head(model):
    """The final Dense layer if its activation is softmax or sigmoid (Grad-CAM then uses its logits)."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") in ("softmax", "sigmoid"):
        return last
    return None


def _retraced(model, target, head):
    """(inputs, activations, head input or output) for a target inside nested sub-models.

    Keras 3 keeps a nested model's layers in its own graph, so `layer.output` is not reachable
    from the outer inputs: the outer graph is run symbolically again on fresh inputs, each nested
    model by its own graph, noting the tensors we need on the way.
    """
    import keras

    noted: dict = {}

    def holds(model_, layer) -> bool:
        return any(l is layer or (isinstance(l, keras.Model) and holds(l, layer)) for l in model_.layers)

    def operation_fn(op):
        if op is target:

            def run(*args, **kwargs):
                noted["activations"] = op(*args, **kwargs)
                return noted["activations"]

            return run
        if head is not None and op is head:

            def run(*args, **kwargs):
                noted["features"] = args[0]
                return op(*args, **kwargs)

            return run
        if isinstance(op, keras.Model) and holds(op, target):
            return lambda *args, **kwargs: op._run_through_graph(list(args), operation_fn=operation_fn)
        return op

    inputs = [keras.Input(shape=t.shape[1:], dtype=t.dtype) for t in model.inputs]
    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    outputs = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    return inputs, noted["activations"], noted.get("features", outputs)


class GradCam:
    """Grad-CAM for one model and layer; call it on a batch of preprocessed images."""

    def __init__(self, model, layer: LayerRef):
        import keras

        self.layer = layer
        self.head = _head(model)
        if not layer.parents:  # a layer of the model itself: plain functional API
            features = self.head.input if self.head is not None else model.outputs[0]
            self.grad_model = keras.Model(model.inputs, [layer.layer.output, features])
        else:
            try:
                inputs, acts, features = _retraced(model, layer.layer, self.head)
            except (AttributeError, KeyError) as exc:  # a Keras without `_run_through_graph`
                raise EdgeclsError(
                    f"cannot reach layer {layer.name} inside a nested model with this Keras "
                    f"({exc}): choose a layer of the outer model with --layer"
                ) from exc
            self.grad_model = keras.Model(inputs, [acts, features])
        units = int(model.outputs[0].shape[-1])
        self.one_unit = units == 1  # a sigmoid head: P(class 1) = p, P(class 0) = 1 - p
        self.num_classes = 2 if self.one_unit else units

    def __call__(self, batch: np.ndarray, class_index: int | None = None) -> tuple:
        """(heatmaps (N, h, w) in [0, 1] on the layer's grid, probabilities (N, classes))."""
        import tensorflow as tf
        from keras import ops

        x = tf.convert_to_tensor(batch, dtype=tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)  # a frozen backbone has no trainable variables the tape would follow
            acts, features = self.grad_model(x, training=False)
            if self.head is not None:
                logits = ops.matmul(features, self.head.kernel)
                if self.head.use_bias:
                    logits = logits + self.head.bias
                if self.one_unit:
                    logits = ops.concatenate([-logits, logits], axis=-1)  # sigmoid(z) = softmax([-z, z] / 2)
                probs = ops.softmax(logits * 0.5 if self.one_unit else logits, axis=-1)
                scores = logits
            else:  # an unknown head: its output is taken as probabilities
                probs = ops.concatenate([1 - features, features], axis=-1) if self.one_unit else features
                scores = probs
            chosen = (
                ops.argmax(probs, axis=-1) if class_index is None else ops.full((len(batch),), class_index, "int32")
            )
            target = ops.sum(ops.take_along_axis(scores, ops.cast(chosen[:, None], "int32"), axis=1))
        grads = tape.gradient(target, acts)  # each image's score depends on its own activations only
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cams = tf.nn.relu(tf.reduce_sum(weights * acts, axis=-1)).numpy()
        peak = cams.reshape(len(cams), -1).max(axis=1).reshape(-1, 1, 1)
        cams = np.where(peak > 0, cams / np.where(peak > 0, peak, 1), 0.0).astype(np.float32)
        return cams, np.asarray(probs, dtype=np.float32)


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    return np.clip(cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- pictures


def _display_image(image: np.ndarray, spec) -> np.ndarray:
    """The original image cut and fitted as the model saw it (crop, letterbox), at display size, RGB."""
    from edgecls.runtime.preprocess import pixels

    k = max(1, math.ceil(DISPLAY_SIDE / max(spec.height, spec.width)))
    display = dataclasses.replace(spec, height=spec.height * k, width=spec.width * k, color="rgb")
    return pixels(image, display, order="rgb")


def _font(px: int, text: str = ""):
    """A font at `px` pixels that has a glyph for every character of `text`: DejaVu Sans (matplotlib ships it;
    readable, with the arrow Hershey fonts lack), else an installed one that has them (a CJK font for
    Chinese class names), else DejaVu Sans."""
    from PIL import ImageFont

    path = font_file(text) or _dejavu()
    return ImageFont.truetype(path, px, index=0)  # index 0: the first face of a .ttc collection


@functools.cache
def _dejavu() -> str:
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans")


@functools.cache
def _system_fonts() -> tuple:
    """Every installed font file, CJK-looking names first (the ones that draw most class names DejaVu cannot)."""
    from matplotlib import font_manager

    files = set(font_manager.findSystemFonts()) - {_dejavu()}
    return tuple(sorted(files, key=lambda f: (not re.search(r"cjk|wqy|droid|noto|hei|song|gothic", f.lower()), f)))


@functools.cache
def _characters(path: str) -> frozenset:
    """The code points a font file has glyphs for (its first face); none if it does not read."""
    from fontTools.ttLib import TTFont

    try:
        with TTFont(path, fontNumber=0, lazy=True) as font:
            return frozenset(font.getBestCmap() or ())
    except Exception:  # noqa: BLE001 - a font we cannot read is one we do not use
        return frozenset()


@functools.lru_cache(maxsize=512)
def font_file(text: str) -> str | None:
    """The first font (DejaVu Sans, then the installed ones) with a glyph for every character of `text`."""
    wanted = frozenset(ord(c) for c in text if not c.isspace())
    return next((f for f in (_dejavu(), *_system_fonts()) if wanted <= _characters(f)), None)


_CAPTION = re.compile(r"(?P<head>map of |)(?P<a>.+?)(?:(?P<sep> → |: )(?P<b>.+))? (?P<p>\(\d+\.\d+\))")


def _cut(name: str, keep: int) -> str:
    """`name` with its middle replaced by '…' so that `keep` of its characters show."""
    return name if keep >= len(name) else name[: (keep + 1) // 2] + "…" + name[len(name) - keep // 2 :]


def fit_caption(text: str, width: int, px: int = CAPTION_PX) -> str:
    """A caption line shortened to `width` pixels: each class name cut in its middle, the longest first, so
    'true → predicted (p)' keeps its arrow, both classes and the probability. Another line: cut in its middle."""
    from PIL import Image, ImageDraw

    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font(px, text)

    def fits(shown: str) -> bool:
        return draw.textlength(shown, font=font) <= width - 6

    m = _CAPTION.fullmatch(text)
    if m is None:
        while len(text) > 4 and not fits(text):
            text = text[: len(text) // 2 - 1] + "…" + text[len(text) // 2 + 1 :]
        return text
    names = [n for n in (m["a"], m["b"]) if n is not None]
    keep = [len(n) for n in names]
    while True:
        cut = [_cut(n, k) for n, k in zip(names, keep)]
        shown = m["head"] + cut[0] + (m["sep"] + cut[1] if len(cut) > 1 else "") + " " + m["p"]
        longest = max(range(len(keep)), key=keep.__getitem__)
        if fits(shown) or keep[longest] <= 2:
            return shown
        keep[longest] -= 1


def _caption_band(width: int, lines: list, px: int) -> np.ndarray:
    """White band with `lines` of (text, rgb colour) in black or the given colour, one under the other."""
    from PIL import Image, ImageDraw

    step = px + px // 3
    band = Image.new("RGB", (width, step * len(lines) + px // 3), "white")
    draw = ImageDraw.Draw(band)
    for n, (text, colour) in enumerate(lines):
        text = fit_caption(text, width, px)
        draw.text((3, px // 6 + n * step), text, fill=colour, font=_font(px, text))
    return np.asarray(band)


def panel(image_rgb: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """The image as the model saw it beside the heat map over a faded copy of it: the object stays visible."""
    import cv2

    h, w = image_rgb.shape[:2]
    heat = cv2.applyColorMap((upsample(heatmap, h, w) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    faded = cv2.cvtColor(cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    blended = cv2.addWeighted(faded, 0.6, cv2.cvtColor(heat, cv2.COLOR_BGR2RGB), 0.4, 0)
    gap = np.full((h, max(2, w // 40), 3), 255, np.uint8)
    return np.hstack([image_rgb, gap, blended])


_UNDRAWABLE: set = set()  # class names no installed font draws, said once on stderr


def _shown_name(name: str, labels) -> str:
    """A class name as a caption draws it: itself, or '#index' when no installed font has its glyphs."""
    if font_file(name) is not None or name not in labels:
        return name
    if name not in _UNDRAWABLE:
        _UNDRAWABLE.add(name)
        progress(
            f"no installed font draws the class name {name!r}: captions show its index #{list(labels).index(name)}"
            " instead (install a font with its glyphs, e.g. apt install fonts-wqy-microhei for Chinese)"
        )
    return f"#{list(labels).index(name)}"


def caption(item: Explanation, labels=()) -> list:
    """(text, colour) lines: 'true → predicted (p)' (red when wrong), and the explained class when it is not
    the predicted one (--class). Without a known true class: the image's name and the prediction. A class name
    of `labels` that no installed font draws shows as its index."""
    truth, predicted, label = (_shown_name(n, labels) if n else n for n in (item.truth, item.predicted, item.label))
    first = f"{truth} → " if item.truth else f"{Path(item.png).stem}: "
    wrong = item.truth is not None and item.truth != item.predicted
    lines = [(f"{first}{predicted} ({item.predicted_score:.2f})", (200, 0, 0) if wrong else (0, 0, 0))]
    if item.label != item.predicted:
        lines.append((f"map of {label} ({item.score:.2f})", (0, 0, 160)))
    return lines


def picture(
    image_rgb: np.ndarray, item: Explanation, heatmap: np.ndarray, px: int = CAPTION_PX, labels=()
) -> np.ndarray:
    """One explanation as a PNG shows it: the panel with its caption above."""
    shown = panel(image_rgb, heatmap)
    return np.vstack([_caption_band(shown.shape[1], caption(item, labels), px), shown])


def _png(image_rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise EdgeclsError("OpenCV could not encode a PNG")
    return buf.tobytes()


def contact_sheet(tiles: list, px: int = CAPTION_PX) -> np.ndarray:
    """(panel, caption lines) tiles in a grid, each panel TILE high with its caption under it."""
    import cv2

    thumbs = []
    for image, lines in tiles:
        h, w = image.shape[:2]
        thumb = cv2.resize(image, (max(1, round(w * TILE / h)), TILE), interpolation=cv2.INTER_AREA)
        thumbs.append(np.vstack([thumb, _caption_band(thumb.shape[1], lines, px)]))
    cell_h, cell_w = max(t.shape[0] for t in thumbs), max(t.shape[1] for t in thumbs) + TILE // 8
    cols = min(max(1, SHEET_WIDTH // cell_w), len(thumbs))
    rows = math.ceil(len(thumbs) / cols)
    sheet = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    for n, thumb in enumerate(thumbs):
        r, c = divmod(n, cols)
        sheet[r * cell_h : r * cell_h + thumb.shape[0], c * cell_w : c * cell_w + thumb.shape[1]] = thumb
    return sheet


# ---------------------------------------------------------------------------------------------- inputs and output


def image_paths(paths) -> list:
    """(file, output name) for files as given and images found (recursively, sorted) in folders."""
    from edgecls.runtime.preprocess import IMAGE_SUFFIXES

    found, used = [], set()
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files = [
                (f, f.relative_to(p).with_suffix(""))
                for f in sorted(p.rglob("*"))
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            ]
        elif p.is_file():
            files = [(p, Path(p.stem))]
        else:
            raise EdgeclsError(f"{p} does not exist: pass image files or folders")
        for f, rel in files:
            name = "__".join(rel.parts) or "image"
            stem, n = name, 1
            # two inputs of one name (a.jpg and a.png, or two folders), or one named like a contact sheet
            while name.lower() in used or SHEET.fullmatch(name.lower()):
                n += 1
                name = f"{stem}-{n}"
            used.add(name.lower())
            found.append((f, f"{name}.png"))
    if not found:
        raise EdgeclsError(f"no images found in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return found


def _contents(folder: Path) -> set:
    """What an explanation folder holds: its manifest and the PNGs it lists."""
    names = {MANIFEST}
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
        names |= {i.get("png") for i in manifest.get("images", []) if isinstance(i, dict)}
        names |= set(manifest.get("contact_sheets", []))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    return {n for n in names if isinstance(n, str)}


def explain_guard(run, paths) -> dict:
    """For `explain --out`: only an explanation folder of ours is replaced; never the run, its data or the images."""
    from edgecls.core.outputs import bundle_guard

    protect = dict(bundle_guard(run)["protect"])
    for n, p in enumerate(Path(p) for p in paths):
        if p.is_dir():
            protect[f"the images ({p})" if n else "the images"] = p
    return {"marker": MANIFEST, "protect": protect, "contents": _contents}


def explain_run(
    run_path,
    paths,
    out,
    class_label: str | None = None,
    layer: str | None = None,
    overwrite: bool = False,
    truths: dict | None = None,
) -> ExplainResult:
    """Grad-CAM PNGs for images (files or folders) with a run's model; a contact sheet for several.

    Every image takes the run's own preprocessing (`edgecls.runtime.preprocess.preprocess`). `--out` is
    written atomically; it may replace only an explanation folder of ours (with `overwrite`). `truths`
    ({path: label}) gives the true classes the captions show; without it, an image in a folder named
    after a label (a class-per-folder test set) is of that class.
    """
    from edgecls.core.rundir import open_run
    from edgecls.runtime.atomic import check_output, staged_dir, write_bytes, write_json

    run = open_run(run_path)
    class_index = _class_index(run.labels, class_label)
    images = image_paths(paths)
    guard = explain_guard(run, paths)
    check_output(out, overwrite, **guard)  # a refusal costs nothing
    model = run.load_model()
    ref = resolve_layer(model, layer)
    cam = GradCam(model, ref)
    if cam.num_classes != len(run.labels):
        raise EdgeclsError(
            f"{run.model_path} has {cam.num_classes} outputs but the run has {len(run.labels)} labels: "
            "the run is inconsistent"
        )
    result = ExplainResult(Path(out), ref.name)
    tiles = []
    with staged_dir(out, overwrite, **guard) as stage:
        for start in range(0, len(images), BATCH):
            chunk = images[start : start + BATCH]
            for item, shown in _explain_chunk(cam, chunk, run, class_index, start == 0):
                item.truth = _truth(item.image, run.labels, truths)
                write_bytes(stage / item.png, _png(picture(shown, item, item.heatmap, labels=run.labels)))
                result.explanations.append(item)
                if len(images) > 1:
                    tiles.append((panel(shown, item.heatmap), caption(item, run.labels)))
            if len(images) > BATCH:
                progress(f"explained {min(start + BATCH, len(images))}/{len(images)} images")
        for page, first in enumerate(range(0, len(tiles), SHEET_TILES), 1):
            sheet = "contact_sheet.png" if page == 1 else f"contact_sheet_{page}.png"  # SHEET reserves these
            write_bytes(stage / sheet, _png(contact_sheet(tiles[first : first + SHEET_TILES])))
            result.sheets.append(sheet)
        write_json(stage / MANIFEST, _manifest(run, class_label, result))
    return result


def _truth(path: Path, labels: list, truths: dict | None) -> str | None:
    """The image's true class: from `truths` when given, else its folder's name when that is a label."""
    if truths is not None:
        return truths.get(str(path), truths.get(Path(path)))
    return path.parent.name if path.parent.name in labels else None


def _class_index(labels: list, class_label: str | None) -> int | None:
    """--class as an output index; None explains each image's predicted class."""
    if class_label is None:
        return None
    if class_label not in labels:
        raise EdgeclsError(f"unknown class {class_label!r}: the model's labels are {', '.join(labels)} (--class)")
    return labels.index(class_label)


def _explain_chunk(cam: GradCam, chunk: list, run, class_index: int | None, first: bool) -> list:
    """[(Explanation, the image at display size)] for one batch of (path, png name); `first`: the run's first."""
    from edgecls.runtime.errors import ImageDecodeError
    from edgecls.runtime.preprocess import load_image, preprocess

    labels, spec = run.labels, run.preprocess
    originals = []
    for path, _ in chunk:
        try:
            originals.append(load_image(path))
        except ImageDecodeError as exc:
            raise ImageDecodeError(f"{exc} (remove it, or pass only readable images)") from exc
    heatmaps, probs = cam(np.stack([preprocess(image, spec, order="rgb") for image in originals]), class_index)
    if first and heatmaps.shape[1] * heatmaps.shape[2] == 1:
        progress(
            f"warning: layer {cam.layer.name} has a 1x1 grid at this input size, so the heatmap cannot "
            f"localise: pick an earlier layer with --layer"
        )
    explained = []
    for (path, name), image, heat, p in zip(chunk, originals, heatmaps, probs):
        top = int(p.argmax())
        index = top if class_index is None else class_index
        item = Explanation(
            path,
            labels[index],
            float(p[index]),
            labels[top],
            float(p[top]),
            upsample(heat, spec.height, spec.width),
            name,
        )
        explained.append((item, _display_image(image, spec)))
    return explained


def _manifest(run, class_label: str | None, result: ExplainResult) -> dict:
    """explanations.json: what was explained with which run and layer, and each image's PNG and scores."""
    return {
        "format": FORMAT,
        "run": str(Path(run.path).resolve()),
        "layer": result.layer,
        "class": class_label,
        "contact_sheets": result.sheets,
        "images": [
            {
                "image": str(e.image),
                "png": e.png,
                "true": e.truth,
                "class": e.label,
                "score": round(e.score, 6),
                "predicted": e.predicted,
                "predicted_score": round(e.predicted_score, 6),
            }
            for e in result.explanations
        ],
    }
