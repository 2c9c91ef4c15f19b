"""ERNIEKit's ``OCR-VL-SFT`` stage (ERNIEKit v1.4): its keys as data, its config, its launch.

Full fine-tuning only (LoRA for PaddleOCR-VL is not in v1.4: FACTS). On GPUs it runs as
``erniekit train CONFIG`` (paddle.distributed.launch, one process per card); on a CPU, for tiny
models, as one process with the six compatibility patches of :mod:`paddle_ocrvl_sft.backends.cpu.erniekit`.

Where the keys come from (read in github PaddlePaddle/ERNIE release/v1.4 / develop@41ab1c5 and the
PaddleFormers 0.3.2 wheel; defaults are those sources' dataclass defaults):

- ``erniekit/hparams/data_args.py`` ``DataArguments``: dataset paths/probabilities/types,
  ``max_seq_len``, ``num_samples_each_epoch``.
- ``erniekit/hparams/preprocess_args.py`` ``End2EndProcessorArguments``: ``use_pic_id``, ``sft_*``,
  ``image_dtype``, ``min_pixels``/``max_pixels``/``variable_resolution``.
- ``erniekit/hparams/model_args.py`` ``ModelArguments``: ``model_name_or_path``, ``stage``,
  ``fine_tuning``, attention and recompute switches.
- ``erniekit/hparams/finetuning_args.py`` ``FinetuningArguments`` and its bases
  ``PreTrainingArguments``/``CheckPointArguments``: ``batch_size``, ``packing_size``, ``packing``,
  ``padding``, ``multimodal``, ``from_scratch``, ``compute_type``, ``lr_scheduler``, ...
- ``paddleformers/trainer/training_args.py`` ``TrainingArguments`` (inherited by
  FinetuningArguments): steps, optimiser, scheduler, parallelism, AMP, checkpoint keys.
- ``erniekit/train/ocr_vl_sft/workflow.py``: how the stage uses them (it builds no eval dataset,
  resumes from the newest ``checkpoint-*``, refuses a non-empty ``output_dir``).
"""

from __future__ import annotations

