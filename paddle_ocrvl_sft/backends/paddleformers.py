"""PaddleFormers >= 1.2 ``VL-SFT`` for PaddleOCR-VL: full fine-tuning or LoRA, a maintained trainer.

Its keys as data, the data in its ``messages`` format, a model dir it can read, and its launch.
Keys and defaults read off paddleformers 1.2.0 (``paddleformers/cli/hparams``: ``ModelArguments``,
``DataArguments``, ``FinetuningArguments`` over ``paddleformers/trainer/training_args.py``; checked
against the installed backend by tests/test_paddleformers_backend.py) and the upstream recipe
(PaddleFormers ``examples/best_practices/PaddleOCR-VL/``: 16k full and LoRA configs).

PaddleFormers refuses keys its argument classes do not define ("Some specified arguments are not
used by the PdArgumentParser"), but only once the run has started; this schema says so before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from paddle_ocrvl_sft.backends.base import Backend, PlanValues, Prepared, link_or_copy
from paddle_ocrvl_sft.backends.checkpoints import Layout
from paddle_ocrvl_sft.backends.schema import (BOOL, FLOAT, INT, NUMBER, STR, UNSET, Key, KeySchema,
                                              dataset_list_problems)
from paddle_ocrvl_sft.errors import UserError

_DATA = "paddleformers/cli/hparams/data_args.py DataArguments"
_MODEL = "paddleformers/cli/hparams/model_args.py ModelArguments"
_FT = "paddleformers/cli/hparams/finetuning_args.py FinetuningArguments"
_TA = "paddleformers/trainer/training_args.py TrainingArguments"
_RECIPE = "the upstream PaddleOCR-VL recipe sets"

# fmt: off
KEYS: tuple[Key, ...] = (
    # --- data -------------------------------------------------------------------------------
    Key("train_dataset_type", STR, UNSET, _DATA, "Reader per training file, comma-separated ('messages' each).", required=True),
    Key("eval_dataset_type", STR, "erniekit", _DATA, "Reader of the eval files ('messages')."),
    Key("train_dataset_path", STR, UNSET, _DATA, "Training .jsonl files (messages + images), comma-separated; relative image paths resolve against each file's dir.", required=True),
    Key("train_dataset_prob", STR, UNSET, _DATA, "A STRING of comma-separated weights, one per file.", required=True,
        danger="left out, PaddleFormers fails: could not convert string to float: 'None'"),
    Key("eval_dataset_path", STR, "examples/data/sft-eval.jsonl", _DATA, "Eval .jsonl files (messages format)."),
    Key("eval_dataset_prob", STR, "1.0", _DATA, "Weights of the eval files, a string."),
    Key("max_seq_len", INT, 4096, _DATA, "Longest token sequence; longer samples are cut or dropped.",
        danger="the default 4096 is below large-image samples; plan sets it >= the longest sample"),
    Key("padding_free", BOOL, False, _DATA, "Concatenate a micro-batch's samples without padding.", danger=f"{_RECIPE} True"),
    Key("truncate_packing", BOOL, True, _DATA, "Truncate samples that overflow a pack.", danger=f"{_RECIPE} False"),
    Key("mix_strategy", STR, "concat", _DATA, "How several files are mixed.", choices=("concat",)),
    Key("template_backend", STR, "custom", _DATA, "Chat template source.", choices=("custom",)),
    Key("template", STR, UNSET, _DATA, "Chat template: paddleocr_vl.", required=True, choices=("paddleocr_vl",),
        danger="left out: 'A placeholder is required in the string formatter.'"),
    # --- model ------------------------------------------------------------------------------
    Key("model_name_or_path", STR, UNSET, _MODEL, "Base model dir (plan writes a prepared copy: see docs/train.md).", required=True),
    Key("_attn_implementation", STR, "flashmask", _MODEL, "Attention kernel: flashmask (GPU), sdpa or eager.",
        choices=("flashmask", "sdpa", "eager"), danger="flashmask needs a GPU (CPU: 'Flag FLAGS_cudnn_deterministic cannot get its value')"),
    Key("stage", STR, "SFT", _MODEL, "Training stage.", required=True, choices=("VL-SFT",), danger="default SFT is the text trainer: set VL-SFT"),
    Key("fine_tuning", STR, "LoRA", _MODEL, "full or lora (sets `lora`).", required=True, choices=("full", "lora"),
        danger="default LoRA: set it explicitly"),
    Key("lora", BOOL, False, _MODEL, "LoRA adapters (derived from fine_tuning)."),
    Key("lora_rank", INT, 8, _MODEL, "LoRA rank r (lora_alpha defaults to 2r: scale 2)."),
    Key("lora_alpha", INT, -1, _MODEL, "LoRA alpha (-1: 2 x lora_rank)."),
    Key("copy_custom_file_list", STR, "", _MODEL, "Space-separated files copied from the base dir into the output."),
    # --- finetuning -------------------------------------------------------------------------
    Key("seed", INT, 42, _TA, "Random seed."),
    Key("do_train", BOOL, False, _TA, "Run training.", required=True, danger="default False: nothing is trained, no error"),
    Key("do_eval", BOOL, False, _TA, "Evaluate on the eval files (eval_loss in the log)."),
    Key("per_device_train_batch_size", INT, 8, _TA, "B: samples per GPU per micro-step.", required=True),
    Key("per_device_eval_batch_size", INT, 8, _TA, "Eval samples per GPU."),
    Key("num_train_epochs", NUMBER, 1.0, _TA, "E (informational: max_steps ends training)."),
    Key("max_steps", INT, -1, _TA, "Optimizer steps = ceil(D*E/(G*B*A)).", required=True,
        danger="-1 estimates from max_estimate_samples samples; plan computes it from the data"),
    Key("max_estimate_samples", INT, 100000, _FT, "Samples read to estimate steps when max_steps is -1."),
    Key("eval_steps", INT, UNSET, _TA, "Steps between evaluations."),
    Key("evaluation_strategy", STR, "no", _TA, "no, steps or epoch.", choices=("no", "steps", "epoch")),
    Key("eval_accumulation_steps", INT, UNSET, _TA, "Eval steps accumulated before moving outputs."),
    Key("save_steps", INT, 500, _TA, "Steps between checkpoints."),
    Key("save_strategy", STR, "steps", _TA, "no, steps or epoch.", choices=("no", "steps", "epoch")),
    Key("save_total_limit", INT, UNSET, _TA, "Checkpoints kept (older ones deleted)."),
    Key("logging_steps", INT, 500, _TA, "Steps between log lines."),
    Key("logging_dir", STR, UNSET, _TA, "VisualDL/TensorBoard event dir."),
    Key("output_dir", STR, UNSET, _TA, "Where checkpoints and the final model go.", required=True),
    Key("overwrite_output_dir", BOOL, False, _TA, "Accept a non-empty output_dir (and do not auto-resume)."),
    Key("resume_from_checkpoint", STR, UNSET, _TA, "Checkpoint dir to resume from."),
    Key("disable_tqdm", BOOL, True, _TA, "No progress bar (log lines only)."),
    Key("report_to", STR, UNSET, _TA, "visualdl, tensorboard, none."),
    Key("gradient_accumulation_steps", INT, 1, _TA, "A: micro-batches per GPU per optimizer step.", required=True),
    Key("dataloader_num_workers", INT, 0, _TA, "Data loader worker processes per GPU."),
    # --- train ------------------------------------------------------------------------------
    Key("learning_rate", FLOAT, 5e-05, _TA, "Peak learning rate (recipe: 5.0e-06 full, 5.0e-04 LoRA).", required=True,
        danger="write 5.0e-06, not 5e-6: PyYAML reads the latter as a string"),
    Key("lr_scheduler_type", STR, "linear", _TA, "linear, cosine, constant, ...", danger=f"default linear; {_RECIPE} cosine"),
    Key("warmup_steps", INT, 0, _TA, "Linear warmup steps = max(1, ceil(0.01*max_steps)) (wins over warmup_ratio)."),
    Key("warmup_ratio", FLOAT, 0.0, _TA, "Warmup as a fraction of max_steps."),
    Key("min_lr", FLOAT, 0.0, _TA, "Floor of the cosine schedule."),
    Key("max_grad_norm", FLOAT, 1.0, _TA, "Gradient clipping norm."),
    Key("freeze_config", STR, "", _TA, "Space-separated freeze_vision / freeze_lm."),
    # --- optimizer --------------------------------------------------------------------------
    Key("weight_decay", FLOAT, 0.0, _TA, "AdamW weight decay."),
    Key("adam_epsilon", FLOAT, 1e-08, _TA, "AdamW epsilon."),
    Key("adam_beta1", FLOAT, 0.9, _TA, "AdamW beta1."),
    Key("adam_beta2", FLOAT, 0.999, _TA, "AdamW beta2.", danger=f"default 0.999; {_RECIPE} 0.95"),
    # --- performance ------------------------------------------------------------------------
    Key("tensor_model_parallel_size", INT, -1, _TA, "Tensor parallel ways (1 = off)."),
    Key("pipeline_model_parallel_size", INT, -1, _TA, "Pipeline parallel ways (1 = off)."),
    Key("sharding_parallel_size", INT, -1, _TA, "Sharding group size."),
    Key("sharding", STR, "stage1", _TA, "Sharding stage."),
    Key("recompute_granularity", STR, UNSET, _TA, "full, full_attn or core_attn.", choices=("full", "full_attn", "core_attn")),
    Key("recompute_method", STR, UNSET, _TA, "uniform or block."),
    Key("recompute_num_layers", INT, UNSET, _TA, "Layers per recompute chunk."),
    Key("bf16", BOOL, False, _TA, "bfloat16 mixed precision (a no-op autocast on CPU).", danger=f"{_RECIPE} true"),
    Key("fp16", BOOL, False, _TA, "float16 mixed precision."),
    Key("fp16_opt_level", STR, "O1", _TA, "AMP level O0/O1/O2.", choices=("O0", "O1", "O2")),
    Key("amp_master_grad", BOOL, True, _TA, "float32 master gradients (float32 runs need False)."),
    Key("pre_alloc_memory", INT, 0, _TA, "GB pre-allocated on the GPU."),
    Key("unified_checkpoint", BOOL, False, _TA, "Unified (safetensors) checkpoints."),
    Key("save_checkpoint_format", STR, "flex_checkpoint", _TA, "Checkpoint format (flex_checkpoint: *.distcp shards)."),
    Key("load_checkpoint_format", STR, "flex_checkpoint", _TA, "Format checkpoints are resumed from."),
    Key("device", STR, "gpu", _TA, "gpu, or cpu for tiny models.", choices=("gpu", "cpu"),
        danger="on a CPU-only Paddle build 'gpu' fails: 'PaddlePaddle is not compiled with CUDA'"),
)
# fmt: on

_LAYOUT = """\\
### data
train_dataset_type
eval_dataset_type
train_dataset_path
train_dataset_prob
eval_dataset_path
eval_dataset_prob
max_seq_len
padding_free
truncate_packing
dataloader_num_workers
mix_strategy
template_backend
template

