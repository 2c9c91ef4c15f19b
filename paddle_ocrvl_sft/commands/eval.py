"""``eval --model DIR --data VAL.jsonl [--baseline DIR] [--general PAGES]``: the numbers, before vs after,
drift from the base on general pages, runaway answers, as a report."""

from __future__ import annotations

import argparse
import sys

from paddle_ocrvl_sft.commands import STOP_REPEATS_HELP, non_negative_int, positive_int, positive_seconds

DESCRIPTION = (
    "Run a model on a validation set with each sample's own prompt (through predict's backends; resumable: "
    "a rerun skips what OUT/predictions.jsonl already holds) or score saved predictions (--predictions), then "
    "score by task: OCR text (CER, NED, exact match), KIE (field and whole-document accuracy, missing/extra "
    "keys, valid JSON), tables (TEDS), formulas (exact match), charts (cell accuracy). With a baseline, both "
    "side by side, and each model's runaway answers (at the token cap, ending in a loop). Writes OUT/metrics.json, "
    "predictions.jsonl, scores.jsonl, plots/*.png and a self-contained report.html; prints a summary table. "
    "With --general PAGES (no labels needed) the model and its --baseline also answer general pages with the "
    "--tasks prompts, and the drift of the model's answers from the base's is reported per task (OUT/general/, "
    "or OUT without --data); --max-drift makes it a gate (exit 3 past the limit). Definitions: docs/eval.md."
)


