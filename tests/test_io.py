import json

import pytest

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import atomic_open, iter_records, staged_dir


def test_json_array_streams_elements_with_start_lines(tmp_path):
    rows = [{"i": i, "pad": "x" * (70000 if i == 2 else 1)} for i in range(5)] + [12345678901234567890]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(rows, indent=1))
    records = list(iter_records(path))
    assert [r.value for r in records] == rows
    assert [r.line for r in records][:3] == [2, 6, 10]


@pytest.mark.parametrize("text,expected", [
    ('[{"a": 1},\n{"b": 2}\n{"c": 3}]', [(1, {"a": 1}, None), (2, {"b": 2}, None), (3, None, "expected ',' or ']'")]),
    ("[1, 2", [(1, 1, None), (1, 2, None), (1, None, "found end of file")]),
    ('{"a": 1}\n{"b": 2}\n', [(1, {"a": 1}, None), (2, {"b": 2}, None)]),  # .json holding JSON Lines
    ("[]", []),
    ("[1] x", [(1, 1, None), (1, None, "after the closing")]),
])
def test_json_array_errors_located(tmp_path, text, expected):
    path = tmp_path / "a.json"
    path.write_text(text)
    got = [(r.line, r.value, r.error) for r in iter_records(path)]
    assert len(got) == len(expected)
    for (line, value, error), (eline, evalue, eerror) in zip(got, expected):
        assert (line, value) == (eline, evalue)
        assert (error is None) == (eerror is None) and (eerror is None or eerror in error)


def test_jsonl_never_parsed_as_array(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text("[1, 2]\n[3]\n")
    assert [r.value for r in iter_records(path)] == [[1, 2], [3]]


def test_atomic_open_leaves_target_untouched_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(target) as fh:
            fh.write("new partial")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    with pytest.raises(UserError, match="already exists"):
        with atomic_open(target, force=False):
            pass


def test_staged_dir_swaps_in_only_when_complete(tmp_path):
    target = tmp_path / "run"
    with staged_dir(target, force=False) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()
    assert (target / "a").read_text() == "1"
    with pytest.raises(UserError):
        with staged_dir(target, force=False):
            pass
    with pytest.raises(RuntimeError):
        with staged_dir(target, force=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_outputs_get_the_usual_permissions_not_private_temp_ones(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "out.jsonl") as fh:
            fh.write("x")
        with staged_dir(tmp_path / "bundle", force=False) as stage:
            (stage / "a").write_text("1")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.jsonl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755


def test_discard_output_leaves_the_target_as_it_was(tmp_path):
    from paddle_ocrvl_sft.io import DiscardOutput

    target = tmp_path / "out.jsonl"
    target.write_text("old")
    with atomic_open(target) as fh:
        fh.write("new")
        raise DiscardOutput
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]
