"""``train PLAN_DIR``: run the trainer a plan names (ERNIEKit or PaddleFormers; GPUs, or a CPU for tiny models)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="run the plan's trainer (ERNIEKit or PaddleFormers)")
    p.add_argument("plan_dir", metavar="PLAN_DIR", help="a dir written by `plan`")
    p.add_argument("--resume", nargs="?", const="last", metavar="CKPT",
                   help="continue from the newest complete checkpoint (or the given checkpoint-N)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output_dir and start over")
    p.add_argument("--print-only", action="store_true", help="print the command and environment, run nothing")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from paddle_ocrvl_sft import train
    from paddle_ocrvl_sft.backends import envs

    if args.print_only:
        plan = train.load_plan(args.plan_dir)
        found = envs.resolve(plan.backend.name)
        if found:
            print(train.command_for(plan, found, []).shell())
        else:
            print(" ".join(f"{k}={v}" for k, v in plan.launch["env"].items()) + " " + " ".join(plan.launch["command"]))
            print(f"note: {plan.backend.title} is not installed here: `python -m paddle_ocrvl_sft backend install {plan.backend.name}`")
        return 0
    out = train.run(args.plan_dir, resume=args.resume, force=args.force)
    print(f"output: {out}  (next: python -m paddle_ocrvl_sft export {out} --base BASE_MODEL_DIR)")
    return 0
