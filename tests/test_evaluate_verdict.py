"""The verdict at the end of train: task metrics, drift on general pages, runaways, one line."""

from __future__ import annotations

import json

from paddle_ocrvl_sft.evaluate.verdict import judge_run, render, verdict


def task_metrics(base_acc: float, acc: float, base_runaways=(0, 0), runaways=(0, 0)) -> dict:
    def one(value, counts):
        return {"kie": {"field_accuracy": value, "document_accuracy": value, "n": 4},
                "runaways": {"at_cap": counts[0], "loops": counts[1], "guard_cut": 0, "finish_known": 4, "n": 4}}

    return {**one(acc, runaways), "baseline": one(base_acc, base_runaways)}


def drift_metrics(ocr: float, table: float) -> dict:
    none = {"at_cap": 0, "loops": 0, "guard_cut": 0, "finish_known": 4, "n": 4}
    return {"kinds": {"ocr": {"drift": ocr, "max": ocr, "n": 2}, "table": {"drift": table, "max": table, "n": 2}},
            "runaways": {"baseline": none, "model": none}}


def test_better_within_the_drift_limit():
    v = verdict(task_metrics(0.0, 0.9), drift_metrics(0.05, 0.02), {"*": 0.1})
    assert v["ok"] and v["task"] == "better" and v["drift"] == "within"
    assert v["line"] == "verdict: better on the task, within the drift limit on general pages (worst task 0.050)"
    table = render(v)
    assert "kie field accuracy (n=4)" in table and "+90.0 pts (better)" in table and "limit 0.10 ok" in table


def test_forgot_worse_and_more_runaways_are_called_out():
    forgot = verdict(task_metrics(0.0, 0.9), drift_metrics(0.05, 0.4), {"*": 0.1, "table": 0.3})
    assert not forgot["ok"] and forgot["drift"] == "forgot"
    assert "FORGOT on general pages (table drifted 0.400 > 0.30)" in forgot["line"]
    assert "EXCEEDED" in render(forgot)
    worse = verdict(task_metrics(0.5, 0.25, runaways=(2, 1)), None)
    assert worse["task"] == "worse" and worse["drift"] is None and worse["more_runaways"]
    assert worse["line"].startswith("verdict: NOT READY — WORSE on the task (kie field accuracy)")
    assert "drift not measured" in worse["line"] and "at the token cap 0 -> 2" in worse["line"]
    default = verdict(None, drift_metrics(0.15, 0.0))  # the plan set no limit: the verdict's default, 0.1
    assert default["drift"] == "forgot" and "task not measured" in default["line"]


def test_judge_run_writes_the_verdict_into_the_run_record(tmp_path):
    run = tmp_path / "runs" / "1"
    run.mkdir(parents=True)
    (run / "record.json").write_text(json.dumps({"exit": 0}))
    lines = []
    v = judge_run({}, "bundle", "base", task_metrics(0.0, 1.0), tmp_path / "eval", run, device="cpu",
                  max_new_tokens=8, echo=lines.append)
    record = json.loads((run / "record.json").read_text())
    assert record["exit"] == 0 and record["verdict"] == v == json.loads((tmp_path / "eval" / "verdict.json").read_text())
    assert lines == [v["table"]] and v["table"] == render(v) and v["line"] in v["table"]
