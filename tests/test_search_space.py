"""The search space: conditional parameters, MACs counted on untrained Keras models, refused candidates."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edgecls.runtime.errors import EdgeclsError
from edgecls.search import space
from edgecls.search.types import Candidate

OWN = {
    "simple": {"simple_base_width", "simple_blocks", "simple_convs_per_block", "image_size"},
    "mobilenetv2": {"mobilenetv2_alpha", "backbone_image_size"},
    "mobilenetv3small": {"mobilenetv3small_alpha", "mobilenetv3small_minimalistic", "backbone_image_size"},
    "mobilenetv3large": {"mobilenetv3large_alpha", "mobilenetv3large_minimalistic", "backbone_image_size"},
    "efficientnetb0": {"backbone_image_size"},
}


def _proposals(models, sizes, n=60):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize", "minimize"])
    cfg = SimpleNamespace(models=models, sizes=sizes)
    found = []
    for _ in range(n):
        trial = study.ask()
        found.append((space.suggest(trial, cfg), set(trial.params)))
        study.tell(trial, [0.5, 1.0])
    return found


def test_each_model_draws_only_its_own_parameters_and_efficientnet_only_when_asked():
    found = _proposals(space.DEFAULT_MODELS, (16, 24, 32, 48))
    assert {c.model for c, _ in found} == set(space.DEFAULT_MODELS)
    for candidate, params in found:
        assert params == {"model", "resize"} | OWN[candidate.model], (candidate, params)
        assert candidate.resize in ("stretch", "center-crop")
    simple = [c for c, _ in found if c.model == "simple"]
    assert all(c.model_options["widths"][1:] == [w * 2 for w in c.model_options["widths"][:-1]] for c in simple)
    assert "efficientnetb0" in {c.model for c, _ in _proposals(("simple", "efficientnetb0"), (32,), 20)}


def test_a_backbone_is_drawn_only_at_sizes_it_takes_and_left_out_when_there_are_none():
    found = _proposals(space.DEFAULT_MODELS, (16, 24, 32, 48))
    assert {c.image_size for c, _ in found if c.model != "simple"} == {32, 48}
    assert {c.image_size for c, _ in found if c.model == "simple"} == {16, 24, 32, 48}
    assert space.usable_models(space.DEFAULT_MODELS, (16, 24)) == ("simple",)
    assert {c.model for c, _ in _proposals(space.DEFAULT_MODELS, (16, 24), 15)} == {"simple"}


def test_default_sizes_stop_at_the_datas_own_size():
    assert space.default_sizes(40) == (24, 32)
    assert space.default_sizes(224) == space.DEFAULT_SIZES
    assert space.default_sizes(12) == (12,)


def _simple(widths, size, convs=1) -> Candidate:
    return Candidate("simple", size, "stretch", {"widths": list(widths), "convs_per_block": convs})


def test_macs_grow_with_width_depth_and_input_size():
    narrow = space.count(_simple((4, 8), 16), 3, 3)
    wide = space.count(_simple((8, 16), 16), 3, 3)
    bigger = space.count(_simple((4, 8), 32), 3, 3)
    deeper = space.count(_simple((4, 8), 16, convs=2), 3, 3)
    assert 0 < narrow.macs < wide.macs and narrow.macs < bigger.macs and narrow.macs < deeper.macs
    assert bigger.macs == pytest.approx(4 * narrow.macs, rel=0.05)  # convolutions: MACs scale with the area
    assert narrow.params < wide.params and narrow.params == bigger.params
    thin = space.count(Candidate("mobilenetv2", 32, "stretch", {"alpha": 0.35}), 3, 3)
    full = space.count(Candidate("mobilenetv2", 32, "stretch", {"alpha": 1.0}), 3, 3)
    assert thin.macs < full.macs and thin.params < full.params


def test_a_candidate_the_model_refuses_is_an_error_with_its_reason_not_a_crash():
    with pytest.raises(EdgeclsError, match="needs images of at least 32x32"):
        space.count(Candidate("mobilenetv3small", 24, "stretch", {"alpha": 0.5, "minimalistic": True}), 3, 3)
    with pytest.raises(EdgeclsError, match="too small for 4 pooling blocks"):
        space.count(_simple((4, 8, 16, 32), 8), 3, 3)


def test_a_candidate_reads_back_from_json_as_the_same_model():
    import json

    counted = space.count(_simple((4, 8), 16), 1, 3)
    again = Candidate.from_dict(json.loads(json.dumps(counted.to_dict())))
    assert again.key() == counted.key() and space.model_options(again)["widths"] == (4, 8)
    assert space.describe(again) == "simple w=4,8 x1 16px stretch " + f"{counted.macs / 1e6:.1f} MMAC"
