"""edgecls.core.metrics: per-class and macro precision/recall/F1 as scikit-learn defines them."""

import numpy as np
import pytest

from edgecls.core.metrics import classification_report


def test_a_class_predicted_but_absent_counts_in_the_macro_average():
    # class 2 has no images but one prediction: its precision is 0 and it is averaged in
    report = classification_report([0, 0, 1, 1], [0, 2, 1, 1], ["a", "b", "c"])
    assert report["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report["macro"]["precision"] == pytest.approx(2 / 3)
    assert report["macro"]["recall"] == pytest.approx((0.5 + 1 + 0) / 3)


@pytest.mark.parametrize("trial", range(40))
def test_per_class_and_macro_match_scikit_learn_on_random_label_sets(trial):
    from sklearn.metrics import classification_report as sk_report
    from sklearn.metrics import precision_recall_fscore_support

    rng = np.random.default_rng(trial)
    k = int(rng.integers(2, 9))
    true_classes = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)  # some classes absent
    pred_classes = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)  # some never predicted
    n = int(rng.integers(1, 60))
    y_true, y_pred = rng.choice(true_classes, n), rng.choice(pred_classes, n)
    if trial % 4 == 0:
        y_pred = np.where(rng.random(n) < 0.6, y_true, y_pred)  # mostly right, as a trained model
    labels = [f"c{i}" for i in range(k)]
    ours = classification_report(y_true, y_pred, labels)

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(range(k)), zero_division=0)
    for i, name in enumerate(labels):
        row = ours["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p[i], r[i], f[i]), abs=1e-6)
        assert row["support"] == s[i]
    macro = sk_report(y_true, y_pred, labels=list(range(k)), zero_division=0, output_dict=True)["macro avg"]
    assert ours["macro"]["precision"] == pytest.approx(macro["precision"], abs=1e-12)
    assert ours["macro"]["recall"] == pytest.approx(macro["recall"], abs=1e-12)
    assert ours["macro"]["f1"] == pytest.approx(macro["f1-score"], abs=1e-12)
    assert ours["accuracy"] == pytest.approx(float((y_true == y_pred).mean()))
