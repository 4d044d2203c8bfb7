"""edgecls/explain.py and edgecls/tune.py when inputs or trials go wrong: an image named like the contact sheet,
every trial failing, a trial that diverged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edgecls.runtime.errors import EdgeclsError
from tests.conftest import write_image


def test_explain_image_named_contact_sheet_is_not_overwritten_by_the_sheet(tmp_path, tiny_run_dir):
    """An input called contact_sheet.jpg gets the PNG name the contact sheet then overwrites (edgecls/explain.py:
    image_paths does not reserve contact_sheet*.png); the manifest lists one file twice."""
    from edgecls.explain import explain_run

    rng = np.random.default_rng(0)
    for name in ("contact_sheet.jpg", "cat.png"):
        write_image(tmp_path / "images" / name, rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    result = explain_run(tiny_run_dir, [tmp_path / "images"], tmp_path / "cams")
    names = [e.png for e in result.explanations] + result.sheets
    assert len(set(names)) == len(names), names


def test_tune_every_trial_failing_is_one_error_line_with_the_cause(tmp_path, shapes_folder, monkeypatch):
    """Fault injection: every trial hits TensorFlow's out-of-memory error. keras-tuner raises its own RuntimeError
    (with tracebacks in the text) at the N-th consecutive failure, since max_consecutive_failed_trials == trials
    (edgecls/tune.py:_oracle), so tune()'s 'no trial completed' is unreachable; and _one_line keeps TF's last
    line (the Hint), dropping the cause."""
    import tensorflow as tf

    import edgecls.train
    from edgecls.tune import TuneConfig, tune

    def out_of_memory(cfg):
        raise tf.errors.ResourceExhaustedError(
            None,
            None,
            "OOM when allocating tensor with shape[64,64,3,3]\n"
            "Hint: If you want to see a list of allocated tensors when OOM "
            "happens, add report_tensor_allocations_upon_oom to RunOptions.",
        )

    monkeypatch.setattr(edgecls.train, "train", out_of_memory)
    out = tmp_path / "tuned"
    with pytest.raises(EdgeclsError) as error:
        tune(TuneConfig(data=str(shapes_folder), out=str(out), trials=2, max_epochs=1, image_size=16))
    message = str(error.value)
    assert "\n" not in message and "no trial completed" in message and "OOM when allocating" in message, message
    assert not out.exists()


def test_tune_a_diverged_trial_never_wins():
    """train() has no NaN guard, so a diverged trial COMPLETES with val_loss NaN; with --objective val_loss and
    that trial first, edgecls/tune.py:best_row returns it (nothing compares below NaN)."""
    from edgecls.tune import best_row

    rows = [
        {"trial": "0", "status": "COMPLETED", "score": math.nan, "val_loss": math.nan},
        {"trial": "1", "status": "COMPLETED", "score": 0.7, "val_loss": 0.7},
    ]
    assert best_row(rows, "val_loss")["trial"] == "1"
