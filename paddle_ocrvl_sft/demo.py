"""``demo``: the whole pipeline on a tiny synthetic receipt dataset, on a CPU, in minutes.

Each step is the very CLI command a user would type (printed, then run in-process), so the demo
doubles as a walkthrough. What cannot be real on a CPU machine is labelled as such:

- the base model is a tiny random-weight PaddleOCR-VL in the released layout (no hub access here);
- training: the exact ``erniekit train`` command is printed with why it needs a GPU; with no GPU
  the stand-in trainer (``--simulate``) writes a random model in ERNIEKit's output layout.

So the demo proves the plumbing — data checks, config, export layout, the custom-prompt path
through ``paddleocr doc_parser`` — not model quality: predictions of a random model are noise.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import atomic_write_text, refuse_existing
from paddle_ocrvl_sft.prompts import kie_prompt

MODEL_NAME = "PaddleOCR-VL-0.9B"
DEMO_QUERY = {"RECEIPT NUMBER": "", "ITEMS": [], "TOTAL": ""}
MIN_IMAGES = 4
RUN_MARKER = ".paddle-ocrvl-sft-demo"
MAX_NEW_TOKENS = "24"  # a random model never stops by itself: cap generation so the demo takes minutes


def _cli(argv: list[str], log: Callable[[str], None]) -> None:
    from paddle_ocrvl_sft.cli import main

    log("$ paddle-ocrvl-sft " + " ".join(shlex.quote(a) for a in argv))
    status = main(argv)
    if status:
        raise UserError(f"demo step failed (exit {status}): paddle-ocrvl-sft {' '.join(argv)}")


def patched_paddlex_copy(dest: Path, log: Callable[[str], None]) -> Path:
    """Copy the installed paddlex into ``dest`` and patch the copy: the installed one stays untouched."""
    from paddle_ocrvl_sft.patch import find_target

    shutil.copytree(find_target().package_dir, dest / "paddlex", ignore=shutil.ignore_patterns("__pycache__"))
    _cli(["patch", "apply", "--paddlex-path", str(dest)], log)
    return dest


def doc_parser(image: Path, model_dir: Path, prompt: str, save: Path, pythonpath: Path, log) -> dict:
    """Run the real ``paddleocr doc_parser`` CLI with a custom prompt; return its block contents."""
    argv = [sys.executable, "-m", "paddleocr", "doc_parser", "-i", str(image), "--vl_rec_model_dir", str(model_dir),
            "--vl_rec_model_name", MODEL_NAME, "--use_layout_detection", "False", "--prompt_label", prompt,
            "--device", "cpu", "--max_new_tokens", MAX_NEW_TOKENS, "--save_path", str(save)]
    log("$ PYTHONPATH=" + str(pythonpath) + " paddleocr " + " ".join(shlex.quote(a) for a in argv[4:]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(pythonpath), os.environ.get("PYTHONPATH")])),
           "PADDLE_PDX_DISABLE_MODEL_SOURCE_CHECK": "True"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise UserError(f"paddleocr doc_parser failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    results = sorted(save.glob("*_res.json"))
    if not results:
        raise UserError(f"paddleocr doc_parser wrote no *_res.json under {save}")
    data = json.loads(results[0].read_text(encoding="utf-8"))
    return {"file": str(results[0]), "blocks": [b.get("block_content", "") for b in data.get("parsing_res_list", [])]}


def run_demo(run_dir: str | os.PathLike, *, force: bool = False, images: int = 16, simulate: bool | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Run every stage into ``run_dir``; returns the summary file. ``simulate=None``: only if no GPU."""
    from paddle_ocrvl_sft import train
    from paddle_ocrvl_sft.receipts import make_receipts
    from paddle_ocrvl_sft.testing import build_tiny_model

    run = Path(run_dir).resolve()
    if images < MIN_IMAGES:
        raise UserError(f"--images {images}: the demo needs at least {MIN_IMAGES} (train and validation both need images)")
    refuse_existing(run, force=force)
    if run.exists():
        # --force replaces only an earlier demo run (or an empty dir), never an arbitrary directory
        if not run.is_dir() or (any(run.iterdir()) and not (run / RUN_MARKER).is_file()):
            raise UserError(f"{run}: not an earlier demo run (no {RUN_MARKER}); --force only replaces those: choose another -o")
        shutil.rmtree(run)
    run.mkdir(parents=True)
    (run / RUN_MARKER).write_text("written by `paddle-ocrvl-sft demo`; `demo --force` may replace this dir\n")
    started = time.perf_counter()
    data, plan, output = run / "data", run / "plan", run / "plan" / "output"
    steps: list[str] = []

    def step(title: str) -> None:
        steps.append(title)
        log(f"\n== {len(steps)}. {title}")

    step("data: render a tiny synthetic receipt dataset with known fields")
    annotations = make_receipts(data, count=images)
    log(f"{images} receipts and their fields in {annotations}")

    step("data kie: per-image annotations -> KIE prompts and targets (seed 001)")
    kie = data / "kie.jsonl"
    _cli(["data", "kie", str(annotations), "-o", str(kie), "-n", "4", "--seed", "0"], log)

    step("data validate / stats / split")
    _cli(["data", "validate", str(kie)], log)
    _cli(["data", "stats", str(kie), "--plot", str(data / "kie.stats.png")], log)
    _cli(["data", "split", str(kie), "--val", "0.25", "--seed", "0"], log)

    step("base model: a tiny random-weight PaddleOCR-VL in the released layout (stands in for the download)")
    base = build_tiny_model(run / "base_model", "base")
    log(f"{base}  (a real run uses the downloaded PaddlePaddle/PaddleOCR-VL dir)")

    step("plan: dataset + GPUs -> checked ERNIEKit config")
    _cli(["plan", "--data", str(data / "kie.train.jsonl"), "--eval", str(data / "kie.val.jsonl"), "--model", str(base),
          "--epochs", "2", "--gpus", "1", "-o", str(plan), "save_steps=1"], log)

    step("train: erniekit train")
    reason = train.why_not_runnable()
    simulate = bool(reason) if simulate is None else simulate
    if reason:
        log(f"ERNIEKit cannot train here: {reason}.")
        log("On a GPU machine run:\n  " + train.load_launch(plan).shell())
    if reason and not simulate:
        raise UserError("stopping before training (no GPU); pass --simulate to continue with the stand-in trainer")
    _cli(["train", str(plan), *(["--simulate"] if simulate else [])], log)

    step("export: ERNIEKit output -> complete inference bundle")
    bundle = run / "export"
    _cli(["export", str(output), "--base", str(base), "-o", str(bundle)], log)

    step("patch: PaddleX custom-prompt fix, applied to a copy (the installed paddlex is not touched)")
    pythonpath = patched_paddlex_copy(run / "paddlex_patched", log)

    val_rows = [json.loads(line) for line in (data / "kie.val.jsonl").read_text(encoding="utf-8").splitlines()]
    val_images = sorted({str(data / row["image_info"][0]["image_url"]) for row in val_rows})[:2]
    prompt = kie_prompt(DEMO_QUERY)
    step("paddleocr doc_parser with a custom KIE prompt on the exported model")
    parsed = doc_parser(Path(val_images[0]), bundle, prompt, run / "doc_parser", pythonpath, log)
    log(f"block contents (random model, so noise): {[b[:120] for b in parsed['blocks']]}")

    step("predict: the same KIE prompt through the VL-rec predictor (no patch needed)")
    predictions = run / "predictions.jsonl"
    _cli(["predict", *val_images, "--model", str(bundle), "--query", json.dumps(DEMO_QUERY, ensure_ascii=False),
          "--device", "cpu", "--max-new-tokens", MAX_NEW_TOKENS, "-o", str(predictions)], log)

    elapsed = time.perf_counter() - started
    trained = "SIMULATED (stand-in trainer, random weights)" if simulate else "ERNIEKit"
    summary = "\n".join([
        "# paddle-ocrvl-sft demo",
        "",
        f"run dir: {run}  ({elapsed:.0f} s)",
        f"training: {trained}; base model: tiny random PaddleOCR-VL (predictions are noise: this checks the plumbing)",
        "",
        *[f"{i}. {title}" for i, title in enumerate(steps, 1)],
        "",
        f"- dataset: {kie} (+ .train/.val), histogram {data / 'kie.stats.png'}",
        f"- plan: {plan / 'config.yaml'}, {plan / 'plan.json'}",
        f"- ERNIEKit-layout output: {output}",
        f"- inference bundle: {bundle}",
        f"- doc_parser result ({prompt}): {parsed['file']}",
        f"- predictions: {predictions}",
        "",
    ])
    atomic_write_text(run / "SUMMARY.md", summary)
    log("\n" + summary)
    return run / "SUMMARY.md"
