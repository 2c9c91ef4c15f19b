"""The ui's HTTP API over the stage functions (FastAPI's TestClient; the browser test is test_ui_playwright.py)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from conftest import sample, write_image, write_jsonl
from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.prompts import kie_prompt, render_json
from paddle_ocrvl_sft.testing import build_tiny_model
from paddle_ocrvl_sft.ui import jobs, runs
from paddle_ocrvl_sft.ui.app import create_app

HOST = "http://127.0.0.1:7860"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("model") / "base", "base")


@pytest.fixture
def work(tmp_path, tiny_model) -> Path:
    """A workdir with a KIE dataset (two images, one sample pointing at a missing image) and a model."""
    root = tmp_path / "work"
    write_image(root / "data" / "a.png", size=(120, 80))
    write_image(root / "data" / "b.png", size=(64, 48), color="black")
    rows = [sample("a.png", kie_prompt({"TOTAL": ""}), render_json({"TOTAL": "12.50"})),
            sample("b.png", "OCR:", "hello"),
            sample("gone.png", kie_prompt({"DATE": ""}), render_json({"DATE": "2024-01-02"})),
            sample("a.png", kie_prompt({"STORE": "", "TOTAL": ""}), render_json({"STORE": "Migros", "TOTAL": "12.50"}))]
    write_jsonl(root / "data" / "train.jsonl", rows)
    os.symlink(tiny_model, root / "base")
    return root


@pytest.fixture
def client(work, tiny_model) -> TestClient:
    """The UI on the workdir; the model's dir (which the workdir links to) is an --allow dir: read, never written."""
    with TestClient(create_app(work, allow=[tiny_model.parent]), base_url=HOST) as c:
        yield c


# --- data ---------------------------------------------------------------------------------------------------


def test_open_shows_what_validate_and_stats_find(client, work):
    from paddle_ocrvl_sft.data.stats import dataset_stats

    summary = client.get("/api/data/open", params={"path": "data/train.jsonl"}).json()
    cli = dataset_stats([work / "data" / "train.jsonl"])
    assert summary["validation"] == cli.report.to_dict()
    assert (summary["validation"]["samples"], summary["validation"]["valid"], summary["validation"]["errors"]) == (4, 3, 1)
    assert summary["percentiles"] == cli.percentiles() and summary["kinds"] == {"kie": 2, "ocr": 1}
    problems = client.get("/api/data/problems", params={"path": "data/train.jsonl"}).json()
    assert problems["total"] == 1
    assert problems["problems"][0] | {"message": ""} == {"path": "train.jsonl", "line": 3, "severity": "error",
                                                         "rule": "missing-image", "message": ""}
    png = client.get("/api/data/stats.png", params={"path": "data/train.jsonl"})
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")


def test_samples_page_with_their_problems_kie_fields_and_filters(client):
    page = client.get("/api/data/samples", params={"path": "data/train.jsonl", "limit": 2}).json()
    assert page["total"] == 4 and [s["line"] for s in page["samples"]] == [1, 2]
    first = page["samples"][0]
    assert first["turns"] == [{"prompt": 'OCR:{"TOTAL": ""}', "answer": '{"TOTAL": "12.50"}'}]
    assert first["kie"]["fields"] == [{"path": "TOTAL", "value": "12.50"}] and first["kie"]["asked"] == ["TOTAL"]
    assert first["images"] == [{"index": 0, "url": "a.png", "local": True, "exists": True}]  # no server path sent
    second = client.get("/api/data/samples", params={"path": "data/train.jsonl", "offset": 3}).json()["samples"]
    assert [s["line"] for s in second] == [4] and second[0]["kie"]["asked"] == ["STORE", "TOTAL"]
    errors = client.get("/api/data/samples", params={"path": "data/train.jsonl", "show": "error"}).json()
    assert [s["line"] for s in errors["samples"]] == [3] and errors["samples"][0]["problems"][0]["rule"] == "missing-image"
    assert errors["samples"][0]["images"][0]["exists"] is False
    by_rule = client.get("/api/data/samples", params={"path": "data/train.jsonl", "show": "rule:missing-image"}).json()
    one = client.get("/api/data/samples", params={"path": "data/train.jsonl", "show": "line:2"}).json()
    assert by_rule["total"] == 1 and [s["line"] for s in one["samples"]] == [2]
    assert client.get("/api/data/samples", params={"path": "data/train.jsonl", "show": "nope"}).status_code == 400


