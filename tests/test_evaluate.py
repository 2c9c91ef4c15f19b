"""eval: data loading and joining, resumable predictions, outputs, the CLI, and the real paddle backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import sample, write_jsonl
from paddle_ocrvl_sft import cli
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.evaluate import evaluate, evaluate_predictions, runner, summary
from paddle_ocrvl_sft.evaluate.score import load_samples
from paddle_ocrvl_sft.prompts import kie_prompt, render_json
from paddle_ocrvl_sft.testing import build_tiny_model, receipt_image

KIE_PROMPT = kie_prompt({"TOTAL": "", "DATE": ""})


@pytest.fixture
def val(tmp_path) -> Path:
    """Four samples: two KIE (an invoice and a receipt), one OCR, one table; images beside the file."""
    for i in range(4):
        receipt_image({"total": f"{i}.50"}).save(tmp_path / f"r{i}.png")
    rows = [
        {**sample("r0.png", KIE_PROMPT, render_json({"TOTAL": "0.50", "DATE": "01.02.2024"})), "doc_type": "invoice"},
        {**sample("r1.png", KIE_PROMPT, render_json({"TOTAL": "1.50", "DATE": "03.04.2024"})), "doc_type": "receipt"},
        sample("r2.png", "OCR:", "TOTAL 2.50"),
        sample("r3.png", "Table Recognition:", "<fcel>A<lcel><nl><fcel>B<fcel>C<nl>"),
    ]
    return write_jsonl(tmp_path / "val.jsonl", rows)


def prediction(image: Path, prompt: str, text: str) -> dict:
    return {"image": str(image), "prompt": prompt, "text": text}


def test_load_samples_checks_references_and_doc_types(tmp_path, val):
    samples = load_samples(val)
    assert [s.kind for s in samples] == ["kie", "kie", "ocr", "table"]
    assert [s.doc_type for s in samples] == ["invoice", "receipt", None, None]
    assert samples[0].fields == {"TOTAL": "0.50", "DATE": "01.02.2024"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [sample("r0.png", KIE_PROMPT, "TOTAL 0.50")])
    with pytest.raises(UserError, match=r"bad.jsonl:1: the prompt asks for JSON .* not a JSON object"):
        load_samples(bad)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{**sample("r0.png"), "doc_type": 3}])
    with pytest.raises(UserError, match=r"bad.jsonl:1: field doc_type: must be a string"):
        load_samples(bad)


def test_scores_saved_predictions_joined_by_image_and_prompt(tmp_path, val, capsys, monkeypatch):
    d = val.parent
    preds = write_jsonl(tmp_path / "pred.jsonl", [  # another order, relative paths, one extra line
        prediction(Path("r3.png"), "Table Recognition:", "<fcel>A<lcel><nl><fcel>B<fcel>C<nl>"),
        prediction(d / "r2.png", "OCR:", "TOTAL 2.5"),
        prediction(d / "r1.png", KIE_PROMPT, '{"DATE": "03.04.2024", "TOTAL": "1.50"}'),
        prediction(d / "r0.png", KIE_PROMPT, '{"TOTAL": "0.50", "DATE": "01.02.2023"'),
        prediction(d / "other.png", "OCR:", "not in the data"),
    ])
    base = write_jsonl(tmp_path / "base.jsonl", [prediction(d / f"r{i}.png", p, "") for i, p in
                                                 enumerate([KIE_PROMPT, KIE_PROMPT, "OCR:", "Table Recognition:"])])
    out = tmp_path / "out"
    monkeypatch.chdir(d)  # "r3.png" above is relative to here
    assert cli.main(["eval", "--data", str(val), "--predictions", str(preds), "--baseline-predictions", str(base),
                     "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["errors"] == 0 and metrics["normalize"] == []
    assert metrics["kie"]["field_accuracy"] == 0.75 and metrics["kie"]["document_accuracy"] == 0.5
    assert metrics["kie"]["json_valid"] == 0.5 and metrics["kie"]["json_valid_repaired"] == 1.0
    assert metrics["ocr"] == {"cer": 0.1, "cer_macro": 0.1, "ned": 0.1, "exact": 0.0, "n": 1}
    assert metrics["table"]["teds"] == 1.0
    assert metrics["by_doc_type"]["invoice"]["kie"]["field_accuracy"] == 0.5
    assert metrics["baseline"]["kie"]["field_accuracy"] == 0.0 and metrics["baseline"]["table"]["teds"] == 0.0
    printed = capsys.readouterr().out
    assert "kie field accuracy (n=2)" in printed and "+75.0 pts (better)" in printed
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4  # the joined ones, in data order
    assert len((out / "scores.jsonl").read_text().splitlines()) == 4
    assert (out / "report.html").stat().st_size > 10_000 and (out / "plots" / "kie_fields.png").is_file()

    # Refused: an existing output without --force, and a sample with no prediction.
    assert cli.main(["eval", "--data", str(val), "--predictions", str(preds), "-o", str(out)]) == 1
    assert "already exists (use --force" in capsys.readouterr().err
    short = write_jsonl(tmp_path / "short.jsonl", [prediction(d / "r2.png", "OCR:", "x")])
    with pytest.raises(UserError, match=r"no prediction for 3 of 4 samples .*val.jsonl:1 \(r0.png"):
        evaluate_predictions(short, val, out_dir=tmp_path / "o2")


def test_bad_options_are_usage_errors(val, capsys):
    assert cli.main(["eval", "--data", str(val), "--predictions", "p.jsonl", "--baseline", "b"]) == 2
    assert "give --baseline-predictions" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["eval", "--data", str(val), "--predictions", "p.jsonl", "--normalize", "case"])
    assert exc.value.code == 2
    assert cli.main(["eval", "--data", str(val)]) == 2
    assert "give --model DIR" in capsys.readouterr().err
    assert cli.main(["eval", "--data", str(val.parent / "r0.png"), "--predictions", "p.jsonl"]) == 1
    assert "r0.png: expected an ERNIEKit .jsonl/.json dataset file" in capsys.readouterr().err
    assert cli.main(["eval", "--data", str(val), "--predictions", str(val.parent / "nope.jsonl")]) == 1
    assert "nope.jsonl: no such predictions file" in capsys.readouterr().err
    assert cli.main(["eval", "--data", str(val), "--model", "m", "--backend", "nope", "-o", str(val.parent / "o")]) == 2
    assert "--backend nope: must be one of paddle" in capsys.readouterr().err  # predict.BACKENDS
    assert not (val.parent / "o").exists()  # refused before anything was written
    with pytest.raises(UsageError, match="--normalize: unknown normalization case"):
        evaluate("no-model-needed", val, out_dir=val.parent / "o", normalize=["case"])  # before any model loads


class FakeBackend:
    """Answers every job with its reference, except images named in ``fail``; can stop after ``stop_after`` jobs."""

    def __init__(self, fail=(), stop_after=None):
        self.seen, self.fail, self.stop_after = [], set(fail), stop_after

    def __call__(self, job):
        if self.stop_after is not None and len(self.seen) == self.stop_after:
            raise KeyboardInterrupt
        self.seen.append(Path(job.image).name)
        if Path(job.image).name in self.fail:
            raise OSError("disk on fire")
        return job.reference


def test_predictions_resume_after_an_interruption_a_torn_line_and_failures(tmp_path, val):
    samples = load_samples(val)
    path = tmp_path / "out" / "predictions.jsonl"
    first = FakeBackend(fail={"r1.png"}, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        runner.predict_resumable(samples, path, lambda: first, progress=False)
    assert first.seen == ["r0.png", "r1.png", "r2.png"]
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and "error" in json.loads(lines[1])  # each line written as it came
    with open(path, "a") as fh:
        fh.write('{"image": "torn')  # a write cut short by the interruption

    second = FakeBackend()
    records = runner.predict_resumable(samples, path, lambda: second, progress=False)
    assert second.seen == ["r1.png", "r3.png"]  # the failed one retried, the missing one made
    assert [r["text"] for r in records] == [s.job.reference for s in samples]
    assert len(path.read_text().splitlines()) == 4  # no torn line, no stale error line

    def no_model():
        raise AssertionError("nothing left to predict: the model must not be loaded")

    assert runner.predict_resumable(samples, path, no_model, progress=False) == records
    other = load_samples(write_jsonl(tmp_path / "other.jsonl", [sample(str(val.parent / "r0.png"), "OCR:", "x")]))
    with pytest.raises(UserError, match=r"predictions.jsonl:1: a prediction for .* that the data does not have"):
        runner.predict_resumable(other, path, no_model, progress=False)


def test_evaluate_refuses_a_folder_made_for_another_model(tmp_path, val, monkeypatch):
    monkeypatch.setattr(runner, "make_backend", lambda backend, **options: FakeBackend())
    out = tmp_path / "out"
    metrics = evaluate(tmp_path / "modelA", val, out_dir=out, progress=False)
    assert metrics["kie"]["document_accuracy"] == 1.0 and metrics["table"]["teds"] == 1.0
    assert metrics["model"] == str(tmp_path / "modelA")
    with pytest.raises(UserError, match=r"holds an evaluation made with other inputs \(model was .*modelA"):
        evaluate(tmp_path / "modelB", val, out_dir=out, progress=False)
    assert evaluate(tmp_path / "modelB", val, out_dir=out, progress=False, force=True)["n"] == 4
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists"):
        evaluate(tmp_path / "modelA", val, out_dir=tmp_path / "busy", progress=False)


def test_summary_formats_before_and_after():
    metrics = {"model": "m", "data": "v.jsonl", "n": 2, "errors": 0,
               "ocr": {"cer": 0.05, "cer_macro": 0.04, "ned": 0.03, "exact": 0.5, "n": 2},
               "baseline": {"ocr": {"cer": 0.25, "cer_macro": 0.2, "ned": 0.1, "exact": 0.5, "n": 2}}}
    lines = summary(metrics).splitlines()
    assert lines[0] == "eval of m on v.jsonl: 2 samples"
    row = next(line for line in lines if "ocr CER (n=2)" in line).split()
    assert row[-5:] == ["25.0%", "5.0%", "-20.0", "pts", "(better)"]
    assert next(line for line in lines if "NED" in line).split()[-4:] == ["0.1000", "0.0300", "-0.0700", "(better)"]
    assert next(line for line in lines if "exact" in line).endswith("same")


# --- the real paddle backend on tiny models ------------------------------------------------------------


@pytest.mark.slow
def test_eval_runs_base_and_another_model_with_paddle_and_resumes(tmp_path, val, monkeypatch, capsys):
    base = build_tiny_model(tmp_path / "base", "base")
    tuned = build_tiny_model(tmp_path / "tuned", "base", seed=1)  # different weights, same layout
    out = tmp_path / "out"
    argv = ["eval", "--model", str(tuned), "--baseline", str(base), "--data", str(val), "-o", str(out),
            "--device", "cpu", "--max-new-tokens", "4", "--batch-size", "2", "--no-progress"]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["baseline"]["n"] == 4 and metrics["errors"] == 0
    assert set(metrics) >= {"kie", "ocr", "table", "by_doc_type"}
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    base_records = [json.loads(line) for line in (out / "baseline" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == len(base_records) == 4
    assert [r["text"] for r in records] != [r["text"] for r in base_records]  # two different models ran
    printed = capsys.readouterr().out
    assert "baseline" in printed and "kie field accuracy (n=2)" in printed

    # A rerun finds every prediction made: no model is loaded, the numbers are the same.
    def no_model(*args, **kwargs):
        raise AssertionError("the rerun must not load a model")

    monkeypatch.setattr(runner, "make_backend", no_model)
    assert cli.main(argv) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again == metrics
