"""The OCR-VL-SFT YAML keys as data: one table, a validator, ``key=value`` overrides, a safe dumper.

ERNIEKit reads the YAML with ``yaml.safe_load`` and hands the dict to PaddleFormers'
``PdArgumentParser.parse_dict``, which keeps only keys that are dataclass fields and converts
nothing (FACTS "Config (YAML) keys"). So a typo is a silent no-op and ``1e-5`` stays the
*string* '1e-5'. This module closes both holes: every key plan writes is in :data:`KEYS`, every
value is type-checked, and :func:`dump_yaml` writes floats PyYAML reads back as floats.

Where the keys come from (read in github PaddlePaddle/ERNIE release/v1.4 / develop and the
PaddleFormers 0.3.2 wheel; defaults are those sources' dataclass defaults):

- ``erniekit/hparams/data_args.py`` ``DataArguments``: dataset paths/probabilities/types,
  ``max_seq_len``, ``num_samples_each_epoch``.
- ``erniekit/hparams/preprocess_args.py`` ``End2EndProcessorArguments`` (input-ids and
  image-modification processor args): ``use_pic_id``, ``sft_*``, ``image_dtype``,
  ``min_pixels``/``max_pixels``/``variable_resolution``.
- ``erniekit/hparams/model_args.py`` ``ModelArguments``: ``model_name_or_path``, ``stage``,
  ``fine_tuning``, attention and recompute switches.
- ``erniekit/hparams/finetuning_args.py`` ``FinetuningArguments`` and its bases
  ``PreTrainingArguments``/``CheckPointArguments``: ``batch_size``, ``packing_size``,
  ``packing``, ``padding``, ``multimodal``, ``from_scratch``, ``compute_type``, ...
- ``paddleformers/trainer/training_args.py`` ``TrainingArguments`` (inherited by
  FinetuningArguments): steps, optimiser, scheduler, parallelism, AMP, checkpoint keys.
- ``erniekit/train/ocr_vl_sft/workflow.py``: how the stage uses them (it builds no eval dataset,
  resumes from the newest ``checkpoint-*``, refuses a non-empty ``output_dir``).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import yaml

from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import read_text

STR, INT, FLOAT, NUMBER, BOOL, STR_LIST = "str", "int", "float", "number", "bool", "list[str]"
UNSET = None  # ERNIEKit's ``None`` default: the key may be left out


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: Any  # ERNIEKit's default when the key is left out
    source: str
    meaning: str
    required: bool = False  # plan always writes it; a config without it is rejected
    danger: str = ""  # what goes wrong with ERNIEKit's default or a wrong value
    choices: tuple = ()
    ignored: str = ""  # non-empty: ERNIEKit does not read this key (why)


_DATA = "erniekit/hparams/data_args.py DataArguments"
_PROC = "erniekit/hparams/preprocess_args.py End2EndProcessorArguments"
_MODEL = "erniekit/hparams/model_args.py ModelArguments"
_FT = "erniekit/hparams/finetuning_args.py FinetuningArguments"
_PRE = "erniekit/hparams/finetuning_args.py PreTrainingArguments"
_TA = "paddleformers/trainer/training_args.py TrainingArguments"
_NONE = "no ERNIEKit argument class"

_REF = "the OCR-VL reference config sets"

# fmt: off
KEYS: tuple[Key, ...] = (
    # --- data -------------------------------------------------------------------------------
    Key("train_dataset_type", STR, UNSET, _DATA, "Reader per training file, comma-separated ('erniekit' each).", required=True),
    Key("eval_dataset_type", STR, "erniekit", _DATA, "Reader of the eval files."),
    Key("train_dataset_path", STR, UNSET, _DATA, "Training .jsonl files, comma-separated; relative image paths resolve against each file's dir.", required=True),
    Key("train_dataset_prob", STR, UNSET, _DATA, "A STRING of comma-separated weights, one per training file: each sampler cycle takes int(p_i * N) records of file i (N = records in all files).", required=True,
        danger="must be a string ('1.0'): ERNIEKit calls .split(',') on it; an unquoted 1.0 crashes"),
    Key("eval_dataset_path", STR, "examples/data/sft-eval.jsonl", _DATA, "Eval .jsonl files (kept for the record: the OCR-VL-SFT stage builds no eval dataset)."),
    Key("eval_dataset_prob", STR, "1.0", _DATA, "Weights of the eval files, a string like train_dataset_prob."),
    Key("max_seq_len", INT, 4096, _DATA, "Tokens per packed sequence; a longer sample is dropped with a log line.",
        danger="ERNIEKit's default 4096 silently drops large-image samples; plan sets it >= the longest sample"),
    Key("num_samples_each_epoch", INT, 6000000, _DATA, "Sampler bookkeeping size (not the dataset size; max_steps ends training)."),
    Key("text_dataset_path", STR, UNSET, _DATA, "Text-only SFT files mixed in (unused for OCR).", ),
    # --- data processor ---------------------------------------------------------------------
    Key("use_pic_id", BOOL, True, _PROC, "Insert 'Picture N:' ids before images.", danger=f"default True adds text the released model never saw; {_REF} False"),
    Key("sft_replace_ids", BOOL, False, _PROC, "Replace the separator token with EOS in SFT input ids.", danger=f"{_REF} True"),
    Key("sft_image_normalize", BOOL, False, _PROC, "Normalise images in the trainer (delayed).", danger=f"{_REF} True"),
    Key("sft_image_rescale", BOOL, False, _PROC, "Rescale images to [0, 1] in the trainer (delayed).", danger=f"{_REF} True"),
    Key("image_dtype", STR, "uint8", _PROC, "dtype of image tensors handed to the model.", danger=f"default uint8; {_REF} float32", choices=("float32", "uint8", "bfloat16")),
    Key("min_pixels", INT, UNSET, _PROC, "Lower pixel bound for training images; applied only with variable_resolution: True (else the model dir's preprocessor_config.json rules)."),
    Key("max_pixels", INT, UNSET, _PROC, "Upper pixel bound for training images; see min_pixels."),
    Key("variable_resolution", BOOL, False, _PROC, "Apply the YAML min_pixels/max_pixels to the image processor (set_pixels)."),
    # --- model ------------------------------------------------------------------------------
    Key("model_name_or_path", STR, UNSET, _MODEL, "LOCAL base model directory (its preprocessor_config.json is read directly).", required=True,
        danger="a hub id like PaddlePaddle/PaddleOCR-VL only works if that relative dir exists"),
    Key("fine_tuning", STR, "LoRA", _MODEL, "Full or LoRA.", required=True, choices=("Full", "LoRA"),
        danger="default LoRA; LoRA for PaddleOCR-VL is not supported in ERNIEKit 1.4: set Full"),
    Key("multimodal", BOOL, False, _PRE, "Train on image+text samples.", required=True, danger="default False skips the image data: set True"),
    Key("use_flash_attention", BOOL, True, _MODEL, "FlashAttention kernels (GPU only)."),
    Key("use_sparse_flash_attn", BOOL, True, _MODEL, "Sparse flash attention over packed-sample boundaries."),
    Key("fuse_rope", BOOL, False, _MODEL, "Fused rotary embedding kernel."),
    Key("recompute_granularity", STR, "full", _MODEL, "What to recompute: full, full_attn or core_attn.", choices=("full", "full_attn", "core_attn")),
    Key("recompute_use_reentrant", BOOL, True, _MODEL, "PyLayer-based recompute (True) or hook-based (False)."),
    # --- finetuning: base -------------------------------------------------------------------
    Key("stage", STR, "SFT", _MODEL, "Training stage dispatched by erniekit/train/tuner.py.", required=True, choices=("OCR-VL-SFT",),
        danger="default SFT runs the text trainer: set OCR-VL-SFT"),
    Key("seed", INT, 42, _TA, "Random seed."),
    Key("do_train", BOOL, False, _TA, "Run training.", required=True, danger="default False: nothing is trained"),
    Key("do_eval", BOOL, False, _TA, "Evaluate after training.",
        danger="OCR-VL-SFT builds no eval dataset (workflow.py: eval_dataset = None): True fails after training"),
    Key("distributed_dataloader", BOOL, False, _TA, "Load data on one rank and broadcast."),
    Key("dataloader_num_workers", INT, 0, _TA, "Data loader worker processes per GPU."),
    Key("prefetch_factor", INT, 2, _PRE, "Batches prefetched per worker."),
    Key("batch_size", INT, 1, _FT, "Sequences per GPU per micro-step; does not change the data (FACTS), keep 1."),
    Key("packing_size", INT, 1, _PRE, "B: samples packed into one sequence (guide: acts like the batch size).", required=True),
    Key("packing", BOOL, True, _PRE, "Pack several samples into one sequence."),
    Key("padding", BOOL, True, _PRE, "Pad every sequence to max_seq_len.", danger=f"default True pads every pack to max_seq_len (slow, more memory); {_REF} False"),
    Key("num_train_epochs", NUMBER, 1.0, _TA, "E: epochs; informational here because the data stream has no length (max_steps ends training)."),
    Key("max_steps", INT, -1, _TA, "Optimizer steps = ceil(D*E/(G*B*A)).", required=True, danger="must be > 0: the dataset is an endless stream"),
    Key("eval_batch_size", INT, UNSET, _NONE, "Commented out in the reference file.",
        ignored="no argument class defines it (per_device_eval_batch_size follows batch_size)"),
    Key("eval_iters", INT, -1, _PRE, "Eval iterations per evaluation (no effect: no eval dataset in this stage)."),
    Key("eval_steps", INT, UNSET, _TA, "Steps between evaluations (no effect: no eval dataset in this stage)."),
    Key("evaluation_strategy", STR, "no", _TA, "no, steps or epoch.", choices=("no", "steps", "epoch"),
        danger="anything but 'no' needs an eval dataset, which this stage never builds"),
    Key("save_steps", INT, 500, _TA, "Steps between checkpoints."),
    Key("save_total_limit", INT, UNSET, _TA, "Checkpoints kept (older ones deleted)."),
    Key("save_strategy", STR, "steps", _TA, "no, steps or epoch.", choices=("no", "steps", "epoch")),
    Key("logging_steps", INT, 500, _TA, "Steps between log lines."),
    Key("release_grads", BOOL, False, _TA, "Free gradients after each step to save memory."),
    Key("gradient_accumulation_steps", INT, 1, _TA, "A: packed sequences per GPU per optimizer step.", required=True),
    Key("logging_dir", STR, UNSET, _TA, "TensorBoard/VisualDL event dir.",
        danger="inside output_dir, a leftover dir from a failed run makes the next run refuse output_dir"),
    Key("output_dir", STR, UNSET, _TA, "Where checkpoints and the final model go.", required=True,
        danger="non-empty without checkpoint-* raises unless overwrite_output_dir; with checkpoints the newest is resumed"),
    Key("overwrite_output_dir", BOOL, False, _TA, "Accept a non-empty output_dir and do not auto-resume from it."),
    Key("resume_from_checkpoint", STR, UNSET, _TA, "Checkpoint dir to resume from (default: newest checkpoint-* in output_dir)."),
    Key("disable_tqdm", BOOL, UNSET, _TA, "No progress bar (log lines only)."),
    # --- finetuning: train ------------------------------------------------------------------
    Key("warmup_steps", INT, 0, _TA, "Linear warmup steps = max(1, ceil(0.01*max_steps))."),
    Key("warmup_ratio", FLOAT, 0.0, _TA, "Warmup as a fraction of max_steps (warmup_steps wins when > 0)."),
    Key("learning_rate", FLOAT, 5e-05, _TA, "Peak learning rate.", required=True, danger="write 5.0e-06, not 5e-6: PyYAML reads the latter as a string"),
    Key("lr_scheduler_type", STR, "linear", _TA, "Scheduler: linear, cosine, constant, ...", danger=f"default linear; {_REF} cosine"),
    Key("min_lr", FLOAT, 0.0, _TA, "Floor of the cosine schedule."),
    Key("layerwise_lr_decay_bound", FLOAT, 1.0, _FT, "Layer-wise LR decay lower bound; 1.0 = off."),
    Key("from_scratch", INT, 1, _PRE, "1 = random init, 0 = load model_name_or_path weights.", required=True, choices=(0, 1),
        danger="default 1 trains from RANDOM weights: set 0"),
    Key("max_grad_norm", FLOAT, 1.0, _TA, "Gradient clipping norm."),
    Key("freeze_config", STR, "", _PRE, "Space-separated freeze_vision / freeze_lm."),
    # --- optimizer --------------------------------------------------------------------------
    Key("weight_decay", FLOAT, 0.0, _TA, "AdamW weight decay."),
    Key("adam_epsilon", FLOAT, 1e-08, _TA, "AdamW epsilon."),
    Key("adam_beta1", FLOAT, 0.9, _TA, "AdamW beta1."),
    Key("adam_beta2", FLOAT, 0.999, _TA, "AdamW beta2.", danger=f"default 0.999; {_REF} 0.95"),
    # --- performance ------------------------------------------------------------------------
    Key("tensor_parallel_degree", INT, -1, _TA, "Tensor parallel ways (1 = off)."),
    Key("pipeline_parallel_degree", INT, -1, _TA, "Pipeline parallel ways; PaddleOCR-VL raises NotImplementedError above 1.", choices=(-1, 1)),
    Key("sharding_parallel_degree", INT, -1, _TA, "Sharding group size (1 = plain data parallel)."),
    Key("sharding", STR, "", _TA, "Sharding stage (stage1/stage2/stage3, optional ' offload')."),
    Key("sequence_parallel", BOOL, False, _TA, "Sequence parallelism (needs tensor parallel)."),
    Key("pipeline_parallel_config", STR, "", _TA, "Space-separated pipeline/AMP options."),
    Key("recompute", BOOL, False, _TA, "Activation recomputation (saves memory)."),
    Key("compute_type", STR, "bf16", _FT, "Precision; there is no fp32 path.", choices=("bf16", "fp16", "fp8", "wint8", "wint4/8", "nf4")),
    Key("fp16_opt_level", STR, "O1", _TA, "AMP level O0/O1/O2.", choices=("O0", "O1", "O2")),
    Key("disable_ckpt_quant", BOOL, False, _FT.replace("FinetuningArguments", "CheckPointArguments"), "Do not quantize checkpoints."),
    Key("amp_master_grad", BOOL, False, _TA, "float32 master gradients under O2."),
    Key("amp_custom_white_list", STR_LIST, UNSET, _TA, "Ops always run in bf16/fp16."),
    Key("amp_custom_black_list", STR_LIST, UNSET, _TA, "Ops kept in fp32."),
    Key("unified_checkpoint", BOOL, False, _TA, "Save checkpoints in the unified (safetensors) layout."),
    Key("unified_checkpoint_config", STR, "", _TA, "Unified-checkpoint options, e.g. async_save."),
    Key("convert_from_hf", BOOL, True, _TA, "Load Hugging Face-layout weights."),
    Key("save_to_hf", BOOL, True, _TA, "Save Hugging Face-layout safetensors."),
    Key("pre_alloc_memory", FLOAT, 0.0, _PRE, "GB to pre-allocate and free (fights fragmentation)."),
    Key("device", STR, "gpu", _TA, "Device; training needs a GPU."),
)
# fmt: on

SCHEMA: dict[str, Key] = {k.name: k for k in KEYS}

# The reference file's layout (shared/reference/erniekit_run_ocr_vl_sft_16k.yaml): section comments,
# key order, and the keys it shows commented out (written as "# key: value" while unset).
_LAYOUT = """\
### data
train_dataset_type
eval_dataset_type
train_dataset_path
train_dataset_prob
eval_dataset_path
eval_dataset_prob
max_seq_len
num_samples_each_epoch
use_pic_id
sft_replace_ids
sft_image_normalize
sft_image_rescale
image_dtype
min_pixels
max_pixels
variable_resolution

