"""``train PLAN_DIR``: run and follow the plan's trainer (ERNIEKit or PaddleFormers; GPUs, nodes, Docker, or a CPU)."""

from __future__ import annotations

import argparse
import math

from paddle_ocrvl_sft.commands import positive_int

EPILOG = """\
examples:
  paddle-ocrvl-sft train runs/kie                       # one node, the plan's GPUs
  paddle-ocrvl-sft train runs/kie --resume              # continue from the newest complete checkpoint
  paddle-ocrvl-sft train runs/kie --dry-run             # print the command and environment only
  paddle-ocrvl-sft train runs/big --nodes 2 --node-rank 1 --master 10.0.0.1:36123 --gpus 0,1,2,3,4,5,6,7
  paddle-ocrvl-sft train runs/kie --docker --dry-run    # the `docker run` that trains inside the image
  paddle-ocrvl-sft train runs/kie save_steps=100 logging_steps=5   # KEY=VALUE right after PLAN_DIR
Exit status: 0 done, 1 failed (with the diagnosis), 130 Ctrl-C / 143 SIGTERM (resumable). Details: docs/train.md.
"""


def grace_seconds(text: str) -> float:
    """argparse type of --stop-grace: a finite number of seconds >= 0 (0: SIGKILL right after the stop
    signal). A negative or NaN grace is no grace at all: the SIGKILL timer would fire at once."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, got {text}")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run and follow the plan's trainer (ERNIEKit or PaddleFormers)",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("plan_dir", metavar="PLAN_DIR", help="a dir written by `plan`")
    p.add_argument("--gpus", metavar="IDS", help="this node's cards, e.g. 0,1,2,3 (as many as the plan's --gpus)")
    p.add_argument("--nodes", type=positive_int, metavar="N", help="nodes in the job (must be the plan's)")
    p.add_argument("--node-rank", type=int, default=None, metavar="R",
                   help="this node's rank, 0..N-1 (node 0 is the master); required with --nodes > 1")
    p.add_argument("--master", metavar="HOST:PORT", help="node 0's address and port (multi-node; the same on every node)")
    p.add_argument("--docker", action="store_true", help="run the same inside the Docker image (docker run --gpus ...)")
    p.add_argument("--image", default=None, metavar="IMG", help="the image for --docker (default paddle-ocrvl-sft:latest)")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue from the newest complete checkpoint (or the given checkpoint-N)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output_dir and start over")
    p.add_argument("--dry-run", "--print-only", dest="dry_run", action="store_true",
                   help="print the full command and environment, start nothing")
    p.add_argument("--no-export", action="store_true", help="do not export (and evaluate) the final model")
    p.add_argument("--skip-agreement-check", action="store_true",
                   help="start without building the first sample with the trainer's code and comparing it with "
                        "PaddleX's inference prompt (docs/releases.md); recorded in the run's record.json")
    p.add_argument("--stop-grace", type=grace_seconds, default=None, metavar="SECONDS",
                   help="after Ctrl-C/SIGTERM, SIGKILL what of the trainer is still running after this long (default 60)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="trainer keys for this run, right after PLAN_DIR (checked by the backend's schema; "
                        "plan-computed keys need `plan`)")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from paddle_ocrvl_sft import train

    options = train.Options(resume=args.resume, force=args.force, dry_run=args.dry_run, gpus=args.gpus, nodes=args.nodes,
                            node_rank=args.node_rank, master=args.master, docker=args.docker,
                            image=args.image or train.DEFAULT_IMAGE, overrides=tuple(args.overrides),
                            export=not args.no_export, check_agreement=not args.skip_agreement_check,
                            stop_grace=train.STOP_GRACE_SECONDS if args.stop_grace is None else args.stop_grace)
    train.run(args.plan_dir, options)
    return 0
