import csv
import json
import shutil
from pathlib import Path

import pytest
from conftest import sample, write_image, write_jsonl

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.convert import CONVERTERS
from paddle_ocrvl_sft.data.sample import is_remote, resolve_image


def convert(*args):
    return main(["data", "convert", *map(str, args)])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def where(url, dataset):
    """The file (or URL) an image reference in ``dataset`` points at."""
    return url if is_remote(url) else resolve_image(url, dataset).resolve()


def round_trip(tmp_path, fmt, src, *extra):
    """source → ERNIEKit (in out/) → messages (in msg/): both outputs with their images resolved."""
    ernie, messages = tmp_path / "out" / "train.jsonl", tmp_path / "msg" / "train.messages.jsonl"
    assert convert("--from", fmt, src, "-o", ernie, *extra) == 0
    assert convert(ernie, "--to", "messages", "-o", messages) == 0
    samples, records = read_jsonl(ernie), read_jsonl(messages)
    assert len(samples) == len(records)
    for s, m in zip(samples, records):
        # the messages record says the same thing as the ERNIEKit sample ...
        prompts = [t["content"].replace("<image>", "") for t in m["messages"][0::2]]
        answers = [t["content"] for t in m["messages"][1::2]]
        assert [t["text"] for t in s["text_info"]] == [x for pair in zip(prompts, answers) for x in pair]
        assert m["messages"][0]["content"].startswith("<image>" * len(m["images"]))
        # ... and its images are the same files, each seen from its own file's directory
        assert [where(i["image_url"], ernie) for i in s["image_info"]] == [where(url, messages) for url in m["images"]]
    return samples


def turns_and_images(samples, ernie_path):
    return [
        ([(t["text"], t["tag"]) for t in s["text_info"]], [where(i["image_url"], ernie_path) for i in s["image_info"]])
        for s in samples
    ]


def test_minicpm_v_conversations(tmp_path):
    # seed 003's record shape, plus MiniCPM-V's multi-image dict
    src = tmp_path / "src" / "train.json"
    src.parent.mkdir()
    src.write_text(json.dumps([
        {"id": "0", "image": "images/ticket.jpg", "conversations": [
            {"role": "user", "content": "<image>\n如果這是張高鐵票,請回傳乘車日期"},
            {"role": "assistant", "content": '{"乘車日期":"2024-04-20"}'}]},
        {"id": "1", "image": {"<image_00>": "images/p1.jpg", "<image_01>": "images/p2.jpg"}, "conversations": [
            {"role": "user", "content": "<image_00>\n<image_01>\nCompare"}, {"role": "assistant", "content": "same"},
            {"role": "user", "content": "Why?"}, {"role": "assistant", "content": "because"}]},
    ], ensure_ascii=False), encoding="utf-8")
    samples = round_trip(tmp_path, "llava", src)
    got = turns_and_images(samples, tmp_path / "out" / "train.jsonl")
    images = tmp_path / "src" / "images"
    assert got == [
        ([("如果這是張高鐵票,請回傳乘車日期", "mask"), ('{"乘車日期":"2024-04-20"}', "no_mask")], [images / "ticket.jpg"]),
        ([("Compare", "mask"), ("same", "no_mask"), ("Why?", "mask"), ("because", "no_mask")],
         [images / "p1.jpg", images / "p2.jpg"]),
    ]
    assert samples[0]["image_info"][0]["image_url"] == "../src/images/ticket.jpg"


def test_got_ocr2_conversations(tmp_path):
    # seed 004's generator output: {"image": "images/x.jpg", "conversations": [human "<image>\nOCR: ", gpt text]}
    src = tmp_path / "data1.json"
    src.write_text(json.dumps([{"image": "images/a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "第一行\n第二行"}]}], ensure_ascii=False))
    samples = round_trip(tmp_path, "got", src)
    assert samples == [{"image_info": [{"matched_text_index": 0, "image_url": "../images/a.jpg"}],
                        "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": "第一行\n第二行", "tag": "no_mask"}]}]


def test_openai_and_sharegpt_messages(tmp_path):
    src = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}},
                                                   {"type": "text", "text": "Table Recognition:"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "<fcel>x<nl>"}]}]},
        {"messages": [{"role": "user", "content": "<image>OCR:"}, {"role": "assistant", "content": "hi"}], "images": ["b.png"]},
        {"conversations": [{"from": "human", "value": "<image>Formula Recognition:"}, {"from": "gpt", "value": "\\[x\\]"}],
         "images": ["/abs/c.png"]},
        {"messages": [{"role": "user", "content": [{"type": "image", "image": "https://h/d.png"}, {"type": "text", "text": "OCR:"}]},
                      {"role": "assistant", "content": "remote"}]},
    ])
    samples = round_trip(tmp_path, "messages", src)
    assert [s["text_info"][0]["text"] for s in samples] == ["Table Recognition:", "OCR:", "Formula Recognition:", "OCR:"]
    # relative paths move, absolute paths and URLs do not
    assert [s["image_info"][0]["image_url"] for s in samples] == ["../a.png", "../b.png", "/abs/c.png", "https://h/d.png"]