### model
model_name_or_path
fine_tuning
multimodal
use_flash_attention
use_sparse_flash_attn

### finetuning
# base
stage
seed
do_train
# do_eval: True
distributed_dataloader
dataloader_num_workers
prefetch_factor
batch_size
packing_size
packing
padding
num_train_epochs
max_steps
# eval_batch_size: 1
# eval_iters: 50
# eval_steps: 100
# evaluation_strategy: steps
save_steps
save_total_limit
save_strategy
logging_steps
release_grads
gradient_accumulation_steps
logging_dir
output_dir
overwrite_output_dir
resume_from_checkpoint
disable_tqdm

# train
warmup_steps
learning_rate
lr_scheduler_type
min_lr
layerwise_lr_decay_bound
from_scratch

# optimizer
weight_decay
adam_epsilon
adam_beta1
adam_beta2

# performance
tensor_parallel_degree
pipeline_parallel_degree
sharding_parallel_degree
sharding
sequence_parallel
pipeline_parallel_config
recompute
recompute_granularity
recompute_use_reentrant
compute_type
fp16_opt_level
disable_ckpt_quant
# amp_master_grad: True
amp_custom_white_list
amp_custom_black_list
unified_checkpoint
# unified_checkpoint_config: async_save
convert_from_hf
save_to_hf
"""
_COMMENTED = re.compile(r"^# (\w+): (.*)$")


def _layout_keys() -> list[str]:
    names = []
    for line in _LAYOUT.splitlines():
        m = _COMMENTED.match(line)
        if m and m.group(1) in SCHEMA:
            names.append(m.group(1))
        elif line and not line.startswith("#"):
            names.append(line)
    return names


LAYOUT_KEYS = tuple(_layout_keys())

# Rules ERNIEKit's defaults break for this stage (FACTS "Defaults that break a run unless set").
REQUIRED_VALUES: dict[str, Any] = {
    "stage": "OCR-VL-SFT",
    "fine_tuning": "Full",
    "multimodal": True,
    "do_train": True,
    "from_scratch": 0,
}
POSITIVE_INTS = ("max_steps", "packing_size", "gradient_accumulation_steps", "batch_size", "max_seq_len")


# --- types --------------------------------------------------------------------------------


def type_ok(kind: str, value: Any) -> bool:
    """Whether ``value`` (as PyYAML loaded it) has the Python type ERNIEKit's field expects."""
    if kind == BOOL:
        return isinstance(value, bool)
    if kind == INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (FLOAT, NUMBER):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == STR:
        return isinstance(value, str)
    if kind == STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise ValueError(f"unknown schema type {kind!r}")


