"""serve's playground page in headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from paddle_ocrvl_sft.predict import TransformersBackend, parse_kie
from paddle_ocrvl_sft.serve.app import ServerThread, create_app
from paddle_ocrvl_sft.testing import build_tiny_model, receipt_image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "img" / "playground.png"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file(),
                                reason="Debian's chromium is not installed (CI: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data-dir: no first-run network
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                       args=FLAGS, viewport={"width": 1180, "height": 760})
        yield context
        context.close()


@pytest.fixture(scope="module")
def receipt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "receipt.png"
    receipt_image({"store": "Migros", "total": "12.50", "date": "2024-01-02"}).save(path)
    return path


def run_kie(page, url: str, receipt: Path, fields: str) -> None:
    page.goto(url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('backend')")
    page.set_input_files("#image", str(receipt))
    page.check('input[name="task"][value="kie"]')
    page.fill("#fields", fields)
    page.click("#run")
    page.wait_for_function("['done', 'error'].includes(document.getElementById('output').dataset.state)",
                           timeout=120_000)


@pytest.mark.slow
def test_playground_runs_a_kie_request_with_the_tiny_model(browser, receipt, tmp_path):
    """The real tiny model: the page shows what /extract answered (raw text, its parse, latency)."""
    from paddle_ocrvl_sft.export import export

    base = build_tiny_model(tmp_path / "base", "base")
    export(base, base, tmp_path / "hf", fmt="hf", verify=False)
    backend = TransformersBackend(tmp_path / "hf", device="cpu", max_new_tokens=12)
    app = create_app(backend, model_name="PaddleOCR-VL-0.9B", backend_name="transformers")
    with ServerThread(app) as server:
        page = browser.new_page()
        run_kie(page, server.url, receipt, "total, date")
        assert page.get_attribute("#output", "data-state") == "done", page.text_content("#error")
        raw = page.text_content("#raw")
        assert raw and page.text_content("#prompt") == 'OCR:{"total": "", "date": ""}'
        parsed = parse_kie(raw)
        shown = page.text_content("#result")
        assert shown == (json.dumps(parsed, indent=2) if parsed is not None else
                         "(the answer is not a JSON object: see the raw output)")
        assert "ms in the server" in page.text_content("#latency")
        assert "PaddleOCR-VL-0.9B · transformers backend" in page.text_content("#model")
        page.close()


class FixedAnswerBackend:
    """A test backend: every answer is this KIE JSON, cut off mid-way as long answers are."""

    def __call__(self, job):
        return '{"store": "Migros", "total": "12.50", "date": "2024-01-'


def test_playground_renders_the_repaired_json_and_errors(browser, receipt):
    app = create_app(FixedAnswerBackend(), model_name="fixed-answer test backend", backend_name="test",
                     api_key="k3y")
    with ServerThread(app) as server:
        page = browser.new_page()
        run_kie(page, server.url, receipt, "store, total, date")
        assert page.get_attribute("#output", "data-state") == "error"  # no key typed yet
        assert "401: this server needs an API key" in page.text_content("#error")

        page.click("#options summary")
        page.fill("#api-key", "k3y")
        page.click("#run")
        page.wait_for_function("document.getElementById('output').dataset.state === 'done'")
        assert json.loads(page.text_content("#result")) == {"store": "Migros", "total": "12.50", "date": "2024-01-"}
        assert page.text_content("#raw") == '{"store": "Migros", "total": "12.50", "date": "2024-01-'
        assert page.is_hidden("#error")
        page.click("#raw-box summary")
        if os.environ.get("PLAYGROUND_SCREENSHOT"):  # regenerate docs/img/playground.png on purpose only
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()
