"""Drift on general pages, the --max-drift gate, and the runaway counts of eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import sample, write_jsonl
from paddle_ocrvl_sft import cli
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.evaluate import drift as D
from paddle_ocrvl_sft.evaluate.score import runaway_metrics
from paddle_ocrvl_sft.loop_guard import Answer
from paddle_ocrvl_sft.testing import build_looping_model, build_tiny_model, perturbed_copy, receipt_image


@pytest.fixture
def pages(tmp_path) -> Path:
    folder = tmp_path / "pages"
    folder.mkdir()
    for i in range(2):
        receipt_image({"total": f"{i}.50", "date": "01.02.2024"}).save(folder / f"p{i}.png")
    return folder


def test_agreement_uses_each_tasks_metric():
    assert D.agreement("ocr", "same", "same") == 1.0
    assert D.agreement("ocr", "abcd", "abc") == pytest.approx(0.75)  # 1 - NED
    table = "<fcel>A<lcel><nl><fcel>B<fcel>C<nl>"
    assert D.agreement("table", table, "<fcel>AB<lcel><nl><fcel>B<fcel>C<nl>") == pytest.approx(1 - 0.5 / 6)  # TEDS
    # text that is no table reads as a one-cell table (data/otsl.py): 3 nodes, the cell renamed at NED 1/11
    assert D.agreement("table", "plain text", "plain texts") == pytest.approx(1 - (1 / 11) / 3)
    assert D.agreement("table", "<fcel>A<nl>", "") == 0.0  # the fine-tune lost the table
    assert D.agreement("formula", r"\[x^2\]", "x ^ 2") == 1.0  # LaTeX tokens, whitespace and delimiters dropped
    assert D.agreement("chart", "a | b", "a | c") == pytest.approx(0.8)


def test_pages_are_a_folder_a_page_list_or_labelled_samples(tmp_path, pages):
    found = D.load_pages(pages, "ocr,table")
    assert [(Path(s.job.image).name, s.kind) for s in found] == [
        ("p0.png", "ocr"), ("p0.png", "table"), ("p1.png", "ocr"), ("p1.png", "table")]
    listed = write_jsonl(tmp_path / "pages.jsonl", [{"image": "pages/p1.png"}])
    assert [(s.job.prompt, s.job.where) for s in D.load_pages(listed, ["formula"])] == [
        ("Formula Recognition:", f"{listed}:1")]
    labelled = write_jsonl(tmp_path / "labelled.jsonl", [sample("pages/p0.png", "OCR:", "TOTAL 0.50")])
    (only,) = D.load_pages(labelled)
    assert only.job.reference == "TOTAL 0.50" and only.kind == "ocr"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"image": "pages/p0.png"}, {"img": "x.png"}])
    with pytest.raises(UserError, match=r"bad.jsonl:2: field image"):
        D.load_pages(bad)
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"image": "nope.png"}])
    with pytest.raises(UserError, match=r"missing.jsonl:1: field image: .*nope.png not found"):
        D.load_pages(missing)
    with pytest.raises(UsageError, match="--tasks ocr,kie"):
        D.load_pages(pages, "ocr,kie")


def test_max_drift_limits_and_the_gate():
    assert D.parse_max_drift("0.1") == {"*": 0.1}
    assert D.parse_max_drift("0.2,table=0.05") == {"*": 0.2, "table": 0.05}
    for bad in ("table=2", "tables=0.1", "x", ""):
        with pytest.raises(UsageError):
            D.parse_max_drift(bad)
    metrics = {"kinds": {"ocr": {"drift": 0.15, "max": 0.3, "n": 2}, "table": {"drift": 0.04, "max": 0.1, "n": 2}}}
    assert D.gate(metrics, None) == []
    assert D.gate(metrics, {"*": 0.2}) == []
    assert D.gate(metrics, {"*": 0.1}) == [{"kind": "ocr", "drift": 0.15, "limit": 0.1}]
    assert D.gate(metrics, {"*": 0.2, "table": 0.01}) == [{"kind": "table", "drift": 0.04, "limit": 0.01}]


def test_runaways_are_counted_from_how_answers_ended():
    rows = [{"finish": "length", "loop": True}, {"finish": "stop", "loop": False}, {"finish": None, "loop": True},
            {"finish": "repeats", "loop": False}]
    assert runaway_metrics(rows) == {"at_cap": 1, "loops": 2, "guard_cut": 1, "finish_known": 3, "n": 4}


class Echo:
    """A stand-in backend: answers each page with a fixed text per prompt (a ``finish`` too)."""

    def __init__(self, answers: dict):
        self.answers = answers

    def __call__(self, job):
        text, finish = self.answers[job.prompt]
        return Answer(text, finish)


def test_drift_report_ranks_pages_and_resumes(tmp_path, pages, monkeypatch, capsys):
    models = {"base": Echo({"OCR:": ("TOTAL 0.50", "stop"), "Table Recognition:": ("<fcel>A<fcel>B<nl>", "stop")}),
              "tuned": Echo({"OCR:": ("TOTAL 0.5O", "stop"), "Table Recognition:": ("7" * 48, "length")})}
    monkeypatch.setattr("paddle_ocrvl_sft.evaluate.runner.make_backend",
                        lambda backend, model_dir, **kw: models[Path(model_dir).name])
    out = tmp_path / "drift"
    metrics = D.evaluate_drift(tmp_path / "tuned", tmp_path / "base", pages, out_dir=out, tasks="ocr,table",
                               max_drift={"*": 0.4}, progress=False)
    assert metrics["kinds"]["ocr"]["drift"] == pytest.approx(0.1)  # one character of ten
    # 2 cells -> one cell of junk: delete a td (1) + rename the other (NED 1) over 4 nodes
    assert metrics["kinds"]["table"]["drift"] == pytest.approx(0.5)
    assert metrics["gate"] == [{"kind": "table", "drift": pytest.approx(0.5), "limit": 0.4}]
    assert metrics["runaways"]["model"]["at_cap"] == 2 and metrics["runaways"]["model"]["loops"] == 2
    assert metrics["runaways"]["baseline"] == {"at_cap": 0, "loops": 0, "guard_cut": 0, "finish_known": 4, "n": 4}
    rows = [json.loads(line) for line in (out / D.ROWS_FILE).read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["table", "table", "ocr", "ocr"]  # largest drift first
    assert rows[0]["base"] == "<fcel>A<fcel>B<nl>" and rows[0]["model"] == "7" * 48
    page = (out / "report.html").read_text()
    assert "Drift on general pages" in page and "hit the token cap" in page and "exceeded" in page

    def no_model(*args, **kwargs):
        raise AssertionError("a rerun with every answer saved loads no model")

    monkeypatch.setattr("paddle_ocrvl_sft.evaluate.runner.make_backend", no_model)
    assert D.evaluate_drift(tmp_path / "tuned", tmp_path / "base", pages, out_dir=out, tasks="ocr,table",
                            max_drift={"*": 0.4}, progress=False) == metrics
    print(D.drift_summary(metrics))
    text = capsys.readouterr().out
    assert "EXCEEDED" in text and "at the token cap 0 -> 2" in text


def test_a_failed_prediction_is_left_out_of_the_drift_and_said_so(tmp_path, pages, capsys):
    """A failed answer is no evidence of forgetting: counted as drift 1 it would fail the gate (exit 3)."""
    image = str(pages / "p0.png")
    base = write_jsonl(tmp_path / "base.jsonl", [{"image": image, "prompt": "OCR:", "text": "TOTAL 0.50"},
                                                 {"image": str(pages / "p1.png"), "prompt": "OCR:", "text": "TOTAL 1.50"}])
    tuned = write_jsonl(tmp_path / "tuned.jsonl", [
        {"image": image, "prompt": "OCR:", "text": "TOTAL 0.50"},
        {"image": str(pages / "p1.png"), "prompt": "OCR:", "error": "--server-url http://x/v1: HTTP 503: busy"}])
    metrics = D.evaluate_drift_predictions(tuned, base, pages, out_dir=tmp_path / "out", tasks="ocr",
                                           max_drift={"*": 0.1})
    assert metrics["kinds"] == {"ocr": {"drift": 0.0, "max": 0.0, "n": 1}} and metrics["drift"] == 0.0
    assert metrics["gate"] == [] and metrics["errors"] == 1 and metrics["n"] == 2
    assert "1 answer pair(s) with a failed prediction left out of the drift" in D.drift_summary(metrics)
    assert "1 answer pair(s) with a failed prediction, left out of the drift" in (tmp_path / "out" / "report.html").read_text()
    rows = [json.loads(line) for line in (tmp_path / "out" / D.ROWS_FILE).read_text().splitlines()]
    assert ["error" in row for row in rows] == [False, True]  # the failed pair is not "the most changed"


def test_drift_from_saved_predictions_and_labels(tmp_path, pages):
    labelled = write_jsonl(tmp_path / "labelled.jsonl", [sample("pages/p0.png", "OCR:", "TOTAL 0.50")])
    image = str(pages / "p0.png")
    base = write_jsonl(tmp_path / "base.jsonl", [{"image": image, "prompt": "OCR:", "text": "TOTAL 0.50"}])
    tuned = write_jsonl(tmp_path / "tuned.jsonl", [{"image": image, "prompt": "OCR:", "text": "TOTAL 0.5"}])
    metrics = D.evaluate_drift_predictions(tuned, base, labelled, out_dir=tmp_path / "out")
    assert metrics["kinds"]["ocr"]["drift"] == pytest.approx(0.1)
    assert metrics["labels"]["baseline"]["ocr"]["cer"] == 0.0  # real CER before and after, from the labels
    assert metrics["labels"]["model"]["ocr"]["cer"] == pytest.approx(0.1)
    with pytest.raises(UsageError, match="--baseline-predictions"):
        D.evaluate_drift_predictions(tuned, None, labelled, out_dir=tmp_path / "other")


def test_eval_cli_options_for_general_pages(tmp_path, pages, capsys):
    assert cli.main(["eval", "--model", "m", "-o", str(tmp_path / "o")]) == 2
    assert "give --data VAL.jsonl" in capsys.readouterr().err
    assert cli.main(["eval", "--data", "v.jsonl", "--max-drift", "0.1", "--model", "m"]) == 2
    assert "--max-drift gates the drift on general pages" in capsys.readouterr().err
    assert cli.main(["eval", "--general", str(pages), "--model", "m", "-o", str(tmp_path / "o")]) == 2
    assert "--general compares two models" in capsys.readouterr().err
    assert cli.main(["eval", "--general", str(pages), "--model", "m", "--baseline", "b", "--max-drift", "2",
                     "-o", str(tmp_path / "o")]) == 2
    assert "a drift limit is in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# --- real models: a model against itself, a perturbed copy, the gate, a planted loop ----------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-models")
    base = build_tiny_model(root / "base", "base")
    # Scales whose answers still decode: from about 0.2 on, the tiny model's OCR answers hold ids its
    # tokenizer cannot decode (failed predictions, left out of the drift rather than counted as drift 1).
    return base, perturbed_copy(base, root / "near", 0.0003), perturbed_copy(base, root / "far", 0.05)


def run_drift(tmp_path, model, base, pages, *extra):
    out = tmp_path / f"out-{Path(model).name}-{len(extra)}"
    status = cli.main(["eval", "--general", str(pages), "--tasks", "ocr,table", "--model", str(model), "--baseline",
                       str(base), "--device", "cpu", "--max-new-tokens", "12", "--no-progress", "-o", str(out), *extra])
    return status, json.loads((out / D.DRIFT_FILE).read_text())


@pytest.mark.slow
def test_drift_is_zero_against_itself_and_grows_with_the_perturbation(tmp_path, tiny, pages, capsys):
    base, near, far = tiny
    status, itself = run_drift(tmp_path, base, base, pages)
    assert status == 0 and itself["drift"] == 0.0
    assert all(v["drift"] == 0.0 for v in itself["kinds"].values()) and set(itself["kinds"]) == {"ocr", "table"}
    _, slightly = run_drift(tmp_path, near, base, pages)
    _, strongly = run_drift(tmp_path, far, base, pages)
    assert slightly["errors"] == strongly["errors"] == 0  # measured drift, not failed answers
    assert 0.0 <= slightly["drift"] < strongly["drift"] and strongly["drift"] > 0.3
    capsys.readouterr()
    status, gated = run_drift(tmp_path, far, base, pages, "--max-drift", "0.05")
    assert status == D.GATE_EXIT == 3 and gated["gate"]
    assert "error: drift gate:" in capsys.readouterr().err
    status, _ = run_drift(tmp_path, base, base, pages, "--max-drift", "0.05")
    assert status == 0


@pytest.mark.slow
def test_eval_counts_a_planted_loop_and_measures_the_guard(tmp_path, tiny, pages):
    loop = build_looping_model(tmp_path / "loop")
    data = write_jsonl(tmp_path / "val.jsonl", [sample(str(pages / "p0.png"), "OCR:", "TOTAL 0.50"),
                                                sample(str(pages / "p1.png"), "OCR:", "TOTAL 1.50")])
    common = ["--data", str(data), "--baseline", str(tiny[0]), "--device", "cpu", "--max-new-tokens", "40",
              "--no-progress"]
    assert cli.main(["eval", "--model", str(loop), *common, "-o", str(tmp_path / "before")]) == 0
    before = json.loads((tmp_path / "before" / "metrics.json").read_text())
    assert before["runaways"]["at_cap"] == 2 and before["runaways"]["loops"] == 2
    assert cli.main(["eval", "--model", str(loop), *common, "--stop-repeats", "4", "-o", str(tmp_path / "after")]) == 0
    after = json.loads((tmp_path / "after" / "metrics.json").read_text())
    assert after["runaways"]["at_cap"] == 0 and after["runaways"]["loops"] == 0 and after["runaways"]["guard_cut"] == 2
    assert after["ocr"]["cer"] < before["ocr"]["cer"]  # the runaway tail is gone
    # on the base model's answers (no loop within 40 tokens here) the guard changes nothing
    assert after["baseline"]["ocr"] == before["baseline"]["ocr"]
    assert after["baseline"]["runaways"]["guard_cut"] == 0
