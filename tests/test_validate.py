import base64
import io
import json
import string

import pytest
from conftest import sample, write_image, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.validate import ValidateOptions, rejects_path, validate_and_write_clean, validate_paths
from paddle_ocrvl_sft.errors import UsageError, UserError


def rules_of(report, severity=None):
    return sorted({p.rule for p in report.problems if severity in (None, p.severity)})


def check_one(tmp_path, row, **options):
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    return validate_paths([path], ValidateOptions(**options))


def image_b64(fmt, size=(60, 40)):
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def test_good_sample_has_no_problem_and_counts_tokens(dataset_dir):
    report = check_one(dataset_dir, sample())
    assert report.problems == [] and report.valid == 1 and report.ok
    # 120x80 is below min_pixels: scaled up to 336x476 -> 12*17 = 204 image tokens, plus text
    assert 204 < report.max_tokens < 204 + 20


BAD = [
    ("not-object", ["a list"]),
    ("missing-field", {"text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "a", "tag": "no_mask"}]}),
    ("bad-type", {"image_info": {"image_url": "img.png"}, "text_info": []}),
    ("bad-tag", {**sample(), "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "a", "tag": "answer"}]}),
    ("first-not-mask", {**sample(), "text_info": [{"text": "a", "tag": "no_mask"}, {"text": "OCR:", "tag": "mask"}, {"text": "b", "tag": "no_mask"}]}),
    ("no-answer", {**sample(), "text_info": [{"text": "OCR:", "tag": "mask"}]}),
    ("empty-text", sample(answer="  ")),
    ("empty-text", sample(prompt="")),
    ("no-image", {**sample(), "image_info": []}),
    ("index-out-of-range", sample(index=5)),
    ("image-on-answer", {**sample(index=2), "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "a", "tag": "no_mask"},
                                                         {"text": "b", "tag": "no_mask"}]}),
    ("http-prefix", sample(url="http_scan.png")),
    ("base64-mangled", sample(url=image_b64("PNG"))),
    ("bad-type", sample(index="0")),
    ("missing-image", sample(url="nope/missing.png")),
    ("data-url", sample(url="data:image/png;base64,AAAA")),
    ("bad-type", {**sample(), "image_info": [{"matched_text_index": 0, "image_url": 7}]}),
]


@pytest.mark.parametrize("rule,row", BAD, ids=[f"{r}-{i}" for i, (r, _) in enumerate(BAD)])
def test_each_error_rule_rejects_the_sample(dataset_dir, rule, row):
    report = check_one(dataset_dir, row)
    assert rule in rules_of(report, "error")
    assert report.valid == 0 and report.rejected == 1 and not report.ok
    problem = next(p for p in report.problems if p.rule == rule)
    assert str(problem).startswith(f"{dataset_dir / 'd.jsonl'}:1: error: ")


def test_field_named_in_message(dataset_dir):
    report = check_one(dataset_dir, sample(index=5))
    assert "image_info[0].matched_text_index: 5" in report.problems[0].message


def test_invalid_json_line_reported_with_line_number_and_rest_still_checked(dataset_dir):
    path = write_jsonl(dataset_dir / "d.jsonl", [sample(), "{not json", sample(prompt="Table Recognition:")])
    report = validate_paths([path])
    assert [(p.line, p.rule) for p in report.problems] == [(2, "invalid-json")]
    assert report.valid == 2 and report.rejected == 1


def test_non_utf8_line(dataset_dir):
    path = dataset_dir / "d.jsonl"
    path.write_bytes(json.dumps(sample()).encode() + b"\n\xff\xfe\xfa\n")
    report = validate_paths([path])
    assert [(p.line, p.rule) for p in report.problems] == [(2, "invalid-json")]


def test_json_array_file_reports_element_lines(dataset_dir):
    path = dataset_dir / "d.json"
    path.write_text("[\n" + json.dumps(sample()) + ",\n" + json.dumps(sample(index=9)) + "\n]\n")
    report = validate_paths([path])
    assert [(p.line, p.rule) for p in report.problems] == [(3, "index-out-of-range")]


@pytest.mark.parametrize(
    "rule,row",
    [
        ("merged-turns", {**sample(), "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "a", "tag": "no_mask"}, {"text": "b", "tag": "no_mask"}]}),
        ("trailing-prompt", {**sample(), "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "a", "tag": "no_mask"}, {"text": "OCR:", "tag": "mask"}]}),
        ("remote-image", sample(url="https://example.com/a.png")),
        ("image-on-answer", sample(index=1)),  # ERNIEKit moves it to the prompt before the answer
    ],
)
def test_warning_rules_keep_the_sample(dataset_dir, rule, row):
    report = check_one(dataset_dir, row)
    assert rules_of(report) == [rule] and report.valid == 1 and report.ok


def test_remote_image_counted_at_the_max_pixels_bound(dataset_dir):
    report = check_one(dataset_dir, sample(url="http://host/x.png"))
    assert report.max_tokens > 2822400 // 784


def test_base64_survives_only_when_it_starts_with_a_slash(dataset_dir):
    jpeg = image_b64("JPEG")
    assert jpeg.startswith("/9j/")  # os.path.isabs: ERNIEKit does not prefix the dataset's dir
    report = check_one(dataset_dir, sample(url=jpeg))
    assert rules_of(report) == ["base64-image"] and report.valid == 1


def test_absolute_and_escaping_paths_warn(tmp_path):
    img = write_image(tmp_path / "shared" / "a.png")
    data = tmp_path / "sets" / "d.jsonl"
    write_jsonl(data, [sample(url=str(img)), sample(url="../shared/a.png", answer="b")])
    report = validate_paths([data])
    assert [(p.line, p.rule) for p in report.problems] == [(1, "absolute-path"), (2, "path-escapes")]
    assert report.valid == 2


def test_relative_paths_resolve_against_the_dataset_dir_not_cwd(tmp_path, monkeypatch):
    write_image(tmp_path / "data" / "imgs" / "a.png")
    data = write_jsonl(tmp_path / "data" / "d.jsonl", [sample(url="imgs/a.png")])
    monkeypatch.chdir(tmp_path)
    assert validate_paths([data]).ok


def test_not_an_image_and_truncated_header(dataset_dir):
    (dataset_dir / "text.png").write_text("hello")
    (dataset_dir / "trunc.png").write_bytes((dataset_dir / "img.png").read_bytes()[:12])
    report = validate_paths([write_jsonl(dataset_dir / "d.jsonl", [sample(url="text.png"), sample(url="trunc.png", answer="x")])])
    assert [(p.line, p.rule) for p in report.problems] == [(1, "not-image"), (2, "not-image")]


def test_corrupt_image_needs_decode(dataset_dir):
    good = (dataset_dir / "img.png").read_bytes()
    (dataset_dir / "corrupt.png").write_bytes(good[:40] + b"\0" * 30)  # header intact, data broken
    path = write_jsonl(dataset_dir / "d.jsonl", [sample(url="corrupt.png")])
    assert validate_paths([path]).ok  # the header alone looks fine
    report = validate_paths([path], ValidateOptions(decode=True))
    assert rules_of(report) == ["corrupt-image"]


def test_aspect_ratio_limit_is_200(dataset_dir):
    write_image(dataset_dir / "ok.png", (28, 28 * 200))
    write_image(dataset_dir / "tall.png", (28, 28 * 200 + 28))
    report = validate_paths([write_jsonl(dataset_dir / "d.jsonl", [sample(url="ok.png"), sample(url="tall.png")])])
    assert [(p.line, p.rule) for p in report.problems] == [(2, "aspect-ratio")]


def test_too_long_uses_max_seq_len_and_says_estimate(dataset_dir):
    row = sample(answer="word " * 400)
    assert check_one(dataset_dir, row, max_seq_len=None).ok
    report = check_one(dataset_dir, row, max_seq_len=300)
    assert rules_of(report) == ["too-long"] and "estimated" in report.problems[0].message
    assert report.problems[0].message.endswith("ERNIEKit drops it")
    two_turns = {**row, "text_info": row["text_info"] * 2}
    assert check_one(dataset_dir, two_turns, max_seq_len=300).problems[0].message.endswith("cuts it to the turns that fit")


def test_duplicates_point_at_the_first_occurrence(dataset_dir):
    rows = [sample(), sample(prompt='OCR:{"a": ""}'), sample(answer="other answer"), sample()]
    report = validate_paths([write_jsonl(dataset_dir / "d.jsonl", rows)])
    dups = [p for p in report.problems if p.rule == "duplicate"]
    assert [(p.line, p.severity) for p in dups] == [(3, "warning"), (4, "warning")]
    assert all(p.message.endswith("d.jsonl:1") for p in dups)
    assert report.valid == 4


def test_pixel_bounds_change_image_tokens(dataset_dir):
    path = write_jsonl(dataset_dir / "d.jsonl", [sample()])
    from paddle_ocrvl_sft.tokens import PixelBounds

    small = validate_paths([path], ValidateOptions(bounds=PixelBounds(28 * 28, 28 * 28 * 4))).max_tokens
    default = validate_paths([path]).max_tokens
    # 120x80: 204 image tokens with the released bounds, 1x2 = 2 with max_pixels of 4 tokens
    assert default - small == 204 - 2


def test_empty_dataset_is_not_ok(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    report = validate_paths([empty])
    assert report.samples == 0 and not report.ok and "loop forever" in report.summary()


def test_unreadable_image_is_not_called_missing(dataset_dir, monkeypatch):
    import builtins

    from paddle_ocrvl_sft import io as io_module

    def no_permission(path, mode="r", *args, **kwargs):
        if str(path).endswith("img.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(io_module, "open", no_permission, raising=False)  # root could read a chmod 0 file
    assert rules_of(check_one(dataset_dir, sample())) == ["unreadable-image"]


def test_missing_input_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        validate_paths([tmp_path / "nope.jsonl"])
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(UsageError):
        validate_paths([tmp_path / "x.txt"])


def test_write_clean_splits_rows_and_keeps_input(tmp_path):
    write_image(tmp_path / "src" / "img.png")
    src = write_jsonl(tmp_path / "src" / "d.jsonl", [sample(), sample(index=4), "{bad", sample(answer="b")])
    before = src.read_bytes()
    out = tmp_path / "clean" / "train.jsonl"
    report = validate_and_write_clean([src], out)
    assert src.read_bytes() == before
    good = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["text_info"][1]["text"] for g in good] == ["text", "b"]
    assert good[0]["image_info"][0]["image_url"] == "../src/img.png"  # still resolves from out's dir
    assert validate_paths([out]).ok
    rejects = [json.loads(line) for line in rejects_path(out).read_text().splitlines()]
    assert [r["source"].rsplit(":", 1)[1] for r in rejects] == ["2", "3"]
    assert "index-out-of-range" in rejects[0]["errors"][0]
    assert report.valid == 2 and report.rejected == 2
    with pytest.raises(UserError, match="already exists"):
        validate_and_write_clean([src], out)
    with pytest.raises(UserError, match="would replace an input"):
        validate_and_write_clean([src], src, force=True)
    rejects_input = write_jsonl(tmp_path / "src" / "in.rejects.jsonl", [sample()])
    with pytest.raises(UserError, match="would replace an input"):  # the rejects file is an output too
        validate_and_write_clean([rejects_input], tmp_path / "src" / "in.jsonl", force=True)
    assert json.loads(rejects_input.read_text()) == sample()


def test_cli_exit_codes_and_output(dataset_dir, capsys):
    good = write_jsonl(dataset_dir / "good.jsonl", [sample()])
    bad = write_jsonl(dataset_dir / "bad.jsonl", [sample(index=3)])
    assert main(["data", "validate", str(good)]) == 0
    assert main(["data", "validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:1: error: " in out and "1 rejected" in out
    assert main(["data", "validate", str(dataset_dir / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["data", "validate"])
    assert exc.value.code == 2


def test_cli_json_report_is_valid_json(dataset_dir, capsys):
    bad = write_jsonl(dataset_dir / "bad.jsonl", [sample(index=3), sample(), sample()])
    assert main(["data", "validate", "--json", str(bad)]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [p["rule"] for p in doc["problems"]] == ["index-out-of-range", "duplicate"]
    assert doc["summary"]["valid"] == 2 and doc["summary"]["rejected"] == 1


# --- robustness: arbitrary input never crashes validate -------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["image_info", "text_info", "text", "tag", "image_url", "matched_text_index", "x"]),
        children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(json_values, min_size=1, max_size=5))
def test_arbitrary_json_lines_give_a_clean_report(dataset_dir, rows):
    path = write_jsonl(dataset_dir / "fuzz.jsonl", [json.dumps(r) for r in rows])
    report = validate_paths([path])
    assert report.samples == len(rows)
    assert report.valid + report.rejected == report.samples


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json"]))
def test_arbitrary_bytes_give_a_clean_report(tmp_path, data, suffix):
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    report = validate_paths([path])
    assert report.valid + report.rejected == report.samples
    assert all(str(p).startswith(f"{path}:") for p in report.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    url=st.text(alphabet=string.ascii_letters + string.digits + "/.:+=_-", max_size=40),
    index=st.one_of(st.integers(-3, 3), st.text(max_size=2), st.none()),
)
def test_arbitrary_image_fields_give_a_clean_report(dataset_dir, url, index):
    row = sample(url=url)
    row["image_info"][0]["matched_text_index"] = index
    report = check_one(dataset_dir, row)
    assert report.samples == 1


def test_tokenizer_gives_exact_counts(dataset_dir, tmp_path, capsys):
    from paddle_ocrvl_sft.testing import build_tiny_model
    from paddle_ocrvl_sft.tokens import TextTokenCounter, image_tokens, sample_tokens

    base = build_tiny_model(tmp_path / "base", "base")
    row = sample(prompt="Table Recognition:", answer="<fcel>a<fcel>b<nl>" * 50)
    report = check_one(dataset_dir, row, tokenizer_dir=base)
    assert report.tokens_exact
    assert report.max_tokens == sample_tokens([image_tokens(80, 120)], [(row["text_info"][0]["text"], row["text_info"][1]["text"])],
                                              TextTokenCounter(base))
    path = write_jsonl(dataset_dir / "d.jsonl", [row])
    assert main(["data", "validate", str(path), "--tokenizer", str(base), "--max-seq-len", "300"]) == 1
    out = capsys.readouterr().out
    assert "[too-long]" in out and "estimated" not in out


def test_every_rule_is_documented_in_the_module_and_in_docs():
    import re
    from pathlib import Path

    from paddle_ocrvl_sft.data import validate as module

    source = Path(module.__file__).read_text()
    emitted = set(re.findall(r'(?:ERROR|WARNING), "([a-z0-9-]+)"', source)) | {"invalid-json"}
    emitted |= {rule for rule, _ in module.READER_RULES.values()}
    in_docstring = set(re.findall(r"^([a-z0-9-]+) +(?:error|warning) ", module.__doc__, re.M))
    docs = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    in_docs = set(re.findall(r"^\| `([a-z0-9-]+)` \| (?:error|warning) \|", docs, re.M))
    assert emitted == in_docstring == in_docs, (emitted ^ in_docstring, emitted ^ in_docs)


# --- reading the file the way ERNIEKit's reader does -----------------------------------------------

READER = "ernie/dataset/vl_sft_reader/vl_sft_dataset_json.py"
READING_RULES = {"invalid-json", "bom", "blank-line", "not-array"}


@pytest.fixture(scope="module")
def erniekit_load(tmp_path_factory):
    """``load(path) -> samples``, raising where ERNIEKit's loader raises, and which loader it is.

    The real ``ExampleSet`` (vl_sft_dataset_json.py, loaded from the vendored ERNIEKit source; its
    module needs only paddle and numpy) when the source is present, as on CI; otherwise its two
    reading lines reproduced: ``json.load(open(path))`` for .json, ``[json.loads(line) for line in
    open(path)]`` for .jsonl, then its per-rank slice ``exs[0::1]`` (which a .json object fails).
    """
    from types import SimpleNamespace

    from paddle_ocrvl_sft.testing import erniekit_module

    module = erniekit_module(READER, tmp_path_factory.mktemp("erniekit"))
    if module is not None:
        def load(path):
            args = SimpleNamespace(pp_need_data_degree=0)
            return module.ExampleSet(args, str(path), 0, None, data_rank=0, data_size=1).exs

        return load, "ERNIEKit ExampleSet (vendored source)"

    def load(path):
        with open(path) as fin:
            exs = json.load(fin) if str(path).lower().endswith(".json") else [json.loads(line) for line in fin]
        return exs[0::1]

    return load, "ExampleSet's reading lines, reproduced (no ERNIEKit source found)"


def encoded_row(**kwargs) -> bytes:
    return json.dumps(sample(**kwargs), ensure_ascii=False).encode()


ROW, ROW2, ROW3 = (encoded_row(prompt=p) for p in ("OCR:", "Table Recognition:", "Formula Recognition:"))
BOM = b"\xef\xbb\xbf"
# (name, suffix, file bytes); every row is a good sample, so only the reading can fail
READING_CASES = [
    ("plain", ".jsonl", ROW + b"\n" + ROW2 + b"\n"),
    ("bom", ".jsonl", BOM + ROW + b"\n" + ROW2 + b"\n"),
    ("bom-json-array", ".json", BOM + b"[" + ROW + b"]"),
    ("bom-on-line-2", ".jsonl", ROW + b"\n" + BOM + ROW2 + b"\n"),  # `cat a.jsonl b.jsonl` with a BOM in b
    ("blank-line", ".jsonl", ROW + b"\n\n" + ROW2 + b"\n"),
    ("trailing-blank-line", ".jsonl", ROW + b"\n" + ROW2 + b"\n\n"),
    ("whitespace-only-line", ".jsonl", ROW + b"\n \t \n" + ROW2 + b"\n"),
    ("form-feed-line", ".jsonl", ROW + b"\n\x0c\n" + ROW2 + b"\n"),
    ("lone-cr-line-ends", ".jsonl", ROW + b"\r" + ROW2 + b"\r"),
    ("crlf-line-ends", ".jsonl", ROW + b"\r\n" + ROW2 + b"\r\n"),
    ("cr-crlf-lf-mixed", ".jsonl", ROW + b"\r" + ROW2 + b"\r\n" + ROW3 + b"\n"),
    ("no-final-newline", ".jsonl", ROW + b"\n" + ROW2),
    ("cr-between-tokens", ".jsonl", ROW + b"\n" + ROW2.replace(b', "text_info"', b',\r"text_info"') + b"\n"),  # splits a line
    ("crlf-blank-line", ".jsonl", ROW + b"\r\n\r\n" + ROW2 + b"\r\n"),
    ("unicode-line-separators-in-text", ".jsonl", encoded_row(answer="a\u2028b\u2029c\x85d\x0be") + b"\n"),
    ("not-utf8", ".jsonl", ROW + b"\n" + ROW2.replace(b"text", b"t\xffxt") + b"\n"),
    ("json-array-cr-line-ends", ".json", b"[\r" + ROW + b",\r\n" + ROW2 + b"\r]\r"),
    ("json-array-blank-lines", ".json", b"\n[\n\n" + ROW + b"\n\n]\n\n"),
    ("json-lines-in-json", ".json", ROW + b"\n" + ROW2 + b"\n"),
    ("one-object-in-json", ".json", ROW + b"\n"),
    ("huge-integer", ".jsonl", ROW + b"\n" + ROW2.replace(b'"matched_text_index": 0', b'"x": ' + b"1" * 5000) + b"\n"),
    ("huge-integer-in-json", ".json", b"[" + ROW + b", " + b"1" * 5000 + b"]"),
]


@pytest.mark.parametrize("name,suffix,data", READING_CASES, ids=[c[0] for c in READING_CASES])
def test_validator_reads_the_file_as_erniekit_does(dataset_dir, erniekit_load, name, suffix, data):
    load, which = erniekit_load
    path = dataset_dir / f"d{suffix}"
    path.write_bytes(data)
    try:
        loaded, failure = load(path), None
    except Exception as exc:  # noqa: BLE001 - any failure here stops ERNIEKit's run at start-up
        loaded, failure = None, exc
    report = validate_paths([path])
    reading_errors = [p for p in report.problems if p.rule in READING_RULES]
    assert bool(reading_errors) == (failure is not None), (which, failure, reading_errors)
    if failure is None:
        assert report.ok and report.valid == len(loaded), which  # (warnings: the rows are duplicates)

    # what --write-clean writes ERNIEKit reads, with every good row, whatever the input held
    out = dataset_dir / "clean" / "d.jsonl"
    clean = validate_and_write_clean([path], out, force=True)
    assert not out.read_bytes().startswith(BOM) and b"\n\n" not in out.read_bytes() and b"\r" not in out.read_bytes()
    assert len(load(out)) == clean.valid > 0, which


def test_bom_and_blank_lines_are_errors_with_their_line_and_the_fix(dataset_dir, capsys):
    path = dataset_dir / "d.jsonl"
    path.write_bytes(BOM + ROW + b"\n\n" + ROW2 + b"\n   \n")
    report = validate_paths([path])
    assert [(p.line, p.severity, p.rule) for p in report.problems] == [(1, "error", "bom"), (2, "error", "blank-line"),
                                                                       (4, "error", "blank-line")]
    assert "Unexpected UTF-8 BOM" in report.problems[0].message and "without BOM" in report.problems[0].message
    assert "Expecting value" in report.problems[1].message and "delete it" in report.problems[1].message
    assert report.valid == 2 and report.rejected == 0 and not report.ok  # the rows are fine, the file is not
    assert "stop the run at start-up on bom=1, blank-line=2" in report.summary()

    assert main(["data", "validate", str(path)]) == 1
    assert f"{path}:1: error: a UTF-8 byte-order mark" in capsys.readouterr().out
    out = dataset_dir / "clean.jsonl"
    assert main(["data", "validate", str(path), "--write-clean", str(out)]) == 1
    assert "left out 1 byte-order mark, 2 blank lines" in capsys.readouterr().out
    assert out.read_bytes() == ROW + b"\n" + ROW2 + b"\n"
    assert main(["data", "validate", str(out)]) == 0


def test_a_json_file_must_be_one_array(dataset_dir):
    path = dataset_dir / "d.json"
    path.write_bytes(ROW + b"\n" + ROW2 + b"\n")
    report = validate_paths([path])
    assert [(p.line, p.rule) for p in report.problems] == [(1, "not-array")]
    assert report.valid == 2 and not report.ok
    with pytest.raises(UsageError, match=r"give a .jsonl name"):  # a JSON Lines copy named .json fails the same way
        validate_and_write_clean([path], dataset_dir / "clean.json")


def test_locale_encoding_other_than_utf8_is_a_warning_where_erniekit_would_fail(dataset_dir):
    """Under the C locale with locale coercion and UTF-8 mode off, Python's open() decodes ASCII.
    ERNIEKit's reading line (reproduced here: a subprocess with that locale does not import paddle)
    then fails on non-ASCII text, and the validator run the same way warns on that line."""
    import os
    import subprocess
    import sys

    path = write_jsonl(dataset_dir / "d.jsonl", [sample(), sample(prompt="Table Recognition:", answer="発票 54.50")])
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    code = (
        "import json, locale, sys\n"
        "from paddle_ocrvl_sft.data.validate import validate_paths\n"
        "try:\n    [json.loads(line) for line in open(sys.argv[1])]\n    reader = 'ok'\n"
        "except UnicodeDecodeError:\n    reader = 'fails'\n"
        "problems = [(p.line, p.severity, p.rule) for p in validate_paths([sys.argv[1]]).problems]\n"
        "print(json.dumps([locale.getpreferredencoding(False), reader, problems]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, check=True)
    encoding, reader, problems = json.loads(proc.stdout)
    if encoding.lower().replace("-", "") in ("utf8", "utf_8"):
        pytest.skip(f"this Python runs the C locale as {encoding} even with coercion off (platform default)")
    assert reader == "fails" and problems == [[2, "warning", "locale-encoding"]]
    assert validate_paths([path]).problems == []  # under this test run's UTF-8 locale: nothing to say


# --- image paths the OS refuses ------------------------------------------------------------------

ODD_PATHS = ["img.png", "adir", "fifo", "loop", "img.png/x.png", "nul\x00.png", "x" * 300, "\ud800.png", "../img.png",
             "", "/", ".", "a/../img.png", "img.png\n", " img.png"]
path_chars = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])  # NUL, controls, lone surrogates
image_paths = st.sampled_from(ODD_PATHS) | st.text(path_chars, max_size=30) | st.builds(
    str.__add__, st.sampled_from(ODD_PATHS), st.text(path_chars, max_size=8))


@pytest.fixture(scope="module")
def odd_files(tmp_path_factory):
    """A dataset dir holding one good image and the things a path can name that are not one."""
    import os

    root = tmp_path_factory.mktemp("odd")
    write_image(root / "img.png")
    (root / "adir").mkdir()
    os.mkfifo(root / "fifo")  # opening it would block until a writer comes
    os.symlink("loop", root / "loop")  # ELOOP
    return root


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(urls=st.lists(image_paths, min_size=1, max_size=4))
def test_image_paths_the_os_refuses_are_row_errors_in_validate_stats_and_split(odd_files, capsys, urls):
    """Found by fuzzing: a NUL in an image path crashed validate and stats (ValueError from open())."""
    import os

    rows = [sample(url=u, prompt=f"OCR:{i}") for i, u in enumerate(urls)]
    path = odd_files / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")  # ASCII: surrogates stay escaped
    report = validate_paths([path])
    assert report.samples == len(rows)
    errors_on = {p.line for p in report.problems if p.severity == "error"}
    for line, url in enumerate(urls, 1):
        if not url.startswith("http") and not os.path.isfile(os.path.join(odd_files, url)):  # isfile: False on NUL too
            assert line in errors_on, (url, report.problems)

    assert main(["data", "validate", str(path)]) in (0, 1)
    assert main(["data", "stats", str(path), "--no-plot"]) == 0
    assert main(["data", "split", str(path), "--val", "0.5", "-o", str(odd_files / "out" / "d"), "--force"]) in (0, 1)
    assert "Traceback" not in "".join(capsys.readouterr())


def test_every_warning_rule_has_a_fix_for_the_summary():
    import re
    from pathlib import Path

    from paddle_ocrvl_sft.data import validate as module

    warned = set(re.findall(r'WARNING, "([a-z0-9-]+)"', Path(module.__file__).read_text()))
    assert warned == set(module.WARNING_RULES)


def test_warnings_are_summarised_per_rule_and_ignore_silences_them(dataset_dir, capsys):
    rows = [sample(url=f"https://example.com/{i}.png") for i in range(5)] + [sample(index=1)]
    path = write_jsonl(dataset_dir / "d.jsonl", rows)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "warning:" in line] == [
        "warning: [remote-image] on 5 rows (the first 3 below); to silence it: download the images and name them by "
        "local path, or pass --ignore remote-image",
        f"{path}:6: warning: image_info[0].matched_text_index: 1 points at a 'no_mask' answer; ERNIEKit moves the image "
        "to the prompt before it [image-on-answer]",
    ]
    assert out[1] == f"  {path}:1: image_info[0].image_url: https://example.com/0.png: ERNIEKit downloads it with no timeout; not checked"
    assert main(["data", "validate", str(path), "--json", "--ignore", "remote-image"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [p["rule"] for p in doc["problems"]] == ["image-on-answer"]  # the ignored ones are not listed ...
    assert doc["summary"]["by_rule"]["remote-image"] == 5  # ... but still counted


# --- releases: the 1.5 tasks, and a release that was never trained on them ----------------------------


def test_untrained_task_is_a_warning_only_for_a_release_that_never_learnt_it(dataset_dir):
    from paddle_ocrvl_sft import releases

    rows = [sample(prompt="Spotting:"), sample(prompt="Seal Recognition:"), sample(prompt='OCR:{"TOTAL": ""}'),
            sample(prompt="Table Recognition:")]
    path = write_jsonl(dataset_dir / "d.jsonl", rows)
    v1 = validate_paths([path], ValidateOptions(release=releases.get("v1")))
    assert v1.ok and v1.valid == 4  # accepted: a warning, not an error
    assert [(p.line, p.rule) for p in v1.problems] == [(1, "untrained-task"), (2, "untrained-task")]
    assert v1.problems[0].message == ("prompt 'Spotting:': PaddleOCR-VL (0.9B, first release) was not trained on this "
                                      "task (known to v1.5, v1.6); fine-tuning teaches it from your data alone")
    for name in ("v1.5", "v1.6"):
        assert validate_paths([path], ValidateOptions(release=releases.get(name))).problems == []
    assert validate_paths([path], ValidateOptions()).problems == []  # no release given: nothing to compare with


def test_token_counts_use_the_release_marker(tmp_path):
    """The marker is counted with the tokenizer: "\\nAssistant: " (v1) and "\\nAssistant:\\n" (1.5)."""
    from paddle_ocrvl_sft import releases
    from paddle_ocrvl_sft.testing import build_tiny_model
    from paddle_ocrvl_sft.tokens import TextTokenCounter

    model = build_tiny_model(tmp_path / "m", release="v1.5")
    write_image(tmp_path / "img.png")
    path = write_jsonl(tmp_path / "d.jsonl", [sample(answer="TOTAL 12.50")])
    lengths = {}
    for name in ("v1", "v1.5"):
        options = ValidateOptions(tokenizer_dir=model, release=releases.get(name))
        lengths[name] = validate_paths([path], options).max_tokens
    counter = TextTokenCounter(model)
    assert lengths["v1.5"] - lengths["v1"] == counter("\nAssistant:\n") - counter("\nAssistant: ")


def test_cli_release_from_the_model_or_the_flag(tmp_path, capsys):
    from paddle_ocrvl_sft.testing import build_tiny_model

    write_image(tmp_path / "img.png", (600, 400))
    data = write_jsonl(tmp_path / "d.jsonl", [sample(prompt="Spotting:")])
    assert main(["data", "validate", str(data), "--release", "v1"]) == 0  # warnings do not fail
    out = capsys.readouterr().out
    assert "[untrained-task]" in out and "release v1 (PaddleOCR-VL (0.9B, first release)): --release" in out
    model = build_tiny_model(tmp_path / "m15", release="v1.5")
    assert main(["data", "validate", str(data), "--model", str(model), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["problems"] == [] and doc["summary"]["release"] == "v1.5"
    # a trainer output of 1.5/1.6 does not say which: refused with what it saw, --release settles it
    run = build_tiny_model(tmp_path / "run", "erniekit_output", release="v1.6", checkpoints=())
    assert main(["data", "validate", str(data), "--model", str(run)]) == 1
    assert "could be any of v1.5, v1.6" in capsys.readouterr().err
    assert main(["data", "validate", str(data), "--model", str(run), "--release", "v1.6"]) == 0
    assert "release v1.6 (PaddleOCR-VL-1.6): --release (the files: " in capsys.readouterr().out
    assert main(["data", "validate", str(data), "--release", "v2"]) == 1
    assert "--release v2: unknown release; choose from v1, v1.5, v1.6" in capsys.readouterr().err
    assert main(["data", "validate", str(data), "--model", str(tmp_path / "nonexistent")]) == 1
    assert f"--model {tmp_path / 'nonexistent'}: not a directory" in capsys.readouterr().err
    assert main(["data", "stats", str(data), "--model", str(data), "--no-plot"]) == 1  # a file is not a model dir
    assert "not a directory" in capsys.readouterr().err
    assert main(["data", "validate", str(data), "--release", "v2"]) == 1
    assert "--release v2: unknown release; choose from v1, v1.5, v1.6" in capsys.readouterr().err


def test_json_report_of_a_clean_dataset_is_valid_json(dataset_dir, capsys):
    """No problem streamed: the report used to print '{"problems": [, "summary": ...' (invalid JSON)."""
    data = write_jsonl(dataset_dir / "d.jsonl", [sample()])
    assert main(["data", "validate", str(data), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["problems"] == [] and doc["summary"]["valid"] == 1 and doc["summary"]["release"] is None


def test_1_5_task_prompts_from_convert_and_kie_through_validate(tmp_path):
    """convert writes the 1.5 task prompts (a CSV's `spotting`/`seal` kind) and validate accepts them;
    only a v1 release warns. data kie writes OCR:{...} prompts, which every release knows."""
    from paddle_ocrvl_sft import releases
    from paddle_ocrvl_sft.data.convert import convert_file
    from paddle_ocrvl_sft.data.kie import build_kie_dataset

    write_image(tmp_path / "img.png", (300, 200))
    csv = tmp_path / "in.csv"
    csv.write_text("image,prompt,answer\nimg.png,spotting,<|LOC_1|>TOTAL\nimg.png,Seal,公司印章\nimg.png,ocr,TOTAL\n",
                   encoding="utf-8")
    out = tmp_path / "converted.jsonl"
    convert_file("csv", csv, out)
    prompts = [json.loads(line)["text_info"][0]["text"] for line in out.read_text(encoding="utf-8").splitlines()]
    assert prompts == ["Spotting:", "Seal Recognition:", "OCR:"]
    v1 = validate_paths([out], ValidateOptions(release=releases.get("v1")))
    assert v1.ok and v1.by_rule == {"untrained-task": 2}
    assert validate_paths([out], ValidateOptions(release=releases.get("v1.5"))).by_rule == {}

    annotations = write_jsonl(tmp_path / "ann.jsonl", [{"image": "img.png", "data": {"TOTAL": "1", "DATE": "2"}}])
    kie = tmp_path / "kie.jsonl"
    build_kie_dataset(annotations, kie, per_image=3)
    report = validate_paths([kie], ValidateOptions(release=releases.get("v1")))
    assert report.ok and report.valid == 4 and "untrained-task" not in report.by_rule
