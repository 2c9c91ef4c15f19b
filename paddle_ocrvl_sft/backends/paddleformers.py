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
from pathlib import Path

from paddle_ocrvl_sft.backends import paddleformers_template
from paddle_ocrvl_sft.backends.base import Backend, PlanValues, Prepared, link_or_copy
from paddle_ocrvl_sft.backends.checkpoints import Layout
from paddle_ocrvl_sft.backends.paddleformers_template import BUILTIN as BUILTIN_TEMPLATE
from paddle_ocrvl_sft.backends.paddleformers_template import TEMPLATE_NAMES
from paddle_ocrvl_sft.backends.schema import BOOL, INT, STR, UNSET, Key, KeySchema, dataset_list_problems
from paddle_ocrvl_sft.backends.training_args import ta
from paddle_ocrvl_sft.errors import UserError

_DATA = "paddleformers/cli/hparams/data_args.py DataArguments"
_MODEL = "paddleformers/cli/hparams/model_args.py ModelArguments"
_FT = "paddleformers/cli/hparams/finetuning_args.py FinetuningArguments"
_TA = "paddleformers/trainer/training_args.py TrainingArguments"  # keys only this table has; shared ones: ta()
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
    Key("template", STR, UNSET, _DATA, "Chat template: the release's, registered by custom_register_path (paddleocr_vl: PaddleFormers' built-in, v1 markers).",
        required=True, choices=(BUILTIN_TEMPLATE, *TEMPLATE_NAMES),
        danger="left out: 'A placeholder is required in the string formatter.'; the built-in paddleocr_vl has the first release's markers"),
    Key("custom_register_path", STR, UNSET, _DATA, "A .py file PaddleFormers executes before parsing the config: plan's PLAN_DIR/paddleocr_vl_template.py registers the release's template.",
        danger="PaddleFormers pops it before parsing: the file must exist wherever training runs"),
    # --- model ------------------------------------------------------------------------------
    Key("model_name_or_path", STR, UNSET, _MODEL, "Base model dir (plan writes a prepared copy: see docs/train.md).", required=True),
    Key("_attn_implementation", STR, "flashmask", _MODEL, "Attention kernel: flashmask (GPU), sdpa or eager.",
        choices=("flashmask", "sdpa", "eager"), danger="flashmask needs a GPU (CPU: 'Flag FLAGS_cudnn_deterministic cannot get its value')"),
    Key("stage", STR, "SFT", _MODEL, "Training stage.", required=True, choices=("VL-SFT",), danger="default SFT is the text trainer: set VL-SFT"),
    Key("fine_tuning", STR, "LoRA", _MODEL, "full or lora (sets `lora`).", required=True, choices=("full", "lora"),
        danger="default LoRA: set it explicitly"),
    Key("lora", BOOL, False, _MODEL, "LoRA adapters (derived from fine_tuning)."),
    Key("lora_rank", INT, 8, _MODEL, "LoRA rank r (VL-SFT sets lora_alpha = 2r: scale 2)."),
    Key("lora_alpha", INT, -1, _MODEL, "LoRA alpha; VL-SFT does not read it (the scale is 2: alpha = 2·lora_rank).",
        no_effect="VL-SFT builds its LoRAConfig with lora_alpha = 2·lora_rank (4 with rslora) itself "
                  "(cli/train/sft/workflow.py create_peft_model)"),
    Key("copy_custom_file_list", STR, "", _MODEL, "Space-separated files copied from the base dir into the output."),
    # --- finetuning -------------------------------------------------------------------------
    ta("seed"),
    ta("do_train"),
    ta("do_eval", meaning="Evaluate on the eval files (eval_loss in the log)."),
    Key("per_device_train_batch_size", INT, 8, _TA, "B: samples per GPU per micro-step.", required=True),
    Key("per_device_eval_batch_size", INT, 8, _TA, "Eval samples per GPU."),
    ta("num_train_epochs"),
    ta("max_steps", danger="-1 estimates from max_estimate_samples samples; plan computes it from the data"),
    Key("max_estimate_samples", INT, 100000, _FT, "Samples read to estimate steps when max_steps is -1.",
        no_effect="read only when max_steps is -1, and plan always computes max_steps"),
    ta("eval_steps"),
    ta("evaluation_strategy"),
    Key("eval_accumulation_steps", INT, UNSET, _TA, "Eval steps accumulated before moving outputs."),
    ta("save_steps"),
    ta("save_strategy"),
    ta("save_total_limit"),
    ta("logging_steps"),
    ta("logging_dir"),
    ta("output_dir"),
    ta("overwrite_output_dir"),
    ta("resume_from_checkpoint"),
    ta("disable_tqdm"),
    ta("report_to"),
    ta("gradient_accumulation_steps"),
    ta("dataloader_num_workers"),
    # --- train ------------------------------------------------------------------------------
    ta("learning_rate", meaning="Peak learning rate (recipe: 5.0e-06 full, 5.0e-04 LoRA)."),
    ta("lr_scheduler_type", danger=f"default linear; {_RECIPE} cosine"),
    ta("warmup_steps"),
    ta("warmup_ratio"),
    ta("min_lr"),
    ta("max_grad_norm"),
    Key("freeze_config", STR, "", _TA, "Space-separated freeze_vision / freeze_lm."),
    # --- optimizer --------------------------------------------------------------------------
    ta("weight_decay"),
    ta("adam_epsilon"),
    ta("adam_beta1"),
    ta("adam_beta2", danger=f"default 0.999; {_RECIPE} 0.95"),
    # --- performance ------------------------------------------------------------------------
    Key("tensor_model_parallel_size", INT, -1, _TA, "Tensor parallel ways (1 = off)."),
    Key("pipeline_model_parallel_size", INT, -1, _TA, "Pipeline parallel ways (1 = off)."),
    Key("sharding_parallel_size", INT, -1, _TA, "Sharding group size."),
    ta("sharding"),
    Key("recompute_granularity", STR, UNSET, _TA, "full, full_attn or core_attn.", choices=("full", "full_attn", "core_attn")),
    Key("recompute_method", STR, UNSET, _TA, "uniform or block."),
    Key("recompute_num_layers", INT, UNSET, _TA, "Layers per recompute chunk."),
    Key("bf16", BOOL, False, _TA, "bfloat16 mixed precision (a no-op autocast on CPU).", danger=f"{_RECIPE} true"),
    Key("fp16", BOOL, False, _TA, "float16 mixed precision."),
    ta("fp16_opt_level"),
    ta("amp_master_grad"),
    Key("pre_alloc_memory", INT, 0, _TA, "GB pre-allocated on the GPU."),
    ta("unified_checkpoint"),
    Key("save_checkpoint_format", STR, "flex_checkpoint", _TA, "Checkpoint format (flex_checkpoint: *.distcp shards)."),
    Key("load_checkpoint_format", STR, "flex_checkpoint", _TA, "Format checkpoints are resumed from."),
    ta("device", danger="on a CPU-only Paddle build 'gpu' fails: 'PaddlePaddle is not compiled with CUDA'"),
)
# fmt: on

_LAYOUT = """\
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
custom_register_path

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
    dataset_type = "messages"
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

        return Prepared(messages(values.train, "train"), messages(values.eval, "eval"), str(plan_dir / "model"),
                        template_module=str(plan_dir / paddleformers_template.MODULE))

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
        prepared.notes.append(paddleformers_template.write_module(Path(prepared.template_module), values.release, values.augment))
        return prepared

    def backend_keys(self, base: dict, values: PlanValues, prepared: Prepared) -> dict:
        lora = values.lora_rank is not None or base.get("fine_tuning") == "lora"
        keys = {
            "train_dataset_prob": ",".join(["1.0"] * len(prepared.train)),  # mix_strategy concat: equal weights
            "fine_tuning": "lora" if lora else "full",
            "lora": lora,
        }
        if values.lora_rank is not None:
            keys["lora_rank"] = values.lora_rank
        keys.update(paddleformers_template.config_keys(prepared.template_module, values.release))
        if prepared.eval:
            keys.update(do_eval=True, evaluation_strategy="steps", eval_steps=base.get("save_steps", 500))
        else:
            keys.update(do_eval=False, evaluation_strategy="no", eval_steps=None)
        return keys


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

