"""``backend install|list``: isolated, pinned environments for the trainers (docs/train.md)."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("backend", help="install or list the trainer environments (ERNIEKit, PaddleFormers)",
                              description="Each trainer gets its own pinned environment under $PADDLE_OCRVL_SFT_HOME "
                              "(default ~/.cache/paddle-ocrvl-sft); `train` uses it, or a trainer already on PATH.")
    sub = p.add_subparsers(dest="backend_command", required=True, metavar="install|list")
    i = sub.add_parser("install", help="build a backend's environment from its lock file (uv when available)")
    i.add_argument("name", choices=("erniekit", "paddleformers"))
    i.add_argument("--source", metavar="DIR|TARBALL",
                   help="erniekit: a clone or a tarball of PaddlePaddle/ERNIE release/v1.4 (default: git clone it)")
    i.add_argument("--force", action="store_true", help="rebuild even if the same lock is installed")
    i.set_defaults(func=run_install)
    ls = sub.add_parser("list", help="what is installed where, with versions")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run_list)


def run_install(args) -> int:
    from paddle_ocrvl_sft.backends import envs

    envs.install(args.name, source=args.source, force=args.force)
    return 0


def run_list(args) -> int:
    import json

    from paddle_ocrvl_sft.backends import envs

    rows = envs.listing()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        versions = ", ".join(f"{k} {v}" for k, v in row["versions"].items())
        print(f"{row['backend']:<14} {row['status']:<10} {row['where'] or '-'}" + (f"  ({versions})" if versions else ""))
    return 0
