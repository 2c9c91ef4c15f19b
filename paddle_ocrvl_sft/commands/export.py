"""``export RUN_DIR --base BASE_DIR``: a training run's output dir -> a bundle PaddleOCR/transformers loads."""

from __future__ import annotations

DESCRIPTION = (
    "Make a training run's output dir loadable (ERNIEKit OCR-VL-SFT, or PaddleFormers VL-SFT: full, or LoRA, "
    "whose adapter is merged into BASE_DIR's weights): add chat_template.jinja, inference.yml and the "
    "tokenizer/preprocessor files from BASE_DIR, and a model.safetensors (hard link or merge of the shards; "
    "the stale index is left out). --format hf assembles BASE_DIR's HF files + the fine-tuned weights for "
    "transformers/vLLM. inference.yml names the PaddleX model of BASE_DIR's release (v1: PaddleOCR-VL-0.9B, 1.5: "
    "PaddleOCR-VL-1.5-0.9B, 1.6: PaddleOCR-VL-1.6-0.9B). The result is loaded once to verify it. RUN_DIR and "
    "BASE_DIR are never modified."
)


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="make a run dir loadable by paddleocr/PaddleX or transformers", description=DESCRIPTION)
    p.add_argument("run_dir", metavar="RUN_DIR", help="the trainer's output_dir (ERNIEKit or PaddleFormers, a LoRA adapter included), or a dir "
                   "with model-*.safetensors")
    p.add_argument("--base", required=True, metavar="BASE_DIR",
                   help="the base model dir the run was fine-tuned from (e.g. PaddleOCR-VL-1.5); only read")
    p.add_argument("--checkpoint", metavar="N|last|all",
                   help="export checkpoint-N, the last checkpoint, or all of them (into OUT/checkpoint-N/); "
                        "default: the run's final weights")
    p.add_argument("--format", dest="fmt", choices=("paddle", "hf"), default="paddle",
                   help="paddle: for paddleocr/PaddleX (--vl_rec_model_dir); hf: for transformers/vLLM")
    p.add_argument("-o", "--out", metavar="OUT", help="output dir (default: <RUN_DIR>-export-<format> beside RUN_DIR)")
    p.add_argument("--release", metavar="v1|v1.5|v1.6",
                   help="BASE_DIR's PaddleOCR-VL release (default: detected from its chat template, preprocessor_config.json "
                        "and inference.yml); it names the model in inference.yml")
    p.add_argument("--model-name",
                   help="inference.yml model_name; must match --vl_rec_model_name (default: the release's, e.g. "
                        "PaddleOCR-VL-1.5-0.9B)")
    p.add_argument("--no-verify", action="store_true", help="skip loading the result (PaddleX or transformers on CPU)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT (only after the new one is complete)")
    p.set_defaults(func=run)


def run(args) -> int:
    from paddle_ocrvl_sft.export import export

    report = export(args.run_dir, args.base, args.out, checkpoint=args.checkpoint, fmt=args.fmt,
                    model_name=args.model_name, release=args.release, force=args.force, verify=not args.no_verify,
                    log=lambda line: print(f"  {line}"))
    print(f"wrote {report.out} ({args.fmt} format, release {report.release}, model {report.model_name})"
          f"{'' if report.verified else ' (not verified: --no-verify)'}")
    if args.fmt == "paddle":
        from paddle_ocrvl_sft import releases

        flags = " ".join(releases.doc_parser_args(releases.get(report.release)))
        print(f"run it: paddleocr doc_parser -i IMAGE --vl_rec_model_dir {report.out} {flags} --use_layout_detection False")
    return 0
