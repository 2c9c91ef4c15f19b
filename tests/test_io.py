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


def test_lines_end_where_text_mode_open_ends_them(tmp_path):
    from paddle_ocrvl_sft.io import iter_lines

    data = "a\rb\r\nc\nd\u2028e\x85f\x0bg\x0ch\ri"
    path = tmp_path / "t.txt"
    path.write_bytes(data.encode())
    with open(path, encoding="utf-8") as fh:  # what ERNIEKit's `for line in open(path)` sees
        expected = [line.rstrip("\n") for line in fh]
    got = [(n, text.rstrip("\r\n")) for n, text, _ in iter_lines(path)]
    assert got == list(enumerate(expected, 1)) and len(got) == 5


def test_tolerated_bom_blank_lines_and_json_lines_in_json_are_reported(tmp_path):
    heard = []
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n \t\n\xef\xbb\xbf{"b": 2}\n')
    assert [r.value for r in iter_records(path, on_tolerated=lambda *x: heard.append(x))] == [{"a": 1}, {"b": 2}]
    assert heard == [(1, "bom"), (2, "blank"), (3, "blank"), (4, "bom")]
    heard.clear()
    path = tmp_path / "a.json"
    path.write_bytes(b'\xef\xbb\xbf[\n{"a": 1}\n]')
    assert [(r.line, r.value) for r in iter_records(path, on_tolerated=lambda *x: heard.append(x))] == [(2, {"a": 1})]
    path.write_bytes(b'{"a": 1}\n')
    assert [r.value for r in iter_records(path, on_tolerated=lambda *x: heard.append(x))] == [{"a": 1}]
    assert heard == [(1, "bom"), (1, "not-array")]


def test_a_bom_inside_a_json_array_is_not_whitespace(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"a": 1},\ufeff{"b": 2}]', encoding="utf-8")  # json.load fails on it too
    records = list(iter_records(path))
    assert records[0].value == {"a": 1} and records[1].error and records[1].unread_after


@pytest.mark.parametrize("name,why", [
    ("missing.png", "No such file"), ("adir", "a directory"), ("fifo", "not a regular file"),
    ("nul\x00.png", "NUL character"), ("x" * 300, "File name too long"), ("\ud800.png", "not a usable file name"),
    ("file.png/inner.png", "Not a directory"),
])
def test_open_named_file_refuses_with_an_oserror_saying_why(tmp_path, name, why):
    import os

    from paddle_ocrvl_sft.io import open_named_file

    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(OSError) as exc:
        open_named_file(tmp_path / name)
    assert why in exc.value.strerror
    with open_named_file(tmp_path / "file.png") as fh:
        assert fh.read() == b"x"
