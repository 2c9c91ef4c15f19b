"""``data validate | stats | convert | replay | kie | split`` — the CLI of paddle_ocrvl_sft.data."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from paddle_ocrvl_sft.commands import data_convert, data_replay, positive_int


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="validate, convert, build KIE prompts, split and measure datasets")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("validate", help="check every sample the way ERNIEKit reads it (exit 1 on any error)")
    p.add_argument("files", nargs="+", metavar="FILE", help=".jsonl or .json (array) datasets")
    _add_measure_args(p, default_max_seq_len=16384)
    p.add_argument("--decode", action="store_true", help="fully decode every image (slow), not just its header")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.add_argument("--write-clean", metavar="OUT", help="write the good rows to OUT (.jsonl, readable by ERNIEKit) and the rejects to OUT's .rejects.jsonl")
    p.add_argument("--force", action="store_true", help="overwrite --write-clean outputs")
    p.add_argument("--ignore", action="append", default=[], metavar="RULE",
                   help="count the warnings of RULE without printing them (repeatable; docs/data.md lists the rules)")
    p.set_defaults(func=run_validate)

    p = sub.add_parser("stats", help="sample count, prompt kinds, sizes, token lengths, recommended max_seq_len")
    p.add_argument("files", nargs="+", metavar="FILE")
    _add_measure_args(p, default_max_seq_len=None)
    p.add_argument("--plot", metavar="PNG", help="histogram PNG (default: <first FILE's stem>.stats.png in the current dir)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG")
    p.add_argument("--force", action="store_true", help="overwrite an existing PNG")
    p.add_argument("--top", type=positive_int, default=5, help="how many longest samples to list")
    p.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    p.set_defaults(func=run_stats)

    data_convert.register(sub)
    data_replay.register(sub)

    p = sub.add_parser("kie", help="key-information-extraction samples from per-image JSON annotations (seed 001)")
    p.add_argument("annotations", metavar="ANNOTATIONS", help='.jsonl/.json of {"image": ..., "data": {...}}, or a dir of *.json')
    p.add_argument("-o", "--out", required=True, metavar="OUT.jsonl")
    p.add_argument("-n", "--per-image", type=int, default=10, help="random field subsets per image (default 10; 0: only OCR:{})")
    p.add_argument("--max-fields", type=positive_int, default=3, help="at most this many fields per subset (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-full", action="store_true", help='skip the OCR:{} "extract everything" sample')
    p.add_argument("--image-root", metavar="DIR", help="resolve relative image paths here (default: the annotation file's dir)")
    p.add_argument("--skip-bad", action="store_true", help="write OUT even if some annotations were rejected (each is still reported)")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(func=run_kie)

    p = sub.add_parser("split", help="deterministic train/val split, grouped by image, stratified by prompt kind")
    p.add_argument("file", metavar="IN")
    p.add_argument("--val", type=float, default=0.1, help="validation fraction (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out-prefix", metavar="PREFIX", help="writes PREFIX.train.jsonl and PREFIX.val.jsonl (default: IN without .jsonl)")
    p.add_argument("--force", action="store_true", help="overwrite the outputs")
    p.add_argument("--allow-uneven", action="store_true",
                   help="write a split whose sides are far from --val (image groups too big to do better); an empty side is never written")
    p.set_defaults(func=run_split)


def _add_measure_args(p: argparse.ArgumentParser, *, default_max_seq_len: int | None) -> None:
    p.add_argument("--max-seq-len", type=positive_int, default=default_max_seq_len,
                   help=f"ERNIEKit max_seq_len to check against (default {default_max_seq_len})")
    p.add_argument("--tokenizer", metavar="MODEL_DIR", help="count text tokens exactly with MODEL_DIR/tokenizer.model")
    p.add_argument("--model", metavar="MODEL_DIR",
                   help="take min/max pixels from MODEL_DIR/preprocessor_config.json and the release from its files")
    p.add_argument("--release", metavar="v1|v1.5|v1.6",
                   help="count with this release's template marker (and, without --model, its pixel bounds); warn on "
                        "task prompts it was never trained on (default: MODEL_DIR's release, else v1's markers, no warning)")
    p.add_argument("--min-pixels", type=positive_int, help="override min_pixels")
    p.add_argument("--max-pixels", type=positive_int, help="override max_pixels")


def _measure(args, **extra):
    """(release, the line saying where it came from, ValidateOptions) for the measuring options."""
    from paddle_ocrvl_sft.data.validate import measure_options

    return measure_options(model=args.model, release=args.release, max_seq_len=args.max_seq_len,
                           tokenizer=args.tokenizer, min_pixels=args.min_pixels, max_pixels=args.max_pixels, **extra)


def run_validate(args) -> int:
    from paddle_ocrvl_sft.data.validate import (
        WARNING, WARNING_RULES, dropped_on_write, rejects_path, validate_and_write_clean, validate_paths,
    )
    from paddle_ocrvl_sft.data.warning_summary import WarningSummary

    warnings = WarningSummary(hints=WARNING_RULES, ignore=args.ignore)  # refuses an --ignore of no warning rule
    release, release_line, options = _measure(args, decode=args.decode)
    if args.json:
        # the problem list is streamed (flat memory on huge datasets); the opening is written with
        # the first problem, so an input error before it leaves stdout empty, not half a document
        opened = []

        def on_problem(problem):
            if problem.severity == WARNING and problem.rule in warnings.ignore:
                return
            sys.stdout.write(("," if opened else '{"problems": [') + "\n  " + json.dumps(problem.to_dict(), ensure_ascii=False))
            opened.append(True)
    else:
        def on_problem(problem):  # errors as found; warnings summarised per rule at the end
            if problem.severity == WARNING:
                warnings.add(problem.rule, f"{problem.path}:{problem.line}", problem.message)
            else:
                print(problem)

    if args.write_clean:
        report = validate_and_write_clean(args.files, args.write_clean, options, force=args.force, on_problem=on_problem)
    else:
        report = validate_paths(args.files, options, on_problem=on_problem)
    if args.json:
        summary = {**report.to_dict(), "release": release.name if release else None}
        # no problem streamed: the list opens and closes here (it used to stay open: invalid JSON)
        print(("\n]" if opened else '{"problems": []') + ', "summary": ' + json.dumps(summary, ensure_ascii=False) + "}")
    else:
        for line in warnings.lines():
            print(line)
        print(report.summary())
        print(release_line)
        if args.write_clean:
            dropped = dropped_on_write(report)
            print(f"wrote {report.valid} good rows to {args.write_clean}, {report.rejected} rejects to "
                  f"{rejects_path(args.write_clean)}" + (f"; left out {dropped}" if dropped else ""))
    return 0 if report.ok else 1


def run_stats(args) -> int:
    from paddle_ocrvl_sft.data.stats import dataset_stats, format_stats, plot_histogram

    from paddle_ocrvl_sft.io import refuse_existing

    plot = None if args.no_plot else Path(args.plot or f"{Path(args.files[0]).stem}.stats.png")
    if plot:
        refuse_existing(plot, force=args.force)  # before the pass over the data, not after
    release, release_line, options = _measure(args)
    stats = dataset_stats(args.files, options, top=args.top)
    if plot and stats.samples:
        plot_histogram(stats, plot, max_seq_len=args.max_seq_len, force=True)
    elif plot:
        plot = None
    if args.json:
        result = stats.to_dict()
        result["plot"] = str(plot) if plot else None
        result["release"] = release.name if release else None
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(format_stats(stats))
        print(release_line)
        if stats.report.rejected:
            print(f"{stats.report.rejected} sample(s) rejected ({stats.report.errors} errors): run `data validate` for the list")
        if plot:
            print(f"histogram: {plot}")
    return 0


def run_kie(args) -> int:
    from paddle_ocrvl_sft.data.kie import build_kie_dataset

    report = build_kie_dataset(
        args.annotations, args.out, per_image=args.per_image, max_fields=args.max_fields, seed=args.seed,
        full=not args.no_full, image_root=args.image_root, skip_bad=args.skip_bad, force=args.force,
        on_error=lambda line: print(line, file=sys.stderr),
    )
    if not report.written:
        why = (f"{report.rejected} annotation(s) rejected ({report.samples} samples from {report.images} images otherwise); "
               "fix them or pass --skip-bad") if report.rejected and report.samples else "no usable annotation"
        print(f"error: {args.out} not written: {why}", file=sys.stderr)
        return 1
    print(f"{report.images} images -> {report.samples} samples in {args.out}; {report.rejected} annotation(s) rejected")
    return 0


def run_split(args) -> int:
    from paddle_ocrvl_sft.data.split import split_dataset

    prefix = args.out_prefix or str(Path(args.file).with_suffix(""))
    train, val = f"{prefix}.train.jsonl", f"{prefix}.val.jsonl"
    result = split_dataset(args.file, train, val, val_fraction=args.val, seed=args.seed, force=args.force,
                           allow_uneven=args.allow_uneven)
    if result.uneven:
        print(f"warning: {result.uneven} (--allow-uneven)", file=sys.stderr)
    print(f"train: {result.train} samples -> {train}")
    print(f"val:   {result.val} samples -> {val}")
    for kind in sorted(set(result.train_by_kind) | set(result.val_by_kind)):
        print(f"  {kind:10} train {result.train_by_kind.get(kind, 0):>7}  val {result.val_by_kind.get(kind, 0):>7}")
    return 0