def test_paddleocr_rec_labels(tmp_path):
    src = tmp_path / "rec_gt.txt"
    src.write_text("crops/1.jpg\tHello world\n\ncrops/2.jpg\t带\t制表符\n", encoding="utf-8")
    (tmp_path / "root").mkdir()
    samples = round_trip(tmp_path, "paddleocr-rec", src, "--image-root", tmp_path / "root")
    assert [(s["text_info"][0]["text"], s["text_info"][1]["text"]) for s in samples] == [
        ("OCR:", "Hello world"), ("OCR:", "带\t制表符")]  # text after the first tab is kept whole
    assert samples[0]["image_info"][0]["image_url"] == "../root/crops/1.jpg"  # --image-root, seen from out/


def test_csv_prompt_kinds(tmp_path):
    src = write_csv(tmp_path / "d.csv", [["image", "prompt", "answer"], ["a.png", "table", "<fcel>1<nl>"],
                                          ["b.png", "OCR:{\"name\": \"\"}", '{"name": "Li"}'], ["c.png", "Chart", "x | y"]])
    samples = round_trip(tmp_path, "csv", src)
    assert [s["text_info"][0]["text"] for s in samples] == ["Table Recognition:", 'OCR:{"name": ""}', "Chart Recognition:"]


def test_html_table_records_become_otsl(tmp_path):
    src = write_jsonl(tmp_path / "tables.jsonl", [
        {"image": "t1.png", "html": '<table><tr><th colspan="2">H</th></tr><tr><td>1</td><td>2</td></tr></table>'},
        # PubTabNet / PaddleOCR table label layout
        {"filename": "t2.png", "html": {"structure": {"tokens": ["<tr>", "<td", ' rowspan="2"', ">", "</td>", "<td>", "</td>", "</tr>",
                                                                  "<tr>", "<td>", "</td>", "</tr>"]},
                                        "cells": [{"tokens": ["<b>", "A", "</b>"]}, {"tokens": ["B"]}, {"tokens": []}]}},
    ])
    samples = round_trip(tmp_path, "html-table", src)
    assert [(s["text_info"][0]["text"], s["text_info"][1]["text"]) for s in samples] == [
        ("Table Recognition:", "<fcel>H<lcel><nl><fcel>1<fcel>2<nl>"),
        ("Table Recognition:", "<fcel>A<fcel>B<nl><ucel><ecel><nl>"),
    ]
    csv_src = write_csv(tmp_path / "tables.csv", [["image", "html"], ["t3.png", "<table><tr><td>x</td></tr></table>"]])
    assert convert("--from", "html-table", csv_src, "-o", tmp_path / "t3.jsonl") == 0
    assert read_jsonl(tmp_path / "t3.jsonl")[0]["text_info"][1]["text"] == "<fcel>x<nl>"


def test_csv_table_formula_and_chart_manifests(tmp_path):
    write_csv(tmp_path / "tables" / "t.csv", [["分组", "频数"], ["[41,51)", "2"], ["", "1"]])
    write_csv(tmp_path / "tables" / "c.csv", [["", "22Q3", "22Q3yoy"], ["电商", "85", "100%"]])
    tables = write_csv(tmp_path / "tables.csv", [["image", "table_csv"], ["img/t.png", "tables/t.csv"]])
    charts = write_csv(tmp_path / "charts.csv", [["image", "table_csv"], ["img/c.png", "tables/c.csv"]])
    formulas = write_jsonl(tmp_path / "formulas.jsonl", [{"image": "img/f.png", "latex": "t_{n}\\in[0,\\infty]"}])
    targets = {}
    for fmt, src in (("csv-table", tables), ("chart", charts), ("formula", formulas)):
        out = tmp_path / "out" / f"{fmt}.jsonl"
        assert convert("--from", fmt, src, "-o", out) == 0
        (s,) = read_jsonl(out)
        targets[fmt] = (s["text_info"][0]["text"], s["text_info"][1]["text"], s["image_info"][0]["image_url"])
    assert targets == {
        "csv-table": ("Table Recognition:", "<fcel>分组<fcel>频数<nl><fcel>[41,51)<fcel>2<nl><ecel><fcel>1<nl>", "../img/t.png"),
        "chart": ("Chart Recognition:", "  | 22Q3 | 22Q3yoy\n电商 | 85 | 100%", "../img/c.png"),
        "formula": ("Formula Recognition:", "\\[t_{n}\\in[0,\\infty]\\]", "../img/f.png"),
    }


def test_messages_convert_back_to_the_same_erniekit_file(tmp_path):
    src = write_jsonl(tmp_path / "a" / "train.jsonl", [sample("img/x.png", "OCR:", "one"), sample("y.png", "Table Recognition:", "<fcel>t<nl>")])
    assert convert(src, "--to", "messages", "-o", tmp_path / "b" / "m.jsonl") == 0
    assert convert("--from", "messages", tmp_path / "b" / "m.jsonl", "-o", tmp_path / "a" / "again.jsonl") == 0
    assert (tmp_path / "a" / "again.jsonl").read_text() == src.read_text()


