"""`import_model`: one call from a model file or folder to a verified bundle, whatever framework made it."""

from __future__ import annotations

from pathlib import Path

from edgecls.importer.detect import ONNX, TFLITE, detect
from edgecls.importer.request import ImportRequest, ImportResult


def _quiet(line: str) -> None:
    pass


def import_model(request: ImportRequest, progress=_quiet) -> ImportResult:
    """Detect the source by its content, refuse an --out that is not ours before any work, then import.

    Keras kinds go through `convert`; ONNX and TFLite through their own sources (`onnx_source`, `tflite_source`).
    """
    source = detect(request.model)
    check_out(request)
    if source.kind == ONNX:
        from edgecls.importer.onnx_source import import_onnx

        return import_onnx(request, progress)
    if source.kind == TFLITE:
        from edgecls.importer.tflite_source import import_tflite

        return import_tflite(request, progress)
    from edgecls.importer.keras_source import import_keras

    return import_keras(request, source, progress)


def check_out(request: ImportRequest) -> None:
    """--out may replace only a bundle of ours (with --overwrite), never the model or the data it is made from."""
    from edgecls.converters.output import check_tar_output
    from edgecls.core.outputs import bundle_contents
    from edgecls.runtime.atomic import check_output
    from edgecls.runtime.bundle import MANIFEST

    protect = {"the model": Path(request.model)}
    if request.data is not None:
        protect["the --data folder"] = Path(request.data)
    if request.labels_file is not None:
        protect["the labels file"] = Path(request.labels_file)
    check_output(Path(request.out), request.overwrite, marker=MANIFEST, protect=protect, contents=bundle_contents)
    if request.tar:
        check_tar_output(Path(request.out), request.overwrite)
