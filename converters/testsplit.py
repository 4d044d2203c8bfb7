"""Whether the test split convert verifies on is the one the run was tested on at training.

The accuracy gate and the manifest's `source.accuracy` mean something only on that split: a split that
lost images or whole classes (files gone, changed, no longer decoding), or an old run's split recomputed
from a folder that changed, is refused unless the user accepts it (`--allow-partial-test`), and then
recorded as such. A split too small to resolve the gate is flagged whatever its origin.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import asdict, dataclass, field

from edgecls.core.splits import read_split_record
from edgecls.runtime.errors import DataError

# Below these the gate cannot see a small loss: one image of 30 is 3.3 points (the default --max-drop is 1),
# and one image of 5 moves a class's recall by 20 points.
TINY_SPLIT = 30
TINY_CLASS = 5


@dataclass
class TestSplitReport:
    """What verification really ran on, against what the run recorded at training."""

    images: int
    per_class: dict
    recorded: int | None  # images the run was tested on at training (None: not recorded)
    recorded_per_class: dict | None
    split: str  # "recorded" (split.json) | "recomputed" (an old run's, from the folder)
    missing: int = 0
    missing_classes: list = field(default_factory=list)
    dropped: list = field(default_factory=list)  # files that stopped decoding during verification
    problems: list = field(default_factory=list)  # why it is not the training's test split
    warnings: list = field(default_factory=list)
    allowed_partial: bool = False

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], {}) or k in ("images", "missing")}

    def summary(self) -> str:
        """One line for verification.txt."""
        classes = ", ".join(f"{k} {v}" for k, v in self.per_class.items())
        line = f"verified on {self.images} test images ({classes})"
        if self.recorded is not None:
            line += f"; the run was tested on {self.recorded} at training"
        if self.problems:
            line += f"; PARTIAL (--allow-partial-test): {'; '.join(self.problems)}"
        return line


def recorded_test(run) -> tuple:
    """(images, {label: images}) of the run's test split at training; the per-class counts need split.json."""
    record = read_split_record(run.path)
    total = run.metadata.get("dataset", {}).get("counts", {}).get("test")
    if record is None or "test" not in record.splits:
        return total, None
    counts = Counter(label for _, _, label in record.splits["test"])
    per_class = {name: counts.get(i, 0) for i, name in enumerate(run.labels)}
    return (total if total is not None else sum(per_class.values())), per_class


def check(
    run, y, split: str, changed_since_training: bool = False, dropped=(), max_drop: float = 1.0
) -> TestSplitReport:
    """Compare the labels `y` of the images really verified with what the run recorded; problems, warnings."""
    labels = run.labels
    counts = Counter(int(v) for v in y)
    per_class = {name: counts.get(i, 0) for i, name in enumerate(labels)}
    recorded, recorded_per_class = recorded_test(run)
    report = TestSplitReport(len(y), per_class, recorded, recorded_per_class, split, dropped=list(dropped))
    if recorded is not None and report.images < recorded:
        report.missing = recorded - report.images
        report.problems.append(
            f"{report.missing} of the {recorded} test images the run was tested on are gone, changed or unreadable"
        )
    if recorded_per_class:
        report.missing_classes = [c for c, n in recorded_per_class.items() if n and not per_class[c]]
        if report.missing_classes:
            report.problems.append(f"class(es) {', '.join(report.missing_classes)} lost every test image")
    if changed_since_training:
        report.problems.append(
            "the run has no split.json and its dataset changed since training (fingerprint differs), "
            "so the recomputed test split may hold training images"
        )
    if report.images < TINY_SPLIT:
        step = 100 / max(1, report.images)
        report.warnings.append(
            f"only {report.images} test images: one image is {step:.1f} accuracy points"
            + (f", more than --max-drop {max_drop:g}" if step > max_drop else "")
        )
    absent = [c for c, n in per_class.items() if n == 0]
    few = [f"{c} {n}" for c, n in per_class.items() if 0 < n < TINY_CLASS]
    if absent:
        report.warnings.append(f"no test image of class(es) {', '.join(absent)}: their accuracy is not verified")
    if few:
        report.warnings.append(f"fewer than {TINY_CLASS} test images in class(es) {', '.join(few)}")
    return report


def check_training_split(labels: list, y) -> None:
    """Warn when the training split (the int8 calibration set is drawn from it) lost whole classes."""
    present = set(int(v) for v in y)
    absent = [name for i, name in enumerate(labels) if i not in present]
    if absent:
        _warn(
            f"WARNING: the training split has no image of class(es) {', '.join(absent)}: int8 calibration "
            f"will not see them (restore the run's dataset)"
        )


def enforce(report: TestSplitReport, allow_partial: bool, when: str = "") -> None:
    """Refuse a split that is not the training's test split unless allowed; say every warning loudly."""
    if report.problems and not allow_partial:
        raise DataError(
            f"the test split to verify on is not the one the run was tested on{when} "
            f"({'; '.join(report.problems)}): restore the run's dataset as it was at training, or pass "
            f"--allow-partial-test to verify on what is left (recorded in the manifest)"
        )
    report.allowed_partial = bool(report.problems)
    for problem in report.problems:
        _warn(f"WARNING: verifying on a partial test split (--allow-partial-test): {problem}")
    for warning in report.warnings:
        _warn(f"WARNING: {warning}")


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
