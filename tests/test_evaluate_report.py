"""report.html: self-contained, and what a browser renders of it (headless Debian chromium)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import sample, write_jsonl
from paddle_ocrvl_sft.evaluate import evaluate_predictions
from paddle_ocrvl_sft.evaluate.report import char_diff
from paddle_ocrvl_sft.prompts import kie_prompt, render_json
from paddle_ocrvl_sft.testing import receipt_image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PROMPT = kie_prompt({"TOTAL": "", "DATE": ""})


@pytest.fixture
def report(tmp_path) -> Path:
    """A report of a model vs a baseline on two KIE samples (two document types) and one OCR sample."""
    d = tmp_path / "data"
    d.mkdir()
    truth = [{"TOTAL": "12.50", "DATE": "01.02.2024"}, {"TOTAL": "7.00", "DATE": "05.06.2024"}]
    for i, fields in enumerate(truth):
        receipt_image(fields).save(d / f"r{i}.png")
    rows = [{**sample(f"r{i}.png", PROMPT, render_json(f)), "doc_type": t} for i, (f, t) in enumerate(zip(truth, ["invoice", "receipt"]))]
    rows.append(sample("r0.png", "OCR:", "TOTAL <12.50>"))
    val = write_jsonl(d / "val.jsonl", rows)
    model = [render_json({"TOTAL": "12.50", "DATE": "01.02.2023"}), render_json(truth[1]), "TOTAL <12.5>"]
    base = ['{"TOTAL": "1', "", "TOTAL"]
    prompts = [PROMPT, PROMPT, "OCR:"]
    images = [d / "r0.png", d / "r1.png", d / "r0.png"]
    preds = write_jsonl(tmp_path / "pred.jsonl", [{"image": str(i), "prompt": p, "text": t} for i, p, t in zip(images, prompts, model)])
    based = write_jsonl(tmp_path / "base.jsonl", [{"image": str(i), "prompt": p, "text": t} for i, p, t in zip(images, prompts, base)])
    evaluate_predictions(preds, val, out_dir=tmp_path / "out", baseline_predictions=based)
    return tmp_path / "out" / "report.html"


def test_char_diff_marks_deletions_and_insertions_escaped():
    assert char_diff("TOTAL 2.50", "TOTAL 2.5") == "TOTAL 2.5<del>0</del>"
    assert char_diff("<fcel>a", "<fcel>b") == "&lt;fcel&gt;<del>a</del><ins>b</ins>"


def test_report_is_self_contained(report):
    page = report.read_text(encoding="utf-8")
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 2 + 3  # two plots, a thumbnail per sample
    assert all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "TOTAL &lt;12.5&gt;" in page  # model text is escaped, never markup


PROBE = ("<script>window.addEventListener('load', () => { const p = document.createElement('pre'); p.id = 'probe';"
         "p.textContent = JSON.stringify({text: document.body.innerText,"
         " images: [...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])});"
         "document.body.appendChild(p); });</script>")


def render(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed here (CI installs it: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    """The browser's own rendering: innerText of the laid-out page and every image decoded.

    A copy of the report gets a probe script (the report itself has none) that writes, once the
    page has loaded, the rendered text and each image's decoded size into the DOM chromium dumps.
    """
    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = render(probed, tmp_path, "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    import html

    probe = json.loads(html.unescape(found.group(1)))
    text = probe["text"]
    assert text.startswith("Evaluation report")
    # Summary: task, metric, baseline, model, change (rendered as table cells: tab-separated)
    assert "kie (n=2)\tfield accuracy\t0.0%\t75.0%\t+75.0 pts (better)" in text
    assert "kie (n=2)\tdocument accuracy\t0.0%\t50.0%\t+50.0 pts (better)" in text
    assert "ocr (n=1)\tCER\t61.5%\t7.7%\t-53.8 pts (better)" in text
    assert "invoice\t1\tkie field accuracy\t0.0%\t50.0%\t+50.0 pts (better)" in text
    assert "Worst samples (3 of 3, lowest score first)" in text
    assert "wrong fields (1 of 2)\nfield\treference\tprediction\nDATE\t01.02.2024\t01.02.2023" in text
    assert len(probe["images"]) == 5
    assert all(complete and width > 0 and height > 0 for complete, width, height in probe["images"])

    shot = tmp_path / "shot.png"
    render(report, tmp_path, "--hide-scrollbars", "--window-size=1200,1600", f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1200, 1600)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or ()) > 20  # text, tables and plots drawn