def test_every_rejected_record_is_reported_with_file_line_and_field(tmp_path, capsys):
    src = tmp_path / "bad.json"
    src.write_text(
        "[\n"
        '{"image": "a.png", "conversations": [{"role": "user", "content": "<image>\\nQ"}, {"role": "assistant", "content": "A"}]},\n'
        '{"image": "b.png", "conversations": [{"role": "system", "content": "be nice"}]},\n'
        '{"image": "c.png", "conversations": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "A"}]},\n'
        '{"conversations": []},\n'
        '{"image": ["d.png", "e.png"], "conversations": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": ""}]},\n'
        '{"image": ["d.png", "e.png"], "conversations": [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}]},\n'
        '{"image": "f.png", "conversations": [{"role": "user", "content": "Q"}]}\n'
        "]\n"
    )
    out = tmp_path / "o" / "out.jsonl"
    assert convert("--from", "llava", src, "-o", out) == 1
    stdout, stderr = capsys.readouterr()
    assert stderr.splitlines() == [
        f"{src}:3: error: conversations[0].role: system turns have no place in an ERNIEKit sample",
        f"{src}:4: error: conversations[0].content: empty prompt once the <image> placeholder is removed "
        "(pass --default-prompt ocr to use 'OCR:')",
        f"{src}:5: error: image: missing (also looked for images)",
        f"{src}:6: error: conversations[1].content: expected a non-empty answer, got ''",
        f"{src}:7: error: conversations: 1 image placeholder(s) for 2 image(s)",
        f"{src}:8: error: conversations: the last turn is a user turn with no assistant answer",
        f"error: {out} not written: 6 record(s) rejected (fix them, or pass --skip-bad to keep the rest)",
    ]
    assert stdout.splitlines() == ["converted 1, rejected 6"]
    assert not out.exists() and not list(out.parent.iterdir())  # no temp file left either

    assert convert("--from", "llava", src, "-o", out, "--skip-bad", "--default-prompt", "ocr") == 0
    stdout, stderr = capsys.readouterr()
    assert len(stderr.splitlines()) == 5 and "converted 2, rejected 5" in stdout
    assert [s["text_info"][0]["text"] for s in read_jsonl(out)] == ["Q", "OCR:"]


def test_csv_and_label_file_errors_name_the_starting_line(tmp_path, capsys):
    src = tmp_path / "d.csv"
    src.write_text('image,prompt,answer\na.png,ocr,"two\nlines"\n\nb.png,ocr\nc.png,,x\nd.png,"<image>",y\n', encoding="utf-8")
    assert convert("--from", "csv", src, "-o", tmp_path / "o.jsonl", "--skip-bad") == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{src}:5: error: record: 2 fields for a 3-column header (image,prompt,answer)",
        f"{src}:6: error: prompt: empty prompt once the <image> placeholder is removed (pass --default-prompt ocr to use 'OCR:')",
        f"{src}:7: error: prompt: empty prompt once the <image> placeholder is removed (pass --default-prompt ocr to use 'OCR:')",
    ]
    assert read_jsonl(tmp_path / "o.jsonl")[0]["text_info"][1]["text"] == "two\nlines"

    labels = tmp_path / "rec.txt"
    labels.write_bytes(b'a.png\tok\nno tab here\nb.png\t\n\xff\xfe\tbad\n["x.png", "y.png"]\tz\n')
    assert convert("--from", "paddleocr-rec", labels, "-o", tmp_path / "r.jsonl") == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": error: ")[0] for line in err[:4]] == [f"{labels}:{n}" for n in (2, 3, 4, 5)]
    assert err[0].endswith("line: expected image_path<TAB>text") and "text: expected a non-empty answer" in err[1]
    assert "not UTF-8" in err[2] and "image_path: a list of files" in err[3]


def test_bad_csv_rows_cost_only_themselves(tmp_path, capsys):
    # regression: one bad byte used to end the read (4,611 of 10,000 rows written, exit 0)
    lines = [b"image,prompt,answer\n"] + [f"i{i}.png,ocr,t{i}\n".encode() for i in range(10_000)]
    lines[4612] = b"bad\xff.png,ocr,x\n"  # line 4613
    lines[7000] = b'"a"b.png,ocr,x\n'  # line 7001: text after a closing quote (csv.Error)
    lines[8000] = b'm.png,ocr,"two\nlines"\n'  # line 8001: a quoted newline, still one row
    src = tmp_path / "big.csv"
    src.write_bytes(b"".join(lines))
    out = tmp_path / "o.jsonl"
    assert convert("--from", "csv", src, "-o", out, "--skip-bad") == 0
    stdout, stderr = capsys.readouterr()
    assert [line.split(": error: ")[0] for line in stderr.splitlines()] == [f"{src}:4613", f"{src}:7001"]
    assert "not UTF-8" in stderr and "converted 9998, rejected 2" in stdout
    answers = [s["text_info"][1]["text"] for s in read_jsonl(out)]
    assert len(answers) == 9998 and answers[-1] == "t9999" and "two\nlines" in answers


def test_unreadable_input_is_never_skipped(tmp_path, capsys):
    # a quote never closed swallows the rest of the CSV: --skip-bad must not write the first rows and exit 0
    src = tmp_path / "q.csv"
    src.write_text('image,prompt,answer\na.png,ocr,x\nb.png,ocr,"unclosed\nc.png,ocr,y\nd.png,ocr,z\n')
    out = tmp_path / "o.jsonl"
    assert convert("--from", "csv", src, "-o", out, "--skip-bad") == 1
    stderr = capsys.readouterr().err
    assert stderr.splitlines()[0].startswith(f"{src}:3: error: record: line 5: unreadable CSV")
    assert "2 line(s) after line 3 were not read as rows" in stderr
    assert "part of the file was not read" in stderr and not out.exists()

    # a .json array stops at its first syntax error: the elements after it were never read
    src = tmp_path / "a.json"
    good = {"image": "a.png", "conversations": [{"from": "human", "value": "<image>OCR:"}, {"from": "gpt", "value": "x"}]}
    src.write_text("[\n" + json.dumps(good) + ",\n{oops},\n" + ",\n".join([json.dumps(good)] * 50) + "\n]\n")
    assert convert("--from", "llava", src, "-o", out, "--skip-bad") == 1
    stdout, stderr = capsys.readouterr()
    assert stderr.splitlines()[0].startswith(f"{src}:3: error: record: invalid JSON")
    assert f"part of the file was not read (after {src}:3)" in stderr and not out.exists()
    assert "converted 1, rejected 1" in stdout