def normalizations(text: str) -> list[str]:
    from paddle_ocrvl_sft.evaluate.metrics import NORMALIZATIONS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in NORMALIZATIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(NORMALIZATIONS)}, got {text!r}")
    return names


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="score a model (vs a baseline) on a validation set: CER, field accuracy, TEDS",
                              description=DESCRIPTION)
    p.add_argument("--data", metavar="VAL.jsonl", help="ERNIEKit validation samples (their answers are the references)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR", help="the model to evaluate (an exported bundle)")
    source.add_argument("--predictions", metavar="PRED.jsonl", help="score predict's saved output instead of running a model")
    base = p.add_mutually_exclusive_group()
    base.add_argument("--baseline", metavar="DIR", help="a second model to compare with (e.g. the base model)")
    base.add_argument("--baseline-predictions", metavar="PRED.jsonl", help="the baseline's saved predict output (with --predictions)")
    p.add_argument("-o", "--out", default="runs/eval", metavar="OUT_DIR", help="output dir (default runs/eval)")
    general = p.add_argument_group("drift on general pages")
    general.add_argument("--general", metavar="PAGES", help="a folder of images or a .jsonl of pages (ERNIEKit samples, "
                         "whose answers then count as labels, or {\"image\": PATH} lines): compare --model with --baseline there")
    general.add_argument("--tasks", default="ocr,table,formula,chart", metavar="ocr,table,...",
                         help="prompts asked on each general page (default ocr,table,formula,chart)")
    general.add_argument("--max-drift", metavar="LIMIT", help="gate: exit 3 when a task's mean drift is above LIMIT "
                         "(0.1 for every task, or table=0.05,ocr=0.1)")
    p.add_argument("--normalize", type=normalizations, default=[], metavar="whitespace,width,numbers",
                   help="compare texts after these normalizations (default none; recorded in metrics.json)")
    p.add_argument("--backend", default="paddle", metavar="NAME",
                   help="a predict backend: paddle (default), transformers (an hf export), genai-server")
    p.add_argument("--server-url", metavar="URL", help="genai-server: e.g. http://127.0.0.1:8118/v1")
    p.add_argument("--server-model", metavar="NAME", help="genai-server: model name (default: first of GET /models)")
    p.add_argument("--timeout", type=positive_seconds, default=600.0, help="genai-server: seconds per request (default 600)")
    p.add_argument("--concurrency", type=positive_int, metavar="N", help="genai-server: requests in flight (default 16)")
    p.add_argument("--retries", type=non_negative_int, default=5, metavar="N",
                   help="genai-server: times a transient failure is asked again, with back-off (default 5)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                   help="transformers: default bfloat16 on GPU, float32 on CPU")
    p.add_argument("--kv-cache", choices=("static", "dynamic"), default="static",
                   help="transformers: static (default; CUDA-graph decoding) or dynamic (transformers' generate)")
    p.add_argument("--model-name", help="PaddleX model name (default: from DIR/inference.yml)")
    p.add_argument("--device", help="e.g. cpu, gpu:0 (default: the backend's choice)")
    p.add_argument("--max-new-tokens", type=positive_int, metavar="N", help="cap on generated tokens (default: the backend's)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="images per model call (default 16 for transformers, else 1), as predict")
    p.add_argument("--stop-repeats", type=positive_int, metavar="K", help=STOP_REPEATS_HELP)
    p.add_argument("--force", action="store_true", help="start OUT_DIR over (its predictions are discarded)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from paddle_ocrvl_sft.errors import UsageError
    from paddle_ocrvl_sft.evaluate import drift as D

    if not (args.data or args.general):
        raise UsageError("give --data VAL.jsonl (scores against labels) and/or --general PAGES (drift from --baseline)")
    if args.max_drift and not args.general:
        raise UsageError("--max-drift gates the drift on general pages: give --general PAGES")
    if args.general and args.predictions and args.data:
        raise UsageError("--predictions holds one set of answers: score --data and --general in two runs")
    limits = D.parse_max_drift(args.max_drift) if args.max_drift else None
    tasks = D.parse_tasks(args.tasks)
    status = run_task_eval(args) if args.data else 0
    if args.general:
        from pathlib import Path

        out = Path(args.out) / "general" if args.data else Path(args.out)
        if args.predictions:
            drift = D.evaluate_drift_predictions(args.predictions, args.baseline_predictions, args.general, out_dir=out,
                                                 tasks=tasks, max_drift=limits, normalize=args.normalize, force=args.force)
        else:
            if args.baseline_predictions:
                raise UsageError("--baseline-predictions goes with --predictions; to run a baseline model give --baseline DIR")
            drift = D.evaluate_drift(args.model, args.baseline, args.general, out_dir=out, tasks=tasks, max_drift=limits,
                                     backend=args.backend, device=args.device, batch_size=args.batch_size,
                                     max_new_tokens=args.max_new_tokens, normalize=args.normalize, force=args.force,
                                     progress=not args.no_progress, **_backend_options(args))
        print(D.drift_summary(drift))
        print(f"drift report: {out}/report.html", file=sys.stderr)
        if drift["errors"]:
            print(f"error: {drift['errors']} general page answers failed (rerun to retry them)", file=sys.stderr)
            status = status or 1
        if drift["gate"]:
            print(f"error: {D.gate_message(drift['gate'])}", file=sys.stderr)
            status = D.GATE_EXIT
    return status


def run_task_eval(args) -> int:
    from paddle_ocrvl_sft.errors import UsageError
    from paddle_ocrvl_sft.evaluate import evaluate, evaluate_predictions, summary

    if args.predictions:
        if args.baseline:
            raise UsageError("--baseline runs a model; with --predictions give --baseline-predictions")
        metrics = evaluate_predictions(args.predictions, args.data, out_dir=args.out,
                                       baseline_predictions=args.baseline_predictions, normalize=args.normalize,
                                       force=args.force)
    else:
        if args.baseline_predictions:
            raise UsageError("--baseline-predictions goes with --predictions; to run a baseline model give --baseline DIR")
        if args.model is None and args.backend != "genai-server":
            raise UsageError("give --model DIR (or --predictions PRED.jsonl to score saved predictions)")
        metrics = evaluate(args.model, args.data, out_dir=args.out, baseline=args.baseline, backend=args.backend,
                           device=args.device, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                           normalize=args.normalize, force=args.force, progress=not args.no_progress,
                           **_backend_options(args))
    print(summary(metrics))
    print(f"report: {args.out}/report.html", file=sys.stderr)
    if metrics["errors"]:
        print(f"error: {metrics['errors']} of {metrics['n']} predictions failed (scored as empty answers; "
              "rerun to retry them)", file=sys.stderr)
        return 1
    return 0


def _backend_options(args) -> dict:
    """Backend options passed only when given (each backend's own options always with it)."""
    given = {"server_url": args.server_url, "server_model": args.server_model, "model_name": args.model_name,
             "stop_repeats": args.stop_repeats}
    options = {k: v for k, v in given.items() if v is not None}
    if args.backend == "genai-server":
        options.update(timeout=args.timeout, concurrency=args.concurrency or 16, retries=args.retries)
    if args.backend == "transformers":
        options.update(kv_cache=args.kv_cache, dtype=args.dtype)
    return options
