"""``train PLAN_DIR``: run the plan's exact ``erniekit train`` command (or print it where it cannot run)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run `erniekit train` for a plan (GPU), or --simulate with the CPU stand-in")
    p.add_argument("plan_dir", metavar="PLAN_DIR", help="a dir written by `plan`")
    p.add_argument("--simulate", action="store_true",
                   help="run the stand-in trainer instead of ERNIEKit (random weights, ERNIEKit's log format and layout)")
    p.add_argument("--resume", action="store_true", help="allow a non-empty output_dir (ERNIEKit resumes from its newest checkpoint)")
    p.add_argument("--print-only", action="store_true", help="print the command and environment, run nothing")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from paddle_ocrvl_sft import train

    if args.print_only:
        launch = train.load_launch(args.plan_dir)
        print(launch.shell())
        reason = train.why_not_runnable()
        if reason:
            print(f"note: not runnable on this machine: {reason}")
        return 0
    out = train.run(args.plan_dir, simulate=args.simulate, resume=args.resume)
    print(f"output: {out}  (next: python -m paddle_ocrvl_sft export {out} --base BASE_MODEL_DIR)")
    return 0
