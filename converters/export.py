"""One format through export -> verify -> remedies, and what its exporter works with.

Each format in `edgecls.converters.formats.FORMATS` brings `attempts(context, fmt)`: (description, build)
pairs in remedy order, where `build(out)` writes the artifact's file and returns notes for the manifest.
The context holds what every format shares: the model, the stage's work folder, the calibration sampler,
the convert options, one input sample (for exporters that must call the model first) and the QAT source.
`export_verified` tries the attempts in turn until one passes the accuracy gate in the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecls.converters import calibration as calib
from edgecls.converters.quiet import quiet
from edgecls.converters.reference import ReferenceStats
from edgecls.converters.verify import AccuracyGateError, by_file, compare, gate_passes
from edgecls.core.progress import progress
from edgecls.runtime.bundle import TensorQuant
from edgecls.runtime.errors import EdgeclsError
from edgecls.runtime.session import ModelSession


class ExportContext:
    """What the formats' attempts build from; `cache` keeps files one format's attempts share."""

    def __init__(self, model, workdir: Path, train: calib.CalibrationSampler, options, sample: np.ndarray, qat=None):
        self.model, self.workdir, self.train, self.options, self.sample = model, workdir, train, options, sample
        self.qat = qat  # () -> edgecls.converters.qat.QatResult: fine-tunes, so only called when its attempt comes
        self.cache: dict = {}

    def attempts(self, fmt) -> list:
        """`fmt`'s (description, build) pairs in remedy order (the table's exporter for it)."""
        return fmt.attempts(self, fmt)

    def calibration(self, factor: int = 1) -> np.ndarray:
        return self.train.draw(self.calibration_count(factor))

    def calibration_count(self, factor: int = 1) -> int:
        """Images the representative set really holds: the training split may have fewer than asked."""
        return min(len(self.train), self.options.calibration_size * factor)


def calibration_notes(data: np.ndarray) -> dict:
    """The set this artifact was calibrated on: a remedy's larger set is not the manifest's `calibration`."""
    return {"calibration_images": int(len(data)), "calibration_fingerprint": calib.fingerprint(data)}


def without_notes(write):
    """A build from a writer that has nothing to note."""

    def build(out) -> dict:
        write(out)
        return {}

    return build


@dataclass
class Verified:
    """A format's artifact that passed the gate: how it was built and its answers by file."""

    fmt: object  # ExportFormat
    description: str  # of the attempt that passed
    failures: list  # the attempts before it, with what each lost
    built: dict  # the build's notes (calibration_images, kept_in_float...)
    input: TensorQuant
    output: TensorQuant
    probs: dict  # path -> the artifact's output
    stats: ReferenceStats


def export_verified(i: int, fmt, stage: Path, context: ExportContext, run, reference) -> Verified:
    """Build format `fmt` into the stage, trying its remedies in turn until one passes the gate."""
    options = context.options
    labels, head = run.labels, run.metadata.get("head", "softmax")
    target, total = stage / fmt.file, len(options.formats)
    paths, y, ref_probs = reference.paths, reference.y, reference.probs
    failures = []
    attempts = context.attempts(fmt)
    for n, (description, build) in enumerate(attempts, 1):
        progress(f"[{i}/{total}] {fmt.name}: converting" + (f" ({description})" if description else ""))
        built = _build(fmt, build, target)
        if fmt.finish is not None:
            fmt.finish(target, run)
        progress(f"[{i}/{total}] {fmt.name}: verifying on {len(paths)} test images")
        session = ModelSession(target, fmt.format, head=head)
        stats = ReferenceStats(labels, run.preprocess)  # gathered in the same pass over the test split
        found = by_file(session.predict, reference.test, each=stats.update)
        both = [k for k, p in enumerate(paths) if p in found]  # a file that stopped decoding is judged without
        predicted = np.stack([found[paths[k]][0] for k in both])
        result = compare(predicted, ref_probs[both], y[both], labels)
        if gate_passes(result["reference_right"], result["right"], len(both), options.max_drop):
            break
        drop = 100 * (result["reference_right"] - result["right"]) / len(both)
        failures.append(f"{description or fmt.name}: -{drop:.2f} points")
        last = n == len(attempts)
        progress(
            f"    lost {drop:.2f} points (limit {options.max_drop}); "
            + ("no remedy left" if last else "trying the next remedy")
        )
    else:
        raise AccuracyGateError(
            f"{fmt.name} loses more than {options.max_drop} accuracy points whatever we try "
            f"({'; '.join(failures)}): ship without it (--formats) or raise --max-drop"
        )
    spec = session.backend.input_spec, session.backend.output_spec
    probs = {p: o for p, (o, _) in found.items()}
    return Verified(fmt, description, failures, built, _tensor_quant(spec[0]), _tensor_quant(spec[1]), probs, stats)


def _build(fmt, build, target: Path) -> dict:
    """One attempt's build, its libraries' chatter hidden; their many error types become one line."""
    try:
        with quiet():
            return build(target)
    except EdgeclsError:
        raise
    except Exception as exc:  # the converters raise many types; name the format and the way out
        first = next((l for l in str(exc).splitlines() if l.strip()), type(exc).__name__)
        raise EdgeclsError(f"{fmt.name} conversion failed: {first[:300]} (leave it out with --formats)") from exc


def _tensor_quant(spec) -> TensorQuant:
    return TensorQuant(spec.dtype, float(spec.scale), int(spec.zero_point))