from paddle_ocrvl_sft.backends.base import Backend, PlanValues, Prepared
from paddle_ocrvl_sft.backends.checkpoints import Layout
from paddle_ocrvl_sft.backends.schema import (BOOL, FLOAT, INT, NUMBER, STR, STR_LIST, UNSET, Key, KeySchema,
                                              dataset_list_problems, format_float)

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
    Key("lr_scheduler_type", STR, "linear", _TA, "PaddleFormers' scheduler key; the OCR-VL-SFT trainer does not use it.",
        danger="PretrainingTrainer.create_scheduler reads lr_scheduler instead: setting this alone changes nothing"),
    Key("lr_scheduler", STR, "cosine", _FT, "The schedule the OCR-VL-SFT trainer uses (cosine decays to min_lr at max_steps).",
        choices=("cosine", "constant", "linear", "constant_with_warmup")),
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
    Key("device", STR, "gpu", _TA, "gpu, or cpu for tiny models with the CPU patches (backends/cpu/erniekit.py).", choices=("gpu", "cpu")),
    Key("use_sparse_head_and_loss_fn", BOOL, False, _MODEL, "Sparse LM head + fused loss (GPU kernels)."),
    Key("report_to", STR, UNSET, _TA, "Where metrics go: visualdl (default), tensorboard, none.",
        danger="visualdl 2.5.3 with protobuf >= 5 fails at start-up on CPU setups: 'none' there"),
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
lr_scheduler
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
use_sparse_head_and_loss_fn
report_to
device
"""

# Rules ERNIEKit's defaults break for this stage (FACTS "Defaults that break a run unless set").
REQUIRED_VALUES = {"stage": "OCR-VL-SFT", "fine_tuning": "Full", "multimodal": True, "do_train": True, "from_scratch": 0}


def _no_eval(config: dict) -> list[str]:
    """The stage builds no eval dataset: asking for evaluation fails after training."""
    problems = []
    if config.get("do_eval") is True:
        problems.append(f"do_eval: {SCHEMA['do_eval'].danger}")
    if config.get("evaluation_strategy") not in (None, "no"):
        problems.append(f"evaluation_strategy: {SCHEMA['evaluation_strategy'].danger}")
    return problems


SCHEMA = KeySchema(
    trainer="ERNIEKit", keys=KEYS, layout=_LAYOUT, required_values=REQUIRED_VALUES,
    positive_ints=("max_steps", "packing_size", "gradient_accumulation_steps", "batch_size", "max_seq_len"),
    rules=(_no_eval, dataset_list_problems), unknown="ERNIEKit would silently ignore it",
)


class ErnieKit(Backend):
    name, title = "erniekit", "ERNIEKit"
    schema = SCHEMA
    batch_key = "packing_size"
    executable, dist_log_env = "erniekit", "ERNIEKIT_DIST_LOG"
    presets = {"ocr_16k": 1, "kie_16k": 1, "ocr_16k_8gpu": 8}
    cpu_module = "paddle_ocrvl_sft.backends.cpu.erniekit"
    pixel_bounds_note = ("min_pixels/max_pixels: ERNIEKit resizes training images within these bounds (variable_resolution: True), "
                         "but PaddleX and transformers read the model dir's preprocessor_config.json at inference: set the same "
                         "bounds in the exported bundle's preprocessor_config.json. Token counts here use the given bounds.")
    tokens_per_second_key = "tokens_per_sec_per_card"
    # unified (safetensors) checkpoints: PaddleFormers 0.3.2's _save_checkpoint writes scheduler.pdparams last
    checkpoint_layouts = (Layout("unified", files=("trainer_state.json", "scheduler.pdparams"),
                                 indexes=("model.safetensors.index.json", "optimizer.safetensors.index.json")),)
    # CPU_TRAINING.md B: the keys a CPU run needs; packing off makes B = packing_size = 1 sample a step
    cpu_keys = {
        "device": "cpu", "use_flash_attention": False, "use_sparse_flash_attn": False, "fuse_rope": False,
        "use_sparse_head_and_loss_fn": False, "report_to": "none", "packing": False, "dataloader_num_workers": 0,
        "prefetch_factor": None, "recompute": False, "overwrite_output_dir": True,
    }

    def render_config(self, base: dict, values: PlanValues, prepared: Prepared) -> dict:
        n = len(prepared.train)
        computed = {
            "train_dataset_type": ",".join(["erniekit"] * n),
            "train_dataset_path": ",".join(prepared.train),
            "train_dataset_prob": ",".join(format_float(float(p)) for p in (values.probs or [1.0] * n)),
            "max_seq_len": values.max_seq_len,
            "model_name_or_path": prepared.model_dir,
            "num_train_epochs": _number_or_int(values.epochs),
            "max_steps": values.max_steps,
            "warmup_steps": values.warmup_steps,
            "learning_rate": values.learning_rate,
            "packing_size": values.batch,
            "gradient_accumulation_steps": values.grad_accum,
            "output_dir": values.output_dir,
            # beside output_dir, not inside: a leftover log dir makes ERNIEKit refuse output_dir (FACTS)
            "logging_dir": values.logging_dir,
        }
        config = dict(base)
        if prepared.eval:
            computed.update(eval_dataset_type="erniekit", eval_dataset_path=",".join(prepared.eval),
                            eval_dataset_prob=",".join(["1.0"] * len(prepared.eval)))
        else:
            for k in ("eval_dataset_path", "eval_dataset_prob"):
                config.pop(k, None)  # the preset's example paths would point nowhere
        if values.pixel_bounds:
            # ERNIEKit applies YAML min/max_pixels only with variable_resolution (set_pixels)
            computed.update(min_pixels=values.pixel_bounds[0], max_pixels=values.pixel_bounds[1], variable_resolution=True)
        config.update(computed)
        return config


def _number_or_int(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


BACKEND = ErnieKit()
