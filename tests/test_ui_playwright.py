"""The ui in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): the whole pipeline on
this CPU with the tiny model — data, plan, a real PaddleFormers training run started, followed across a
restart of the UI, stopped and resumed from the page, its eval (base vs fine-tuned) and the playground.

`UI_SCREENSHOTS=1` rewrites docs/img/ui_*.png (otherwise the screenshots go to tmp_path).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from paddle_ocrvl_sft.backends import envs
from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.data.sample import make_sample
from paddle_ocrvl_sft.testing import build_tiny_model

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
DOCS_IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
SCALAR_FIELDS = ("STORE", "RECEIPT NUMBER", "DATE", "TOTAL")  # short answers: eval generates few tokens

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason="Debian's chromium is not installed (CI: apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class UiProcess:
    """`python -m paddle_ocrvl_sft ui` as a user starts it; stopped with SIGTERM (by its pid)."""

    def __init__(self, workdir: Path, log: Path):
        self.workdir, self.log, self.proc = workdir, log, None
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "UiProcess":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "paddle_ocrvl_sft", "ui", "--workdir", str(self.workdir),
                                          "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with urllib.request.urlopen(self.url + "/api/info", timeout=5) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError("the ui did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                       args=FLAGS, viewport={"width": 1280, "height": 900})
        context.set_default_timeout(60_000)
        yield context
        context.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The demo's data (receipts -> `data kie`, one field per sample) with one broken sample, and a base model."""
    from paddle_ocrvl_sft.receipts import make_receipts

    root = tmp_path_factory.mktemp("ui-workdir")
    annotations = make_receipts(root / "demo", count=6)
    rows = [json.loads(line) for line in annotations.read_text(encoding="utf-8").splitlines()]
    scalar = root / "demo" / "annotations.fields.jsonl"
    scalar.write_text("".join(json.dumps({**r, "data": {k: v for k, v in r["data"].items() if k in SCALAR_FIELDS}},
                                         ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    kie = root / "demo" / "kie.jsonl"
    assert main(["data", "kie", str(scalar), "-o", str(kie), "-n", "1", "--max-fields", "1", "--no-full"]) == 0
    with open(kie, "a", encoding="utf-8") as fh:  # a sample whose image was never copied: a validator error
        fh.write(json.dumps(make_sample(["imgs/receipt_999.png"], [('OCR:{"TOTAL": ""}', '{"TOTAL": "1.00"}')])) + "\n")
    build_tiny_model(root / "models" / "base", "base")
    envs.install("paddleformers", log=lambda line: None)  # a no-op when the tests' environment is current
    return root


def shoot(page, name: str, tmp_path: Path) -> None:
    target = DOCS_IMG if os.environ.get("UI_SCREENSHOTS") else tmp_path
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(target / f"ui_{name}.png"), full_page=True)


def wait_state(page, state: str, timeout: int = 300_000) -> None:
    """Until the plan is in ``state``; a failed `train` ends the wait at once, with its error."""
    page.wait_for_function(f"['{state}', 'failed'].includes(document.getElementById('run-detail').dataset.state)",
                           timeout=timeout)
    assert page.get_attribute("#run-detail", "data-state") == state, page.text_content("#run-message")


def points(page) -> int:
    return int(page.get_attribute("#chart-loss", "data-points"))


def kill_jobs(workdir: Path) -> None:
    """Whatever a failed test left running: the UI's jobs, by the pids they recorded."""
    for path in (workdir / ".ui" / "jobs").glob("*.json"):
        job = json.loads(path.read_text())
        if job.get("exit") is None:
            try:
                os.killpg(job["pid"], signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def test_the_page_asks_for_the_api_key_once(browser, tmp_path):
    """Started with --api-key: the page asks, a wrong key is refused, the right one opens every page (a cookie)."""
    from paddle_ocrvl_sft.serve.app import ServerThread
    from paddle_ocrvl_sft.ui.app import create_app

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("")
    with ServerThread(create_app(tmp_path, api_key="k3y"), ready=False) as server:
        page = browser.new_page()
        page.goto(server.url + "/#data")
        page.wait_for_selector("#login:not([hidden])")
        assert page.text_content("#workdir") == ""  # nothing of the workdir before the key
        page.fill("#login-key", "wrong")
        page.click("#login-form button")
        page.wait_for_selector("#login-error:not([hidden])")
        assert page.text_content("#login-error") == "wrong API key"
        page.fill("#login-key", "k3y")
        page.click("#login-form button")
        page.wait_for_selector("#login", state="hidden")
        page.wait_for_function(f"document.getElementById('workdir').textContent === 'workdir {tmp_path}'")
        assert page.locator("#list-datasets option").evaluate_all("o => o.map(x => x.value)") == ["data/a.jsonl"]
        page.reload()  # the cookie: no second question
        page.wait_for_function(f"document.getElementById('workdir').textContent === 'workdir {tmp_path}'")
        assert page.is_hidden("#login")
        page.close()


@pytest.mark.slow
def test_the_whole_pipeline_in_the_browser(browser, workdir, tmp_path, capsys):
    ui = UiProcess(workdir, tmp_path / "ui.log").start()
    page = browser.new_page()
    console: list[str] = []
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.append(f"page error: {error}"))
    try:
        run_pipeline(page, ui, workdir, tmp_path, capsys)
    except BaseException:
        print("browser console:", *console[-40:], sep="\n  ")
        print("ui log:", (tmp_path / "ui.log").read_text()[-3000:])
        raise
    finally:
        page.close()
        ui.stop()
        kill_jobs(workdir)


def run_pipeline(page, ui: UiProcess, workdir: Path, tmp_path: Path, capsys) -> None:
    # --- Data: open the demo data; a sample's image; the validator's problem, inline and filtered ------
    page.goto(ui.url + "/#data")
    page.fill("#data-path", "demo/kie.jsonl")
    page.click("#data-open button[type=submit]")
    page.wait_for_selector("#samples .sample")
    assert "7 samples: 6 valid, 1 rejected (1 errors, 0 warnings)" in page.text_content("#data-counts")
    page.wait_for_function("document.querySelector('#samples .sample img').naturalWidth > 0")
    first = page.locator("#samples .sample").first
    assert first.locator(".prompt").text_content().startswith("OCR:{")
    assert first.locator(".kie td code").count() == 1  # the KIE field view of a one-field sample
    problem = page.locator("#problems tr").nth(1)
    assert "kie.jsonl:7" in problem.text_content() and "missing-image" in problem.text_content()
    page.wait_for_function("document.getElementById('data-hist').naturalWidth > 0")  # data stats' histogram
    shoot(page, "data", tmp_path)
    problem.click()  # the sample the problem is about
    page.wait_for_function("document.querySelectorAll('#samples .sample').length === 1")
    broken = page.locator("#samples .sample")
    assert broken.get_attribute("data-line") == "7" and "no such file" in broken.locator(".problem").text_content()

    # the fixes the CLI offers: a clean copy, then a split
    page.click("#data-clean")
    page.wait_for_selector("#data-action-job[data-state=failed] >> text=Open demo/kie.clean.jsonl")
    assert "wrote 6 good rows" in page.text_content("#data-action-job")
    page.click("text=Open demo/kie.clean.jsonl")
    page.wait_for_function("document.getElementById('data-counts').textContent.startsWith('6 samples: 6 valid')")
    page.fill("#split-val", "0.34")
    page.click("#data-split")
    page.wait_for_selector("#data-action-job[data-state=done]")
    assert (workdir / "demo" / "kie.clean.train.jsonl").is_file() and (workdir / "demo" / "kie.clean.val.jsonl").is_file()

    # --- Plan: the numbers as you type, plan's refusals word for word, then the plan dir -------------
    page.goto(ui.url + "/#plan")
    page.wait_for_selector("#plan-form-data")
    page.fill("#plan-form-data", "demo/kie.clean.train.jsonl")
    page.fill("#plan-form-eval", "demo/kie.clean.val.jsonl")
    page.fill("#plan-form-model", "models/base")
    page.select_option("#plan-form-backend", "paddleformers")
    page.select_option("#plan-form-device", "cpu")
    page.fill("#plan-form-lr", "5e-3")
    page.fill("#plan-form-out", "plans/demo")
    page.fill("#plan-form-overrides", "lr_scheduler_type=constant\nsave_steps=2\neval_steps=10")
    page.fill("#plan-form-epochs", "0")
    page.wait_for_function("document.getElementById('plan-result').dataset.state === 'error'")
    shown = page.text_content("#plan-error")
    argv = ["plan", "--backend", "paddleformers", "--device", "cpu", "--data", str(workdir / "demo/kie.clean.train.jsonl"),
            "--model", str(workdir / "models/base"), "--epochs", "0", "-o", str(tmp_path / "refused")]
    capsys.readouterr()
    assert main(argv) == 1
    assert shown == capsys.readouterr().err.strip() == "error: --epochs must be > 0, got 0.0"
    assert page.is_disabled("#plan-write")
    page.fill("#plan-form-epochs", "5")
    page.wait_for_function("document.getElementById('plan-result').dataset.state === 'ok'")
    max_steps = page.locator("#plan-numbers tr[data-name=max_steps]")
    assert max_steps.locator("td.value").text_content() == "20"  # D=4 samples x E=5 / (G=B=A=1)
    assert max_steps.locator("td.formula").text_content() == "ceil(D * E / (G * B * A))"
    assert "model: PaddleOCR-VL (0.9B, first release) (release v1)" in page.text_content("#plan-release")
    assert not (workdir / "plans" / "demo").exists()  # computing writes nothing
    shoot(page, "plan", tmp_path)
    page.click("#plan-write")
    page.wait_for_selector("#plan-job[data-state=done]")
    record = json.loads((workdir / "plans" / "demo" / "plan.json").read_text())
    assert record["numbers"]["max_steps"]["value"] == 20 and record["backend"] == "paddleformers"

    # --- Runs: start; the loss chart grows; the UI restarts and re-attaches; Stop; Resume; finish ----
    page.click("#plan-written a")
    page.wait_for_selector("#run-start:not([disabled])")
    page.wait_for_function("document.getElementById('run-launch').textContent.includes('--dry-run on this machine')")
    assert "error: " not in page.text_content("#run-launch")  # train --dry-run accepted the new plan
    assert "python -m paddle_ocrvl_sft.backends.cpu.paddleformers train" in page.text_content("#run-launch")
    page.click("#run-start")
    wait_state(page, "training")
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) >= 1", timeout=300_000)
    before_restart = points(page)
    trainer = json.loads((workdir / "plans" / "demo" / ".train.lock").read_text())["pid"]

    ui.stop()  # the training is a normal `train` process: it goes on without the UI
    assert os.kill(trainer, 0) is None
    ui.start()
    page.goto(ui.url + "/#runs?plan=plans/demo")
    wait_state(page, "training")
    page.wait_for_function(f"Number(document.getElementById('chart-loss').dataset.points) > {max(before_restart, 2)}",
                           timeout=300_000)
    assert page.locator("#chart-lr polyline").count() == 1
    assert "step" in page.text_content("#run-progress") and "ETA" in page.text_content("#run-progress")
    page.click("#run-stop")
    wait_state(page, "stopped")
    message = page.text_content("#run-message")
    assert "stopped by SIGINT" in message and f"train {workdir / 'plans' / 'demo'} --resume" in message
    stopped_at = json.loads(sorted((workdir / "plans" / "demo" / "runs").glob("*/record.json"))[0].read_text())["last_step"]
    assert stopped_at < 20
    page.click("#run-resume")
    wait_state(page, "finished", timeout=600_000)
    runs = sorted((workdir / "plans" / "demo" / "runs").iterdir())
    second = json.loads((runs[1] / "record.json").read_text())
    assert second["exit"] == 0 and second["resume_from"] and second["last_step"] == 20
    assert page.locator("#run-list tr").count() == 3  # header + both runs
    page.wait_for_function("Number(document.getElementById('chart-loss').dataset.points) >= 1")
    assert page.locator("#chart-loss polyline.earlier-run").count() == 1  # the stopped run, before the resumed one
    page.wait_for_function("document.querySelectorAll('#chart-loss circle.eval-loss').length >= 1")  # eval_steps=10
    shoot(page, "runs", tmp_path)

    # --- Eval: train evaluated the bundle against its base; and an eval run from the page ------------
    page.click("text=Open its eval")
    page.wait_for_selector("#eval-samples .eval-sample")
    card = page.locator("#eval-samples .eval-sample").first
    assert card.locator(".base-answer").text_content() and card.locator(".model-answer").text_content()
    assert card.locator("table.fields tr").count() >= 2
    page.wait_for_function("document.querySelector('#eval-samples img').naturalWidth > 0")
    scores = [json.loads(line)["score"] for line in (workdir / "plans/demo/eval/scores.jsonl").read_text().splitlines()]
    assert page.locator("#eval-samples .eval-sample").count() == len(scores)
    page.fill("#eval-form-model", "plans/demo/bundle")
    page.dispatch_event("#eval-form-model", "change")
    page.wait_for_function("document.getElementById('eval-form-baseline').value === 'models/base'")
    page.fill("#eval-form-data", "demo/kie.clean.train.jsonl")
    page.fill("#eval-form-max_new_tokens", "12")
    page.click("#eval-run")
    page.wait_for_selector("#eval-job[data-state=done]", timeout=600_000)
    page.wait_for_function("document.getElementById('eval-dir').textContent === 'plans/demo/eval-ui'")
    page.wait_for_selector("#evals li[data-dir='plans/demo/eval-ui'].selected")  # listed beside train's eval
    page.wait_for_function("document.querySelectorAll('#eval-samples .eval-sample').length === 4")
    shoot(page, "eval", tmp_path)

    # --- Try: serve's playground on the fine-tuned bundle --------------------------------------------
    page.goto(ui.url + "/#try?model=plans/demo/bundle")
    page.wait_for_function("document.getElementById('try-model').value === 'plans/demo/bundle'")
    page.fill("#try-max", "12")
    page.click("#try-form button[type=submit]")
    page.wait_for_selector("#try-frame:not([hidden])", timeout=300_000)
    frame = page.frame_locator("#try-frame")
    frame.locator("#model").filter(has_text="paddle backend").wait_for()
    frame.locator("#image").set_input_files(str(workdir / "demo" / "imgs" / "receipt_000.png"))
    frame.locator('input[name="task"][value="kie"]').check()
    frame.locator("#fields").fill("TOTAL")
    frame.locator("#run").click()
    playground = next(f for f in page.frames if "/try/" in f.url)
    playground.wait_for_function("document.getElementById('output').dataset.state === 'done'", timeout=300_000)
    assert playground.text_content("#prompt") == 'OCR:{"TOTAL": ""}' and playground.text_content("#raw")
    frame.locator("#raw-box summary").click()
    page.wait_for_timeout(700)  # the frame is fitted to the playground's height
    shoot(page, "try", tmp_path)