def test_pubtabnet_tokens_of_the_wrong_type_are_rejected(tmp_path, capsys):
    structure = {"tokens": ["<tr>", "<td>", "</td>", "</tr>"]}
    src = write_jsonl(tmp_path / "t.jsonl", [
        {"image": "a.png", "html": {"structure": structure, "cells": [{"tokens": None}]}},
        {"image": "b.png", "html": {"structure": {"tokens": None}, "cells": [{"tokens": ["x"]}]}},
        {"image": "c.png", "html": {"structure": {"tokens": "<tr><td></td></tr>"}, "cells": [{"tokens": ["x"]}]}},
        {"image": "d.png", "html": {"structure": structure, "cells": [{"tokens": ["<b>", 5]}]}},
        {"image": "e.png", "html": {"structure": structure, "cells": [{"tokens": ["ok"]}]}},
    ])
    out = tmp_path / "o.jsonl"
    assert convert("--from", "html-table", src, "-o", out, "--skip-bad") == 0
    stdout, stderr = capsys.readouterr()
    assert [line.split(": expected")[0] for line in stderr.splitlines()] == [
        f"{src}:1: error: html.cells[0].tokens", f"{src}:2: error: html.structure.tokens",
        f"{src}:3: error: html.structure.tokens", f"{src}:4: error: html.cells[0].tokens"]
    assert [s["text_info"][1]["text"] for s in read_jsonl(out)] == ["<fcel>ok<nl>"]


def test_structured_rejects(tmp_path, capsys):
    src = write_jsonl(tmp_path / "t.jsonl", [
        {"image": "a.png", "html": "<div>no table</div>"},
        '{"image": "b.png", "html": "<table>',  # not JSON
        {"image": "c.png", "table_csv": "missing.csv"},
    ])
    assert convert("--from", "html-table", src, "-o", tmp_path / "o.jsonl") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{src}:1: error: html: no <table> found"
    assert err[1].startswith(f"{src}:2: error: record: invalid JSON")
    assert err[2] == f"{src}:3: error: html: missing"
    assert convert("--from", "csv-table", src, "-o", tmp_path / "o.jsonl", "--skip-bad") == 1  # nothing converted
    err = capsys.readouterr().err.splitlines()
    assert err[2].startswith(f"{src}:3: error: table_csv: {tmp_path / 'missing.csv'}: No such file")
    assert err[-1].endswith("no record converted")


def test_image_paths_resolve_from_the_output_directory(tmp_path):
    src = write_jsonl(tmp_path / "data" / "train.jsonl", [sample("imgs/a.png"), sample("../shared/b.png"), sample("/abs/c.png")])
    out = tmp_path / "deep" / "er" / "out.jsonl"
    assert convert(src, "-o", out) == 0  # ERNIEKit -> ERNIEKit: a move
    urls = [s["image_info"][0]["image_url"] for s in read_jsonl(out)]
    assert urls == ["../../data/imgs/a.png", "../../shared/b.png", "/abs/c.png"]
    assert [resolve_image(u, out).resolve() for u in urls[:2]] == [
        (tmp_path / "data" / "imgs" / "a.png").resolve(), (tmp_path / "shared" / "b.png").resolve()]


def test_outputs_are_never_clobbered(tmp_path, capsys):
    src = write_jsonl(tmp_path / "train.jsonl", [sample()])
    out = tmp_path / "out.jsonl"
    out.write_text("precious\n")
    assert convert(src, "-o", out) == 1
    assert "already exists (use --force to overwrite)" in capsys.readouterr().err
    assert out.read_text() == "precious\n"
    assert convert(src, "-o", src, "--force") == 1  # never over its own input
    assert "would replace an input file" in capsys.readouterr().err
    assert convert(src, "-o", out, "--force") == 0 and read_jsonl(out)[0]["text_info"][0]["text"] == "OCR:"


def test_usage_errors(tmp_path, capsys):
    assert convert("--from", "nope", tmp_path / "x", "-o", tmp_path / "y") == 2  # checked before the input
    assert "--from nope: unknown format (choose from llava" in capsys.readouterr().err
    assert convert("--from", "llava", tmp_path / "absent.json", "-o", tmp_path / "y") == 1
    assert "absent.json: no such file" in capsys.readouterr().err


def test_registry_lists_every_documented_format():
    """docs/convert.md's table of every format names exactly the registered ones."""
    import re

    docs = (Path(__file__).resolve().parents[1] / "docs" / "convert.md").read_text(encoding="utf-8")
    table = docs.split("## Every format at a glance")[1].split("### Refused")[0]
    first_columns = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    documented = {name for column in first_columns for name in re.findall(r"`([a-z0-9][a-z0-9-]*)`", column)}
    assert documented == set(CONVERTERS)


# Measures one conversion in a process of its own: the peak of memory allocated by Python while
# convert_file runs (tracemalloc started just before it), printed for the test to compare.
_PEAK_OF_ONE_CONVERSION = """
import sys, tracemalloc
from paddle_ocrvl_sft.data.convert import convert_file
src, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tracemalloc.start()
summary = convert_file("auto", src, out, report=lambda line: None)
peak = tracemalloc.get_traced_memory()[1]
assert summary.converted == n and summary.written, summary
print(peak)
"""


