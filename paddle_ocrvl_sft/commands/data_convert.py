"""``data convert --from FMT IN -o OUT.jsonl``: other formats → ERNIEKit JSONL (or ``--to messages``)."""

from __future__ import annotations

import argparse
import sys

from paddle_ocrvl_sft.data import convert


def register(data_subparsers) -> None:
    """Add ``convert`` to the ``data`` group's subparsers."""
    formats = "\n".join(f"  {name:<14} {cls.summary}" for name, cls in convert.CONVERTERS.items())
    p = data_subparsers.add_parser(
        "convert",
        help="convert another dataset format to ERNIEKit JSONL (or ERNIEKit to messages)",
        description="Convert a dataset to ERNIEKit OCR-VL JSONL, or with --to messages to messages JSONL "
        "(ms-swift / LLaMA-Factory / transformers). Rejected records are reported as FILE:LINE: error: "
        "FIELD: WHY. See docs/convert.md.",
        epilog=f"formats (--from):\n{formats}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN", help="the source file")
    p.add_argument("--from", dest="fmt", choices=list(convert.CONVERTERS), metavar="FMT",
                   help="source format (default: erniekit, i.e. an ERNIEKit JSONL; see the list below)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the JSONL to write")
    p.add_argument("--to", choices=list(convert.WRITERS), default="erniekit",
                   help="output format (default: erniekit)")
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