def did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, SCHEMA, n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def unknown_key_message(name: str) -> str:
    return f"unknown ERNIEKit key {name!r}{did_you_mean(name)}: ERNIEKit would silently ignore it"


def config_problems(config: dict) -> list[str]:
    """Every problem of an OCR-VL-SFT config dict, one message per key (empty: the config is good)."""
    problems = []
    for name, value in config.items():
        key = SCHEMA.get(name)
        if key is None:
            problems.append(unknown_key_message(name))
        elif key.ignored:
            problems.append(f"{name}: ERNIEKit does not read this key ({key.ignored}); remove it")
        elif value is None:
            continue  # left to ERNIEKit's default, as if absent
        elif not type_ok(key.type, value):
            problems.append(f"{name}: expected {key.type}, got {type(value).__name__} {value!r}" + _type_hint(key, value))
        elif key.choices and value not in key.choices:
            problems.append(f"{name}: {value!r} is not one of {', '.join(map(repr, key.choices))}" + (f" ({key.danger})" if key.danger else ""))
    for name in (k.name for k in KEYS if k.required):
        if config.get(name) is None:
            problems.append(f"{name}: required for OCR-VL-SFT" + (f" ({SCHEMA[name].danger})" if SCHEMA[name].danger else ""))
    for name, want in REQUIRED_VALUES.items():
        have = config.get(name)
        if have is not None and type_ok(SCHEMA[name].type, have) and have != want:
            problems.append(f"{name}: must be {want!r} for OCR-VL-SFT, got {have!r} ({SCHEMA[name].danger})")
    for name in POSITIVE_INTS:
        value = config.get(name)
        if type_ok(INT, value) and value <= 0:
            problems.append(f"{name}: must be > 0, got {value}" + (f" ({SCHEMA[name].danger})" if SCHEMA[name].danger else ""))
    lr = config.get("learning_rate")
    if type_ok(FLOAT, lr) and not (lr > 0 and math.isfinite(lr)):
        problems.append(f"learning_rate: must be a positive number, got {lr!r}")
    if config.get("do_eval") is True:
        problems.append(f"do_eval: {SCHEMA['do_eval'].danger}")
    if config.get("evaluation_strategy") not in (None, "no"):
        problems.append(f"evaluation_strategy: {SCHEMA['evaluation_strategy'].danger}")
    problems += _dataset_list_problems(config)
    return problems