@pytest.mark.slow
def test_memory_stays_flat_as_input_grows(tmp_path):
    """The peak memory of a conversion does not grow with the number of records (1k, 4k, 16k).

    Each size runs in a fresh interpreter, so nothing one run leaves behind (caches, the table of
    interned strings) is counted in another; the measure counts allocations, not time, so a busy
    machine does not change it. A leak of one byte per record would add 15 KB between 1k and 16k.
    """
    import os
    import subprocess
    import sys

    peaks = {}
    for n in (1_000, 4_000, 16_000):
        src = tmp_path / f"in{n}.jsonl"
        with open(src, "w") as fh:
            for i in range(n):  # every record names another image: per-name state would grow
                fh.write(json.dumps({"image": f"i/{i}.png", "conversations": [
                    {"from": "human", "value": "<image>\nOCR:"}, {"from": "gpt", "value": f"text {i} " * 20}]}) + "\n")
        proc = subprocess.run([sys.executable, "-c", _PEAK_OF_ONE_CONVERSION, str(src), str(tmp_path / f"out{n}.jsonl"), str(n)],
                              capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        assert proc.returncode == 0, proc.stderr
        peaks[n] = int(proc.stdout)
    assert max(peaks.values()) - peaks[1_000] < 12_000, peaks  # 16x the records, the same peak


def test_lone_cr_line_ends_count_as_lines_in_csv_and_label_files(tmp_path, capsys):
    src = tmp_path / "mac.csv"  # old Mac line ends; the bad row is on line 3
    src.write_bytes(b"image,prompt,answer\ra.png,ocr,x\rb.png,ocr\rc.png,ocr,\"two\r\nlines\"\r")
    assert convert("--from", "csv", src, "-o", tmp_path / "o.jsonl", "--skip-bad") == 0
    assert capsys.readouterr().err.splitlines() == [f"{src}:3: error: record: 2 fields for a 3-column header (image,prompt,answer)"]
    assert [s["text_info"][1]["text"] for s in read_jsonl(tmp_path / "o.jsonl")] == ["x", "two\r\nlines"]


def test_table_csv_paths_the_os_refuses_are_rejects_not_tracebacks(tmp_path, capsys):
    import os

    (tmp_path / "adir").mkdir()
    os.mkfifo(tmp_path / "fifo.csv")  # opening it would block until a writer comes
    names = ["adir", "fifo.csv", "nul\x00.csv", "x" * 300 + ".csv", "\ud800.csv"]
    src = tmp_path / "t.jsonl"
    src.write_text("".join(json.dumps({"image": "a.png", "table_csv": n}) + "\n" for n in names), encoding="utf-8")
    assert convert("--from", "csv-table", src, "-o", tmp_path / "o.jsonl", "--skip-bad") == 1  # nothing converted
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": error: ")[0] for line in err[:5]] == [f"{src}:{n}" for n in range(1, 6)]
    for line, why in zip(err, ["a directory", "not a regular file", "NUL character", "File name too long", "not a usable file name"]):
        assert why in line, line


# --- the files people actually have (issue 20); the examples are in tests/data/convert -------------

EXAMPLES = Path(__file__).resolve().parent / "data" / "convert"


def example(tmp_path, name):
    """A copy of tests/data/convert/NAME in tmp_path/src."""
    src = tmp_path / "src" / name
    src.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(EXAMPLES / name, src)
    return src


def texts(samples):
    return [[t["text"] for t in s["text_info"]] for s in samples]


def test_got_readme_query_response_records(tmp_path, capsys):
    # GOT-OCR2.0's README fine-tune format (ms-swift's query/response/history/images); was refused with
    # "conversations: missing"
    src = example(tmp_path, "got_readme.jsonl")
    samples = round_trip(tmp_path, "got", src)
    assert texts(samples) == [
        ["OCR:", "Invoice No. 2024-0117"],
        ["Which page has the total?", "the second"],
        ["OCR with format:", "**Receipt** 54.50", "And the date?", "2024-04-20"],  # history first, then the query
        ["What kind of document is this?", "a receipt", "Read the stamp", "PAID"],
    ]
    assert [[i["image_url"] for i in s["image_info"]] for s in samples] == [
        ["../src/pages/p1.png"], ["../src/pages/p1.png", "../src/pages/p2.png"], ["../src/pages/p3.png"], ["../src/pages/p4.png"]]
    # the <image> of line 4 sits in the query, after a history turn: moving it is said, once
    err = capsys.readouterr().err
    assert err.count("warning") == 1
    assert f"{src}:4: warning: query: an image in a later user turn; it is put before the first prompt" in err
    assert err.rstrip().endswith("[image-moved]")


def test_got_reads_its_training_layout_too_and_rejects_what_has_neither(tmp_path, capsys):
    src = write_jsonl(tmp_path / "g.jsonl", [
        {"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nOCR: "}, {"from": "gpt", "value": "x"}]},
        {"query": "<image>OCR:", "response": "y", "images": ["b.png"], "system": "You are GOT"},
        {"query": "<image>OCR:", "response": "y"},
        {"query": "<image>OCR:", "response": "y", "images": ["b.png"], "history": [["q"]]},
        {"image": "c.png", "text": "z"},
    ])
    assert convert("--from", "got", src, "-o", tmp_path / "o.jsonl", "--skip-bad") == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{src}:2: error: system: a system prompt has no place in an ERNIEKit sample",
        f"{src}:3: error: images: missing or empty (ERNIEKit drops samples without an image)",
        f"{src}:4: error: history[0]: expected a [query, response] pair, got ['q']",
        f"{src}:5: error: query: missing (also looked for conversations)",
    ]


