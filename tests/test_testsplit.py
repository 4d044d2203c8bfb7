"""edgecls.converters.testsplit: the warnings convert gives about the test and training splits it works on."""

from types import SimpleNamespace

from edgecls.converters import testsplit


def _run(tmp_path, labels):
    """A run as testsplit reads it: labels, no split.json (an old run), no recorded counts."""
    return SimpleNamespace(path=tmp_path, labels=labels, metadata={"dataset": {}})


def test_a_test_split_without_a_class_or_with_few_images_of_one_is_flagged_loudly(tmp_path, capsys):
    labels = ["cat", "dog", "owl"]
    y = [0] * 40 + [2] * 3  # no dog, 3 owls
    report = testsplit.check(_run(tmp_path, labels), y, "recomputed")
    assert report.per_class == {"cat": 40, "dog": 0, "owl": 3} and not report.problems
    assert "no test image of class(es) dog: their accuracy is not verified" in report.warnings
    assert f"fewer than {testsplit.TINY_CLASS} test images in class(es) owl 3" in report.warnings
    testsplit.enforce(report, allow_partial=False)
    err = capsys.readouterr().err
    assert "WARNING: no test image of class(es) dog" in err and "WARNING: fewer than 5 test images" in err


def test_a_tiny_test_split_is_flagged_with_the_weight_of_one_image(tmp_path):
    report = testsplit.check(_run(tmp_path, ["a", "b"]), [0] * 5 + [1] * 5, "recomputed", max_drop=1.0)
    assert "only 10 test images: one image is 10.0 accuracy points, more than --max-drop 1" in report.warnings
    big = testsplit.check(_run(tmp_path, ["a", "b"]), [0] * 20 + [1] * 20, "recomputed")
    assert big.warnings == []


def test_a_training_split_that_lost_a_class_warns_that_calibration_will_not_see_it(capsys):
    testsplit.check_training_split(["cat", "dog", "owl"], [0, 0, 2])
    assert "WARNING: the training split has no image of class(es) dog: int8 calibration" in capsys.readouterr().err
    testsplit.check_training_split(["cat", "dog"], [0, 1])
    assert capsys.readouterr().err == ""
