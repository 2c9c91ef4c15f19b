import csv
import json
import tracemalloc

import pytest
from conftest import sample, write_jsonl

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.convert import CONVERTERS, convert_file
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
    assert {"llava", "got", "messages", "paddleocr-rec", "csv", "html-table", "csv-table", "formula", "chart", "erniekit"} == set(CONVERTERS)


@pytest.mark.slow
def test_memory_stays_flat_as_input_grows(tmp_path):
    def run(n, traced):
        src = tmp_path / f"in{n}.jsonl"
        with open(src, "w") as fh:
            for i in range(n):
                fh.write(json.dumps({"image": f"i/{i}.png", "conversations": [
                    {"from": "human", "value": "<image>\nOCR:"}, {"from": "gpt", "value": "text " * 20}]}) + "\n")
        if traced:
            tracemalloc.start()
        summary = convert_file("got", src, tmp_path / "out.jsonl", report=lambda line: None, force=True)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert summary.converted == n and summary.written
        return top

    # Warm-up: pathlib interns path parts, and CPython's table of interned strings grows once
    # (to a size set by the process, not by the input) — grow it before measuring. Where that
    # growth lands depends on everything the process has imported (the whole suite's modules), so
    # the large run is measured twice and the lower peak counts: after a growth the table has room
    # for far more than 20k parts, and a real leak would show in both runs.
    run(20_000, traced=False)
    small, large = run(2_000, traced=True), min(run(20_000, traced=True), run(20_000, traced=True))
    assert large < small * 1.2 + 64_000  # 10x the records, the same peak


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