def test_llamafactory_v1_typed_parts(tmp_path):
    src = example(tmp_path, "llamafactory_v1.jsonl")
    samples = round_trip(tmp_path, "messages", src)
    assert texts(samples) == [["OCR:", "Invoice No. 2024-0117"], ["Table Recognition:", "<fcel>qty<fcel>price<nl><fcel>2<fcel>4.50<nl>"]]
    assert [s["image_info"][0]["image_url"] for s in samples] == ["../src/pages/p1.png", "../src/tables/t1.png"]


def test_llamafactory_v1_parts_it_cannot_keep_are_rejected(tmp_path, capsys):
    def record(user_parts, answer_parts, **assistant):
        return {"messages": [{"role": "user", "content": user_parts},
                             {"role": "assistant", "content": answer_parts, **assistant}]}

    image, ocr, answer = {"type": "image_url", "value": "a.png"}, {"type": "text", "value": "OCR:"}, {"type": "text", "value": "x"}
    src = write_jsonl(tmp_path / "v1.jsonl", [
        record([image, ocr], [{"type": "reasoning", "value": "let me think"}, answer]),
        record([image, ocr], [answer], loss_weight=0.0),
        record([image, ocr], [{"type": "tool_call", "value": "{}"}]),
        record([{"type": "image_url", "value": 3}, ocr], [answer]),
    ])
    assert convert("--from", "messages", src, "-o", tmp_path / "o.jsonl") == 1
    assert capsys.readouterr().err.splitlines()[:4] == [
        f"{src}:1: error: messages[1].content[0]: a reasoning part: PaddleOCR-VL samples hold a prompt and its answer only",
        f"{src}:2: error: messages[1].loss_weight: 0.0: ERNIEKit trains on every answer with weight 1",
        f"{src}:3: error: messages[1].content[0]: a tool_call part: PaddleOCR-VL samples hold a prompt and its answer only",
        f"{src}:4: error: messages[0].content[0].image_url: expected {{'url': PATH}}, or a path in 'value'",
    ]


def test_hugging_face_metadata_and_im2latex_csvs_take_the_obvious_task(tmp_path, capsys):
    # were refused with "prompt: missing" / "latex: missing"
    for name in ("hf_metadata.csv", "hf_metadata.jsonl", "im2latex.csv"):
        src = example(tmp_path / name, name)
        samples = round_trip(tmp_path / name, "image-text", src)
        if name.startswith("hf_"):
            assert texts(samples) == [["OCR:", "The quick brown fox"], ["OCR:", "Total: 54,50 EUR"]]
            assert samples[0]["image_info"][0]["image_url"] == "../src/lines/0001.png"  # file_name
        else:
            assert texts(samples) == [["Formula Recognition:", "\\[\\frac{a}{b}+c\\]"], ["Formula Recognition:", "\\[x^{2}+y^{2}=r^{2}\\]"]]
            assert samples[1]["image_info"][0]["image_url"] == "../src/f0002.png"
    capsys.readouterr()
    # the same through --from auto, the default
    assert convert(EXAMPLES / "im2latex.csv", "-o", tmp_path / "auto.jsonl") == 0
    assert "as --from image-text" in capsys.readouterr().out
    assert texts(read_jsonl(tmp_path / "auto.jsonl"))[0] == ["Formula Recognition:", "\\[\\frac{a}{b}+c\\]"]


def test_two_column_csv_task_and_columns_options(tmp_path, capsys):
    src = write_csv(tmp_path / "d.csv", [["path", "caption", "split"], ["a.png", "<table><tr><td>1</td></tr></table>", "train"],
                                         ["b.png", "<fcel>2<nl>", "val"]])
    out = tmp_path / "o.jsonl"
    assert convert("--from", "image-text", src, "-o", out) == 2  # which column, which task?
    assert "which column holds the text?" in capsys.readouterr().err
    assert convert("--from", "image-text", src, "-o", out, "--columns", "path,caption") == 2
    assert "column 'caption' does not say which task it holds: pass --task" in capsys.readouterr().err
    assert convert("--from", "image-text", src, "-o", out, "--columns", "path,caption", "--task", "table") == 0
    assert texts(read_jsonl(out)) == [["Table Recognition:", "<fcel>1<nl>"], ["Table Recognition:", "<fcel>2<nl>"]]  # HTML → OTSL
    assert convert("--from", "image-text", src, "-o", out, "--columns", "path,nope", "--task", "ocr", "--force") == 2
    assert "--columns: no column 'nope'" in capsys.readouterr().err
    assert convert("--from", "image-text", src, "-o", out, "--columns", "path,caption", "--task", "handwriting", "--force") == 2
    assert "--task handwriting: unknown task (choose from ocr, table, formula" in capsys.readouterr().err
    assert convert("--from", "llava", src, "-o", out, "--task", "ocr", "--force") == 2
    assert "--task applies to --from paddleocr-rec or image-text, not llava" in capsys.readouterr().err


