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

from paddle_ocrvl_sft.backends import erniekit_release
from paddle_ocrvl_sft.backends.base import Backend, PlanValues, Prepared
from paddle_ocrvl_sft.backends.checkpoints import Layout
from paddle_ocrvl_sft.backends.schema import (BOOL, FLOAT, INT, STR, STR_LIST, UNSET, Key, KeySchema,
                                              dataset_list_problems)
from paddle_ocrvl_sft.backends.training_args import ta

_DATA = "erniekit/hparams/data_args.py DataArguments"
_PROC = "erniekit/hparams/preprocess_args.py End2EndProcessorArguments"
_MODEL = "erniekit/hparams/model_args.py ModelArguments"
_FT = "erniekit/hparams/finetuning_args.py FinetuningArguments"
_PRE = "erniekit/hparams/finetuning_args.py PreTrainingArguments"
_TA = "paddleformers/trainer/training_args.py TrainingArguments"  # keys only this table has; shared ones: ta()
_NONE = "no ERNIEKit argument class"

_REF = "the OCR-VL reference config sets"
_NO_EVAL = "the OCR-VL-SFT stage builds no eval dataset (workflow.py: eval_dataset = None)"

# fmt: off
KEYS: tuple[Key, ...] = (
    # --- data -------------------------------------------------------------------------------
    Key("train_dataset_type", STR, UNSET, _DATA, "Reader per training file, comma-separated ('erniekit' each).", required=True),
    Key("eval_dataset_type", STR, "erniekit", _DATA, "Reader of the eval files.", no_effect=_NO_EVAL),
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
    ta("seed"),
    ta("do_train", danger="default False: nothing is trained"),
    ta("do_eval", meaning="Evaluate after training.",
           danger="OCR-VL-SFT builds no eval dataset (workflow.py: eval_dataset = None): True fails after training"),
    Key("distributed_dataloader", BOOL, False, _TA, "Load data on one rank and broadcast."),
    ta("dataloader_num_workers"),
    Key("prefetch_factor", INT, 2, _PRE, "Batches prefetched per worker."),
    Key("batch_size", INT, 1, _FT, "Sequences per GPU per micro-step as logged; keep 1.",
        no_effect="it does not change what a step trains, only the throughput ERNIEKit logs (a step consumes "
                  "gradient_accumulation_steps packed sequences per GPU)"),
    Key("packing_size", INT, 1, _PRE, "B: samples packed into one sequence (guide: acts like the batch size).", required=True),
    Key("packing", BOOL, True, _PRE, "Pack several samples into one sequence."),
    Key("padding", BOOL, True, _PRE, "Pad every sequence to max_seq_len.", danger=f"default True pads every pack to max_seq_len (slow, more memory); {_REF} False"),
    ta("num_train_epochs", meaning="E: epochs; informational here because the data stream has no length (max_steps ends training)."),
    ta("max_steps", danger="must be > 0: the dataset is an endless stream"),
    Key("eval_batch_size", INT, UNSET, _NONE, "Commented out in the reference file.",
        ignored="no argument class defines it (per_device_eval_batch_size follows batch_size)"),
    Key("eval_iters", INT, -1, _PRE, "Eval iterations per evaluation.", no_effect=_NO_EVAL),
    ta("eval_steps", meaning="Steps between evaluations.", no_effect=_NO_EVAL),
    ta("evaluation_strategy", danger="anything but 'no' needs an eval dataset, which this stage never builds"),
    ta("save_steps"),
    ta("save_total_limit"),
    ta("save_strategy"),
    ta("logging_steps"),
    Key("release_grads", BOOL, False, _TA, "Free gradients after each step to save memory."),
    ta("gradient_accumulation_steps", meaning="A: packed sequences per GPU per optimizer step."),
    ta("logging_dir", danger="inside output_dir, a leftover dir from a failed run makes the next run refuse output_dir"),
    ta("output_dir", danger="non-empty without checkpoint-* raises unless overwrite_output_dir; with checkpoints the newest is resumed"),
    ta("overwrite_output_dir"),
    ta("resume_from_checkpoint", meaning="Checkpoint dir to resume from (default: newest checkpoint-* in output_dir; train --resume passes it)."),
    ta("disable_tqdm", default=UNSET),  # PaddleFormers 0.3.2: no default
    # --- finetuning: train ------------------------------------------------------------------
    ta("warmup_steps"),
    ta("warmup_ratio"),
    ta("learning_rate"),
    ta("lr_scheduler_type", meaning="PaddleFormers' scheduler key; the OCR-VL-SFT trainer does not read it.",
           no_effect="PretrainingTrainer.create_scheduler reads lr_scheduler", use_instead="lr_scheduler"),
    Key("lr_scheduler", STR, "cosine", _FT, "The schedule the OCR-VL-SFT trainer uses (cosine decays to min_lr at max_steps).",
        choices=("cosine", "constant", "wsd"),
        danger="PretrainingTrainer.create_scheduler builds only cosine, constant and wsd; other names its help lists "
               "(linear, constant_with_warmup) build no schedule"),
    ta("min_lr"),
    Key("layerwise_lr_decay_bound", FLOAT, 1.0, _FT, "Layer-wise LR decay lower bound; 1.0 = off."),
    Key("from_scratch", INT, 1, _PRE, "1 = random init, 0 = load model_name_or_path weights.", required=True, choices=(0, 1),
        danger="default 1 trains from RANDOM weights: set 0"),
    ta("max_grad_norm"),
    Key("freeze_config", STR, "", _PRE, "Space-separated freeze_vision / freeze_lm."),
    # --- optimizer --------------------------------------------------------------------------
    ta("weight_decay"),
    ta("adam_epsilon"),
    ta("adam_beta1"),
    ta("adam_beta2", danger=f"default 0.999; {_REF} 0.95"),
    # --- performance ------------------------------------------------------------------------
    Key("tensor_parallel_degree", INT, -1, _TA, "Tensor parallel ways (1 = off)."),
    Key("pipeline_parallel_degree", INT, -1, _TA, "Pipeline parallel ways; PaddleOCR-VL raises NotImplementedError above 1.", choices=(-1, 1)),
    Key("sharding_parallel_degree", INT, -1, _TA, "Sharding group size (1 = plain data parallel)."),
    ta("sharding", default=""),  # PaddleFormers 0.3.2
    Key("sequence_parallel", BOOL, False, _TA, "Sequence parallelism (needs tensor parallel)."),
    Key("pipeline_parallel_config", STR, "", _TA, "Space-separated pipeline/AMP options."),
    Key("recompute", BOOL, False, _TA, "Activation recomputation (saves memory)."),
    Key("compute_type", STR, "bf16", _FT, "Precision; there is no fp32 path.", choices=("bf16", "fp16", "fp8", "wint8", "wint4/8", "nf4")),
    ta("fp16_opt_level"),
    Key("disable_ckpt_quant", BOOL, False, _FT.replace("FinetuningArguments", "CheckPointArguments"), "Do not quantize checkpoints."),
    ta("amp_master_grad", default=False),  # PaddleFormers 0.3.2
    Key("amp_custom_white_list", STR_LIST, UNSET, _TA, "Ops always run in bf16/fp16."),
    Key("amp_custom_black_list", STR_LIST, UNSET, _TA, "Ops kept in fp32."),
    ta("unified_checkpoint"),
    Key("unified_checkpoint_config", STR, "", _TA, "Unified-checkpoint options, e.g. async_save."),
    Key("convert_from_hf", BOOL, True, _TA, "Load Hugging Face-layout weights."),
    Key("save_to_hf", BOOL, True, _TA, "Save Hugging Face-layout safetensors."),
    Key("pre_alloc_memory", FLOAT, 0.0, _PRE, "GB to pre-allocate and free (fights fragmentation)."),
    ta("device", meaning="gpu, or cpu for tiny models with the CPU patches (backends/cpu/erniekit.py)."),
    Key("use_sparse_head_and_loss_fn", BOOL, False, _MODEL, "Sparse LM head + fused loss (GPU kernels)."),
    ta("report_to", danger="visualdl 2.5.3 with protobuf >= 5 fails at start-up on CPU setups: 'none' there"),
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
    # tokens_per_sec_per_card = max_seq_len x sequences per step / time (pretraining_trainer.py): what full packs
    # would give, not the tokens trained
    tokens_per_second_key, tokens_per_second_nominal = "tokens_per_sec_per_card", True
    dataset_type = "erniekit"
    # unified (safetensors) checkpoints: PaddleFormers 0.3.2's _save_checkpoint writes scheduler.pdparams last
    checkpoint_layouts = (Layout("unified", files=("trainer_state.json", "scheduler.pdparams"),
                                 indexes=("model.safetensors.index.json", "optimizer.safetensors.index.json")),)
    # CPU_TRAINING.md B: the keys a CPU run needs; packing off makes B = packing_size = 1 sample a step
    cpu_keys = {
        "device": "cpu", "use_flash_attention": False, "use_sparse_flash_attn": False, "fuse_rope": False,
        "use_sparse_head_and_loss_fn": False, "report_to": "none", "packing": False, "dataloader_num_workers": 0,
        "prefetch_factor": None, "recompute": False, "overwrite_output_dir": True,
    }

    def prepare(self, stage_dir, values: PlanValues, device: str) -> Prepared:
        """For 1.5/1.6 the assistant-marker fix (backends/erniekit_release.py); nothing else is rewritten."""
        prepared = super().prepare(stage_dir, values, device)
        if erniekit_release.needs_fix(values.release):
            prepared.notes.append(erniekit_release.write_hook(stage_dir, values.release))
        return prepared

    def release_env(self, plan_dir, release: str) -> dict[str, str]:
        return erniekit_release.launch_env(plan_dir) if erniekit_release.needs_fix(release) else {}

    def backend_keys(self, base: dict, values: PlanValues, prepared: Prepared) -> dict:
        if values.pixel_bounds:
            # ERNIEKit applies YAML min/max_pixels only with variable_resolution (set_pixels)
            return {"min_pixels": values.pixel_bounds[0], "max_pixels": values.pixel_bounds[1], "variable_resolution": True}
        return {}

    def device_problems(self, config: dict, device: str) -> list[str]:
        """v1.4 without flash attention builds its causal mask one key too long (``_update_causal_mask``:
        ``past_seen_tokens + sequence_length + 1``): "Broadcast dimension mismatch" on any device. Only
        the CPU path patches it (backends/cpu/erniekit.py ``causal-mask``), so a GPU plan keeps it on."""
        if device == "gpu" and config.get("use_flash_attention") is False:
            return [f"use_flash_attention: False on a GPU hits {CAUSAL_MASK_BUG}; only the CPU path patches it. On a "
                    "pre-Ampere GPU (no flash attention) train with --backend paddleformers and _attn_implementation=sdpa, "
                    "or use an Ampere or newer GPU"]
        return []


# ERNIEKit v1.4's upstream bug with use_flash_attention False (docs/train.md, diagnose.py "causal-mask")
CAUSAL_MASK_BUG = ("an ERNIEKit v1.4 bug: without flash attention the causal mask is built one key too long "
                   "(Broadcast dimension mismatch [.., N, N] and [.., N, N+1])")


BACKEND = ErnieKit()
