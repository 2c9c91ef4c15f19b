"""What every trainer backend provides: a key schema, a config from the plan's numbers, data and
model in the trainer's format, the command and environment to launch it, and how to read its log.

The plan's formulas (``plan.py``) do not change with the trainer; only where their values go does.
"""

from __future__ import annotations

import os
import re
import shlex
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from paddle_ocrvl_sft.backends import checkpoints
from paddle_ocrvl_sft.backends.checkpoints import Layout
from paddle_ocrvl_sft.backends.schema import KeySchema, format_float, number_or_int
from paddle_ocrvl_sft.errors import UserError

DEVICES = ("gpu", "cpu")
CPU_NOTE = ("--device cpu is for tiny models and smoke runs (minutes, a few hundred tokens per second); "
            "a 0.9B fine-tune belongs on a GPU")


@dataclass(frozen=True)
class PlanValues:
    """What the plan decided, in trainer-neutral terms (B is the backend's batch key)."""

    train: tuple[str, ...]  # validated ERNIEKit-format JSONL files (absolute paths)
    probs: tuple[float, ...] | None
    eval: tuple[str, ...]
    model_dir: str
    epochs: float
    max_steps: int
    warmup_steps: int
    learning_rate: float
    batch: int
    grad_accum: int
    max_seq_len: int
    output_dir: str
    logging_dir: str
    pixel_bounds: tuple[int, int] | None = None  # (min, max) when given on the command line
    lora_rank: int | None = None  # PaddleFormers LoRA
    release: str = "v1"  # the base model's PaddleOCR-VL release (releases.py): the template trained with
    augment: str = "none"  # plan --augment: "none" or "default" (the trainer's own image augmentation)


@dataclass
class Prepared:
    """Trainer-format inputs written into PLAN_DIR: data files and a model dir the trainer can read."""

    train: tuple[str, ...]
    eval: tuple[str, ...]
    model_dir: str
    notes: list[str] = field(default_factory=list)
    template_module: str = ""  # PaddleFormers: the chat template module config.yaml registers (backends/paddleformers_template.py)


@dataclass(frozen=True)
class Launch:
    command: list[str]
    env: dict[str, str]

    def shell(self) -> str:
        """The command as one line to paste."""
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + shlex.join(self.command)


