"""edgecls.importer.labels: labels files as people have them."""

from __future__ import annotations

import pytest

from edgecls.importer.labels import check_count, check_labels, parse_labels, read_labels
from edgecls.runtime.errors import EdgeclsError


def test_one_label_a_line_keeps_the_file_order():
    assert parse_labels("cat\n\ndog\nbird\n") == ["cat", "dog", "bird"]


def test_teachable_machine_index_lines_give_the_order_and_are_dropped():
    assert parse_labels("1 Dog\n0 Cat\n2 Hot dog\n") == ["Cat", "Dog", "Hot dog"]


def test_labels_that_are_numbers_stay_when_not_an_index_sequence():
    assert parse_labels("3\n7\n") == ["3", "7"]


def test_a_label_named_twice_is_refused():
    with pytest.raises(EdgeclsError, match="names 'cat' twice"):
        parse_labels("cat\ncat\n")


def test_an_empty_labels_file_is_refused(tmp_path):
    (tmp_path / "labels.txt").write_text("\n\n")
    with pytest.raises(EdgeclsError, match="holds no labels"):
        read_labels(tmp_path / "labels.txt")


def test_a_count_that_disagrees_with_the_model_names_both(tmp_path):
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(EdgeclsError, match="has 3 labels but the model has 5 outputs"):
        read_labels(tmp_path / "labels.txt", 5)


def test_a_missing_labels_file_says_to_pass_labels(tmp_path):
    with pytest.raises(EdgeclsError, match="--labels FILE"):
        read_labels(tmp_path / "nope.txt")


def test_check_count_accepts_an_unknown_count():
    check_count(["a"], None, "x")


@pytest.mark.parametrize(
    "label, why",
    [
        ("../evil", "holds '/'"),
        ("/tmp/PWNED", "holds '/'"),
        ("a\\b", "holds '\\\\\\\\'"),
        ("..", "is not a name"),
        (".", "is not a name"),
        ("bell\x07", "holds '\\\\x07'"),
        ("x" * 201, "is over 200 characters long"),
    ],
)
def test_a_label_that_cannot_name_a_folder_is_refused(label, why):
    with pytest.raises(EdgeclsError, match=why) as caught:
        parse_labels(f"cat\n{label}\n", "labels file l.txt")
    assert "\n" not in str(caught.value) and "labels file l.txt" in str(caught.value)


def test_a_model_label_holding_a_line_break_is_refused_not_split():
    with pytest.raises(EdgeclsError, match="holds '\\\\n'"):
        check_labels(["circle\nsquare", "triangle"], "the model's labels")


def test_a_label_of_200_characters_with_dots_inside_is_kept():
    assert parse_labels("a" * 200 + "\nv1.2 cat\n...x\n") == ["a" * 200, "v1.2 cat", "...x"]