def _type_hint(key: Key, value: Any) -> str:
    if key.type in (FLOAT, NUMBER) and isinstance(value, str) and _looks_like_float(value):
        return " (PyYAML reads exponents without a dot as strings: write e.g. 5.0e-06)"
    if key.type == STR and not isinstance(value, str):
        return " (quote it: ERNIEKit uses it as a string)"
    return ""


def _dataset_list_problems(config: dict) -> list[str]:
    problems = []
    paths, probs, types = (config.get(k) for k in ("train_dataset_path", "train_dataset_prob", "train_dataset_type"))
    if not all(isinstance(v, str) for v in (paths, probs, types)):
        return problems
    n = len(paths.split(","))
    if len(probs.split(",")) != n:
        problems.append(f"train_dataset_prob: {len(probs.split(','))} weight(s) for {n} train_dataset_path file(s)")
    else:
        try:
            weights = [float(p) for p in probs.split(",")]
            if any(w < 0 for w in weights) or sum(weights) <= 0:
                problems.append(f"train_dataset_prob: weights must be >= 0 with a positive sum, got {probs!r}")
        except ValueError:
            problems.append(f"train_dataset_prob: not a comma-separated list of numbers: {probs!r}")
    if len(types.split(",")) != n:
        problems.append(f"train_dataset_type: {len(types.split(','))} type(s) for {n} train_dataset_path file(s)")
    return problems


