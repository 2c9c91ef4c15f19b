"""``python -m paddle_ocrvl_sft <command>``: a thin shell over the stage modules.

Each command lives in ``paddle_ocrvl_sft/commands/<name>.py`` with a ``register(subparsers)``
function; handlers return an exit status. Expected failures raise :class:`UserError` and become
one ``error: ...`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from paddle_ocrvl_sft import __version__
from paddle_ocrvl_sft.errors import UserError

COMMAND_MODULES = ("data", "plan", "backend", "patch", "train", "export", "predict", "eval", "serve", "demo",
                   "doctor", "ui")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="paddle-ocrvl-sft",
        description="Fine-tune PaddleOCR-VL (0.9B, 1.5 or 1.6: the release is read off the base model) with ERNIEKit or "
                    "PaddleFormers: data -> plan -> patch -> train -> export -> predict / serve.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"paddle_ocrvl_sft.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # user data can hold lone surrogates ("\ud800" in JSON):
        if hasattr(stream, "reconfigure"):  # print them escaped instead of failing on them
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted: outputs are written atomically, nothing half-written was left", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `... | head` closed our stdout
        return 0
