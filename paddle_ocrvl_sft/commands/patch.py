"""``patch status | apply | revert``: let custom prompts through PaddleX (docs/patch.md)."""

from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "patch",
        help="patch PaddleX so custom prompts reach PaddleOCR-VL verbatim (status/apply/revert)",
        description="Patch paddlex/inference/pipelines/paddleocr_vl/pipeline.py so a custom prompt "
        "(any --prompt_label containing ':', e.g. 'OCR:{\"FIELD\": \"\"}') reaches the model verbatim "
        "with layout detection off. Byte-exact backup; revert only restores a file this tool patched.",
    )
    parser.add_argument("action", choices=("status", "apply", "revert"))
    parser.add_argument(
        "--paddlex-path",
        metavar="DIR",
        help="the 'paddlex' package directory, the directory holding it (site-packages, an unpacked wheel), or a "
        "file inside it; default: the installed paddlex",
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft import patch

    target = patch.find_target(args.paddlex_path)
    result = getattr(patch, args.action)(target)
    print(result.line())
    if args.action == "status" and (line := patch.releases_line(target)):
        print(line)
    # status exits 0 for the states a user acts on (unpatched/patched), 1 when they need a look
    return 0 if result.state in (patch.UNPATCHED, patch.PATCHED) else 1
