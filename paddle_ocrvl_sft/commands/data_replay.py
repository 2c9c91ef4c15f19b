"""``data replay --model BASE --images DIR --tasks ocr,table -o replay.jsonl``: the base model's own
answers on pages as training samples, mixed in by ``plan --replay`` against forgetting."""

from __future__ import annotations

import sys

from paddle_ocrvl_sft.commands import positive_int, positive_seconds


def register(sub) -> None:
    p = sub.add_parser(
        "replay", help="the base model's own answers on pages, as training samples (against forgetting)",
        description="Ask the BASE model every --tasks prompt on every page and write its answers as ERNIEKit samples "
        "(image paths relative to OUT's folder; OUT is validated like any dataset). Empty answers, answers at the "
        "token cap and answers ending in a loop are left out and counted. Resumable: answers are kept in "
        "OUT.progress/ until OUT is complete. Mix the result into a plan with `plan --replay OUT --replay-ratio 0.2` "
        "(or --data OUT:0.2). Details: docs/eval.md (replay).")
    p.add_argument("--model", metavar="BASE_DIR", help="the base model (an exported bundle; paddle or transformers backend)")
    p.add_argument("--images", action="append", required=True, metavar="DIR|IMAGE|JSONL",
                   help="pages: a folder of images, an image, or a dataset whose images are used; repeat for more")
    p.add_argument("--tasks", default="ocr", metavar="ocr,table,...",
                   help="built-in prompts asked on every page: ocr, table, formula, chart, spotting, seal (default ocr)")
    p.add_argument("-o", "--out", required=True, metavar="REPLAY.jsonl")
    p.add_argument("--backend", choices=("paddle", "transformers", "genai-server"), default="paddle")
    p.add_argument("--server-url", metavar="URL", help="genai-server: e.g. http://127.0.0.1:8118/v1 (large sets)")
    p.add_argument("--server-model", metavar="NAME", help="genai-server: model name (default: first of GET /models)")
    p.add_argument("--timeout", type=positive_seconds, default=600.0, help="genai-server: seconds per request (default 600)")
    p.add_argument("--model-name", help="PaddleX model name (default: from DIR/inference.yml)")
    p.add_argument("--device", help="e.g. cpu, gpu:0 (default: the backend's choice)")
    p.add_argument("--max-new-tokens", type=positive_int, metavar="N", help="cap on generated tokens (default: the backend's)")
    p.add_argument("--batch-size", type=positive_int, default=1, metavar="N", help="images per model call (default 1)")
    p.add_argument("--force", action="store_true", help="overwrite OUT (answers kept in OUT.progress/ for the same model, tasks and pages are reused; "
                   "others are started over)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft.data.replay import write_replay

    options = {k: v for k, v in (("server_url", args.server_url), ("server_model", args.server_model),
                                 ("model_name", args.model_name)) if v is not None}
    if args.backend == "genai-server":
        options["timeout"] = args.timeout
    report = write_replay(args.model, args.images, args.out, tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                          backend=args.backend, device=args.device, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, force=args.force, progress=not args.no_progress,
                          **options)
    print(report.summary(), file=sys.stderr)
    if report.failed:
        print(f"error: {len(report.failed)} answer(s) failed and are not in {args.out}; rerun the same command with "
              "--force to retry them (the other answers are kept)", file=sys.stderr)
        return 1
    return 0
