"""One format through export -> verify -> remedies, and what its exporter works with.

Each format in `edgecls.converters.formats.FORMATS` brings `attempts(context, fmt)`: (description, build)
pairs in remedy order, where `build(out)` writes the artifact's file and returns notes for the manifest.
The context holds what every format shares: the model, the stage's work folder, the calibration sampler,
the convert options, one input sample (for exporters that must call the model first) and the QAT source.
`export_verified` tries the attempts in turn until one passes the accuracy gate in the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgecls.converters import calibration as calib
from edgecls.converters.quiet import quiet
from edgecls.converters.reference import ReferenceStats
from edgecls.converters.verify import AccuracyGateError, by_file, compare, result_passes
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
    tensors: dict = field(default_factory=dict)  # the Artifact's input_name/output_name, when named


@dataclass(frozen=True)
class Judging:
    """What an artifact is judged by: the labels, the preprocessing its test inputs went through, the gate."""

    labels: list
    spec: object  # PreprocessSpec
    max_drop: float
    total: int  # artifacts in this bundle, for the [i/total] progress lines
    advice: str = "ship without it (--formats) or raise --max-drop"  # when no attempt passes


def export_verified(i: int, fmt, stage: Path, context: ExportContext, run, reference) -> Verified:
    """Build format `fmt` into the stage, trying its remedies in turn until one passes the gate."""
    head = run.metadata.get("head", "softmax")
    judging = Judging(run.labels, run.preprocess, context.options.max_drop, len(context.options.formats))

    def opened(target: Path):
        if fmt.finish is not None:
            fmt.finish(target, run)
        return ModelSession(target, fmt.format, head=head)

    return verified_attempts(i, fmt, context.attempts(fmt), stage / fmt.file, opened, reference, judging)


def verified_attempts(i: int, fmt, attempts: list, target: Path, opened, reference, judging: Judging) -> Verified:
    """The first of `attempts` ((description, build) pairs) whose artifact passes the gate against `reference`.

    `opened(target)` finishes a built file and opens it as the runtime will (a ModelSession); `reference`
    holds the test split and the reference model's answers on it (paths, y, probs).
    """
    paths, y, ref_probs = reference.paths, reference.y, reference.probs
    failures = []
    for n, (description, build) in enumerate(attempts, 1):
        progress(f"[{i}/{judging.total}] {fmt.name}: converting" + (f" ({description})" if description else ""))
        built = _build(fmt, build, target)
        session = opened(target)
        progress(f"[{i}/{judging.total}] {fmt.name}: verifying on {len(paths)} test images")
        stats = ReferenceStats(judging.labels, judging.spec)  # gathered in the same pass over the test split
        found = by_file(session.predict, reference.test, each=stats.update)
        both = [k for k, p in enumerate(paths) if p in found]  # a file that stopped decoding is judged without
        predicted = np.stack([found[paths[k]][0] for k in both])
        result = compare(predicted, ref_probs[both], y[both], judging.labels)
        if result_passes(result, len(both), judging.max_drop):
            break
        drop = 100 * (result["reference_right"] - result["right"]) / len(both)
        lost = f"-{drop:.2f} points" if np.isfinite(result["max_prob_diff"]) else "probabilities not finite (NaN)"
        failures.append(f"{description or fmt.name}: {lost}")
        last = n == len(attempts)
        progress(
            f"    lost {drop:.2f} points (limit {judging.max_drop}); "
            + ("no remedy left" if last else "trying the next remedy")
        )
    else:
        raise AccuracyGateError(
            f"{fmt.name} loses more than {judging.max_drop} accuracy points whatever we try "
            f"({'; '.join(failures)}): {judging.advice}"
        )
    spec = session.backend.input_spec, session.backend.output_spec
    probs = {p: o for p, (o, _) in found.items()}
    return Verified(fmt, description, failures, built, tensor_quant(spec[0]), tensor_quant(spec[1]), probs, stats)


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


def tensor_quant(spec) -> TensorQuant:
    return TensorQuant(spec.dtype, float(spec.scale), int(spec.zero_point))
