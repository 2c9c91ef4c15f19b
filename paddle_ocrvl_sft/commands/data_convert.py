"""``data convert --from FMT IN -o OUT.jsonl``: other formats → ERNIEKit JSONL (or ``--to messages``)."""

from __future__ import annotations

import argparse
import sys

# Placeholder epilog: the format list is filled in when `data convert --help` is printed. Importing
# the converters to build it would slow the start of every command (convert is the heaviest
# module to import); the names are checked by convert_file (a usage error, exit 2).
_FORMATS = "formats"


class _FormatsHelp(argparse.RawDescriptionHelpFormatter):
    def add_text(self, text):
        if text is _FORMATS:
            from paddle_ocrvl_sft.data import convert

            text = "formats (--from):\n" + "\n".join(f"  {name:<14} {cls.summary}" for name, cls in convert.CONVERTERS.items())
            text += f"\n\noutput formats (--to): {', '.join(convert.WRITERS)}"
        super().add_text(text)


def register(data_subparsers) -> None:
    """Add ``convert`` to the ``data`` group's subparsers."""
    p = data_subparsers.add_parser(
        "convert",
        help="convert another dataset format to ERNIEKit JSONL (or ERNIEKit to messages)",
        description="Convert a dataset to ERNIEKit OCR-VL JSONL, or with --to messages to messages JSONL "
        "(ms-swift / LLaMA-Factory / transformers). Rejected records are reported as FILE:LINE: error: "
        "FIELD: WHY. See docs/convert.md.",
        epilog=_FORMATS,
        formatter_class=_FormatsHelp,
    )
    p.add_argument("input", metavar="IN", help="the source file")
    p.add_argument("--from", dest="fmt", metavar="FMT",
                   help="source format (default: erniekit, i.e. an ERNIEKit JSONL; see the list below)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the JSONL to write")
    p.add_argument("--to", default="erniekit", metavar="FMT", help="output format (default: erniekit; see the list below)")
    p.add_argument("--image-root", metavar="DIR",
                   help="resolve relative image paths of the source against DIR (default: IN's directory)")
    p.add_argument("--default-prompt", metavar="PROMPT",
                   help="use PROMPT for records whose prompt is empty (a kind such as 'ocr' means its built-in "
                   "query, 'OCR:'); default: reject them")
    p.add_argument("--skip-bad", action="store_true",
                   help="write the convertible records and exit 0 even if some were rejected (each is still reported)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft.data import convert

    summary = convert.convert_file(
        args.fmt or "erniekit",
        args.input,
        args.output,
        to=args.to,
        image_root=args.image_root,
        default_prompt=args.default_prompt,
        skip_bad=args.skip_bad,
        force=args.force,
        report=lambda line: print(line, file=sys.stderr),
    )
    print(f"converted {summary.converted}, rejected {summary.rejected}")
    if not summary.written:
        print(f"error: {args.output} not written: {'; '.join(summary.reasons)}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({args.to})")
    return 0
