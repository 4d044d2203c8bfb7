"""tests/conftest.py fixtures: the shared tiny model is good enough for parity tests to see a wrong tensor."""

import json


def test_fixture_model_is_well_above_chance(tiny_run_dir):
    """At chance every output is about 1/3, and a broken quantization or channel order changes nothing visible."""
    metrics = json.loads((tiny_run_dir / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.8, metrics["test_accuracy"]
    confusion = metrics["confusion_matrix"]
    assert all(row[i] >= 3 for i, row in enumerate(confusion)), confusion  # every class recognised, not one guessed
