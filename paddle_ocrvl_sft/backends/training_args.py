"""PaddleFormers' ``TrainingArguments`` keys, which both trainers' argument classes inherit.

ERNIEKit v1.4's ``FinetuningArguments`` subclasses PaddleFormers 0.3.2's ``TrainingArguments``;
PaddleFormers 1.2's ``FinetuningArguments`` subclasses its own. One row per key here, shared by the
two key tables (``backends/erniekit.py``, ``backends/paddleformers.py``); a table takes a row as it
is (:func:`ta`) or with what differs for its trainer (a default that changed between 0.3.2 and
1.2, a danger only one stage has).
"""

from __future__ import annotations

from dataclasses import replace

from paddle_ocrvl_sft.backends.schema import BOOL, FLOAT, INT, NUMBER, STR, UNSET, Key

SOURCE = "paddleformers/trainer/training_args.py TrainingArguments"
_LR = "write 5.0e-06, not 5e-6: PyYAML reads the latter as a string"

# fmt: off
_ROWS = (
    Key("seed", INT, 42, SOURCE, "Random seed."),
    Key("do_train", BOOL, False, SOURCE, "Run training.", required=True, danger="default False: nothing is trained, no error"),
    Key("do_eval", BOOL, False, SOURCE, "Evaluate on the eval files."),
    Key("dataloader_num_workers", INT, 0, SOURCE, "Data loader worker processes per GPU."),
    Key("num_train_epochs", NUMBER, 1.0, SOURCE, "E: epochs (informational: max_steps ends training)."),
    Key("max_steps", INT, -1, SOURCE, "Optimizer steps = ceil(D*E/(G*B*A)).", required=True),
    Key("eval_steps", INT, UNSET, SOURCE, "Steps between evaluations."),
    Key("evaluation_strategy", STR, "no", SOURCE, "no, steps or epoch.", choices=("no", "steps", "epoch")),
    Key("save_steps", INT, 500, SOURCE, "Steps between checkpoints."),
    Key("save_total_limit", INT, UNSET, SOURCE, "Checkpoints kept (older ones deleted)."),
    Key("save_strategy", STR, "steps", SOURCE, "no, steps or epoch.", choices=("no", "steps", "epoch")),
    Key("logging_steps", INT, 500, SOURCE, "Steps between log lines."),
    Key("gradient_accumulation_steps", INT, 1, SOURCE, "A: micro-batches (packed sequences) per GPU per optimizer step.", required=True),
    Key("logging_dir", STR, UNSET, SOURCE, "VisualDL/TensorBoard event dir."),
    Key("output_dir", STR, UNSET, SOURCE, "Where checkpoints and the final model go.", required=True),
    Key("overwrite_output_dir", BOOL, False, SOURCE, "Accept a non-empty output_dir and do not auto-resume from it."),
    Key("resume_from_checkpoint", STR, UNSET, SOURCE, "Checkpoint dir to resume from (train --resume passes it)."),
    Key("disable_tqdm", BOOL, True, SOURCE, "No progress bar (log lines only)."),
    Key("warmup_steps", INT, 0, SOURCE, "Linear warmup steps = max(1, ceil(0.01*max_steps)) (wins over warmup_ratio when > 0)."),
    Key("warmup_ratio", FLOAT, 0.0, SOURCE, "Warmup as a fraction of max_steps, used only when warmup_steps is 0.",
        no_effect="plan always sets warmup_steps >= 1, which wins over warmup_ratio (get_warmup_steps); "
                  "warmup_steps is computed by plan"),
    Key("learning_rate", FLOAT, 5e-05, SOURCE, "Peak learning rate.", required=True, danger=_LR),
    Key("lr_scheduler_type", STR, "linear", SOURCE, "PaddleFormers' schedule: linear, cosine, constant, ..."),
    Key("min_lr", FLOAT, 0.0, SOURCE, "Floor of the cosine schedule."),
    Key("max_grad_norm", FLOAT, 1.0, SOURCE, "Gradient clipping norm."),
    Key("weight_decay", FLOAT, 0.0, SOURCE, "AdamW weight decay."),
    Key("adam_epsilon", FLOAT, 1e-08, SOURCE, "AdamW epsilon."),
    Key("adam_beta1", FLOAT, 0.9, SOURCE, "AdamW beta1."),
    Key("adam_beta2", FLOAT, 0.999, SOURCE, "AdamW beta2."),
    Key("sharding", STR, "stage1", SOURCE, "Sharding stage (stage1/stage2/stage3, optional ' offload')."),
    Key("fp16_opt_level", STR, "O1", SOURCE, "AMP level O0/O1/O2.", choices=("O0", "O1", "O2")),
    Key("amp_master_grad", BOOL, True, SOURCE, "float32 master gradients under O2 (float32 runs need False)."),
    Key("unified_checkpoint", BOOL, False, SOURCE, "Save checkpoints in the unified (safetensors) layout."),
    Key("device", STR, "gpu", SOURCE, "gpu, or cpu for tiny models (plan --device cpu).", choices=("gpu", "cpu")),
    Key("report_to", STR, UNSET, SOURCE, "Where metrics go: visualdl (default), tensorboard, none."),
)
# fmt: on
TRAINING_ARGUMENTS: dict[str, Key] = {k.name: k for k in _ROWS}


def ta(name: str, **changes) -> Key:
    """The shared row of ``name``, with a trainer's own ``changes`` (default, danger, ...)."""
    return replace(TRAINING_ARGUMENTS[name], **changes)
