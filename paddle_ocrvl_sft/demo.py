"""``demo``: the whole pipeline on a tiny synthetic dataset, trained for real on a CPU — and the
model learns to read.

Each step is the very CLI command a user would type (printed, then run in-process), so the demo
doubles as a walkthrough. What it is and is not:

- the base model is a tiny random-weight PaddleOCR-VL in the released layout of ``release`` (default
  1.5: its template, image processor and inference.yml; no download here), and every stage takes the
  release from it (the bundle is named ``PaddleOCR-VL-1.5-0.9B``, doc_parser runs ``--pipeline_version v1.5``);
  it is 32 wide, its layers initialised at 0.1 (1/sqrt(width); the release's 0.02 suits 1024-wide
  layers and leaves a 32-wide model nearly blind to the image: ``testing.random_weights``) and
  its image budget shrunk to a few tokens (``preprocessor_config.json`` min/max pixels);
- the task is made learnable in minutes on two cores: table tickets with ONE field, the table
  number, in one large digit (``receipts.make_tickets``), 12 tickets per step, lr 5e-3;
- training is real: PaddleFormers (``--backend paddleformers --device cpu``) fine-tunes the tiny
  model; the exact ERNIEKit command for a GPU is printed too;
- the evaluation compares the base with the trained model on the training split (the tickets it
  was shown: its field accuracy rises from 0 to 80 % or more, so the image reaches the answer)
  and on the validation split (tickets it never saw, printed as they come out: a dozen examples of
  ten digits, shown through PaddleFormers' random image augmentation, teach some reading, not all);
- ``train`` also measures the drift from the base on two general pages and prints its verdict.
"""

from __future__ import annotations

import contextlib
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
DEMO_QUERY = {"TABLE": ""}  # receipts.TICKET_FIELD
MIN_IMAGES = 4
RUN_MARKER = ".paddle-ocrvl-sft-demo"
# What makes the task learnable on 2 CPU cores in a few minutes (measured: docs/eval.md, "The demo"):
BATCH = 12  # tickets per step (the whole training split): a steadier gradient than one or eight at little more cost per step
STEPS = 280  # measured: the loss falls under 0.1 after about 250 steps, and the training split is read
LEARNING_RATE = "5e-3"  # constant; 1e-3 has not learned the answer format by step 200
MATRIX_STD = 0.1  # the tiny model's layer init (testing.random_weights)
PIXELS = (3136, 50176)  # min/max pixels of the tiny model: 4 to 64 image tokens (a ticket is 4)
MAX_NEW_TOKENS = 24  # a trained answer is 8 tokens; the base model never stops: cap generation
# glibc keeps freed memory instead of returning it to the OS: paddle's CPU kernels allocate and free
# the same large buffers every training step, and faulting them back in cost 23 s of system time per
# 60 steps (3 s with these; the same losses). Set in os.environ while `train.run` runs: every process it
# starts gets them (the trainer, and the agreement probe, LoRA merge... where they only use more memory);
# glibc reads them at process start, so this process's own allocator is unchanged.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "1073741824",
                     "MALLOC_TOP_PAD_": "268435456"}


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


def demo_base_model(dest: Path, release: str = DEFAULT_RELEASE) -> Path:
    """The tiny base model of ``release`` with the demo's layer init and image budget (module docstring)."""
    from paddle_ocrvl_sft.testing import build_tiny_model

    base = build_tiny_model(dest, "base", matrix_std=MATRIX_STD, release=release)
    path = base / "preprocessor_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["min_pixels"], config["max_pixels"] = PIXELS
    if isinstance(config.get("size"), dict):
        config["size"] = {**config["size"], "min_pixels": PIXELS[0], "max_pixels": PIXELS[1]}
    atomic_write_text(path, json.dumps(config, indent=2) + "\n")
    return base


def field_accuracy(metrics: dict) -> tuple[float | None, float]:
    """(base, trained) KIE field accuracy of an eval with a baseline."""
    return (metrics.get("baseline") or {}).get("kie", {}).get("field_accuracy"), metrics["kie"]["field_accuracy"]