def test_columns_keep_the_case_of_json_keys(tmp_path, capsys):
    write_image(tmp_path / "a.png")
    src = write_jsonl(tmp_path / "m.jsonl", [{"Img": "a.png", "Words": "hello"}])
    out = tmp_path / "o.jsonl"
    assert convert("--from", "image-text", src, "-o", out, "--columns", "Img,Words", "--task", "ocr") == 0
    assert texts(read_jsonl(out)) == [["OCR:", "hello"]]
    csv_src = write_csv(tmp_path / "m.csv", [["Img", "Text"], ["a.png", "hi"]])  # CSV headers: any case too
    assert convert("--from", "image-text", csv_src, "-o", out, "--columns", "IMG,text", "--force") == 0
    assert texts(read_jsonl(out)) == [["OCR:", "hi"]]


def test_crop_dir_without_crop_is_a_usage_error(tmp_path, capsys):
    write_image(tmp_path / "a.png")
    src = write_csv(tmp_path / "m.csv", [["image", "text"], ["a.png", "hi"]])
    out = tmp_path / "o.jsonl"
    assert convert(src, "-o", out, "--crop-dir", tmp_path / "crops") == 2
    assert "--crop-dir applies with --crop" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "crops").exists()


def test_detection_labels_are_refused_as_recognition_labels(tmp_path, capsys):
    # `path<TAB>[{"transcription", "points"}]` used to become OCR targets of JSON box lists
    src = example(tmp_path, "paddleocr_det.txt")
    out = tmp_path / "out" / "rec.jsonl"
    for args in (["--from", "paddleocr-rec"], []):  # explicit, and auto
        assert convert(*args, src, "-o", out) == 1
        stdout, stderr = capsys.readouterr()
        assert stderr.splitlines() == [
            f"error: {src}: looks like PaddleOCR detection labels (image<TAB>[{{transcription, points}}]): these are text "
            "boxes on whole images, not recognition targets; cut each box into a recognition sample with --from "
            "paddleocr-det --crop (boxes transcribed '###' are skipped)"]
        assert not out.exists()
    assert convert("--from", "paddleocr-det", src, "-o", out) == 1
    assert "--from paddleocr-det needs --crop" in capsys.readouterr().err
    # a detection line inside a recognition file is that line's error
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("a.png\tok\n" + (EXAMPLES / "paddleocr_det.txt").read_text().splitlines()[1] + "\n")
    assert convert("--from", "paddleocr-rec", mixed, "-o", out) == 1
    assert capsys.readouterr().err.splitlines()[0] == (
        f"{mixed}:2: error: text: a list of text boxes (a PaddleOCR detection label), not a text to read; "
        "use --from paddleocr-det --crop")


def test_detection_labels_cut_into_recognition_samples(tmp_path, capsys):
    from PIL import Image

    src = example(tmp_path, "paddleocr_det.txt")
    page = Image.new("RGB", (120, 90), "white")
    page.paste((200, 0, 0), (10, 10, 90, 30))  # a red band where the first box is
    (src.parent / "pages").mkdir()
    page.save(src.parent / "pages" / "p1.png")
    Image.new("RGB", (120, 90), (0, 0, 200)).save(src.parent / "pages" / "p2.png")
    out = tmp_path / "out" / "rec.jsonl"
    assert convert("--from", "paddleocr-det", "--crop", src, "-o", out) == 0
    stdout = capsys.readouterr().out
    assert "converted 2, rejected 0" in stdout and "skipped 1 box(es) transcribed '###'" in stdout
    samples = read_jsonl(out)
    assert texts(samples) == [["OCR:", "INVOICE"], ["OCR:", "Total 54.50"]]
    urls = [s["image_info"][0]["image_url"] for s in samples]
    assert urls == ["rec_crops/1_0.png", "rec_crops/2_0.png"]  # line 1 box 0, line 2 box 0 (box 1 of line 1 was ###)
    with Image.open(resolve_image(urls[0], out)) as first, Image.open(resolve_image(urls[1], out)) as second:
        # the slanted 4-point box comes out upright: as wide as its longer top/bottom edge, as tall as its longer side
        assert first.size == (80, 18) and second.size == (98, 18)
        assert first.convert("RGB").getpixel((40, 9)) == (200, 0, 0) and second.getpixel((49, 9)) == (0, 0, 200)
    assert main(["data", "validate", str(out)]) == 0
    assert convert("--crop", src, "-o", tmp_path / "auto" / "rec.jsonl") == 0  # --from auto, with --crop
    assert "as --from paddleocr-det" in capsys.readouterr().out
    assert texts(read_jsonl(tmp_path / "auto" / "rec.jsonl")) == texts(samples)
    # the crops are outputs: not overwritten without --force, and written with OUT or not at all
    assert convert("--from", "paddleocr-det", "--crop", src, "-o", tmp_path / "out" / "other.jsonl",
                   "--crop-dir", tmp_path / "out" / "rec_crops") == 1
    assert "rec_crops: already exists (use --force to overwrite)" in capsys.readouterr().err
    (src.parent / "pages" / "p2.png").unlink()
    assert convert("--from", "paddleocr-det", "--crop", src, "-o", tmp_path / "out2" / "rec.jsonl") == 1
    assert f"{src}:2: error: image_path: {src.parent / 'pages' / 'p2.png'}: " in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


