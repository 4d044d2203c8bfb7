"""edgecls.core.rundata: the run's own dataset folder, checked against the model's labels."""

import unicodedata

import pytest

from edgecls.core.rundata import check_classes
from edgecls.runtime.errors import DataError


def test_class_folders_that_differ_only_in_unicode_normalisation_are_named_as_such(tmp_path):
    labels = ["caf\u00e9", "na\u00efve", "plain"]
    found = [unicodedata.normalize("NFD", name) for name in labels]  # what a copy through macOS writes
    with pytest.raises(DataError) as refused:
        check_classes(tmp_path, found, labels)
    message = str(refused.value)
    assert "differ from the model's labels only in Unicode normalisation" in message
    assert "folder 'cafe\\u0301' for label 'caf\\xe9'" in message and "folder 'nai\\u0308ve'" in message
    assert "missing" not in message and "\n" not in message


def test_class_folders_that_really_differ_are_named_unknown_and_missing(tmp_path):
    with pytest.raises(DataError, match=r"\(dog unknown to the model; cat missing\)"):
        check_classes(tmp_path, ["dog", "plain"], ["cat", "plain"])
