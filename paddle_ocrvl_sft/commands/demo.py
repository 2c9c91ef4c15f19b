"""``demo``: the end-to-end pipeline on a bundled synthetic receipt dataset, trained for real on a CPU (minutes)."""

from __future__ import annotations

from paddle_ocrvl_sft.commands import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the whole pipeline on a tiny synthetic receipt dataset (real CPU training, minutes)")
    p.add_argument("-o", "--out", default="runs/demo", metavar="RUN_DIR", help="where everything goes (default runs/demo)")
    p.add_argument("--images", type=positive_int, default=16, help="synthetic receipts to render (default 16, at least 4)")
    p.add_argument("--force", action="store_true", help="replace an earlier demo run in RUN_DIR")
    p.add_argument("--release", choices=("v1", "v1.5", "v1.6"), default="v1.5",
                   help="which PaddleOCR-VL release the tiny base model is laid out as (default v1.5)")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft.demo import run_demo

    run_demo(args.out, force=args.force, images=args.images, release=args.release)
    return 0
