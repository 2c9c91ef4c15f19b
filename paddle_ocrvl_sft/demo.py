"""``demo``: the whole pipeline on a tiny synthetic receipt dataset, trained for real on a CPU.

Each step is the very CLI command a user would type (printed, then run in-process), so the demo
doubles as a walkthrough. What it is and is not:

- the base model is a tiny random-weight PaddleOCR-VL in the released layout of ``release`` (default
  1.5: its template, image processor and inference.yml; no download here), and every stage takes the
  release from it (the bundle is named ``PaddleOCR-VL-1.5-0.9B``, doc_parser runs ``--pipeline_version v1.5``);
- training is real: PaddleFormers (``--backend paddleformers --device cpu``) fine-tunes the tiny
  model until the loss has clearly fallen; the exact ERNIEKit command for a GPU is printed too;
- the evaluation compares the base with the trained model on the training split (what it was
  shown: it learns the answer format) and the validation split (printed as it comes out: a tiny
  random model does not learn to read receipts in two minutes).
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

DEFAULT_RELEASE = "v1.5"  # of the newer releases, the one whose files are best established (MODEL_VERSIONS.md)
DEMO_QUERY = {"TOTAL": ""}
DEMO_FIELDS = ("STORE", "RECEIPT NUMBER", "DATE", "TOTAL")  # short answers: the tiny model learns their format in minutes
MIN_IMAGES = 4
RUN_MARKER = ".paddle-ocrvl-sft-demo"
EPOCHS = 14  # 12 training samples -> 168 steps of one sample: the loss falls from ~11 to ~1
MAX_NEW_TOKENS = 24  # the trained tiny model rarely stops by itself: cap generation so the demo takes minutes


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


def doc_parser(image: Path, model_dir: Path, prompt: str, save: Path, pythonpath: Path, log,
               release: str = DEFAULT_RELEASE) -> dict:
    """Run the real ``paddleocr doc_parser`` CLI with a custom prompt (the release's pipeline version
    and model name); return its block contents."""
    from paddle_ocrvl_sft import releases

    argv = [sys.executable, "-m", "paddleocr", "doc_parser", "-i", str(image), "--vl_rec_model_dir", str(model_dir),
            *releases.doc_parser_args(releases.get(release)), "--use_layout_detection", "False",
            "--prompt_label", prompt,
            "--device", "cpu", "--max_new_tokens", str(MAX_NEW_TOKENS), "--save_path", str(save)]
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


def sparkline(values: list[float], width: int = 40) -> str:
    """The loss curve in one terminal line (resampled to ``width`` points)."""
    bars = "▁▂▃▄▅▆▇█"
    if not values:
        return ""
    picked = [values[min(len(values) - 1, round(i * (len(values) - 1) / max(1, width - 1)))] for i in range(min(width, len(values)))]
    lo, hi = min(picked), max(picked)
    return "".join(bars[int((v - lo) / (hi - lo) * (len(bars) - 1)) if hi > lo else 0] for v in picked)


def _scalar_annotations(annotations: Path) -> Path:
    """The receipts' annotations without the item lists (long answers the tiny model learns slowly)."""
    out = annotations.with_name("annotations.fields.jsonl")
    with open(annotations, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for line in src:
            row = json.loads(line)
            row["data"] = {k: v for k, v in row["data"].items() if k in DEMO_FIELDS}
            dst.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out


def run_demo(run_dir: str | os.PathLike, *, force: bool = False, images: int = 16, release: str = DEFAULT_RELEASE,
             log: Callable[[str], None] = print) -> Path:
    """Run every stage into ``run_dir`` on a tiny model of ``release``; returns the summary file."""
    from paddle_ocrvl_sft import releases, train
    from paddle_ocrvl_sft.backends import envs
    from paddle_ocrvl_sft.evaluate import evaluate, summary
    from paddle_ocrvl_sft.progress import read_metrics
    from paddle_ocrvl_sft.receipts import make_receipts
    from paddle_ocrvl_sft.testing import build_tiny_model

    run = Path(run_dir).resolve()
    release = releases.get(release).name  # "1.5" -> "v1.5"; an unknown name is refused before anything is written
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
    data, plan = run / "data", run / "plan"
    steps: list[str] = []

    def step(title: str) -> None:
        steps.append(title)
        log(f"\n== {len(steps)}. {title}")

    step("data: render a tiny synthetic receipt dataset with known fields")
    annotations = _scalar_annotations(make_receipts(data, count=images))
    log(f"{images} receipts and their fields in {annotations}")

    step("data kie: per-image annotations -> KIE prompts and targets (seed 001)")
    kie = data / "kie.jsonl"
    _cli(["data", "kie", str(annotations), "-o", str(kie), "-n", "1", "--max-fields", "1", "--no-full", "--seed", "0"], log)

    step("data validate / stats / split")
    _cli(["data", "validate", str(kie)], log)
    _cli(["data", "stats", str(kie), "--plot", str(data / "kie.stats.png")], log)
    _cli(["data", "split", str(kie), "--val", "0.25", "--seed", "0"], log)
    train_split, val_split = data / "kie.train.jsonl", data / "kie.val.jsonl"

    title = releases.get(release).title
    step(f"base model: a tiny random-weight {title} in the released layout (stands in for the download)")
    base = build_tiny_model(run / "base_model", "base", release=release)
    log(f"{base}  (a real run uses the downloaded PaddlePaddle/{title} dir; plan, export, predict and "
        "doc_parser take the release from its files)")

    step("the GPU recipe: an ERNIEKit plan for one GPU, and the exact command `train` would run there")
    _cli(["plan", "--data", str(train_split), "--eval", str(val_split), "--model", str(base), "--epochs", "2",
          "--gpus", "1", "-o", str(run / "plan-erniekit-gpu")], log)
    _cli(["train", str(run / "plan-erniekit-gpu"), "--dry-run"], log)

    step("backend: PaddleFormers' pinned environment (built once, then reused)")
    if envs.read_record("paddleformers") is None:
        _cli(["backend", "install", "paddleformers"], log)
    else:
        log(f"PaddleFormers is installed at {envs.env_dir('paddleformers')}")

    step("plan: the same data for PaddleFormers on this CPU (tiny model: lr 5e-3, constant)")
    _cli(["plan", "--backend", "paddleformers", "--device", "cpu", "--data", str(train_split), "--eval", str(val_split),
          "--model", str(base), "--epochs", str(EPOCHS), "--lr", "5e-3", "--max-seq-len", "2048", "-o", str(plan),
          "lr_scheduler_type=constant", "save_steps=56"], log)

    step("train: real PaddleFormers training on the CPU, then export and eval on the validation split")
    result = train.run(plan, train.Options(bar=False), echo=log)
    losses = [p["loss"] for p in read_metrics(result.run_dir / "metrics.jsonl")]
    log(f"loss {losses[0]:.2f} -> {losses[-1]:.2f}  {sparkline(losses)}  ({result.run_dir / 'loss.png'})")
    bundle = result.bundle

    step("eval: base vs trained on the training split (what the model was shown)")
    train_metrics = evaluate(bundle, train_split, out_dir=run / "eval-train", baseline=base, device="cpu",
                             max_new_tokens=MAX_NEW_TOKENS, batch_size=8, progress=False)
    log(summary(train_metrics))
    val_metrics = json.loads((plan / "eval" / "metrics.json").read_text(encoding="utf-8"))
    log("validation split (from `train`):\n" + summary(val_metrics))

    step("patch: PaddleX custom-prompt fix, applied to a copy (the installed paddlex is not touched)")
    pythonpath = patched_paddlex_copy(run / "paddlex_patched", log)

    val_rows = [json.loads(line) for line in val_split.read_text(encoding="utf-8").splitlines()]
    val_images = sorted({str(data / row["image_info"][0]["image_url"]) for row in val_rows})[:2]
    prompt = kie_prompt(DEMO_QUERY)
    step("paddleocr doc_parser with a custom KIE prompt on the trained model")
    parsed = doc_parser(Path(val_images[0]), bundle, prompt, run / "doc_parser", pythonpath, log, release)
    log(f"block contents: {[b[:120] for b in parsed['blocks']]}")

    step("predict: the same KIE prompt through the VL-rec predictor (no patch needed)")
    predictions = run / "predictions.jsonl"
    _cli(["predict", *val_images, "--model", str(bundle), "--query", json.dumps(DEMO_QUERY, ensure_ascii=False),
          "--device", "cpu", "--max-new-tokens", str(MAX_NEW_TOKENS), "-o", str(predictions)], log)

    elapsed = time.perf_counter() - started
    summary_text = "\n".join([
        "# paddle-ocrvl-sft demo",
        "",
        f"run dir: {run}  ({elapsed:.0f} s)",
        f"release: {release} ({title}): bundle model {releases.get(release).paddlex_model_name}, "
        f"doc_parser --pipeline_version {releases.get(release).pipeline_version}",
        f"training: REAL PaddleFormers fine-tuning on the CPU of a tiny random-weight {title} "
        "(tiny models and smoke runs only; a 0.9B fine-tune belongs on a GPU)",
        f"loss: {losses[0]:.2f} -> {losses[-1]:.2f} over {len(losses)} steps  {sparkline(losses)}",
        "",
        *[f"{i}. {title}" for i, title in enumerate(steps, 1)],
        "",
        f"- dataset: {kie} (+ .train/.val), histogram {data / 'kie.stats.png'}",
        f"- plan: {plan / 'config.yaml'}, {plan / 'plan.json'}; GPU recipe: {run / 'plan-erniekit-gpu'}",
        f"- run: {result.run_dir} (record.json, metrics.jsonl, loss.png)",
        f"- inference bundle: {bundle}",
        f"- eval, training split: {run / 'eval-train' / 'report.html'}",
        f"- eval, validation split: {plan / 'eval' / 'report.html'}",
        f"- doc_parser result ({prompt}): {parsed['file']}",
        f"- predictions: {predictions}",
        "",
        "## eval on the training split (base vs trained)",
        "",
        summary(train_metrics),
        "",
        "## eval on the validation split (base vs trained)",
        "",
        summary(val_metrics),
        "",
    ])
    atomic_write_text(run / "SUMMARY.md", summary_text)
    log("\n" + summary_text)
    return run / "SUMMARY.md"
