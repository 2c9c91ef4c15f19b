import pytest

from paddle_ocrvl_sft.data.warning_summary import WarningSummary
from paddle_ocrvl_sft.errors import UsageError


def test_a_rule_seen_once_is_the_usual_warning_line():
    summary = WarningSummary()
    summary.add("duplicate", "d.jsonl:6", "same images and prompt as d.jsonl:1")
    assert summary.lines() == ["d.jsonl:6: warning: same images and prompt as d.jsonl:1 [duplicate]"]


def test_a_rule_seen_on_many_rows_is_one_warning_with_count_examples_and_the_way_to_silence_it():
    summary = WarningSummary(hints={"path-escapes": "keep the images under the dataset"})
    for line in range(1, 10_001):
        summary.add("path-escapes", f"d.jsonl:{line}", f"../i/{line}.png leaves the dataset's directory")
    summary.add("remote-image", "d.jsonl:3", "https://h/a.png: not checked")
    summary.add("remote-image", "d.jsonl:4", "https://h/b.png: not checked")
    assert summary.lines() == [
        "warning: [path-escapes] on 10000 rows (the first 3 below); to silence it: keep the images under the dataset, "
        "or pass --ignore path-escapes",
        "  d.jsonl:1: ../i/1.png leaves the dataset's directory",
        "  d.jsonl:2: ../i/2.png leaves the dataset's directory",
        "  d.jsonl:3: ../i/3.png leaves the dataset's directory",
        "warning: [remote-image] on 2 rows (all 2 below); to silence it: pass --ignore remote-image",
        "  d.jsonl:3: https://h/a.png: not checked",
        "  d.jsonl:4: https://h/b.png: not checked",
    ]
    assert summary.count == 10_002 and len(summary.causes["path-escapes"].examples) == 3  # a few examples, not all rows


def test_ignored_rules_are_counted_not_printed():
    summary = WarningSummary(ignore=["duplicate"])
    assert summary.add("duplicate", "d.jsonl:2", "x") is False
    assert summary.add("duplicate", "d.jsonl:3", "x") is False
    assert summary.add("merged-turns", "d.jsonl:4", "y") is True
    assert summary.count == 1
    assert summary.lines() == ["d.jsonl:4: warning: y [merged-turns]", "ignored (--ignore): duplicate=2"]


def test_an_ignore_of_no_warning_rule_is_refused():
    """One check for `data validate` and `data convert`: a typo or an error rule cannot be --ignore'd."""
    with pytest.raises(UsageError, match=r"^--ignore missing-image: not a warning rule \(errors cannot be ignored; "
                                         r"the warnings are duplicate, merged-turns\)$"):
        WarningSummary(hints={"duplicate": "x", "merged-turns": "y"}, ignore=["duplicate", "missing-image"])
    assert WarningSummary(hints={"duplicate": "x"}, ignore=iter(["duplicate"])).ignore == {"duplicate"}
