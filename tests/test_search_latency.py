"""edgecls.search.latency: the latency model fitted to real measurements of tiny int8 models on this machine.

One module fixture builds five untrained `simple` candidates (the real converter, tflite-int8) and measures each
with the DeviceLab (desktop-cpu at 1 thread: the bench's worker); every test fits on those measured points, never
invented ones. Only the "huge" candidate is counted and not built: pruning it is the point.
"""

from __future__ import annotations

import json
import math

import pytest

from edgecls.search.latency import MIN_MARGIN, MIN_POINTS, LatencyModel
from edgecls.search.types import FAILED, GATE_FAILED, MEETS, OVER_BUDGET, PRUNED, Budget, Candidate, Measurement, Trial

# Latency well above the timer's and the scheduler's noise, MACs spread over ~30x
SMALL = [
    ("simple", 32, {"widths": (8, 16)}),
    ("simple", 48, {"widths": (8, 16, 32)}),
    ("simple", 64, {"widths": (16, 32)}),
    ("simple", 64, {"widths": (16, 32, 64)}),
    ("simple", 96, {"widths": (16, 32, 64)}),
]


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> list:
    """Trials of the SMALL candidates, in order, each measured on this machine."""
    from benchmarks.latency_model import _random_data, build_bundle, profile_file
    from edgecls.search.device import DeviceLab

    work = tmp_path_factory.mktemp("latency")
    data = _random_data(work / "data" / "images")
    lab = DeviceLab(profile_file(work, threads=1))  # desktop-cpu at 1 thread: steadier beside other tests
    trials = []
    for i, (model, size, options) in enumerate(SMALL):
        candidate, bundle = build_bundle(model, size, options, work / f"c{i}", data)
        trials.append(Trial(i, candidate, MEETS, measurement=lab.measure(bundle)))
    return trials


def counted(model: str, size: int, **options) -> Candidate:
    """A candidate's MACs and params counted on its Keras graph, as the search space counts them (not built)."""
    from edgecls.converters.macs import count_macs, count_params
    from edgecls.models import create_model

    keras_model = create_model(model, 3, (size, size, 3), **options)
    return Candidate(model, size, "stretch", options, count_macs(keras_model), count_params(keras_model))


def test_the_measured_points_grow_with_macs(measured):
    """The fixture's premise: on this machine the biggest of the tiny models is clearly slower than the smallest."""
    by_macs = sorted(measured, key=lambda t: t.candidate.macs)
    assert by_macs[-1].candidate.macs > 20 * by_macs[0].candidate.macs
    assert by_macs[-1].measurement.latency_ms > 3 * by_macs[0].measurement.latency_ms


def test_nothing_is_predicted_or_pruned_before_three_measurements(measured):
    huge = counted("simple", 256, widths=(64, 128, 256))
    for n in range(MIN_POINTS):
        model = LatencyModel.from_trials(measured[:n])
        assert model.predict(measured[-1].candidate) is None
        plausible, predicted, reason = model.decide(huge, Budget(latency_ms=1e-6))
        assert plausible and predicted is None and f"{n} of {MIN_POINTS} measurements" in reason
    assert LatencyModel.from_trials(measured[:MIN_POINTS]).predict(huge) is not None


def test_the_held_out_errors_are_each_point_predicted_by_a_fit_without_it(measured):
    """held_out_errors is leave-one-out: each point against the model fitted on the others (recomputed here the
    long way), and no held-out point falls below its prediction by more than the margin pruning divides by. Real
    measurements on a shared machine are noisy, so nothing here bounds the error itself."""
    import statistics

    errors = []
    for i, held in enumerate(measured):
        predicted = LatencyModel.from_trials(measured[:i] + measured[i + 1 :]).predict(held.candidate)
        errors.append(abs(predicted - held.measurement.latency_ms) / held.measurement.latency_ms)
    model = LatencyModel.from_trials(measured)
    loo = model.held_out_errors()
    assert loo["n"] == len(measured) and loo["form"] == "loglog"
    assert loo["worst"] == pytest.approx(max(errors)) and loo["median"] == pytest.approx(statistics.median(errors))
    for held, error in zip(measured, errors):
        predicted = LatencyModel.from_trials([t for t in measured if t is not held]).predict(held.candidate)
        assert held.measurement.latency_ms >= predicted / model.margin() * (1 - 1e-9), (error, model.margin())


