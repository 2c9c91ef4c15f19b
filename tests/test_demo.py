"""The end-to-end demo, and the custom KIE prompt through the real `paddleocr doc_parser` CLI."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.patch import find_target
from paddle_ocrvl_sft.prompts import kie_prompt

pytestmark = pytest.mark.slow

SPY = '''
import os
from paddlex.inference.models.common.tokenizer import LlamaTokenizer

_original = LlamaTokenizer.__call__

def _spy(self, text, *args, **kwargs):
    with open(os.environ["QUERY_SPY"], "a", encoding="utf-8") as fh:
        fh.write(repr(text) + "\\n")
    return _original(self, text, *args, **kwargs)

LlamaTokenizer.__call__ = _spy
'''


def installed_pipeline_digest() -> str:
    return hashlib.sha256(find_target().path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    before = installed_pipeline_digest()
    assert main(["demo", "-o", str(run), "--images", "16"]) == 0
    assert installed_pipeline_digest() == before  # the demo patches a copy, never the installed paddlex
    return run


def test_demo_trains_for_real_and_runs_every_stage(demo_run, capsys):
    summary = (demo_run / "SUMMARY.md").read_text()
    assert "REAL PaddleFormers fine-tuning on the CPU" in summary and "SIMULATED" not in summary
    # the default release is 1.5, and every stage took it from the base model's files
    assert "release: v1.5 (PaddleOCR-VL-1.5): bundle model PaddleOCR-VL-1.5-0.9B, doc_parser --pipeline_version v1.5" in summary
    assert json.loads((demo_run / "plan" / "plan.json").read_text())["release"]["name"] == "v1.5"
    assert (demo_run / "plan" / "bundle" / "inference.yml").read_text() == "Global:\n  model_name: PaddleOCR-VL-1.5-0.9B\n"
    for produced in ("data/kie.train.jsonl", "data/kie.val.jsonl", "data/kie.stats.png", "plan/config.yaml",
                     "plan/plan.json", "plan/output/model-00001-of-00001.safetensors", "plan/bundle/model.safetensors",
                     "plan/bundle/inference.yml", "plan/bundle/chat_template.jinja", "predictions.jsonl",
                     "eval-train/report.html", "plan/eval/report.html", "plan-erniekit-gpu/config.yaml"):
        assert (demo_run / produced).is_file(), produced
    (run,) = (demo_run / "plan" / "runs").iterdir()
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) >= 30 and all(loss == loss and abs(loss) != float("inf") for loss in losses)
    assert losses[-1] < losses[0] / 20  # the loss falls from about 11 to well under 1
    assert (run / "loss.png").read_bytes().startswith(b"\x89PNG")
    (res,) = (demo_run / "doc_parser").glob("*_res.json")
    assert json.loads(res.read_text())["parsing_res_list"]
    predictions = [json.loads(line) for line in (demo_run / "predictions.jsonl").read_text().splitlines()]
    assert {p["prompt"] for p in predictions} == {'OCR:{"TABLE": ""}'}
    assert main(["demo", "-o", str(demo_run)]) == 1  # an existing run dir is not overwritten
    assert "already exists" in capsys.readouterr().err


def test_the_trained_model_learns_to_read_what_it_was_shown(demo_run):
    metrics = json.loads((demo_run / "eval-train" / "metrics.json").read_text())
    trained, base = metrics["kie"], metrics["baseline"]["kie"]
    assert base["field_accuracy"] == 0.0  # a random model reads nothing
    assert trained["field_accuracy"] >= 0.8  # the tickets it was shown: read from the image
    assert trained["json_valid"] == 1.0 and trained["missing_keys"] == 0
    predictions = [json.loads(line)["prediction"] for line in (demo_run / "eval-train" / "scores.jsonl").read_text().splitlines()]
    assert len(set(predictions)) > 3  # different tickets, different answers: not one memorised string
    summary = (demo_run / "SUMMARY.md").read_text()
    assert "field accuracy on the TRAINING split" in summary and "field accuracy on the VALIDATION split" in summary
    assert "## eval on the validation split" in summary  # printed, whatever it is


def test_the_demo_shows_the_drift_table_and_the_verdict(demo_run):
    drift = json.loads((demo_run / "plan" / "eval" / "general" / "drift.json").read_text())
    assert set(drift["kinds"]) == {"ocr", "table"} and drift["pages"] == 2
    assert all(0.0 <= v["drift"] <= 1.0 for v in drift["kinds"].values())
    (run,) = (demo_run / "plan" / "runs").iterdir()
    verdict = json.loads((run / "record.json").read_text())["verdict"]
    assert verdict["task"] == "better" and verdict["drift"] in ("within", "forgot")
    summary = (demo_run / "SUMMARY.md").read_text()
    assert "## drift from the base on the general pages" in summary and verdict["line"] in summary


def test_demo_prints_the_exact_erniekit_gpu_command(demo_run):
    plan = demo_run / "plan-erniekit-gpu"
    record = json.loads((plan / "plan.json").read_text())
    assert record["backend"] == "erniekit" and record["device"] == "gpu"
    assert record["train"]["command"] == ["erniekit", "train", str(plan / "config.yaml")]


def test_force_replaces_only_an_earlier_demo_run(tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    assert main(["demo", "-o", str(precious), "--force"]) == 1
    assert "not an earlier demo run" in capsys.readouterr().err and (precious / "thesis.tex").read_text() == "keep me"
    with pytest.raises(SystemExit):
        main(["demo", "--images", "0"])


def doc_parser(run: Path, prompt: str, tmp_path: Path, pythonpath: list[Path]) -> tuple[subprocess.CompletedProcess, str]:
    spy_dir = tmp_path / "spy"
    spy_dir.mkdir(exist_ok=True)
    (spy_dir / "sitecustomize.py").write_text(SPY)
    record = tmp_path / "queries.txt"
    image = sorted((run / "data" / "imgs").glob("*.png"))[0]
    env = {**os.environ, "QUERY_SPY": str(record), "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True",
           "PYTHONPATH": os.pathsep.join(str(p) for p in [spy_dir, *pythonpath])}
    argv = [sys.executable, "-m", "paddleocr", "doc_parser", "-i", str(image), "--vl_rec_model_dir", str(run / "plan" / "bundle"),
            "--pipeline_version", "v1.5", "--vl_rec_model_name", "PaddleOCR-VL-1.5-0.9B",
            "--use_layout_detection", "False", "--prompt_label", prompt,
            "--device", "cpu", "--max_new_tokens", "4", "--save_path", str(tmp_path / "out")]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    return proc, record.read_text(encoding="utf-8") if record.exists() else ""


def test_doc_parser_sends_a_custom_kie_prompt_verbatim_after_patch_apply(demo_run, tmp_path):
    """doc_parser --pipeline_version v1.5 on the 1.5 bundle: the prompt verbatim, in the 1.5 template."""
    prompt = kie_prompt({"发票号码": "", "Items": [], "FORMULA_ID": ""})
    proc, queries = doc_parser(demo_run, prompt, tmp_path, [demo_run / "paddlex_patched"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"<|IMAGE_END|>{prompt}\\nAssistant:\\n'" in queries  # repr() of the text the tokenizer received


def test_doc_parser_refuses_the_same_prompt_on_the_unpatched_install(demo_run, tmp_path):
    prompt = kie_prompt({"发票号码": ""})
    proc, queries = doc_parser(demo_run, prompt, tmp_path, [])
    assert proc.returncode != 0 and queries == ""
    assert "prompt_label" in proc.stderr and "must be one of" in proc.stderr