def test_a_model_dir_counts_and_warns_as_data_validate_model_does(client, work, capsys):
    """The model's release (here v1) is detected as the CLI detects it: a task v1 never learnt warns."""
    data = write_jsonl(work / "data" / "spot.jsonl", [sample("a.png", "Spotting:", "<|LOC_1|>TOTAL")])
    summary = client.get("/api/data/open", params={"path": "data/spot.jsonl", "model": "base"}).json()
    model = str(work / "base")
    assert main(["data", "validate", str(data), "--model", model, "--tokenizer", model, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)["summary"]
    assert summary["validation"] == {k: v for k, v in cli.items() if k != "release"}
    assert summary["validation"]["by_rule"] == {"untrained-task": 1} and summary["release"].startswith("release v1 ")


def test_malformed_samples_are_shown_raw_not_a_500(client, work):
    """A "text" that is not a string, image_info that is not a list: the page shows the raw row and its problems."""
    bad_text = sample("a.png")
    bad_text["text_info"][0]["text"] = 5
    listed = sample("a.png")
    listed["text_info"][0]["text"] = ["x"]
    no_list = {**sample("a.png"), "image_info": 5}
    write_jsonl(work / "data" / "bad.jsonl", [bad_text, listed, no_list, sample("a.png")])
    page = client.get("/api/data/samples", params={"path": "data/bad.jsonl"})
    assert page.status_code == 200, page.text
    shown = page.json()["samples"]
    assert [s["turns"] for s in shown[:2]] == [None, None] and all(s["problems"] for s in shown[:3])
    assert shown[2]["images"] == [] and shown[2]["turns"] == [{"prompt": "OCR:", "answer": "text"}]
    assert shown[3]["turns"] == [{"prompt": "OCR:", "answer": "text"}] and shown[3]["kind"] == "ocr"


def test_a_sample_image_is_decoded_and_served_as_png(client):
    from PIL import Image

    response = client.get("/api/data/image", params={"path": "data/train.jsonl", "line": 2, "index": 0})
    image = Image.open(io.BytesIO(response.content))
    assert (response.headers["content-type"], image.format, image.size) == ("image/png", "PNG", (64, 48))
    missing = client.get("/api/data/image", params={"path": "data/train.jsonl", "line": 3})
    assert missing.status_code == 400 and "gone.png" in missing.json()["error"]["message"]
    assert client.get("/api/data/image", params={"path": "data/train.jsonl", "line": 9}).status_code == 400


def test_an_image_outside_the_roots_is_not_served(client, work, tmp_path):
    outside = write_image(tmp_path / "secret.png")
    write_jsonl(work / "data" / "escape.jsonl", [sample(str(outside)), sample("../../secret.png")])
    for line in (1, 2):
        response = client.get("/api/data/image", params={"path": "data/escape.jsonl", "line": line})
        assert response.status_code == 403, response.text


# --- path traversal and the guard ------------------------------------------------------------------------------


@pytest.mark.parametrize("method,url,payload", [
    ("get", "/api/data/open", {"path": "../outside.jsonl"}),
    ("get", "/api/data/open", {"path": "/etc/passwd"}),
    ("get", "/api/data/samples", {"path": "data/../../outside.jsonl"}),
    ("get", "/api/data/open", {"path": "data/train.jsonl", "model": "/usr"}),
    ("get", "/api/evals/report", {"dir": "../"}),
    ("get", "/api/evals/samples", {"dir": "/tmp"}),
    ("get", "/api/runs/plan", {"plan": "/"}),
    ("get", "/api/runs/metrics", {"plan": "../.."}),
    ("post", "/api/try/load", {"model": "/usr/share"}),
    ("post", "/api/runs/start", {"plan": "../elsewhere"}),
    ("post", "/api/jobs", {"command": "data-split", "values": {"file": "data/train.jsonl", "out_prefix": "../x"}}),
    ("post", "/api/jobs", {"command": "data-convert", "values": {"input": "../../etc/passwd", "output": "x.jsonl"}}),
    ("post", "/api/plan/compute", {"values": {"data": ["../x.jsonl"], "model": "base", "epochs": "1", "out": "p"}}),
])
def test_paths_outside_the_workdir_are_refused_with_4xx(client, work, method, url, payload):
    response = client.get(url, params=payload) if method == "get" else client.post(url, json=payload)
    body = response.json()
    refused = response.status_code == 403 or (url == "/api/plan/compute" and body.get("kind") == "refused")
    assert refused, (response.status_code, body)
    assert "outside the UI's workdir" in (body.get("error") if isinstance(body.get("error"), str) else body["error"]["message"])
    assert not (work / ".ui" / "jobs").exists()  # nothing was started


def test_job_ids_are_checked(client):
    for bad in ("..%2F..%2Fetc", "20240101-000000-plan-zzzzzz", "x"):
        assert client.get(f"/api/jobs/{bad}").status_code in (400, 404)


def test_the_guard_host_origin_content_type_and_size(client):
    assert client.get("/api/info", headers={"Host": "evil.example:7860"}).status_code == 403  # DNS rebinding
    assert client.get("/api/info", headers={"Host": "localhost:7860"}).status_code == 200
    for name in ("127.0.0.2:7860", "[::1]:7860", "127.0.0.1"):  # `ui --host 127.0.0.2` is loopback: answered
        assert client.get("/api/info", headers={"Host": name}).status_code == 200, name
    for name in ("127.0.0.1.evil.example", "[::2]:7860", ""):
        assert client.get("/api/info", headers={"Host": name}).status_code == 403, name
    cross = client.post("/api/plan/compute", json={"values": {}}, headers={"Origin": "http://evil.example"})
    assert cross.status_code == 403 and "Origin" in cross.json()["error"]["message"]
    assert client.post("/api/plan/compute", json={"values": {}}, headers={"Origin": HOST}).status_code == 200
    form = client.post("/api/runs/start", content="plan=x", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status_code == 415  # a cross-site form cannot post JSON without a preflight
    big = client.post("/api/plan/compute", content=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"})
    assert big.status_code == 413


def test_an_api_key_guards_everything_but_the_page(work):
    with TestClient(create_app(work, api_key="s3cret", loopback_only=False), base_url="http://ui.example") as c:
        assert c.get("/").status_code == 200 and c.get("/static/ui.js").status_code == 200
        assert c.get("/api/workspace").status_code == 401
        assert c.get("/api/workspace", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/login", json={"key": "wrong"}).status_code == 401
        assert c.get("/api/workspace").status_code == 401
        login = c.post("/login", json={"key": "s3cret"})
        assert login.status_code == 200 and "s3cret" not in login.headers["set-cookie"]
        assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in login.headers["set-cookie"].lower()
        assert c.get("/api/workspace").status_code == 200  # the cookie
        assert c.get("/try/abc/health").status_code == 404  # past the guard: no model loaded


def test_the_ui_command_wants_a_key_for_another_host(tmp_path, capsys):
    assert main(["ui", "--workdir", str(tmp_path), "--host", "0.0.0.0"]) == 2
    assert "--host 0.0.0.0: other machines could reach the UI" in capsys.readouterr().err
    assert main(["ui", "--workdir", str(tmp_path / "missing")]) == 2
    assert "--workdir" in capsys.readouterr().err


# --- plan -------------------------------------------------------------------------------------------------------


def plan_values(**extra):
    return {"backend": "paddleformers", "device": "cpu", "data": ["data/train.jsonl"], "model": "base",
            "epochs": "3", "lr": "5e-3", "max_seq_len": "2048", "out": "plans/p", "overrides": ["save_steps=2"], **extra}


def test_the_plan_form_computes_what_plan_writes(client, work):
    computed = client.post("/api/plan/compute", json={"values": plan_values()}).json()
    assert computed["ok"], computed
    assert computed["release"]["name"] == "v1"  # the base model's release, detected from its files
    assert not (work / "plans").exists()  # nothing written
    argv = ["plan", "--backend", "paddleformers", "--device", "cpu", "--data", str(work / "data/train.jsonl"), "--model",
            str(work / "base"), "--epochs", "3", "--lr", "5e-3", "--max-seq-len", "2048", "-o", str(work / "cli"), "save_steps=2"]
    assert main(argv) == 0
    written = json.loads((work / "cli" / "plan.json").read_text())
    assert computed["record"]["numbers"] == json.loads(json.dumps(written["numbers"]))
    assert computed["record"]["numbers"]["max_steps"] == {"value": 9, "formula": "ceil(D * E / (G * B * A))",
                                                          "inputs": {"D": 3, "E": 3.0, "G": 1, "B": 1, "A": 1}}
    assert computed["command_line"].startswith("python -m paddle_ocrvl_sft plan --backend paddleformers --device cpu --data /")


@pytest.mark.parametrize("change,cli_change", [
    ({"epochs": "0"}, ["--epochs", "0"]),
    ({"overrides": ["max_steps=3"]}, ["max_steps=3"]),
    ({"max_seq_len": "100"}, ["--max-seq-len", "100"]),
])
def test_the_plan_form_refuses_what_plan_refuses_in_its_words(client, work, capsys, change, cli_change):
    shown = client.post("/api/plan/compute", json={"values": plan_values(**change)}).json()
    assert not shown["ok"]
    argv = ["plan", "--backend", "paddleformers", "--device", "cpu", "--data", str(work / "data/train.jsonl"), "--model",
            str(work / "base"), "--epochs", "3", "--lr", "5e-3", "--max-seq-len", "2048", "-o", str(work / "plans/p"),
            "save_steps=2"]
    for i in range(0, len(cli_change) - 1, 2):
        if cli_change[i] in argv:
            argv[argv.index(cli_change[i]) + 1] = cli_change[i + 1]
    if len(cli_change) == 1:
        argv[-1] = cli_change[0]
    capsys.readouterr()
    assert main(argv) != 0
    assert shown["error"] == capsys.readouterr().err.strip()


def test_a_written_plan_dir_is_refused_as_plan_refuses_it(client, work, capsys):
    job = client.post("/api/jobs", json={"command": "plan", "values": plan_values()}).json()
    assert wait_job(client, job["id"])["exit"] == 0
    assert (work / "plans" / "p" / "plan.json").is_file()
    shown = client.post("/api/plan/compute", json={"values": plan_values()}).json()
    assert shown["error"] == f"error: {work / 'plans' / 'p'}: already exists (use --force to overwrite)"
    usage = client.post("/api/plan/compute", json={"values": plan_values(model=None)}).json()
    assert usage["error"] == "usage: the following arguments are required: --model"


# --- jobs -------------------------------------------------------------------------------------------------------


def wait_job(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] not in ("running", "stopping"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} still running")


def test_a_job_is_the_cli_command_in_its_own_process(client, work):
    job = client.post("/api/jobs", json={"command": "data-split", "values": {
        "file": "data/train.jsonl", "val": "0.5", "allow_uneven": True}}).json()
    assert job["command"] == ["data", "split"] and job["argv"][-1] == str(work / "data" / "train.jsonl")
    done = wait_job(client, job["id"])
    assert (done["state"], done["exit"]) == ("done", 0)
    assert any(line.startswith("train: ") for line in done["log"])  # what `data split` printed
    assert (work / "data" / "train.train.jsonl").is_file() and (work / "data" / "train.val.jsonl").is_file()
    again = wait_job(client, client.post("/api/jobs", json={"command": "data-split", "values": {
        "file": "data/train.jsonl", "val": "0.5", "allow_uneven": True}}).json()["id"])
    assert again["state"] == "failed" and any("already exists" in line for line in again["log"])
    assert client.post("/api/jobs", json={"command": "demo", "values": {}}).status_code == 400
    assert client.post("/api/jobs", json={"command": "data-split", "values": {"val": "0.5"}}).status_code == 422


def test_a_job_outlives_the_ui_and_a_new_ui_finds_it(work):
    """A stand-in for a long command: `python -m paddle_ocrvl_sft` processes are what the UI may start; this one
    sleeps (-c keeps it a paddle_ocrvl_sft process by its command line)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "paddle_ocrvl_sft"], start_new_session=True)
    try:
        record = {"id": "20240101-000000-train-abcdef", "command": ["train"], "argv": [], "pid": proc.pid,
                  "host": __import__("socket").gethostname(), "started": "2024-01-01T00:00:00", "finished": None,
                  "exit": None, "stop_requested": None}
        jobs.jobs_dir(work).mkdir(parents=True)
        (jobs.jobs_dir(work) / f"{record['id']}.json").write_text(json.dumps(record))
        assert jobs.load(work, record["id"])["state"] == "running"
        stopped = jobs.stop(work, record["id"])  # Ctrl-C to its process group
        assert stopped["state"] == "stopping" and stopped["stop_requested"]
        assert proc.wait(timeout=30) != 0
        assert jobs.load(work, record["id"])["state"] == "ended"  # not our child: the exit status was not seen
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_pages_stop_button_stops_a_running_job(client, work):
    """The job box's Stop (ui.js) posts /api/jobs/ID/stop: Ctrl-C to the job's process group."""
    assert "api/jobs/${id}/stop" in client.get("/static/ui.js").text
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "paddle_ocrvl_sft"], start_new_session=True)
    try:
        job_id = "20240101-000000-data-split-abcdef"
        jobs.jobs_dir(work).mkdir(parents=True)
        (jobs.jobs_dir(work) / f"{job_id}.json").write_text(json.dumps({
            "id": job_id, "command": ["data", "split"], "argv": [], "pid": proc.pid,
            "host": __import__("socket").gethostname(), "started": "2024-01-01T00:00:00", "finished": None,
            "exit": None, "stop_requested": None}))
        stopped = client.post(f"/api/jobs/{job_id}/stop", json={})
        assert stopped.status_code == 200 and stopped.json()["state"] == "stopping"
        assert proc.wait(timeout=30) != 0
        assert client.post(f"/api/jobs/{job_id}/stop", json={}).status_code == 400  # not running any more
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_reused_pid_is_not_taken_for_the_job(work):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not jobs.process_alive(other.pid)  # alive, but not a paddle_ocrvl_sft process
        assert not jobs.process_alive(other.pid, "another-host")
    finally:
        other.kill()
        other.wait()


def test_log_tails_drop_colours_and_carriage_return_redraws(tmp_path):
    log = tmp_path / "x.log"
    log.write_bytes(b"\x1b[32mgreen\x1b[0m\nstep 1\rstep 2\rstep 3\nlast\n")
    assert jobs.tail(log) == ["green", "step 3", "last"]
    assert jobs.tail(log, lines=1) == ["last"] and jobs.tail(tmp_path / "none.log") == []


# --- runs ------------------------------------------------------------------------------------------------------

TRAIN_LOG = """\
[2026-12-02 06:39:36,929] [    INFO] - loss: 11.55379868, learning_rate: 0.005, global_step: 1, interval_runtime: 2.37, interval_tokens_per_second_per_device: 863.2
[2026-12-02 06:39:38,970] [    INFO] - loss: 11.54552555, learning_rate: 0.005, global_step: 2, interval_runtime: 2.04, interval_tokens_per_second_per_device: 1003.6
[2026-12-02 06:39:42,552] [    INFO] - eval_loss: 11.465006828308105, eval_runtime: 3.5708, eval_samples_per_second: 0.5601
[2026-12-02 06:39:44,010] [    INFO] - loss: 11.4035, learning_rate: 0.005, global_step: 3, interval_runtime: 2.1, interval_tokens_per_second_per_device: 320.0
"""


def fake_run(plan: Path, run_id: str, *, points: int, exit_code, last_step=None) -> Path:
    """A run dir in the layout `train` writes (docs/train.md)."""
    folder = plan / "runs" / run_id
    folder.mkdir(parents=True)
    (folder / "record.json").write_text(json.dumps({"plan": str(plan), "backend": "paddleformers", "config": {"max_steps": 9},
                                                    "started": f"2026-12-02T06:{run_id[-2:]}:00", "finished": None if exit_code is None else "x",
                                                    "exit": exit_code, "last_step": last_step, "resume_from": None}))
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 10.0 - s, "lr": 0.005, "time": 100.0 + 2 * s})
                                                  + "\n" for s in range(1, points + 1)))
    (folder / "train.log").write_text(TRAIN_LOG)
    return folder


def checkpoint(plan: Path, step: int) -> None:
    """A COMPLETE PaddleFormers unified checkpoint (backends/checkpoints.py): both indexes with their shards."""
    import numpy as np

    from paddle_ocrvl_sft.io import write_json
    from paddle_ocrvl_sft.testing import save_weights

    folder = plan / "output" / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    for kind in ("model", "optimizer"):
        shard = f"{kind}-00001-of-00001.safetensors"
        save_weights(folder / shard, {f"{kind}.w": np.zeros(4, np.float32)}, "np")
        write_json(folder / f"{kind}.safetensors.index.json", {"metadata": {"total_size": 8}, "weight_map": {f"{kind}.w": shard}})
    for name in ("trainer_state.bin", "scheduler.pdparams"):
        (folder / name).write_bytes(b"placeholder\n")


def _terminal_train():
    """A `train` started in a terminal (its command line names the package); it exits 42 on Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGINT, "
                             "lambda *a: sys.exit(42)); print('ready', flush=True); time.sleep(60)", "paddle_ocrvl_sft"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_a_plans_state_comes_from_trains_lock_records_and_checkpoints(client, work):
    assert wait_job(client, client.post("/api/jobs", json={"command": "plan", "values": plan_values()}).json()["id"])["exit"] == 0
    plan = work / "plans" / "p"
    state = client.get("/api/runs/plan", params={"plan": "plans/p"}).json()
    assert (state["state"], state["can_start"], state["can_resume"], state["can_stop"]) == ("planned", True, False, False)
    assert state["record"]["numbers"]["max_steps"]["value"] == 9

    fake_run(plan, "20261202-063901", points=3, exit_code=None)
    checkpoint(plan, 2)
    trainer = _terminal_train()
    try:
        (plan / ".train.lock").write_text(json.dumps({"pid": trainer.pid, "host": __import__("socket").gethostname(),
                                                       "run": "20261202-063901"}))
        state = client.get("/api/runs/plan", params={"plan": "plans/p"}).json()
        assert (state["state"], state["can_stop"], state["can_resume"]) == ("training", True, False)
        assert state["runs"][0]["state"] == "running"
        listed = client.get("/api/runs").json()["plans"]
        assert listed == [{"plan": "plans/p", "state": "training", "backend": "paddleformers", "device": "cpu", "runs": 1,
                           "progress": {"step": 3, "max_steps": 9, "loss": 7.0, "lr": 0.005, "tokens_per_second": None,
                                        "nominal_tokens_per_second": None, "eta_seconds": 12.0}}]
        stopped = client.post("/api/runs/stop", json={"plan": "plans/p"}).json()
        assert stopped == {"stopped": "pid", "pid": trainer.pid}
        assert trainer.wait(timeout=30) == 42  # SIGINT, what Ctrl-C in its terminal sends
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    state = client.get("/api/runs/plan", params={"plan": "plans/p"}).json()  # the lock's pid is gone
    assert (state["state"], state["checkpoints"], state["can_resume"], state["can_start"]) == ("stopped", [2], True, False)

    fake_run(plan, "20261202-063902", points=9, exit_code=0, last_step=9)
    (plan / ".train.lock").unlink()
    state = client.get("/api/runs/plan", params={"plan": "plans/p"}).json()
    assert (state["state"], state["can_resume"], [r["state"] for r in state["runs"]]) == ("finished", False, ["ended", "finished"])

    metrics = client.get("/api/runs/metrics", params={"plan": "plans/p", "since": 7}).json()
    assert metrics["run"] == "20261202-063902" and metrics["total"] == 9 and [p["step"] for p in metrics["points"]] == [8, 9]
    assert metrics["eval_points"] == [{"step": 2, "eval_loss": 11.465006828308105}]
    assert metrics["progress"]["step"] == 9 and metrics["progress"]["eta_seconds"] == 0.0
    older = client.get("/api/runs/metrics", params={"plan": "plans/p", "run": "20261202-063901"}).json()
    assert older["total"] == 3
    assert client.get("/api/runs/metrics", params={"plan": "plans/p", "run": "../../x"}).status_code == 400
    log = client.get("/api/runs/log", params={"plan": "plans/p", "lines": 2}).json()
    assert log["train_log"] == TRAIN_LOG.splitlines()[-2:]
    assert client.post("/api/runs/stop", json={"plan": "plans/p"}).status_code == 400  # nothing to stop


def test_a_train_that_failed_after_its_trainer_finished_is_failed_not_finished(tmp_path):
    """The run's record says exit 0 (the trainer's), but `train` failed in export or eval: the job
    that started the run says so, with train's error."""
    from paddle_ocrvl_sft.ui import runs

    plan = tmp_path / "plans" / "p"
    fake_run(plan, "20261202-063902", points=9, exit_code=0, last_step=9)
    job = {"id": "j1", "command": ["train"], "plan": str(plan), "started": "2026-12-02T06:01:00"}
    log = jobs.jobs_dir(tmp_path) / "j1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("step 9\nerror: export: the bundle's prompt differs\n")
    assert runs.plan_state(plan, tmp_path, [{**job, "state": "done"}])["state"] == "finished"
    failed = runs.plan_state(plan, tmp_path, [{**job, "state": "failed"}])
    assert failed["state"] == "failed" and failed["message"] == "error: export: the bundle's prompt differs"
    # a job that failed before it started a run (a refused plan) leaves the finished run as it was
    later = {**job, "started": "2026-12-02T07:00:00", "state": "failed"}
    assert runs.plan_state(plan, tmp_path, [later])["state"] == "finished"


def test_a_node_ranks_lock_is_seen_and_a_read_only_plan_is_never_stopped(work, tmp_path):
    from paddle_ocrvl_sft.run_lock import lock_name

    shared = tmp_path / "shared"
    for plan in (work / "plans" / "multi", shared / "plans" / "theirs"):
        plan.mkdir(parents=True)
        (plan / "plan.json").write_text(json.dumps({"backend": "paddleformers", "train": {"nodes": 2}}))
    trainer = _terminal_train()
    try:
        host = __import__("socket").gethostname()
        for plan in (work / "plans" / "multi", shared / "plans" / "theirs"):  # node 1 of 2 runs on this host
            (plan / lock_name(1)).write_text(json.dumps({"pid": trainer.pid, "host": host, "run": "r"}))
        with TestClient(create_app(work, allow=[shared]), base_url=HOST) as client:
            theirs = str(shared / "plans" / "theirs")
            assert client.get("/api/runs/plan", params={"plan": theirs}).json()["state"] == "training"
            refused = client.post("/api/runs/stop", json={"plan": theirs})
            assert refused.status_code == 403 and "outside the UI's workdir" in refused.json()["error"]["message"]
            assert trainer.poll() is None  # not signalled
            state = client.get("/api/runs/plan", params={"plan": "plans/multi"}).json()
            assert (state["state"], state["can_stop"]) == ("training", True)
            assert client.post("/api/runs/stop", json={"plan": "plans/multi"}).json() == {"stopped": "pid", "pid": trainer.pid}
            assert trainer.wait(timeout=30) == 42
    finally:
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()


def test_eval_losses_are_read_on_as_the_log_grows(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(TRAIN_LOG)
    assert runs.eval_losses(log, "paddleformers") == [{"step": 2, "eval_loss": 11.465006828308105}]
    with open(log, "a") as fh:
        fh.write("[x] [    INFO] - eval_loss: 10.5, eval_runtime: 3.0\n[x] [    INFO] - eval_loss: 9.")
    assert runs.eval_losses(log, "paddleformers")[-1] == {"step": 3, "eval_loss": 10.5}  # a half-written line waits
    with open(log, "a") as fh:
        fh.write("5, eval_runtime: 1\n")
    assert [p["eval_loss"] for p in runs.eval_losses(log, "paddleformers")] == [11.465006828308105, 10.5, 9.5]


def test_launch_commands_are_trains_dry_run(client, work):
    assert wait_job(client, client.post("/api/jobs", json={"command": "plan", "values": plan_values(
        device=None, backend="erniekit", gpus="4", nodes="2", master_addr="10.0.0.1", lr=None, max_seq_len=None,
        overrides=[])}).json()["id"])["exit"] == 0
    launch = client.get("/api/runs/launch", params={"plan": "plans/p"}).json()
    assert (launch["nodes"], launch["gpus_per_node"]) == (2, 4)
    assert launch["per_node"] == [f"python -m paddle_ocrvl_sft train {work / 'plans' / 'p'} --nodes 2 --node-rank {r} "
                                  f"--master 10.0.0.1:{launch['env']['MASTER_PORT']}" for r in (0, 1)]
    assert launch["dry_run"]["ok"] and any("CUDA_VISIBLE_DEVICES=0,1,2,3" in line for line in launch["dry_run"]["lines"])


# --- eval -------------------------------------------------------------------------------------------------------


def test_an_eval_dir_is_shown_worst_first_with_the_baseline_beside(client, work):
    from paddle_ocrvl_sft.evaluate import evaluate_predictions, summary

    data = work / "data" / "kie.jsonl"
    rows = [sample("a.png", kie_prompt({"TOTAL": ""}), render_json({"TOTAL": "12.50"})),
            sample("b.png", kie_prompt({"TOTAL": "", "DATE": ""}), render_json({"TOTAL": "3.00", "DATE": "2024"}))]
    write_jsonl(data, rows)
    image = lambda name: str(work / "data" / name)  # noqa: E731
    model = write_jsonl(work / "pred.jsonl", [
        {"image": image("a.png"), "prompt": kie_prompt({"TOTAL": ""}), "text": '{"TOTAL": "12.50"}'},
        {"image": image("b.png"), "prompt": kie_prompt({"TOTAL": "", "DATE": ""}), "text": '{"TOTAL": "3.00"}'}])
    base = write_jsonl(work / "base.jsonl", [
        {"image": image("a.png"), "prompt": kie_prompt({"TOTAL": ""}), "text": "total 12.50"},
        {"image": image("b.png"), "prompt": kie_prompt({"TOTAL": "", "DATE": ""}), "text": '{"DATE": "2024"}'}])
    metrics = evaluate_predictions(model, data, out_dir=work / "evals" / "one", baseline_predictions=base)

    listed = client.get("/api/evals").json()["evals"]
    assert [e["dir"] for e in listed] == ["evals/one"]
    table = listed[0]["table"]
    field_accuracy = next(r for r in table if r["metric"] == "field accuracy")
    assert (field_accuracy["baseline"], field_accuracy["model"], field_accuracy["change"]) == ("33.3%", "66.7%", "+33.3 pts (better)")
    assert "field accuracy (n=2)" in summary(metrics)
    page = client.get("/api/evals/samples", params={"dir": "evals/one"}).json()
    assert page["has_baseline"] and [s["index"] for s in page["samples"]] == [1, 0]  # worst first
    worst = page["samples"][0]
    assert (worst["prediction"], worst["baseline"]["prediction"]) == ('{"TOTAL": "3.00"}', '{"DATE": "2024"}')
    assert worst["fields"] == [
        {"field": "TOTAL", "reference": "3.00", "model": "3.00", "model_ok": True, "baseline": None, "baseline_ok": False},
        {"field": "DATE", "reference": "2024", "model": None, "model_ok": False, "baseline": "2024", "baseline_ok": True}]
    assert "<del>" in worst["diff_html"]
    report = client.get("/api/evals/report", params={"dir": "evals/one"})
    assert report.status_code == 200 and "sandbox" in report.headers["content-security-policy"]
    png = client.get("/api/evals/image", params={"dir": "evals/one", "index": 1})
    assert png.headers["content-type"] == "image/png"
    assert client.get("/api/evals/image", params={"dir": "evals/one", "index": 5}).status_code == 400
    assert client.get("/api/evals/samples", params={"dir": "data"}).status_code == 400  # not an eval dir


def test_the_eval_form_shows_local_model_options_and_suggests_a_bundles_base(client, work):
    dests = [f["dest"] for f in client.get("/api/forms/eval").json()["fields"]]
    assert dests[:4] == ["data", "model", "baseline", "out"] and "server_url" not in dests
    assert client.get("/api/evals/defaults", params={"model": "base"}).json() == {"baseline": None, "data": None}


def test_the_workspace_lists_what_lies_under_the_roots(client, work, tiny_model):
    listing = client.get("/api/workspace").json()
    assert listing["datasets"] == ["data/train.jsonl"] and listing["models"] == [str(tiny_model)]
    assert client.get("/api/models").json()["models"][0]["release"]["name"] == "v1"
    assert client.post("/api/try/load", json={"model": "data"}).status_code == 400  # not a model dir