def validate_config(config: dict, where: str = "config") -> dict:
    """Raise :class:`UserError` listing every problem; return the config unchanged when clean."""
    problems = config_problems(config)
    if problems:
        raise UserError(f"{where}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return config


# --- key=value overrides (erniekit train CONFIG k=v ...) -------------------------------------

# PyYAML (YAML 1.1) reads 1e-5 as a string; OmegaConf, which parses erniekit's CLI overrides,
# adds exponent floats without a dot. This pattern accepts what OmegaConf accepts there.
_EXP_FLOAT = re.compile(r"^[-+]?(\d[\d_]*)?\.?\d*[eE][-+]?\d+$")


def _looks_like_float(text: str) -> bool:
    return bool(_EXP_FLOAT.match(text.strip()))


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` -> (key, typed value), typed by the schema.

    Like erniekit's OmegaConf CLI the value is read as YAML (``1e-5`` is a float, ``True`` a
    bool, ``[a, b]`` a list; an empty value means "unset"). Stricter than OmegaConf: a str key
    keeps the raw text (``train_dataset_prob=1.0`` stays '1.0', which ERNIEKit splits on
    commas), an int for a float key becomes a float, and anything else of the wrong type is an
    error naming the key.
    """
    if "=" not in item:
        raise UserError(f"override {item!r}: expected key=value")
    name, text = (s.strip() for s in item.split("=", 1))
    key = SCHEMA.get(name)
    if key is None:
        raise UserError(f"override {item!r}: {unknown_key_message(name)}")
    if key.ignored:
        raise UserError(f"override {item!r}: ERNIEKit does not read {name} ({key.ignored})")
    if text == "":
        return name, None
    try:
        value = text if key.type == STR else yaml.safe_load(text)
    except yaml.YAMLError:
        raise UserError(f"override {item!r}: {name}: not a valid value for {key.type}") from None
    if isinstance(value, str) and key.type in (FLOAT, NUMBER) and _looks_like_float(value):
        value = float(value)
    if key.type == FLOAT and type_ok(INT, value):
        value = float(value)
    if not type_ok(key.type, value):
        raise UserError(f"override {item!r}: {name}: expected {key.type}, got {value!r}")
    if key.choices and value not in key.choices:
        raise UserError(f"override {item!r}: {name}: {value!r} is not one of {', '.join(map(repr, key.choices))}")
    return name, value


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """All overrides at once; every bad one is reported, not just the first."""
    out, errors = {}, []
    for item in items:
        try:
            name, value = parse_override(item)
        except UserError as exc:
            errors.append(str(exc))
            continue
        out[name] = value
    if errors:
        raise UserError("\n".join(errors))
    return out


def apply_overrides(config: dict, overrides: dict[str, Any]) -> dict:
    """A new config with overrides applied; ``None`` removes the key (ERNIEKit's default)."""
    merged = dict(config)
    for name, value in overrides.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    return merged


# --- YAML out -------------------------------------------------------------------------------


def format_float(value: float) -> str:
    """A float PyYAML's safe_load reads back as the same float: ``5e-06`` -> ``5.0e-06``.

    YAML 1.1 (PyYAML) needs a dot in the mantissa and a signed exponent; ``repr`` gives the
    shortest text that round-trips exactly, so only those two details are patched.
    """
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    text = repr(float(value))
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    if "." not in mantissa:
        mantissa += ".0"
    return f"{mantissa}e{int(exponent):+03d}"


def format_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return format_float(value)
    if isinstance(value, str):
        plain = value and value == value.strip() and not any(c in value for c in "#:'\"{}[],&*!|>%@`\n\t\\")
        if plain:
            try:
                plain = yaml.safe_load(value) == value
            except yaml.YAMLError:
                plain = False
        if plain:
            return value
        return yaml.safe_dump(value, default_style='"', allow_unicode=True, width=math.inf).rstrip("\n")
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to the ERNIEKit YAML")


def _format_entry(name: str, value: Any) -> list[str]:
    if isinstance(value, list):
        return [f"{name}:"] + [f"  - {format_scalar(v)}" for v in value]
    return [f"{name}: {format_scalar(value)}"]


def dump_yaml(config: dict, header: str = "") -> str:
    """The config as YAML in the reference file's order and sections; checked to round-trip.

    Keys set to ``None`` are left out (ERNIEKit's default). Keys the reference shows commented
    out stay commented while unset. Keys outside the reference layout go in a last section.
    """
    values = {k: v for k, v in config.items() if v is not None}
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    for line in _LAYOUT.splitlines():
        m = _COMMENTED.match(line)
        name = m.group(1) if m and m.group(1) in SCHEMA else (line if line and not line.startswith("#") else None)
        if name is None:
            lines.append(line)
        elif name in values:
            lines += _format_entry(name, values[name])
        elif m:
            lines.append(line)
    extra = [k for k in values if k not in LAYOUT_KEYS]
    if extra:
        lines += ["", "# more keys"]
        for name in extra:
            lines += _format_entry(name, values[name])
    text = "\n".join(lines) + "\n"
    if yaml.safe_load(text) != values:  # a bug here would mean ERNIEKit reads other values
        raise AssertionError("internal error: the written YAML does not load back to the same config")
    return text


def load_yaml_config(path) -> dict:
    """Read an ERNIEKit YAML exactly as ERNIEKit does (``yaml.safe_load``); errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping of ERNIEKit keys")
    return data


def schema_markdown() -> str:
    """The key table for docs/plan.md (generated, so the doc cannot drift from the schema)."""
    rows = [
        "| key | type | ERNIEKit default | required | meaning | watch out | source |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in KEYS:
        default = "—" if k.default is None else f"`{format_scalar(k.default)}`"
        note = k.danger or (f"ERNIEKit ignores it: {k.ignored}" if k.ignored else "")
        cells = [f"`{k.name}`", k.type, default, "yes" if k.required else "", k.meaning, note, k.source]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