def test_an_obviously_huge_candidate_is_pruned_and_a_borderline_one_kept(measured):
    model = LatencyModel.from_trials(measured)
    slowest = max(measured, key=lambda t: t.measurement.latency_ms)
    budget = Budget(latency_ms=slowest.measurement.latency_ms * 1.2)
    huge = counted("simple", 256, widths=(64, 128, 256))
    assert huge.macs > 50 * slowest.candidate.macs
    plausible, predicted, reason = model.decide(huge, budget)
    assert not plausible and predicted > budget.latency_ms * model.margin()
    assert "over the" in reason and "\n" not in reason
    # measured 10 % over a budget: within the model's error, so it is still worth asking the device
    tight = Budget(latency_ms=slowest.measurement.latency_ms / 1.1)
    plausible, predicted, reason = model.decide(slowest.candidate, tight)
    assert plausible and predicted is not None and "plausible" in reason


def test_pruned_failed_and_gate_failed_trials_do_not_feed_the_model(measured):
    """A wild figure attached to a trial that did not end measured must not move the fit."""
    wild = Measurement("tflite-int8", "litert", latency_ms=1000.0, peak_rss_mb=5000.0, size_mb=100.0)
    noise = [
        Trial(90 + i, t.candidate, status, measurement=wild)
        for i, (t, status) in enumerate(zip(measured, (PRUNED, FAILED, GATE_FAILED)))
    ]
    unmeasured = [Trial(99, measured[0].candidate, OVER_BUDGET)]
    clean = LatencyModel.from_trials(measured)
    mixed = LatencyModel.from_trials(measured + noise + unmeasured)
    assert len(mixed.points) == len(measured)
    for t in measured:
        assert mixed.predict(t.candidate) == clean.predict(t.candidate)
    over = [Trial(t.number, t.candidate, OVER_BUDGET, measurement=t.measurement) for t in measured]
    assert LatencyModel.from_trials(over).predict(measured[0].candidate) == clean.predict(measured[0].candidate)


def test_size_is_pruned_from_params_and_the_measured_bytes_per_param(measured):
    model = LatencyModel.from_trials(measured)
    biggest = max(measured, key=lambda t: t.candidate.params)
    size = biggest.measurement.size_mb
    per_param = size * 1024 * 1024 / biggest.candidate.params
    assert 0.9 < per_param < 2  # int8: about a byte per parameter, plus the graph
    plausible, _, reason = model.decide(biggest.candidate, Budget(latency_ms=1e6, size_mb=size / 3))
    assert not plausible and "params" in reason and "MB" in reason
    plausible, _, _ = model.decide(biggest.candidate, Budget(latency_ms=1e6, size_mb=size * 1.01))
    assert plausible
    # before any measurement: the int8 lower bound (0.8 byte/param) still refuses what cannot fit
    plausible, _, _ = LatencyModel([]).decide(biggest.candidate, Budget(latency_ms=1e6, size_mb=size / 3))
    assert not plausible


def test_ram_is_pruned_only_on_measured_evidence(measured):
    least = min(t.measurement.peak_rss_mb for t in measured)
    low = Budget(latency_ms=1e6, ram_mb=least / 2)  # under the runtime's own memory, measured on every candidate
    bigger = max(measured, key=lambda t: t.candidate.params).candidate
    for n in range(MIN_POINTS):
        assert LatencyModel.from_trials(measured[:n]).decide(bigger, low)[0]
    plausible, _, reason = LatencyModel.from_trials(measured).decide(bigger, low)
    assert not plausible and "peak RSS" in reason
    high = Budget(latency_ms=1e6, ram_mb=max(t.measurement.peak_rss_mb for t in measured) * 2)
    assert LatencyModel.from_trials(measured).decide(bigger, high)[0]


