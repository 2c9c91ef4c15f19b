"""``predict IMAGES|DIR|JSONL --model DIR``: run a model with any prompt, KIE answers parsed to JSON."""

from __future__ import annotations

import sys

from paddle_ocrvl_sft.commands import STOP_REPEATS_HELP, non_negative_int, positive_int, positive_seconds

DESCRIPTION = (
    "Run PaddleOCR-VL on images, folders of images or ERNIEKit .jsonl datasets (each line gives its image "
    "and its own prompt). Backend paddle calls PaddleX's VL-rec predictor directly, so custom KIE prompts "
    "work without any patch; backend transformers runs an hf export with PyTorch (batched, bf16 on GPU); "
    "backend genai-server talks to an OpenAI-compatible server. Writes one JSON "
    "line per image: image, prompt, text (raw) and, for KIE prompts, fields (parsed with json_repair). "
    "An image that fails gets an error line instead; the others still run, and the exit status is 1."
)


def register(subparsers) -> None:
    p = subparsers.add_parser("predict", help="run a (fine-tuned) model on images with any prompt", description=DESCRIPTION)
    p.add_argument("inputs", nargs="+", metavar="IMAGES|DIR|JSONL")
    p.add_argument("--model", metavar="DIR", help="exported model dir (paddle: export's default format; transformers: --format hf)")
    p.add_argument("--prompt", metavar="ocr|table|formula|chart|TEXT",
                   help="a built-in task name or the exact prompt text (default: OCR:, or each JSONL line's own)")
    p.add_argument("--fields", metavar="a,b", help='KIE: ask for these fields, i.e. OCR:{"a": "", "b": ""}')
    p.add_argument("--query", metavar="JSON", help="KIE: ask with this JSON object (rendered as in training)")
    p.add_argument("--backend", choices=("paddle", "transformers", "genai-server"), default="paddle")
    p.add_argument("--server-url", metavar="URL", help="genai-server: e.g. http://127.0.0.1:8118/v1")
    p.add_argument("--server-model", metavar="NAME", help="genai-server: model name (default: first of GET /models)")
    p.add_argument("--timeout", type=positive_seconds, default=600.0, help="genai-server: seconds per request (default 600)")
    p.add_argument("--concurrency", type=positive_int, metavar="N",
                   help="genai-server: requests in flight (default 16; the server batches them)")
    p.add_argument("--retries", type=non_negative_int, default=5, metavar="N",
                   help="genai-server: times a request is asked again after a dropped connection, a timeout or "
                        "HTTP 408/429/502/503/504, honouring Retry-After, else with exponential back-off (default 5)")
    p.add_argument("--model-name", help="PaddleX model name (default: from DIR/inference.yml)")
    p.add_argument("--release", metavar="v1|v1.5|v1.6",
                   help="paddle: the bundle's release (default: detected from its files; a bundle whose files "
                        "disagree is refused); its PaddleX name must be the one DIR/inference.yml gives")
    p.add_argument("--device", help="e.g. cpu, gpu:0 (transformers also cuda:0; default: the GPU if there is one)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"),
                   help="transformers: weights and activations (default: bfloat16 on GPU, float32 on CPU)")
    p.add_argument("--kv-cache", choices=("static", "dynamic"), default="static",
                   help="transformers: static (default: a preallocated KV cache, one CUDA graph per decoding step on "
                        "GPU) or dynamic (transformers' generate)")
    p.add_argument("--max-new-tokens", type=positive_int, metavar="N", help="cap on generated tokens (default: the backend's)")
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="images per model call (paddle, transformers); default 16 for transformers, else 1")
    p.add_argument("--stop-repeats", type=positive_int, metavar="K", help=STOP_REPEATS_HELP)
    p.add_argument("-o", "--out", metavar="OUT.jsonl",
                   help="write JSONL here (atomically, at the end; lines are appended to OUT.jsonl.partial as they "
                        "come, and a rerun after an interruption resumes from it); default: stdout")
    p.add_argument("--force", action="store_true", help="overwrite OUT (and start over, discarding OUT.partial)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from paddle_ocrvl_sft import predict as P
    from paddle_ocrvl_sft.io import refuse_existing

    if args.out:
        refuse_existing(args.out, force=args.force)
    jobs = P.collect_jobs(args.inputs, P.resolve_prompt(args.prompt, args.fields, args.query))
    batch_size = P.default_batch_size(args.backend, args.batch_size)

    def backend():
        return P.make_backend(args.backend, model_dir=args.model, server_url=args.server_url,
                              server_model=args.server_model, model_name=args.model_name, device=args.device,
                              max_new_tokens=args.max_new_tokens, timeout=args.timeout, batch_size=batch_size,
                              dtype=args.dtype, kv_cache=args.kv_cache, concurrency=args.concurrency or 16,
                              retries=args.retries, release=args.release,
                              stop_repeats=args.stop_repeats)

    per_call = P.jobs_per_call(args.backend, batch_size)
    if args.out:
        partial = Path(args.out).with_name(Path(args.out).name + ".partial")
        if args.force:
            partial.unlink(missing_ok=True)
        records = P.run_resumable(jobs, partial, backend, batch_size=per_call, progress=not args.no_progress,
                                  other="delete it or rerun with --force")
    else:
        partial, records = None, P.run(jobs, backend(), progress=not args.no_progress, batch_size=per_call)
    written, failed = P.write_records(records, args.out, force=args.force)
    if partial is not None:
        partial.unlink(missing_ok=True)
    if args.out:
        errors = f" and {failed} error lines" if failed else ""
        print(f"wrote {written - failed} predictions{errors} to {args.out}", file=sys.stderr)
    if failed:
        print(f"error: {failed} of {written} images failed (their lines carry an \"error\" field)", file=sys.stderr)
        return 1
    return 0
