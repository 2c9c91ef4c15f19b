"""``plan``: datasets + GPUs -> PLAN_DIR/config.yaml (ERNIEKit or PaddleFormers) and PLAN_DIR/plan.json (the why)."""

from __future__ import annotations

import argparse
import os

EPILOG = """\
examples:
  paddle-ocrvl-sft plan --data train.jsonl --eval val.jsonl --model PaddleOCR-VL --epochs 2 --gpus 1 -o runs/ocr
  paddle-ocrvl-sft plan --data a.jsonl --data b.jsonl --prob 0.7 --prob 0.3 --model M --epochs 2 \\
      --gpus 8 --scale scale-lr -o runs/mix save_steps=100
  paddle-ocrvl-sft plan --preset kie_16k --data kie.jsonl --model M --epochs 3 --gpus 4 --nodes 2 \\
      --master-addr 10.0.0.1 -o runs/kie
  paddle-ocrvl-sft plan --backend paddleformers --lora --data kie.jsonl --model M --epochs 3 --gpus 1 -o runs/lora
  paddle-ocrvl-sft plan --data kie.jsonl --replay replay.jsonl --replay-ratio 0.2 --general pages/ \\
      --max-drift 0.1 --model M --epochs 2 -o runs/kie     # replay against forgetting, drift in the verdict
  paddle-ocrvl-sft plan --backend paddleformers --device cpu --data tiny.jsonl --model TINY --epochs 4 \\
      --lr 5e-3 -o runs/smoke lr_scheduler_type=constant     # tiny models / smoke runs only

max_steps = ceil(D*E/(G*B*A)), warmup = max(1, ceil(1% of max_steps)) (ERNIEKit SFT guide §4), with
B = packing_size (ERNIEKit) or per_device_train_batch_size (PaddleFormers); --packing-size/--grad-accum/
--lr are the values for the preset's base GPU count (--base-gpus) and --scale adapts them to
G = gpus x nodes (guide §5). Details: docs/plan.md, docs/train.md.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="compute max_steps/warmup/lr for your data and GPUs and write a checked trainer config",
        description="Write PLAN_DIR/config.yaml (ERNIEKit OCR-VL-SFT or PaddleFormers VL-SFT), PLAN_DIR/plan.json "
        "(every number with its formula and inputs, and the launch env for `train`) and, for PaddleFormers, "
        "the data in its messages format and a prepared model copy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backend", choices=("erniekit", "paddleformers"), default="erniekit",
                   help="trainer: erniekit (default; OCR-VL-SFT, full) or paddleformers (VL-SFT, full or --lora)")
    # backends.base.DEVICES (a test keeps them in step: the shell does not import the backends, which load yaml)
    p.add_argument("--device", choices=("gpu", "cpu"), default="gpu",
                   help="gpu (default), or cpu: tiny models and smoke runs only (one process, CPU patches)")
    p.add_argument("--lora", action="store_true", help="PaddleFormers: LoRA instead of full fine-tuning (preset lr 5.0e-04)")
    p.add_argument("--lora-rank", type=int, metavar="R", help="PaddleFormers LoRA rank (default: the preset's, 8)")
    p.add_argument("--data", action="append", required=True, metavar="TRAIN.jsonl[:SHARE]",
                   help="training file; repeat for several (mixed by --prob); FILE:0.2 mixes FILE in as 20%% of the "
                        "samples trained (replay), --epochs then counting passes over the other files")
    p.add_argument("--replay", metavar="REPLAY.jsonl", help="the base model's own answers (`data replay`), mixed in at "
                   "--replay-ratio (same as --data REPLAY.jsonl:RATIO)")
    p.add_argument("--replay-ratio", type=float, default=0.2, metavar="R",
                   help="share of the samples trained that come from --replay (default 0.2)")
    p.add_argument("--prob", action="append", type=float, metavar="W",
                   help="weight of each --data file, in order (ERNIEKit's train_dataset_prob; default equal)")
    p.add_argument("--eval", action="append", default=[], metavar="VAL.jsonl", help="validation file (recorded; the stage does not evaluate)")
    p.add_argument("--model", required=True, metavar="BASE_DIR", help="local base model dir with preprocessor_config.json")
    p.add_argument("--release", metavar="v1|v1.5|v1.6",
                   help="the base model's PaddleOCR-VL release (default: detected from BASE_DIR's chat template, "
                        "preprocessor_config.json and inference.yml; a dir that does not say is refused)")
    p.add_argument("--epochs", required=True, type=float, metavar="E", help="epochs over D (> 0; may be fractional)")
    p.add_argument("--gpus", type=int, default=1, metavar="G", help="GPUs per node (default 1)")
    p.add_argument("--nodes", type=int, default=1, metavar="N", help="nodes (default 1); G = gpus x nodes")
    p.add_argument("--packing-size", "--batch-size", dest="batch", type=int, metavar="B",
                   help="B at the base GPU count: ERNIEKit packing_size / PaddleFormers per_device_train_batch_size (preset: 8; cpu: 1)")
    p.add_argument("--grad-accum", type=int, metavar="A", help="gradient accumulation at the base GPU count (preset: 8; cpu: 1)")
    p.add_argument("--lr", type=float, metavar="LR", help="learning rate at the base GPU count (preset: 5.0e-06)")
    p.add_argument("--preset", metavar="NAME", help="erniekit: ocr_16k (default), kie_16k, ocr_16k_8gpu; paddleformers: "
                   "paddleformers_full_16k (default) or paddleformers_lora_16k (with --lora); or a .yaml path")
    p.add_argument("--base-gpus", type=int, metavar="G0", help="GPU count the batch values are for (default: the preset's, 1 for a .yaml path)")
    p.add_argument("--scale", choices=("keep-samples", "scale-lr"), help="how to go from G0 to G GPUs (default keep-samples)")
    p.add_argument("--max-seq-len", type=int, metavar="N", help="default: the preset's (16384); must be >= the longest sample")
    p.add_argument("--allow-drop", action="store_true", help="accept a max_seq_len that makes the trainer drop the longer samples")
    p.add_argument("--min-pixels", type=int, metavar="PX", help="image lower pixel bound (default: the model's preprocessor_config.json)")
    p.add_argument("--max-pixels", type=int, metavar="PX", help="image upper pixel bound (default: the model's preprocessor_config.json)")
    p.add_argument("--output-dir", metavar="DIR", help="the trainer's output_dir (default PLAN_DIR/output)")
    p.add_argument("--master-addr", metavar="HOST", help="node 0's address (required with --nodes > 1)")
    p.add_argument("--master-port", type=int, metavar="PORT", help="default: a stable port derived from PLAN_DIR")
    p.add_argument("--cuda-visible-devices", default=os.environ.get("CUDA_VISIBLE_DEVICES"), metavar="IDS",
                   help="cards per node, e.g. 0,1,2,3 (default: $CUDA_VISIBLE_DEVICES, else 0..G-1); must list --gpus cards")
    p.add_argument("--augment", choices=("none", "default"),
                   help="the trainer's random image augmentation: none (PaddleFormers' default here: its augmentation "
                        "changes image token counts) or default (the trainer's own; ERNIEKit always augments and keeps "
                        "token counts). docs/releases.md")
    p.add_argument("--skip-agreement-check", action="store_true",
                   help="do not build the first sample with the trainer's code to compare it with PaddleX's inference "
                        "prompt now (`train` still checks before it starts)")
    p.add_argument("--general", metavar="PAGES", help="general pages (a folder of images or a .jsonl) that `train` "
                   "compares the fine-tune and the base on after training: drift in its verdict (eval --general)")
    p.add_argument("--general-tasks", default="ocr,table,formula,chart", metavar="ocr,table,...",
                   help="prompts asked on the general pages (default ocr,table,formula,chart)")
    p.add_argument("--max-drift", metavar="LIMIT", help="the verdict's drift limit: 0.1, or table=0.05,ocr=0.1 "
                   "(default 0.1 for every task)")
    p.add_argument("-o", "--out", required=True, metavar="PLAN_DIR")
    p.add_argument("--force", action="store_true", help="replace an existing PLAN_DIR that holds only a previous plan")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="trainer keys, typed and checked by the backend's key schema")
    p.set_defaults(func=run_plan)


def run_plan(args) -> int:
    from paddle_ocrvl_sft import plan
    from paddle_ocrvl_sft.releases import Detection

    result = compute(args)
    print(f"release {Detection.from_record(result.record['release']).describe()}")
    out = plan.write_plan(result, args.out, force=args.force, report=lambda line: print(f"prepared {line}"),
                          check_agreement=not args.skip_agreement_check)
    print(summary(result.record, out))
    return 0


def compute(args):
    """Every check and number of `plan` from its parsed arguments, nothing written (the ui's live form uses it)."""
    from pathlib import Path

    from paddle_ocrvl_sft import backends, plan, releases
    from paddle_ocrvl_sft.errors import UserError
    from paddle_ocrvl_sft.io import refuse_existing

    overrides = backends.get(args.backend).schema.parse_overrides(args.overrides)  # fail fast, before reading data
    refuse_existing(args.out, force=args.force)
    specs = [plan.parse_data_spec(text) for text in args.data]
    if args.replay:
        if not 0 < args.replay_ratio < 1:
            raise UserError(f"--replay-ratio {args.replay_ratio}: a share between 0 and 1 (e.g. 0.2)")
        specs.append((args.replay, args.replay_ratio))
    general = plan_general(args)
    bounds = plan.model_bounds(args.model, args.min_pixels, args.max_pixels)
    detection = releases.detect(args.model, args.release)
    tokenizer_dir = args.model if (Path(args.model) / "tokenizer.model").is_file() else None
    train = plan.summarize_files([path for path, _ in specs], bounds, tokenizer_dir, detection.release)
    eval_sets = plan.summarize_files(args.eval, bounds, tokenizer_dir, detection.release) if args.eval else []
    result = plan.make_plan(
        train=train, eval_sets=eval_sets, model_dir=args.model, epochs=args.epochs, gpus=args.gpus, nodes=args.nodes,
        backend=args.backend, device=args.device, lora=args.lora, lora_rank=args.lora_rank,
        probs=args.prob, preset=args.preset, base_gpus=args.base_gpus, scale=args.scale,
        batch=args.batch, grad_accum=args.grad_accum, learning_rate=args.lr,
        max_seq_len=args.max_seq_len, allow_drop=args.allow_drop, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
        output_dir=args.output_dir, plan_dir=args.out, master_addr=args.master_addr, master_port=args.master_port,
        cuda_visible_devices=args.cuda_visible_devices, overrides=overrides, release=detection, augment=args.augment,
        ratios=[ratio for _, ratio in specs], general=general,
    )
    return result


def plan_general(args) -> dict | None:
    """``--general``/``--general-tasks``/``--max-drift`` as plan.json records them for `train`'s verdict."""
    from paddle_ocrvl_sft.errors import UsageError

    if not args.general:
        if args.max_drift:
            raise UsageError("--max-drift is the limit of the drift on --general pages: give --general PAGES")
        return None
    from paddle_ocrvl_sft.evaluate.drift import load_pages, parse_max_drift, parse_tasks

    tasks = parse_tasks(args.general_tasks)
    load_pages(args.general, tasks)  # checked now, not after training
    return {"pages": os.path.abspath(args.general), "tasks": list(tasks),
            "max_drift": parse_max_drift(args.max_drift) if args.max_drift else None}


def summary(record: dict, out) -> str:
    """A readable table of the plan's numbers, estimates, warnings and the launch command."""
    import json
    from pathlib import Path

    numbers = record["numbers"]
    rows = [(name, _fmt(n["value"]), n["formula"]) for name, n in numbers.items()]
    est = record["estimates"]
    if "gpu_memory_gb_per_gpu" in est:
        rows += [
            ("GPU memory / GPU (ESTIMATE)", f"{est['gpu_memory_gb_per_gpu']['value']} GB", "docs/plan.md#estimates"),
            ("time / step (ESTIMATE)", f"{est['seconds_per_step']['value']} s", "A800/A100-class GPU"),
            ("total time (ESTIMATE)", f"{est['total_hours']['value']} h", "max_steps x time/step"),
        ]
    w1 = max(len(r[0]) for r in rows)
    w2 = max(len(r[1]) for r in rows)
    lines = [f"plan written to {out}/ (config.yaml, plan.json): {record['backend']} on {record['device']}"]
    release = record.get("release")
    if release:
        from paddle_ocrvl_sft import releases

        r = releases.get(release["name"])
        lines.append(f"  release {r.name} ({r.title}): template marker {r.assistant_marker!r}, "
                     f"PaddleX model {r.paddlex_model_name}, doc_parser --pipeline_version {r.pipeline_version}")
    lines.append("")
    lines += [f"  {a:<{w1}}  {b:>{w2}}  {c}" for a, b, c in rows]
    datasets = record["datasets"]["train"]
    lines += ["", "  train data: " + "; ".join(f"{d['path']}: {d['kept']} kept of {d['samples']} (p={d['prob']:g})"
                                          + (f", {100 * d['share']:.0f}% of the samples trained" if "share" in d else "")
                                          for d in datasets)]
    if "augment" in record:
        from paddle_ocrvl_sft.augment import plan_line

        lines.append("  " + plan_line(record["augment"]))
    agreement = json.loads((Path(out) / "plan.json").read_text(encoding="utf-8")).get("agreement", {})
    if agreement.get("status") == "agreed":
        lines.append(f"  prompt agreement: the trainer's training input of {agreement['sample']} equals PaddleX's inference "
                     f"input ({agreement['training']['prompt_tokens']} tokens, {agreement['training']['image_tokens']} image "
                     f"tokens) and the loss starts at the answer ({agreement['seconds']} s)")
        lines += [f"    {note}" for note in agreement["training"]["notes"]]
    elif agreement:
        lines.append(f"  prompt agreement: NOT CHECKED ({agreement['why']})")
    for w in record["warnings"]:
        lines.append(f"warning: {w}")
    launch = record["train"]
    env = " ".join(f"{k}={v}" for k, v in launch["env"].items())
    lines += ["", f"launch ({launch['nodes']} node(s), same on each): {env} {' '.join(launch['command'])}"]
    return "\n".join(lines)


def _fmt(value) -> str:
    from paddle_ocrvl_sft.backends.schema import format_float

    return format_float(value) if isinstance(value, float) else str(value)