def test_the_model_round_trips_as_plain_data(measured):
    data = json.loads(json.dumps(LatencyModel.from_trials(measured).to_dict()))
    assert data["form"] == "loglog" and data["points"] == len(measured)
    assert data["margin"] >= MIN_MARGIN and all(math.isfinite(v) for v in data["fits"]["simple"])
    assert LatencyModel.from_trials(measured, form="affine").predict(measured[0].candidate) > 0


def test_a_family_not_measured_yet_is_never_pruned_on_latency(measured):
    """MAC rates differ by family (plain convolutions do far more MACs per second than MobileNets): a family with
    no measured point of its own is measured, not judged by another family's curve."""
    model = LatencyModel.from_trials(measured)
    other = counted("mobilenetv2", 96, alpha=0.35)
    plausible, predicted, reason = model.decide(other, Budget(latency_ms=1e-6))
    assert plausible and predicted is not None and "mobilenetv2" in reason and "\n" not in reason
    # the family measured is still pruned at that budget
    assert not model.decide(measured[0].candidate, Budget(latency_ms=1e-6))[0]


def test_a_borderline_candidate_the_fit_has_not_seen_is_kept(measured):
    """Fit without it: with the budget between prediction / margin and the prediction, it is still measured; well
    under the optimistic estimate it is pruned."""
    for i, held in enumerate(measured):
        model = LatencyModel.from_trials(measured[:i] + measured[i + 1 :])
        predicted = model.predict(held.candidate)
        budget = Budget(latency_ms=predicted / model.margin() * 1.05)
        assert budget.latency_ms < predicted
        plausible, _, reason = model.decide(held.candidate, budget)
        assert plausible, (i, predicted, model.margin(), reason)
        assert not model.decide(held.candidate, Budget(latency_ms=model.optimistic(held.candidate) * 0.95))[0]


def test_a_candidate_far_smaller_than_any_measured_is_bounded_by_the_best_mac_rate(measured):
    """A fit's intercept, learnt on bigger models, would put a tiny one over a tight budget; the best MAC rate
    measured on the device bounds its optimistic estimate."""
    model = LatencyModel.from_trials(measured)
    tiny = counted("simple", 16, widths=(4,))
    assert tiny.macs * 10 < min(t.candidate.macs for t in measured)
    rate = max(t.candidate.macs / t.measurement.latency_ms for t in measured)
    budget = Budget(latency_ms=tiny.macs / rate / MIN_MARGIN * 1.05)
    assert model.predict(tiny) / model.margin() > budget.latency_ms  # the fit alone would prune it
    assert model.decide(tiny, budget)[0]


def test_leave_one_out_errors_exceed_the_in_sample_ones(measured):
    """Each point predicted by a fit that never saw it, not by the fit over all points."""
    model = LatencyModel.from_trials(measured)
    inside = [abs(model.predict(t.candidate) - t.measurement.latency_ms) / t.measurement.latency_ms for t in measured]
    loo = model.held_out_errors()
    # ordinary least squares: a point's residual left out is its residual in the fit over (1 - its leverage)
    assert loo["median"] >= sorted(inside)[len(inside) // 2] and loo["worst"] >= max(inside)


def test_ram_is_never_pruned_at_or_above_the_least_peak_measured(measured):
    """Peak RSS follows the input size, not params: a candidate with more params may peak lower. Only a budget
    under the runtime's own floor (the least peak measured) prunes."""
    least = min(t.measurement.peak_rss_mb for t in measured)
    model = LatencyModel.from_trials(measured)
    huge = counted("simple", 256, widths=(64, 128, 256))
    for candidate in [huge, *(t.candidate for t in measured)]:
        assert model.decide(candidate, Budget(latency_ms=1e6, ram_mb=least))[0], candidate
    plausible, _, reason = model.decide(huge, Budget(latency_ms=1e6, ram_mb=least * 0.8))
    assert not plausible and "least peak" in reason
