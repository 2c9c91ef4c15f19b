"""``demo``: the end-to-end pipeline on a bundled synthetic receipt dataset (CPU, minutes)."""

from __future__ import annotations

from paddle_ocrvl_sft.commands import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on a tiny synthetic receipt dataset (CPU, minutes)")
    p.add_argument("-o", "--out", default="runs/demo", metavar="RUN_DIR", help="where everything goes (default runs/demo)")
    p.add_argument("--images", type=positive_int, default=16, help="synthetic receipts to render (default 16, at least 4)")
    sim = p.add_mutually_exclusive_group()
    sim.add_argument("--simulate", dest="simulate", action="store_true", default=None,
                     help="train with the CPU stand-in even if a GPU is present (default: only when ERNIEKit cannot run)")
    sim.add_argument("--no-simulate", dest="simulate", action="store_false", help="stop before training when ERNIEKit cannot run")
    p.add_argument("--force", action="store_true", help="replace an existing RUN_DIR")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft.demo import run_demo

    run_demo(args.out, force=args.force, images=args.images, simulate=args.simulate)
    return 0
