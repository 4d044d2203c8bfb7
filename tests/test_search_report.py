"""edgecls.search.report: the front, the choice, the trials table and the plot, on hand-made trials (the report reads
trials only; the search that makes real ones is tested in tests/test_search_api.py)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from edgecls.runtime.errors import EdgeclsError
from edgecls.search import report
from edgecls.search.types import FAILED, GATE_FAILED, MEETS, OVER_BUDGET, PRUNED, Budget, Candidate, Measurement, Trial


def trial(number, accuracy=None, ms=None, status=MEETS, rss=50.0, size=0.5, predicted=None, emulated=None, **kw):
    """A trial as the search leaves it; `ms` None: never measured."""
    candidate = Candidate("simple", 32, "stretch", {"widths": [4, 8]}, macs=1000 * (number + 1), params=100)
    measurement = None
    if ms is not None:
        measurement = Measurement(
            "tflite-int8", "litert", ms, ms * 1.1, rss, size, device="local (test CPU)", emulated=emulated, seconds=2.0
        )
    return Trial(
        number, candidate, status, predicted_ms=predicted, val_accuracy=accuracy, measurement=measurement, **kw
    )


def numbers(trials) -> list:
    return [t.number for t in trials]


# --- the front ---------------------------------------------------------------------------------------------------


def test_the_front_keeps_only_trials_no_other_beats_in_both_accuracy_and_latency_fastest_first():
    trials = [trial(0, 0.80, 1.0), trial(1, 0.90, 3.0), trial(2, 0.85, 4.0), trial(3, 0.95, 6.0), trial(4, 0.70, 2.0)]
    assert numbers(report.pareto_front(trials)) == [0, 1, 3]


def test_an_equally_accurate_faster_trial_pushes_the_slower_one_off_the_front():
    trials = [trial(0, 0.90, 5.0), trial(1, 0.90, 2.0)]
    assert numbers(report.pareto_front(trials)) == [1]


def test_two_trials_with_the_same_accuracy_and_latency_are_both_on_the_front():
    trials = [trial(3, 0.90, 2.0), trial(1, 0.90, 2.0), trial(2, 0.95, 4.0)]
    assert numbers(report.pareto_front(trials)) == [1, 3, 2]


def test_a_faster_trial_as_accurate_at_the_same_latency_is_not_beaten_by_a_less_accurate_one_there():
    trials = [trial(0, 0.80, 2.0), trial(1, 0.90, 2.0)]
    assert numbers(report.pareto_front(trials)) == [1]


def test_pruned_failed_gate_failed_and_running_trials_are_never_on_the_front():
    best_looking = dict(accuracy=0.99, ms=0.1)
    trials = [
        trial(0, 0.80, 1.0),
        trial(1, status=PRUNED, predicted=0.05),
        trial(2, **best_looking, status=FAILED),
        trial(3, **best_looking, status=GATE_FAILED),
        trial(4, **best_looking, status=None),
        trial(5, accuracy=0.99, status=OVER_BUDGET),  # no measurement: not a point of the front
        trial(6, accuracy=math.nan, ms=0.2),  # diverged
    ]
    assert numbers(report.pareto_front(trials)) == [0]


def test_over_budget_trials_are_on_the_front_it_is_the_accuracy_latency_trade_off_whatever_the_budget():
    trials = [trial(0, 0.80, 1.0), trial(1, 0.95, 9.0, status=OVER_BUDGET)]
    assert numbers(report.pareto_front(trials)) == [0, 1]


# --- the choice --------------------------------------------------------------------------------------------------


def test_the_chosen_trial_is_the_most_accurate_one_within_the_latency_budget():
    trials = [trial(0, 0.80, 1.0), trial(1, 0.90, 3.0), trial(2, 0.97, 6.0, status=OVER_BUDGET)]
    assert report.choose(trials, Budget(5.0)).number == 1


def test_a_tie_in_accuracy_is_won_by_the_faster_trial_whichever_came_first():
    trials = [trial(0, 0.90, 4.0), trial(1, 0.90, 2.5), trial(2, 0.90, 3.0)]
    assert report.choose(trials, Budget(5.0)).number == 1


def test_a_tie_in_accuracy_and_latency_is_won_by_the_earlier_trial():
    trials = [trial(7, 0.90, 2.0), trial(3, 0.90, 2.0)]
    assert report.choose(trials, Budget(5.0)).number == 3


def test_a_trial_exactly_at_the_budget_meets_it():
    assert report.choose([trial(0, 0.9, 5.0)], Budget(5.0)).number == 0


def test_nothing_is_chosen_when_no_measured_trial_meets_the_budget():
    trials = [trial(0, 0.90, 6.0, status=OVER_BUDGET), trial(1, status=PRUNED, predicted=1.0)]
    assert report.choose(trials, Budget(5.0)) is None
    assert report.choose([], Budget(5.0)) is None


def test_pruned_failed_and_gate_failed_trials_are_never_chosen_however_good_they_look():
    trials = [
        trial(0, 0.70, 4.0),
        trial(1, 0.99, status=PRUNED, predicted=0.5),
        trial(2, 0.99, 0.5, status=FAILED),
        trial(3, 0.99, 0.5, status=GATE_FAILED),
        trial(4, 0.99, 0.5, status=None),
    ]
    assert report.choose(trials, Budget(5.0)).number == 0


def test_a_ram_budget_passes_over_a_more_accurate_trial_that_needs_more_memory():
    trials = [trial(0, 0.95, 1.0, rss=180.0), trial(1, 0.90, 2.0, rss=90.0)]
    assert report.choose(trials, Budget(5.0, ram_mb=100)).number == 1
    assert report.choose(trials, Budget(5.0)).number == 0
    assert report.misses(trials[0], Budget(5.0, ram_mb=100)) == ["peak RAM 180.0 MB > 100 MB"]


def test_a_size_budget_passes_over_a_more_accurate_trial_whose_artifact_is_larger():
    trials = [trial(0, 0.95, 1.0, size=3.2), trial(1, 0.90, 2.0, size=0.8)]
    assert report.choose(trials, Budget(5.0, size_mb=1.0)).number == 1
    assert report.misses(trials[0], Budget(5.0, size_mb=1.0)) == ["size 3.2 MB > 1 MB"]


@pytest.mark.parametrize("unmeasured", [None, math.nan])
def test_a_memory_limit_is_never_taken_as_met_when_that_figure_was_not_measured(unmeasured):
    trials = [trial(0, 0.95, 1.0, rss=unmeasured), trial(1, 0.90, 2.0)]
    assert report.choose(trials, Budget(5.0, ram_mb=100)).number == 1
    assert report.misses(trials[0], Budget(5.0, ram_mb=100)) == ["peak RAM not measured (budget 100 MB)"]


def test_measured_trials_can_be_judged_again_against_another_budget():
    trials = [trial(0, 0.80, 1.0), trial(1, 0.95, 8.0, status=OVER_BUDGET)]
    assert report.choose(trials, Budget(5.0)).number == 0
    assert report.choose(trials, Budget(10.0)).number == 1
    assert report.misses(trials[1], Budget(5.0)) == ["latency 8 ms > 5 ms"]


# --- the table ---------------------------------------------------------------------------------------------------


def search_trials() -> list:
    return [
        trial(2, 0.90, 3.0, test_accuracy=0.88, reason="meets 5 ms", train_seconds=12.5),
        trial(0, 0.80, 1.0, test_accuracy=0.79),
        trial(1, status=PRUNED, predicted=9.5, reason="predicted 9.5 ms > 5 ms"),
        trial(3, 0.97, 7.0, status=OVER_BUDGET, reason="latency 7.00 ms > 5 ms"),
        trial(4, status=FAILED, reason="ValueError: the model\ndiverged"),
    ]


def test_the_table_has_one_row_per_trial_by_number_with_its_figures(tmp_path):
    csv_path, json_path = report.write_table(search_trials(), tmp_path, budget=Budget(5.0), device={"name": "cpu"})
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert list(rows[0]) == list(report.COLUMNS)
    two = rows[2]
    assert (two["model"], two["size"], two["status"], two["p50_ms"], two["p90_ms"]) == (
        "simple",
        "32",
        "meets-budget",
        "3.0",
        "3.3",
    )
    assert (two["val_accuracy"], two["int8_test_accuracy"], two["peak_rss_mb"], two["train_s"]) == (
        "0.9",
        "0.88",
        "50.0",
        "12.5",
    )
    assert json.loads(two["options"]) == {"widths": [4, 8]}
    assert (two["device"], two["artifact"], two["emulated"]) == ("local (test CPU)", "tflite-int8", "")
    assert (rows[1]["status"], rows[1]["predicted_ms"], rows[1]["p50_ms"]) == ("pruned", "9.5", "")
    assert rows[4]["reason"] == "ValueError: the model diverged"  # one line per row


def test_the_json_table_reads_back_as_the_same_trials_with_the_budget_front_and_choice(tmp_path):
    trials = search_trials()
    report.write_table(trials, tmp_path, budget=Budget(5.0, ram_mb=100), device={"name": "cpu"})
    back = report.read_table(tmp_path)
    assert back["trials"] == sorted(trials, key=lambda t: t.number)
    assert back["budget"] == Budget(5.0, ram_mb=100)
    assert (back["device"], back["chosen"], back["front"]) == ({"name": "cpu"}, 2, [0, 2, 3])


def test_a_diverged_trial_is_written_as_valid_json_with_null_accuracy(tmp_path):
    report.write_table([trial(0, math.nan, 1.0, status=FAILED)], tmp_path, budget=Budget(5.0))
    text = (tmp_path / report.TRIALS_JSON).read_text()
    assert "NaN" not in text
    assert json.loads(text)["trials"][0]["val_accuracy"] is None


def test_a_failing_write_leaves_the_previous_tables_as_they_were(tmp_path):
    report.write_table(search_trials(), tmp_path, budget=Budget(5.0))
    before = {name: (tmp_path / name).read_bytes() for name in (report.TRIALS_CSV, report.TRIALS_JSON)}
    broken = trial(9, 0.5, 1.0)
    broken.candidate.model_options["widths"] = {4, 8}  # a set: not JSON
    with pytest.raises(TypeError):
        report.write_table([*search_trials(), broken], tmp_path, budget=Budget(5.0))
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temp file left behind


def test_reading_a_folder_without_a_trials_table_says_what_to_give_in_one_line(tmp_path):
    (tmp_path / report.TRIALS_JSON).write_text('{"format": "something-else"}')
    with pytest.raises(EdgeclsError) as info:
        report.read_table(tmp_path)
    assert "\n" not in str(info.value)
    assert "give the OUT folder of an `edgecls search`" in str(info.value)
    with pytest.raises(EdgeclsError, match="cannot read"):
        report.read_table(tmp_path / "nothing")


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
def test_a_text_cell_a_spreadsheet_would_run_as_a_formula_is_written_as_text_and_numbers_stay_numbers(tmp_path, start):
    formula = f'{start}HYPERLINK("http://x")'
    gate_failed = trial(0, 0.9, 1.0, status=GATE_FAILED, reason=formula)  # reason: the gate's str(exc)
    measurement = gate_failed.measurement
    measured_on = trial(1, 0.9, 1.0)
    measured_on.measurement = Measurement(
        formula, measurement.engine, 1.0, device=formula, emulated=formula
    )  # the device: a user's --device
    negative = trial(2, status=PRUNED, predicted=-0.5)
    csv_path, _ = report.write_table([gate_failed, measured_on, negative], tmp_path, budget=Budget(5))
    rows = list(csv.DictReader(csv_path.open(newline="")))
    assert rows[0]["reason"] == "'" + formula
    assert (rows[1]["artifact"], rows[1]["device"], rows[1]["emulated"]) == ("'" + formula,) * 3
    assert rows[2]["predicted_ms"] == "-0.5"  # a negative number stays a number
    assert (rows[0]["p50_ms"], rows[0]["number"]) == ("1.0", "0")


def test_a_cell_starting_with_a_tab_or_carriage_return_is_written_as_text_on_its_own_row(tmp_path):
    t = trial(0, 0.9, 1.0)
    t.measurement = Measurement("tflite-int8", "litert", 1.0, device="\t=1+2", emulated="\r=1+2")
    csv_path, _ = report.write_table([t], tmp_path, budget=Budget(5))
    row = next(csv.DictReader(csv_path.open(newline="")))
    assert (row["device"], row["emulated"]) == ("'\t=1+2", "' =1+2")  # the CR: a space, the row kept whole
    assert len(csv_path.read_text().splitlines()) == 2


@pytest.mark.parametrize(
    "budget", [{"ram_mb": 5}, "x", [5.0], {"latency_ms": "fast"}, {"latency_ms": 5.0, "ram_mb": "lots"}]
)
def test_a_trials_table_with_a_bad_budget_is_refused_in_one_line_naming_the_file(tmp_path, budget):
    document = {"format": report.FORMAT, "trials": [], "budget": budget}
    (tmp_path / report.TRIALS_JSON).write_text(json.dumps(document))
    with pytest.raises(EdgeclsError) as info:
        report.read_table(tmp_path)
    assert "\n" not in str(info.value)
    assert str(tmp_path / report.TRIALS_JSON) in str(info.value) and "budget" in str(info.value)


def test_counts_name_each_status():
    assert report.counts(search_trials()) == "5 trials: 2 meets-budget, 1 over-budget, 1 pruned, 1 failed"


# --- the plot ----------------------------------------------------------------------------------------------------


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def colour_mask(image: np.ndarray, hex_colour: str, tolerance: int = 14) -> np.ndarray:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(image - rgb) <= tolerance).all(axis=-1)


def budget_column(path) -> tuple:
    """The pixel column holding most of the budget colour, and how many such pixels it holds."""
    per_column = colour_mask(pixels(path), report.BUDGET_COLOUR).sum(axis=0)
    return int(per_column.argmax()), int(per_column.max())


def test_the_front_png_is_a_readable_figure_with_the_budget_line_where_the_budget_is(tmp_path):
    trials = search_trials()
    for ms in (2, 4, 6):
        report.plot_front(trials, Budget(float(ms)), tmp_path / f"{ms}.png")
    image = pixels(tmp_path / "2.png")
    assert 750 <= image.shape[1] <= 1400 and 550 <= image.shape[0] <= 800, image.shape
    (x2, n2), (x4, n4), (x6, n6) = (budget_column(tmp_path / f"{ms}.png") for ms in (2, 4, 6))
    assert min(n2, n4, n6) > 0.4 * image.shape[0]  # a line across both panels
    # a linear axis from about 1 to 9.5 ms (the same for the three budgets): 4 ms lies halfway between 2 and 6
    assert x6 - x2 > 0.15 * image.shape[1]
    assert abs((x4 - x2) - (x6 - x4)) <= 3


def test_the_chosen_trial_is_starred_only_when_one_meets_the_budget(tmp_path):
    report.plot_front(search_trials(), Budget(5.0), tmp_path / "chosen.png")
    report.plot_front(search_trials(), Budget(0.5), tmp_path / "none.png")
    assert colour_mask(pixels(tmp_path / "chosen.png"), report.CHOSEN_COLOUR).sum() > 100
    assert colour_mask(pixels(tmp_path / "none.png"), report.CHOSEN_COLOUR).sum() == 0


def test_pruned_candidates_are_drawn_apart_below_the_measured_ones(tmp_path):
    with_pruned, without = search_trials(), [t for t in search_trials() if t.status != PRUNED]
    report.plot_front(with_pruned, Budget(5.0), tmp_path / "pruned.png")
    report.plot_front(without, Budget(5.0), tmp_path / "none.png")
    pruned = colour_mask(pixels(tmp_path / "pruned.png"), report.PRUNED_COLOUR)
    assert colour_mask(pixels(tmp_path / "none.png"), report.PRUNED_COLOUR).sum() == 0
    rows = np.nonzero(pruned.sum(axis=1))[0]
    assert rows.size and rows.min() > 0.6 * pruned.shape[0]  # in the strip under the accuracy panel


def test_a_search_with_nothing_measured_yet_still_draws_its_figure(tmp_path):
    report.plot_front(
        [trial(0, status=PRUNED, predicted=12.0), trial(1, status=FAILED)], Budget(5.0), tmp_path / "f.png"
    )
    assert pixels(tmp_path / "f.png").shape[0] > 500


def test_the_chosen_trials_latency_is_printed_to_three_significant_figures_in_the_legend():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    try:
        report._draw_measured(ax, [trial(0, 0.9, 0.0365), trial(1, 0.8, 0.0123)], Budget(0.1))
        labels = ax.get_legend_handles_labels()[1]
    finally:
        plt.close(fig)
    chosen = next(label for label in labels if label.startswith("chosen #0"))
    assert "90.0 % val accuracy, 0.0365 ms (tflite-int8)" in chosen, chosen


def test_why_a_trial_misses_the_budget_gives_its_latency_to_three_significant_figures():
    assert report.misses(trial(0, 0.9, 0.104), Budget(0.1)) == ["latency 0.104 ms > 0.1 ms"]
    assert report.misses(trial(0, 0.9, 1234.5), Budget(500)) == ["latency 1234 ms > 500 ms"]  # not 1.23e+03


def test_the_title_names_the_device_and_says_when_the_measurements_were_emulated():
    local = report.figure_title([trial(0, 0.9, 1.0)])
    assert local == "Accuracy vs latency on local (test CPU)"
    emulated = report.figure_title([trial(0, 0.9, 40.0, emulated="qemu-user on an x86_64 CPU")], "Pi 5")
    assert emulated.startswith("Pi 5 (emulated: qemu-user on an x86_64 CPU")