# Both trainers log through PaddleFormers' trainer: "[time] [    INFO] - loss: 11.5, ..., global_step: 1, ..."
LOG_FIELD = re.compile(r"(\w+): ([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Backend:
    """Defaults shared by both trainers; each backend module sets the data and overrides what differs."""

    name: str
    title: str
    schema: KeySchema
    batch_key: str  # the config key holding B of max_steps = ceil(D*E/(G*B*A))
    executable: str  # the launcher on PATH (GPU): `erniekit` / `paddleformers-cli`
    dist_log_env: str  # env var naming paddle.distributed.launch's log dir
    presets: dict[str, int]  # preset name (configs/NAME.yaml) -> GPU count its batch values are for
    cpu_keys: dict  # keys `plan --device cpu` sets (None removes a key)
    cpu_module: str  # module run in the trainer's Python on CPU (applies the CPU patches)
    tokens_per_second_key: str  # the log field with per-device tokens/s
    tokens_per_second_nominal = False  # True: the trainer logs max_seq_len per sequence, not the tokens trained
    dataset_type: str  # the reader name of the data files it trains on (train_dataset_type)
    checkpoint_layouts: tuple[Layout, ...]  # what a checkpoint-N holds once completely written (any one layout)
    supports_lora = False
    pixel_bounds_note: str  # what --min-pixels/--max-pixels do with this trainer

    def default_preset(self, lora: bool = False) -> str:
        return next(iter(self.presets))

    def check_options(self, *, probs, lora: bool, lora_rank) -> None:
        if lora or lora_rank is not None:
            raise UserError(f"--lora: {self.title} does not support LoRA for PaddleOCR-VL; use --backend paddleformers")

    def prepared_paths(self, plan_dir: Path, values: PlanValues) -> Prepared:
        """Where the trainer's inputs will be once ``prepare`` has run (default: the plan's own inputs)."""
        return Prepared(values.train, values.eval, values.model_dir)

    def prepare(self, stage_dir: Path, values: PlanValues, device: str) -> Prepared:
        """Write the trainer's inputs in its own format into the plan dir being built (default: none).

        ``stage_dir`` becomes PLAN_DIR by a rename: what is written here must sit where
        :meth:`prepared_paths` says, and refer to other files by absolute or PLAN_DIR-relative paths.
        """
        return self.prepared_paths(stage_dir, values)

    def render_config(self, base: dict, values: PlanValues, prepared: Prepared) -> dict:
        """The preset ``base`` with the plan's numbers and inputs in this trainer's keys.

        The keys both trainers read the same way are written here, once; :meth:`backend_keys`
        adds (or removes) what only this trainer has.
        """
        n = len(prepared.train)
        computed = {
            "train_dataset_type": ",".join([self.dataset_type] * n),
            "train_dataset_path": ",".join(prepared.train),
            "train_dataset_prob": ",".join(format_float(float(p)) for p in (values.probs or [1.0] * n)),
            "max_seq_len": values.max_seq_len,
            "model_name_or_path": prepared.model_dir,
            "num_train_epochs": number_or_int(values.epochs),
            "max_steps": values.max_steps,
            "warmup_steps": values.warmup_steps,
            "learning_rate": values.learning_rate,
            self.batch_key: values.batch,
            "gradient_accumulation_steps": values.grad_accum,
            "output_dir": values.output_dir,
            # beside output_dir, not inside: a leftover log dir makes ERNIEKit refuse output_dir (FACTS)
            "logging_dir": values.logging_dir,
        }
        config = dict(base)
        if prepared.eval:
            computed.update(eval_dataset_type=self.dataset_type, eval_dataset_path=",".join(prepared.eval),
                            eval_dataset_prob=",".join(["1.0"] * len(prepared.eval)))
        else:
            for key in ("eval_dataset_path", "eval_dataset_prob", "eval_dataset_type"):
                config.pop(key, None)  # the preset's example paths would point nowhere
        config.update(computed)
        for key, value in self.backend_keys(base, values, prepared).items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        return config

    def backend_keys(self, base: dict, values: PlanValues, prepared: Prepared) -> dict:
        """This trainer's own keys for a plan (``None``: remove the key); default none."""
        return {}

    def device_problems(self, config: dict, device: str) -> list[str]:
        """Settings this trainer cannot run on ``device`` with (default: none)."""
        return []

    def release_env(self, plan_dir: Path, release: str) -> dict[str, str]:
        """What the launch environment needs for the base model's release (default: nothing)."""
        return {}

    def launch(self, plan_dir: Path, config_path: Path, device: str, *, gpus_per_node: int, nodes: int,
               master_addr: str | None, master_port: int | None, cuda_visible_devices: str | None) -> dict:
        """The command and environment `train` runs (the same on every node), as a plan.json record."""
        log_dir = str(plan_dir / "logs" / "dist")
        if device == "cpu":
            return {"command": ["python", "-m", self.cpu_module, "train", str(config_path)],
                    "env": {"NO_COLOR": "1"}, "nodes": 1, "gpus_per_node": 0, "device": "cpu",
                    "note": f"one process on the CPU; `python` is the {self.title} environment's. {CPU_NOTE}"}
        devices = gpu_devices(gpus_per_node, nodes, cuda_visible_devices)
        if nodes > 1 and not master_addr:
            raise UserError(f"--nodes {nodes}: give --master-addr (the address of node 0, the same on every node)")
        port = default_master_port(plan_dir) if master_port is None else master_port
        if not 1024 <= port <= 65535:
            raise UserError(f"--master-port must be in 1024..65535, got {port}")
        env = {"CUDA_VISIBLE_DEVICES": ",".join(devices), "NNODES": str(nodes), "MASTER_ADDR": master_addr or "127.0.0.1",
               "MASTER_PORT": str(port), self.dist_log_env: log_dir, "NO_COLOR": "1"}
        return {"command": [self.executable, "train", str(config_path)], "env": env, "nodes": nodes,
                "gpus_per_node": gpus_per_node, "device": "gpu",
                "note": "run the same command with the same env on every node; workerlog.N files are appended to, "
                        "so give each attempt its own log dir; a busy MASTER_PORT makes a new job join the old one"}

    def complete_checkpoints(self, output_dir: Path) -> dict[int, Path]:
        """``{step: dir}`` of the checkpoints in output_dir that hold everything a resume reads
        (:mod:`paddle_ocrvl_sft.backends.checkpoints`: the one definition, also used by export)."""
        return checkpoints.complete_checkpoints(Path(output_dir), self.checkpoint_layouts)

    def checkpoint_problem(self, path: Path) -> str | None:
        """Why ``path`` is not a complete checkpoint of this trainer (None: it is)."""
        return checkpoints.checkpoint_problem(Path(path), self.checkpoint_layouts)

    def parse_log_line(self, line: str) -> dict | None:
        """A training log line's numbers (``step``, ``loss``, ``lr``, and ``tokens_per_second`` or, for a trainer
        that logs the rate full sequences would give, ``nominal_tokens_per_second``), else None."""
        line = ANSI.sub("", line)
        if "] - loss: " not in line or "global_step: " not in line:
            return None
        fields = {k: float(v) for k, v in LOG_FIELD.findall(line.split("] - ", 1)[1])}
        record = {"step": int(fields["global_step"]), "loss": fields["loss"]}
        if "learning_rate" in fields:
            record["lr"] = fields["learning_rate"]
        if self.tokens_per_second_key in fields:
            key = "nominal_tokens_per_second" if self.tokens_per_second_nominal else "tokens_per_second"
            record[key] = fields[self.tokens_per_second_key]
        return record


def gpu_devices(gpus_per_node: int, nodes: int, cuda_visible_devices: str | None) -> list[str]:
    if gpus_per_node < 1 or nodes < 1:
        raise UserError(f"--gpus and --nodes must be >= 1, got {gpus_per_node} and {nodes}")
    if cuda_visible_devices is None:
        return [str(i) for i in range(gpus_per_node)]
    devices = [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
    if len(devices) != gpus_per_node or len(set(devices)) != len(devices):
        raise UserError(f"--gpus {gpus_per_node} does not match CUDA_VISIBLE_DEVICES={cuda_visible_devices!r} "
                        f"({len(set(devices))} distinct device(s)): the launcher starts one process per visible card")
    return devices


def default_master_port(plan_dir: Path) -> int:
    """A stable port per plan dir in 20000-29999: a second job on a busy port JOINS it (FACTS)."""
    return 20000 + zlib.crc32(str(plan_dir).encode()) % 10000


def link_or_copy(src: Path, dst: Path) -> bool:
    """A hard link where the file system allows it (no copy of big weights), else a copy; True when linked."""
    import shutil

    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copy2(src, dst)
        return False