def test_media_files_are_refused_once_even_with_an_explicit_from(tmp_path, capsys):
    rows = [json.loads((EXAMPLES / "video.jsonl").read_text())] * 50
    src = write_jsonl(tmp_path / "videos.jsonl", rows)
    assert convert("--from", "messages", src, "-o", tmp_path / "o.jsonl") == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {src}: looks like video samples: PaddleOCR-VL reads images only")
    # one such record in a file of images is that record's error
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [json.loads((EXAMPLES / "messages.jsonl").read_text().splitlines()[0]), rows[0]])
    assert convert(mixed, "-o", tmp_path / "o.jsonl", "--skip-bad") == 0
    assert capsys.readouterr().err.splitlines() == [f"{mixed}:2: error: record: video samples: PaddleOCR-VL reads images only "
                                                    "(ERNIEKit's OCR-VL samples have no video input); extract the frames "
                                                    "to read as image files and label each one"]


def test_rejects_name_the_field_asked_for_and_the_format_the_file_looks_like(tmp_path, capsys):
    # --from messages on GOT README records: the error named 'conversations', not 'messages', and not the format
    src = example(tmp_path, "got_readme.jsonl")
    assert convert("--from", "messages", src, "-o", tmp_path / "o.jsonl") == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{src}:1: error: messages: missing (also looked for conversations)"
    assert (f"hint: {src} looks like GOT-OCR2.0 README / ms-swift records (query, response, history, images), "
            "which --from got reads") in err


def test_image_in_a_later_user_turn_is_moved_with_a_warning(tmp_path, capsys):
    # LLaMA-Factory's mllm_demo layout: an <image> opening the second user turn
    src = write_jsonl(tmp_path / "m.jsonl", [
        {"messages": [{"role": "user", "content": "OCR:"}, {"role": "assistant", "content": "a"},
                      {"role": "user", "content": "<image>Table Recognition:"}, {"role": "assistant", "content": "<fcel>b<nl>"}],
         "images": ["x.png"]},
        {"messages": [{"role": "user", "content": "<image>OCR:"}, {"role": "assistant", "content": "a"}], "images": ["y.png"]},
    ])
    out = tmp_path / "o.jsonl"
    assert convert("--from", "messages", src, "-o", out) == 0
    assert capsys.readouterr().err.splitlines() == [
        f"{src}:1: warning: messages[2].content: an image in a later user turn; it is put before the first prompt, "
        "where every image of a PaddleOCR-VL sample goes (ERNIEKit's matched_text_index 0) [image-moved]"]
    assert read_jsonl(out)[0]["image_info"] == [{"matched_text_index": 0, "image_url": "x.png"}]
    assert convert(src, "-o", out, "--force", "--ignore", "image-moved") == 0
    assert capsys.readouterr().err.splitlines() == ["ignored (--ignore): image-moved=1"]
    assert convert(src, "-o", out, "--force", "--ignore", "missing-image") == 2
    assert "--ignore missing-image: not a warning rule (errors cannot be ignored; the warnings are image-moved, second-tab)" \
        in capsys.readouterr().err


def test_a_second_tab_in_a_recognition_label_is_said_once_for_all_rows(tmp_path, capsys):
    src = tmp_path / "rec.txt"
    src.write_text("".join(f"c/{i}.png\tcol A\tcol B {i}\n" for i in range(40)) + "c/x.png\tplain\n")
    out = tmp_path / "o.jsonl"
    assert convert("--from", "paddleocr-rec", src, "-o", out) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "warning: [second-tab] on 40 rows (the first 3 below); to silence it: replace the TAB inside the text "
        "(PaddleOCR cuts the label there), or pass --ignore second-tab",
        *(f"  {src}:{n}: text: holds another TAB; kept whole here, while PaddleOCR's own reader would cut the label "
          "there (to 'col A')" for n in (1, 2, 3)),
    ]
    assert read_jsonl(out)[0]["text_info"][1]["text"] == "col A\tcol B 0"  # kept whole, as said


def test_a_label_file_converted_elsewhere_validates_with_one_summarised_warning(tmp_path, capsys):
    # 4,468 rows written outside the source folder used to give 4,468 path-escapes warnings
    png = write_image(tmp_path / "one.png").read_bytes()
    crops = tmp_path / "icdar" / "crops"
    crops.mkdir(parents=True)
    for i in range(4468):
        (crops / f"word_{i}.png").write_bytes(png)
    labels = tmp_path / "icdar" / "rec_gt_train.txt"
    labels.write_text("".join(f"crops/word_{i}.png\tword {i}\n" for i in range(4468)), encoding="utf-8")
    out = tmp_path / "sets" / "train.jsonl"
    assert convert("--from", "paddleocr-rec", labels, "-o", out) == 0
    capsys.readouterr()
    assert main(["data", "validate", str(out)]) == 0
    stdout = capsys.readouterr().out.splitlines()
    assert [line for line in stdout if "warning:" in line] == [
        "warning: [path-escapes] on 4468 rows (the first 3 below); to silence it: keep the dataset file in a directory "
        "above its images if it is to be moved with them, or pass --ignore path-escapes"]
    assert stdout[1:4] == [f"  {out}:{n}: image_info[0].image_url: ../icdar/crops/word_{n - 1}.png leaves the dataset's directory"
                           for n in (1, 2, 3)]
    assert stdout[4].startswith("4468 samples in 1 file(s): 4468 valid, 0 rejected (0 errors, 4468 warnings)")
    assert main(["data", "validate", str(out), "--ignore", "path-escapes"]) == 0
    assert "ignored (--ignore): path-escapes=4468" in capsys.readouterr().out
    assert main(["data", "validate", str(out), "--ignore", "missing-image"]) == 2
    assert "--ignore missing-image: not a warning rule (errors cannot be ignored" in capsys.readouterr().err