### model
model_name_or_path
_attn_implementation
lora
lora_rank
lora_alpha
copy_custom_file_list

### finetuning
# base
stage
fine_tuning
seed
do_train
do_eval
per_device_eval_batch_size
per_device_train_batch_size
num_train_epochs
max_steps
max_estimate_samples
eval_steps
evaluation_strategy
save_steps
save_strategy
save_total_limit
logging_steps
gradient_accumulation_steps
logging_dir
output_dir
overwrite_output_dir
resume_from_checkpoint
disable_tqdm
report_to
eval_accumulation_steps

# train
lr_scheduler_type
warmup_steps
warmup_ratio
learning_rate
min_lr
max_grad_norm
freeze_config

# optimizer
weight_decay
adam_epsilon
adam_beta1
adam_beta2

# performance
tensor_model_parallel_size
pipeline_model_parallel_size
sharding_parallel_size
sharding
recompute_granularity
recompute_method
recompute_num_layers
bf16
fp16
fp16_opt_level
amp_master_grad
pre_alloc_memory
device

# save
unified_checkpoint
save_checkpoint_format
load_checkpoint_format
"""


def _lora_consistent(config: dict) -> list[str]:
    tuning, lora = config.get("fine_tuning"), config.get("lora")
    if isinstance(tuning, str) and isinstance(lora, bool) and lora != (tuning == "lora"):
        return [f"lora: {lora} contradicts fine_tuning: {tuning} (PaddleFormers derives lora from fine_tuning)"]
    return []


SCHEMA = KeySchema(
    trainer="PaddleFormers", keys=KEYS, layout=_LAYOUT, required_values={"stage": "VL-SFT", "do_train": True},
    positive_ints=("max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "max_seq_len"),
    rules=(_lora_consistent, dataset_list_problems),
    unknown="PaddleFormers would stop at start-up ('Some specified arguments are not used by the PdArgumentParser')",
)

# The base model's preprocessor_config.json names SiglipImageProcessor through an ``auto_map`` to
# remote code; PaddleFormers' own class for the same processing is this one (CPU_TRAINING A.3).
NATIVE_IMAGE_PROCESSOR = "PaddleOCRVLImageProcessor"


class PaddleFormers(Backend):
    name, title = "paddleformers", "PaddleFormers"
    schema = SCHEMA
    batch_key = "per_device_train_batch_size"
    executable, dist_log_env = "paddleformers-cli", "PADDLEFORMERS_DIST_LOG"
    presets = {"paddleformers_full_16k": 1, "paddleformers_lora_16k": 1}
    cpu_module = "paddle_ocrvl_sft.backends.cpu.paddleformers"
    pixel_bounds_note = ("min_pixels/max_pixels: PaddleFormers reads the model dir's preprocessor_config.json; token counts "
                         "here use the given bounds, training does not")
    tokens_per_second_key = "interval_tokens_per_second_per_device"
    checkpoint_layouts = (
        # flex checkpoints (*.distcp, GPU default): each rank writes saved_signal_<rank> after its optimizer
        # shards; PaddleFormers 1.2's _save_checkpoint writes scheduler.pdparams after that
        Layout("flex", files=("trainer_state.bin", "scheduler.pdparams"), state_dirs=("model_state", "optimizer_state"),
               signal_dirs=("optimizer_state",)),
        # unified checkpoints (safetensors, the CPU keys): resumable without paddle.distributed, exportable
        Layout("unified", files=("trainer_state.bin", "scheduler.pdparams"),
               indexes=("model.safetensors.index.json", "optimizer.safetensors.index.json")),
    )
    supports_lora = True
    # CPU_TRAINING.md A: the keys a CPU run needs: eager attention, float32 (paddle's CPU build has no bf16
    # conv2d/matmul, which O2 would cast the model to), no GPU memory pre-allocation; and unified
    # (safetensors) checkpoints: resuming a flex checkpoint needs paddle.distributed's hybrid group
    # ("'Fleet' object has no attribute '_hcg'" in one CPU process)
    cpu_keys = {"device": "cpu", "_attn_implementation": "eager", "bf16": False, "fp16_opt_level": "O1",
                "amp_master_grad": False, "dataloader_num_workers": 0, "pre_alloc_memory": 0,
                "unified_checkpoint": True, "save_checkpoint_format": "unified_checkpoint",
                "load_checkpoint_format": "unified_checkpoint",
                "overwrite_output_dir": True, "recompute_granularity": None, "recompute_method": None,
                "recompute_num_layers": None}

    def default_preset(self, lora: bool = False) -> str:
        return "paddleformers_lora_16k" if lora else "paddleformers_full_16k"

    def check_options(self, *, probs, lora: bool, lora_rank) -> None:
        if probs and len(set(probs)) > 1:
            raise UserError("--prob: PaddleFormers concatenates the --data files (mix_strategy: concat); "
                            "unequal weights are an ERNIEKit option (--backend erniekit)")
        if lora_rank is not None and not lora:
            raise UserError("--lora-rank needs --lora")

    def prepared_paths(self, plan_dir: Path, values: PlanValues) -> Prepared:
        def messages(paths, kind):
            return tuple(str(plan_dir / "data" / f"{kind}{i}.{Path(p).stem}.messages.jsonl") for i, p in enumerate(paths))

        return Prepared(messages(values.train, "train"), messages(values.eval, "eval"), str(plan_dir / "model"))

    def prepare(self, stage_dir: Path, values: PlanValues, device: str) -> Prepared:
        """The data as ``messages`` JSONL and a model dir PaddleFormers reads (CPU_TRAINING.md A)."""
        from paddle_ocrvl_sft.data.convert import convert_file

        prepared = self.prepared_paths(stage_dir, values)
        (stage_dir / "data").mkdir(parents=True, exist_ok=True)
        for source, target in zip(values.train + values.eval, prepared.train + prepared.eval):
            rejects: list[str] = []
            summary = convert_file("erniekit", source, target, to="messages", skip_bad=True, report=rejects.append)
            if not summary.written:
                raise UserError(f"{source}: no sample converts to PaddleFormers' messages format: " + "; ".join(summary.reasons))
            left_out = f"; {summary.rejected} invalid sample(s) left out, as ERNIEKit would drop them" if summary.rejected else ""
            prepared.notes.append(f"data: {source} -> data/{Path(target).name} ({summary.converted} samples as messages + images{left_out})")
        prepared.notes += prepare_model_dir(Path(values.model_dir), Path(prepared.model_dir), cpu=device == "cpu")
        return prepared

    def render_config(self, base: dict, values: PlanValues, prepared: Prepared) -> dict:
        n = len(prepared.train)
        lora = values.lora_rank is not None or base.get("fine_tuning") == "lora"
        computed = {
            "train_dataset_type": ",".join(["messages"] * n),
            "train_dataset_path": ",".join(prepared.train),
            "train_dataset_prob": ",".join(["1.0"] * n),
            "max_seq_len": values.max_seq_len,
            "model_name_or_path": prepared.model_dir,
            "num_train_epochs": float(values.epochs),
            "max_steps": values.max_steps,
            "warmup_steps": values.warmup_steps,
            "learning_rate": values.learning_rate,
            "per_device_train_batch_size": values.batch,
            "gradient_accumulation_steps": values.grad_accum,
            "output_dir": values.output_dir,
            "logging_dir": values.logging_dir,
            "fine_tuning": "lora" if lora else "full",
            "lora": lora,
        }
        if values.lora_rank is not None:
            computed["lora_rank"] = values.lora_rank
        config = dict(base)
        if prepared.eval:
            computed.update(eval_dataset_type="messages", eval_dataset_path=",".join(prepared.eval),
                            eval_dataset_prob=",".join(["1.0"] * len(prepared.eval)), do_eval=True,
                            evaluation_strategy="steps", eval_steps=base.get("save_steps", 500))
        else:
            for k in ("eval_dataset_path", "eval_dataset_prob", "eval_dataset_type", "eval_steps"):
                config.pop(k, None)
            computed.update(do_eval=False, evaluation_strategy="no")
        config.update(computed)
        return config


def prepare_model_dir(base: Path, dest: Path, *, cpu: bool) -> list[str]:
    """A copy of BASE that PaddleFormers loads; BASE itself is never modified.

    Weights and tokenizer are hard links (no copy of GBs where the file system allows); two JSON
    files are rewritten: ``preprocessor_config.json`` names PaddleFormers' native image processor
    when its ``auto_map`` points at remote code BASE does not hold ("Unrecognized image processor"),
    and on CPU ``config.json`` gets ``fuse_rms_norm: false`` (the fused kernel is GPU-only:
    "fused_rms_norm_ext is not registered"). CPU_TRAINING.md A.3 and A.4.
    """
    if not base.is_dir():
        raise UserError(f"--model {base}: not a directory")
    notes = []
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(base.iterdir()):
        if path.is_file() and path.name not in ("preprocessor_config.json", "config.json"):
            link_or_copy(path, dest / path.name)
    processor = _read_json(base / "preprocessor_config.json")
    remote = (processor.get("auto_map") or {}).get("AutoImageProcessor", "")
    if remote and not (base / f"{remote.split('.')[0]}.py").is_file():
        processor.pop("auto_map", None)
        processor["image_processor_type"] = NATIVE_IMAGE_PROCESSOR
        notes.append(f"model: preprocessor_config.json names {NATIVE_IMAGE_PROCESSOR} (BASE's auto_map points at "
                     f"{remote}, whose code BASE does not hold)")
    config = _read_json(base / "config.json")
    if cpu:
        config["fuse_rms_norm"] = False
        notes.append("model: config.json fuse_rms_norm false (the fused RMSNorm kernel is GPU-only)")
    (dest / "preprocessor_config.json").write_text(json.dumps(processor, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (dest / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    notes.append(f"model: model/ is a prepared copy of {base} (weights hard-linked; BASE is not modified)")
    return notes


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


BACKEND = PaddleFormers()


# --- outputs: what `export` needs from a PaddleFormers run ----------------------------------------

# PaddleFormers' PaddleOCR-VL has no SigLIP pooling head, so its saved weights lack these tensors,
# which PaddleX's loader requires (set_hf_state_dict AssertionError): CPU_TRAINING.md A.5.
HEAD_PREFIX = "visual.vision_model.head."
ADAPTER_CONFIG = "lora_config.json"


def missing_head(run_names: set[str], base_names: set[str]) -> list[str]:
    """The base tensors a PaddleFormers output lacks, when they are exactly the SigLIP head (else [])."""
    missing = sorted(base_names - run_names)
    return missing if missing and all(n.startswith(HEAD_PREFIX) for n in missing) else []


def is_lora_output(src: Path) -> bool:
    return (src / ADAPTER_CONFIG).is_file() and any(src.glob("peft_model*.safetensors"))


def merge_lora(src: Path, base_files: list[Path], work: Path, log=print) -> Path:
    """Merge a LoRA run with PaddleFormers' own exporter (in its environment), then VERIFY the merge.

    ``base_files``: the base model's safetensors file(s) (as export found them). The adapter files
    are copied into ``work`` (the exporter writes next to them: RUN_DIR stays untouched); returns the
    merged safetensors file. safetensors 0.8 makes this exporter write
    transposed garbage without an error (CPU_TRAINING.md A.6): the environment pins 0.7, and
    :func:`verify_lora_merge` checks every target anyway.
    """
    import shutil
    import subprocess

    from paddle_ocrvl_sft.backends import envs

    adapter = work / "adapter"
    adapter.mkdir(parents=True)
    for path in [src / ADAPTER_CONFIG, *src.glob("peft_model*")]:
        shutil.copy2(path, adapter / path.name)
    config = _read_json(src / ADAPTER_CONFIG)
    trained_on = Path(config.get("base_model_name_or_path") or "")
    model = trained_on if trained_on.is_dir() else base_files[0].parent
    (work / "export.yaml").write_text(
        f"fine_tuning: LoRA\nmodel_name_or_path: {json.dumps(str(model))}\noutput_dir: {json.dumps(str(adapter))}\ndevice: cpu\n",
        encoding="utf-8")
    trainer = envs.require("paddleformers")
    cmd = [str(trainer.python), "-m", PaddleFormers.cpu_module, "export", str(work / "export.yaml")]
    log(f"merging LoRA with PaddleFormers' exporter: {' '.join(cmd)}")
    proc = subprocess.run(cmd, env=trainer.env({**os.environ, "PYTHONPATH": str(envs.PACKAGE_PARENT), "NO_COLOR": "1"}),
                          capture_output=True, text=True)
    merged = sorted((adapter / "export").glob("model-*.safetensors")) or sorted((adapter / "export").glob("model.safetensors"))
    if proc.returncode or len(merged) != 1:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        raise UserError(f"{src}: PaddleFormers' LoRA export failed (exit {proc.returncode}):\n{tail}")
    log(verify_lora_merge(src, base_files, merged[0]))
    return merged[0]


def verify_lora_merge(run_dir: Path, base_files: list[Path], merged_file: Path) -> str:
    """merged == W + scale·(A·B)ᵀ on every LoRA target, and == W elsewhere; raises UserError if not.

    PaddleFormers stores ``lora_A`` as [in, r] and ``lora_B`` as [r, out] (Paddle's [in, out]
    layout); the weights are in the original [out, in] layout, hence the transpose. The merged
    file is rounded to bfloat16 precision, so values must agree to bf16 rounding (2^-8 relative).
    """
    import numpy as np

    from paddle_ocrvl_sft.safetensors_file import read_tensors

    config = _read_json(run_dir / ADAPTER_CONFIG)
    scale = float(config.get("scaling") or config["lora_alpha"] / config["r"])
    adapter = {}
    for path in sorted(run_dir.glob("peft_model*.safetensors")):
        adapter.update(read_tensors(path))
    base = {name: w for path in base_files for name, w in read_tensors(path).items()}
    merged = read_tensors(merged_file)
    targets = {name[: -len("lora_A")] + "weight": name for name in adapter if name.endswith(".lora_A")}
    if not targets:
        raise UserError(f"{run_dir}: no lora_A tensors in the adapter: nothing to verify")
    bad = []
    for name, w in base.items():
        got = merged.get(name)
        if got is None or got.shape != w.shape:
            bad.append(f"{name}: {'missing' if got is None else f'shape {got.shape} != {w.shape}'}")
            continue
        expected = w.astype(np.float64)
        if name in targets:
            a, b = adapter[targets[name]], adapter[targets[name][:-1] + "B"]
            expected = expected + scale * (a.astype(np.float64) @ b.astype(np.float64)).T
        error = np.abs(got.astype(np.float64) - expected)
        if not np.all(error <= 2.0 ** -8 * np.abs(expected) + 1e-6):
            bad.append(f"{name}: differs by up to {float(error.max()):.3g}")
    if bad:
        raise UserError(f"{merged_file}: the LoRA merge is WRONG ({len(bad)} tensor(s); expected W + {scale:g}·(A·B)ᵀ): "
                        + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
                        + " — is safetensors 0.8 installed in the PaddleFormers environment? (CPU_TRAINING.md A.6)")
    return (f"verified the LoRA merge: {len(targets)} target tensors == W + {scale:g}·(A·B)ᵀ and "
            f"{len(base) - len(targets)} others == W (to bfloat16 rounding)")
