"""McNemar's exact test on paired predictions, per-class deltas and the verdict line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edgecls.runtime.errors import DataError, EdgeclsError


@dataclass
class Paired:
    """What both models said about the same images: paths, the truth, and each model's top-1 label."""

    paths: list
    truth: list
    a: list
    b: list


@dataclass
class McNemar:
    fixed: int  # A wrong, B right
    broken: int  # A right, B wrong
    p_value: float


@dataclass
class Comparison:
    a: str
    b: str
    images: int
    accuracy_a: float
    accuracy_b: float
    test: McNemar
    verdict: str
    better: str | None  # "A", "B" or None
    per_class: list  # {class, images, accuracy_a, accuracy_b, delta}
    disagreements: list  # {path, truth, a, b}
    latency: list = field(default_factory=list)
    data: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def mcnemar(a_right, b_right) -> McNemar:
    """McNemar's exact test (two-sided) on paired correctness; p = 1 when no image is discordant."""
    from scipy.stats import binomtest

    a_right, b_right = np.asarray(a_right, bool), np.asarray(b_right, bool)
    if a_right.shape != b_right.shape:
        raise EdgeclsError(f"paired predictions differ in length ({a_right.size} and {b_right.size})")
    fixed = int(np.sum(~a_right & b_right))
    broken = int(np.sum(a_right & ~b_right))
    n = fixed + broken
    p = 1.0 if n == 0 else float(binomtest(fixed, n, 0.5, alternative="two-sided").pvalue)
    return McNemar(fixed, broken, min(1.0, p))


def format_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def verdict(acc_a: float, acc_b: float, test: McNemar, alpha: float) -> tuple:
    """(line, better): 'B is better: +2.4 points, p = 0.003, 17 images fixed, 3 broken', or 'no difference'."""
    points = 100.0 * (acc_b - acc_a)
    counts = f"{test.fixed} images fixed, {test.broken} broken"
    if test.p_value < alpha and test.fixed != test.broken:
        better = "B" if test.fixed > test.broken else "A"
        return f"{better} is better: {points:+.1f} points, p = {format_p(test.p_value)}, {counts}", better
    return (
        f"no difference (p = {format_p(test.p_value)}, alpha {alpha:g}): {points:+.1f} points, {counts}",
        None,
    )


def per_class(paired: Paired) -> list:
    rows = []
    truth = np.array(paired.truth, dtype=object)
    a_right = np.array(paired.a, dtype=object) == truth
    b_right = np.array(paired.b, dtype=object) == truth
    for name in sorted(set(paired.truth), key=lambda c: (len(c), c)):
        mask = truth == name
        acc_a, acc_b = float(a_right[mask].mean()), float(b_right[mask].mean())
        rows.append(
            {
                "class": name,
                "images": int(mask.sum()),
                "accuracy_a": acc_a,
                "accuracy_b": acc_b,
                "delta": acc_b - acc_a,
            }
        )
    return rows


def decide(paired: Paired, names: tuple, alpha: float = 0.05) -> Comparison:
    """Accuracy of both, per-class deltas, the disagreements, McNemar's test and the verdict."""
    if not paired.paths:
        raise DataError("no image was read by both models: nothing to compare")
    truth = np.array(paired.truth, dtype=object)
    a_right = np.array(paired.a, dtype=object) == truth
    b_right = np.array(paired.b, dtype=object) == truth
    test = mcnemar(a_right, b_right)
    acc_a, acc_b = float(a_right.mean()), float(b_right.mean())
    line, better = verdict(acc_a, acc_b, test, alpha)
    disagreements = [
        {"path": str(p), "truth": t, "a": a, "b": b}
        for p, t, a, b in zip(paired.paths, paired.truth, paired.a, paired.b)
        if a != b
    ]
    return Comparison(
        str(names[0]),
        str(names[1]),
        len(paired.paths),
        acc_a,
        acc_b,
        test,
        line,
        better,
        per_class(paired),
        disagreements,
    )
