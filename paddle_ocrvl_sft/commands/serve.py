"""``serve --model DIR``: the model as an HTTP API (OCR, KIE JSON, OpenAI chat.completions, playground)."""

from __future__ import annotations

import ipaddress
import os
import sys

from paddle_ocrvl_sft.commands import STOP_REPEATS_HELP, positive_int, positive_seconds

DESCRIPTION = (
    "Serve a (fine-tuned) PaddleOCR-VL over HTTP: POST /ocr (text), POST /extract (KIE JSON), the OpenAI "
    "chat.completions subset that PaddleOCR's pipeline and the openai client use (/v1), GET /health, "
    "GET /metrics, a playground at / and OpenAPI docs at /docs. Requests that arrive together are "
    "batched. Binds 127.0.0.1 unless --host says otherwise; with --api-key (or $PADDLE_OCRVL_API_KEY) "
    "every route but /health, the playground page and the docs needs 'Authorization: Bearer KEY'."
)
API_KEY_ENV = "PADDLE_OCRVL_API_KEY"


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a model over HTTP (OCR, KIE, OpenAI API)", description=DESCRIPTION)
    p.add_argument("--model", metavar="DIR", help="exported bundle (paddle: export's default format; transformers: --format hf)")
    p.add_argument("--backend", choices=("paddle", "transformers", "genai-server"), default="paddle")
    p.add_argument("--server-url", metavar="URL", help="genai-server: the upstream, e.g. http://127.0.0.1:8118/v1")
    p.add_argument("--server-model", metavar="NAME", help="genai-server: upstream model name (default: its first)")
    p.add_argument("--served-model-name", metavar="NAME", help="the name /v1/models reports (default: from the bundle)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080")
    p.add_argument("--api-key", metavar="KEY", help=f"require this key (or set ${API_KEY_ENV})")
    p.add_argument("--device", help="paddle: cpu, gpu:0; transformers: cpu, cuda:0 (default: the GPU if there is one)")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), help="transformers (default: bfloat16 on GPU)")
    p.add_argument("--kv-cache", choices=("static", "dynamic"), default="static",
                   help="transformers: static (default; decoding graphs for a few batch shapes made at start-up, "
                        "/health says 'warming' until then) or dynamic (transformers' generate)")
    p.add_argument("--stop-repeats", type=positive_int, metavar="K", help=STOP_REPEATS_HELP)
    p.add_argument("--model-name", help="PaddleX model name (default: from DIR/inference.yml)")
    p.add_argument("--release", metavar="v1|v1.5|v1.6",
                   help="paddle: the bundle's release (default: detected from its files; a bundle whose files "
                        "disagree is refused)")
    limits = p.add_argument_group("limits")
    limits.add_argument("--max-batch", type=positive_int, default=64, metavar="N",
                        help="requests per model call (default 64; the static cache's largest batch shape)")
    limits.add_argument("--batch-wait-ms", type=float, default=20.0, metavar="MS",
                        help="how long a batch being gathered waits for one more request when none is on its way "
                             "(default 20; requests already on their way are waited for, up to 500 ms)")
    limits.add_argument("--max-new-tokens", type=positive_int, default=4096, metavar="N",
                        help="default and upper bound of a request's new tokens (default 4096)")
    limits.add_argument("--max-body-mb", type=float, default=20.0, metavar="MB", help="request body size (default 20)")
    limits.add_argument("--max-image-pixels", type=positive_int, default=40_000_000, metavar="N",
                        help="width x height of an uploaded image (default 40000000)")
    limits.add_argument("--timeout", type=positive_seconds, default=300.0, metavar="S",
                        help="seconds a request may wait for its answer (default 300)")
    limits.add_argument("--max-concurrency", type=positive_int, default=256, metavar="N",
                        help="model requests admitted (queued or decoding); more get 503 with Retry-After (default 256)")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft.bundle import model_name_of
    from paddle_ocrvl_sft.errors import UsageError
    from paddle_ocrvl_sft.predict import make_backend
    from paddle_ocrvl_sft.serve.inputs import Limits
    from paddle_ocrvl_sft.tokens import PixelBounds

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be 0..65535")
    if not (args.max_body_mb > 0 and args.batch_wait_ms >= 0):
        raise UsageError("--max-body-mb must be > 0 and --batch-wait-ms >= 0")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    limits = Limits(max_body_bytes=int(args.max_body_mb * 1024 * 1024), max_image_pixels=args.max_image_pixels,
                    max_new_tokens=args.max_new_tokens, timeout=args.timeout, max_concurrency=args.max_concurrency,
                    max_batch=args.max_batch, batch_wait=args.batch_wait_ms / 1000)
    backend = make_backend(args.backend, model_dir=args.model, server_url=args.server_url,
                           server_model=args.server_model, model_name=args.model_name, device=args.device,
                           max_new_tokens=args.max_new_tokens, batch_size=args.max_batch, dtype=args.dtype,
                           kv_cache=args.kv_cache, release=args.release, stop_repeats=args.stop_repeats)
    if args.served_model_name:
        name = args.served_model_name
    elif args.backend == "genai-server":
        name = backend.model
    elif args.backend == "paddle":
        name = backend.model_name  # what PaddleX loaded it as: the release's name
    else:
        from pathlib import Path

        name = model_name_of(Path(args.model))
    bounds = PixelBounds.from_model_dir(args.model) if args.model else PixelBounds()

    from paddle_ocrvl_sft.serve.app import create_app

    app = create_app(backend, model_name=name, backend_name=args.backend, limits=limits, api_key=api_key,
                     model_bounds=bounds)
    if not is_loopback(args.host) and not api_key:
        print(f"warning: --host {args.host} accepts requests from other machines and no --api-key is set",
              file=sys.stderr)
    host = f"[{args.host}]" if ":" in args.host else args.host
    release = f"release {backend.release}, " if getattr(backend, "release", None) else ""
    print(f"serving {name} ({release}{args.backend} backend) on http://{host}:{args.port}  playground: /  docs: /docs",
          file=sys.stderr)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=30)
    return 0


def is_loopback(host: str) -> bool:
    """An address only this machine reaches (a name other than localhost counts as reachable)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
