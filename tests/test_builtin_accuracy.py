"""edgecls.train on built-in data: default settings on the digits reach 0.99 test accuracy (the quick-start promise)."""

import pytest


@pytest.mark.slow
def test_digits_default_training_reaches_099(tmp_path):
    from edgecls.train import TrainConfig, train

    result = train(TrainConfig(data="digits", out=str(tmp_path / "digits"), seed=0, verbose=0))
    assert result.metrics["n"] == 359
    assert result.metrics["test_accuracy"] >= 0.99, result.metrics["confusion_matrix"]
