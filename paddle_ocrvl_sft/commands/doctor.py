"""``doctor``: is this machine ready to train / serve? One OK / WARN / FAIL line per check (docs/train.md)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="check Python, paddle/CUDA, GPUs, trainer environments, paddlex, the model, disk and data",
        description="One line per check: OK, WARN or FAIL with the fix; exit 1 on any FAIL. With --plan, what the "
                    "plan needs (a GPU plan FAILs without usable GPUs, a --device cpu plan needs none; free GPU memory "
                    "and disk against its estimates); without it a missing GPU is a WARN.")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--plan", metavar="PLAN_DIR", help="judge against a plan (its backend, device, GPUs, base model, output_dir)")
    which.add_argument("--model", metavar="DIR", help="a model dir: an inference bundle or a training base (says which)")
    p.add_argument("--data", action="append", metavar="FILE", help="a dataset to validate (repeatable): one summary line")
    p.add_argument("--json", action="store_true", help="print the checks as a JSON list")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft import doctor

    checks = doctor.run_checks(args.plan, args.model, args.data)
    if args.json:
        print(doctor.to_json(checks))
    else:
        for check in checks:
            print(check.line())
        print(doctor.summary(checks))
    return doctor.exit_status(checks)
