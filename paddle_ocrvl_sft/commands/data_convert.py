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

            text = "formats (--from):\n  auto           the default: told from the file's first records\n"
            text += "\n".join(f"  {name:<14} {cls.summary}" for name, cls in convert.CONVERTERS.items())
            text += f"\n\noutput formats (--to): {', '.join(convert.WRITERS)}"
            text += f"\n\nwarnings (--ignore): {', '.join(convert.WARNING_RULES)}"
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
    p.add_argument("--from", dest="fmt", metavar="FMT", default="auto",
                   help="source format (default: auto, told from the file's first records; see the list below)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the JSONL to write")
    p.add_argument("--to", default="erniekit", metavar="FMT", help="output format (default: erniekit; see the list below)")
    p.add_argument("--image-root", metavar="DIR",
                   help="resolve relative image paths of the source against DIR (default: IN's directory)")
    p.add_argument("--default-prompt", metavar="PROMPT",
                   help="use PROMPT for records whose prompt is empty (a kind such as 'ocr' means its built-in "
                   "query, 'OCR:'); default: reject them")
    p.add_argument("--task", metavar="TASK",
                   help="the task of the text in paddleocr-rec / image-text sources: ocr (default for labels), "
                   "formula, table, chart, ... (image-text: default from the text column's name)")
    p.add_argument("--columns", metavar="IMAGE,TEXT", type=_two_columns,
                   help="image-text: the image column and the text column (default: from the header)")
    p.add_argument("--crop", action="store_true",
                   help="paddleocr-det: cut each box out of its image into a recognition sample ('###' boxes skipped)")
    p.add_argument("--crop-dir", metavar="DIR", help="where --crop writes the cut boxes (default: OUT without .jsonl + _crops)")
    p.add_argument("--ignore", action="append", default=[], metavar="RULE",
                   help="count warnings of RULE without printing them (repeatable; the rules are listed below)")
    p.add_argument("--skip-bad", action="store_true",
                   help="write the convertible records and exit 0 even if some were rejected (each is still reported)")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=run)


def _two_columns(text: str) -> tuple[str, str]:
    names = tuple(name.strip() for name in text.split(","))  # as given: JSON keys keep their case
    if len(names) != 2 or not all(names):
        raise argparse.ArgumentTypeError(f"expected IMAGE,TEXT (two column names), got {text!r}")
    return names


def run(args) -> int:
    from paddle_ocrvl_sft.data import convert

    summary = convert.convert_file(
        args.fmt,
        args.input,
        args.output,
        to=args.to,
        image_root=args.image_root,
        default_prompt=args.default_prompt,
        task=args.task,
        columns=args.columns,
        crop=args.crop,
        crop_dir=args.crop_dir,
        ignore=tuple(args.ignore),
        skip_bad=args.skip_bad,
        force=args.force,
        report=lambda line: print(line, file=sys.stderr),
    )
    for line in summary.warnings.lines():
        print(line, file=sys.stderr)
    if summary.hint:
        print(f"hint: {summary.hint}", file=sys.stderr)
    if args.fmt == "auto":
        print(f"read {args.input} as --from {summary.fmt}: it looks like {summary.shape.name}")
    samples = f" ({summary.samples} samples)" if summary.samples != summary.converted else ""
    print(f"converted {summary.converted}{samples}, rejected {summary.rejected}")
    for note in summary.notes:
        print(note)
    if not summary.written:
        print(f"error: {args.output} not written: {'; '.join(summary.reasons)}", file=sys.stderr)
        return 1
    print(f"wrote {args.output} ({args.to})")
    return 0
