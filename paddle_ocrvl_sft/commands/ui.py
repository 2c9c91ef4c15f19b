"""``ui [--workdir DIR] [--port 7860]``: the pipeline in a browser — data, plan, runs, eval, try."""

from __future__ import annotations

import os
import sys

from paddle_ocrvl_sft.commands.serve import API_KEY_ENV, is_loopback

DESCRIPTION = (
    "A local web app over the same functions the CLI calls: Data (open or convert a dataset, page through "
    "its samples with their images and validator problems, stats, KIE fields, split), Plan (the plan form "
    "with every number and its formula as you type), Runs (start, follow, stop and resume `train`; runs "
    "started from a terminal too), Eval (base vs fine-tuned, sample by sample, worst first) and Try "
    "(serve's playground on any model of the workdir). It reads and writes under --workdir only (and reads "
    "under --allow dirs). Binds 127.0.0.1 unless --host says otherwise; another host needs --api-key. "
    "Details: docs/ui.md."
)


def register(subparsers) -> None:
    p = subparsers.add_parser("ui", help="the pipeline in a browser: data, plan, runs, eval, try", description=DESCRIPTION)
    p.add_argument("--workdir", default=".", metavar="DIR", help="where the UI reads and writes (default: the current dir)")
    p.add_argument("--allow", action="append", default=[], metavar="DIR",
                   help="also read datasets and models under DIR (repeat; never written)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="default 7860")
    p.add_argument("--api-key", metavar="KEY", help=f"require this key (or set ${API_KEY_ENV}); needed with a --host "
                   "other machines can reach")
    p.add_argument("--device", help="Try: the device models load on (default: predict's; e.g. cpu, gpu:0)")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft.errors import UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be 0..65535")
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    loopback = is_loopback(args.host)
    if not loopback and not api_key:
        raise UsageError(f"--host {args.host}: other machines could reach the UI, which starts training and writes "
                         f"files; give --api-key KEY (or set ${API_KEY_ENV})")
    from paddle_ocrvl_sft.ui.app import create_app

    app = create_app(args.workdir, allow=args.allow, api_key=api_key, loopback_only=loopback, device=args.device)
    os.chdir(app.state.roots.workdir)  # the jobs run here: a relative name is a file of the workdir
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"paddle-ocrvl-sft ui on http://{host}:{args.port}/  workdir {app.state.roots.workdir}"
          + ("  (API key required)" if api_key else ""), file=sys.stderr)
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=10)
    return 0