def reading_lines(train_metrics: dict, val_metrics: dict) -> list[str]:
    """Training-split field accuracy beside the validation split's, said plainly."""
    (train_base, train_now), (val_base, val_now) = field_accuracy(train_metrics), field_accuracy(val_metrics)

    def pct(value):
        return "-" if value is None else f"{100 * value:.0f}%"

    read = train_now >= 0.8
    return [
        f"field accuracy on the TRAINING split ({train_metrics['kie']['n']} tickets it was shown): "
        f"base {pct(train_base)} -> trained {pct(train_now)}"
        + (" — it reads the tickets it was shown: the image reaches the answer" if read else
           " — BELOW 80%: the model did not learn to read them in this run"),
        f"field accuracy on the VALIDATION split ({val_metrics['kie']['n']} tickets it never saw): "
        f"base {pct(val_base)} -> trained {pct(val_now)} — a dozen examples of ten digits, seen through random "
        "image augmentation, teach some reading, not all of it; a real fine-tune needs far more data",
    ]


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    """``values`` in os.environ (where not set already) for the child processes started inside."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def run_demo(run_dir: str | os.PathLike, *, force: bool = False, images: int = 16, release: str = DEFAULT_RELEASE,
             log: Callable[[str], None] = print) -> Path:
    """Run every stage into ``run_dir`` on a tiny model of ``release``; returns the summary file."""
    from paddle_ocrvl_sft import releases, train
    from paddle_ocrvl_sft.backends import envs
    from paddle_ocrvl_sft.evaluate import evaluate, summary
    from paddle_ocrvl_sft.evaluate.drift import drift_summary, read_drift
    from paddle_ocrvl_sft.progress import read_metrics
    from paddle_ocrvl_sft.receipts import make_general_pages, make_tickets

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

    step("data: render table tickets (one field: the table number, one large digit) and two general pages")
    annotations = make_tickets(data, count=images)
    general = make_general_pages(run / "general_pages")
    log(f"{images} tickets and their TABLE field in {annotations}; general pages (for the drift check) in {general}")

    step("data kie: per-image annotations -> KIE prompts and targets (seed 001)")
    kie = data / "kie.jsonl"
    _cli(["data", "kie", str(annotations), "-o", str(kie), "-n", "1", "--no-full", "--seed", "0"], log)

    step("data validate / stats / split")
    _cli(["data", "validate", str(kie)], log)
    _cli(["data", "stats", str(kie), "--plot", str(data / "kie.stats.png")], log)
    _cli(["data", "split", str(kie), "--val", "0.25", "--seed", "0"], log)
    train_split, val_split = data / "kie.train.jsonl", data / "kie.val.jsonl"

    title = releases.get(release).title
    step(f"base model: a tiny random-weight {title} in the released layout (stands in for the download)")
    base = demo_base_model(run / "base_model", release)
    log(f"{base}  (layers initialised at {MATRIX_STD}, {PIXELS[0]}-{PIXELS[1]} pixels per image; a real run uses the "
        f"downloaded PaddlePaddle/{title} dir; plan, export, predict and doc_parser take the release from its files)")

    step("the GPU recipe: an ERNIEKit plan for one GPU, and the exact command `train` would run there")
    _cli(["plan", "--data", str(train_split), "--eval", str(val_split), "--model", str(base), "--epochs", "2",
          "--gpus", "1", "-o", str(run / "plan-erniekit-gpu")], log)
    _cli(["train", str(run / "plan-erniekit-gpu"), "--dry-run"], log)

    step("backend: PaddleFormers' pinned environment (built once, then reused)")
    if envs.read_record("paddleformers") is None:
        _cli(["backend", "install", "paddleformers"], log)
    else:
        log(f"PaddleFormers is installed at {envs.env_dir('paddleformers')}")

    train_samples = len(train_split.read_text(encoding="utf-8").splitlines())
    epochs = STEPS * BATCH / train_samples
    step(f"plan: the same data for PaddleFormers on this CPU ({STEPS} steps of {BATCH} tickets, lr {LEARNING_RATE} "
         "constant), with the general pages for the verdict")
    _cli(["plan", "--backend", "paddleformers", "--device", "cpu", "--data", str(train_split), "--eval", str(val_split),
          "--model", str(base), "--epochs", f"{epochs:g}", "--batch-size", str(BATCH), "--lr", LEARNING_RATE,
          "--max-seq-len", "2048", "--general", str(general), "--general-tasks", "ocr,table", "-o", str(plan),
          "lr_scheduler_type=constant", f"save_steps={STEPS // 2}"], log)

    step("train: real PaddleFormers training on the CPU, then export, eval on the validation split, drift on the "
         "general pages and the verdict")
    with _environment(KEEP_FREED_MEMORY):
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
    reading = reading_lines(train_metrics, val_metrics)
    log("\n".join(reading))
    drift = drift_summary(read_drift(plan / "eval" / "general"))
    verdict = json.loads((plan / "eval" / "verdict.json").read_text(encoding="utf-8"))["line"]

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
        *[f"{i}. {name}" for i, name in enumerate(steps, 1)],
        "",
        f"- dataset: {kie} (+ .train/.val), histogram {data / 'kie.stats.png'}",
        f"- plan: {plan / 'config.yaml'}, {plan / 'plan.json'}; GPU recipe: {run / 'plan-erniekit-gpu'}",
        f"- run: {result.run_dir} (record.json, metrics.jsonl, loss.png)",
        f"- inference bundle: {bundle}",
        f"- eval, training split: {run / 'eval-train' / 'report.html'}",
        f"- eval, validation split: {plan / 'eval' / 'report.html'}",
        f"- drift on the general pages: {plan / 'eval' / 'general' / 'report.html'}",
        f"- doc_parser result ({prompt}): {parsed['file']}",
        f"- predictions: {predictions}",
        "",
        "## did it learn to read?",
        "",
        *reading,
        "",
        "## eval on the training split (base vs trained)",
        "",
        summary(train_metrics),
        "",
        "## eval on the validation split (base vs trained)",
        "",
        summary(val_metrics),
        "",
        "## drift from the base on the general pages (docs/eval.md)",
        "",
        drift,
        "",
        verdict,
        "",
    ])
    atomic_write_text(run / "SUMMARY.md", summary_text)
    log("\n" + summary_text)
    return run / "SUMMARY.md"
