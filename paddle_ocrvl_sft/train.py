"""``train PLAN_DIR``: run the trainer a plan names (ERNIEKit or PaddleFormers), on GPUs or a CPU.

The plan recorded the command and environment (``plan.json`` "train"); here they are bound to a
real trainer environment (``backend install``, or a trainer on PATH as in the Docker image) and
started. On a CPU the trainer runs in one process with the backend's compatibility patches
(:mod:`paddle_ocrvl_sft.backends.cpu`), applied inside that process only.

An output dir that already holds something is never reused by accident: ``resume`` continues
from its newest complete checkpoint (passed explicitly as ``resume_from_checkpoint``), ``force``
starts over.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from paddle_ocrvl_sft import backends
from paddle_ocrvl_sft.backends.base import Backend, Launch
from paddle_ocrvl_sft.errors import UserError

PACKAGE_PARENT = Path(__file__).resolve().parents[1]  # on PYTHONPATH of a CPU run: backends.cpu imports from here


@dataclass
class PlanRun:
    """A plan as `train` needs it."""

    plan_dir: Path
    backend: Backend
    device: str
    launch: dict
    config: dict
    record: dict = field(default_factory=dict)

    @property
    def output_dir(self) -> Path:
        return Path(self.config["output_dir"])

    @property
    def max_steps(self) -> int:
        return int(self.config["max_steps"])


def load_plan(plan_dir: str | os.PathLike) -> PlanRun:
    plan_dir = Path(plan_dir).resolve()
    try:
        record = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((plan_dir / "config.yaml").read_text(encoding="utf-8"))
        backend = backends.get(record.get("backend", backends.DEFAULT))
        return PlanRun(plan_dir, backend, record.get("device", "gpu"), dict(record["train"]), config, record)
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found (create the plan with `plan ... -o {plan_dir}`)") from None
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{plan_dir}: plan.json/config.yaml unreadable ({exc}); re-run `plan`") from None


def resume_checkpoint(plan: PlanRun, resume: str | bool | None) -> Path | None:
    """The checkpoint to resume from: ``True``/"last" = the newest complete one, or a given dir."""
    if not resume:
        return None
    found = plan.backend.complete_checkpoints(plan.output_dir)
    if resume is True or resume == "last":
        if not found:
            raise UserError(f"--resume: no complete checkpoint-N in {plan.output_dir} (nothing to resume; drop --resume)")
        return found[max(found)]
    path = Path(resume)
    if not path.is_absolute() and not path.exists():
        path = plan.output_dir / path
    if path.resolve() not in [p.resolve() for p in found.values()]:
        have = ", ".join(p.name for p in found.values()) or "none"
        raise UserError(f"--resume {resume}: not a complete checkpoint of {plan.output_dir} (complete: {have})")
    return path


def check_output_dir(plan: PlanRun, *, resume: Path | None, force: bool) -> None:
    """A non-empty output dir is someone's earlier run: continue it (--resume) or replace it (--force)."""
    out = plan.output_dir
    if resume is not None or not (out.is_dir() and any(out.iterdir())):
        return
    if not force:
        found = plan.backend.complete_checkpoints(out)
        hint = (f"its newest complete checkpoint is {found[max(found)].name}: pass --resume to continue it"
                if found else "it holds no complete checkpoint")
        raise UserError(f"{out}: output_dir is not empty ({hint}), or --force to start over and replace it")


def command_for(plan: PlanRun, trainer_env, overrides: list[str]) -> Launch:
    """The plan's command bound to a trainer environment (the same on every node)."""
    command = list(plan.launch["command"])
    env = dict(plan.launch["env"])
    if plan.device == "cpu":
        command[0] = str(trainer_env.python)
        env["PYTHONPATH"] = str(PACKAGE_PARENT)
    else:
        command[0] = str(trainer_env.bin_dir / plan.backend.executable)
    return Launch(command + overrides, env)


def run(plan_dir: str | os.PathLike, *, resume: str | bool | None = None, force: bool = False,
        echo: Callable[[str], None] = print) -> Path:
    """Train a plan; returns the output dir. Progress lines go to ``echo``."""
    from paddle_ocrvl_sft.backends import envs

    plan = load_plan(plan_dir)
    checkpoint = resume_checkpoint(plan, resume)
    check_output_dir(plan, resume=checkpoint, force=force)
    trainer_env = envs.require(plan.backend.name)
    overrides = [f"resume_from_checkpoint={checkpoint}"] if checkpoint else []
    launch = command_for(plan, trainer_env, overrides)
    if force and checkpoint is None and plan.output_dir.is_dir():
        import shutil

        shutil.rmtree(plan.output_dir)
    if plan.device == "cpu":
        echo("note: CPU training is for tiny models and smoke runs; a 0.9B fine-tune belongs on a GPU")
    echo(f"$ {launch.shell()}")
    log_dir = Path(launch.env.get(plan.backend.dist_log_env, plan.plan_dir / "logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / "train.log", "a", encoding="utf-8") as log, \
            subprocess.Popen(launch.command, env=trainer_env.env({**os.environ, **launch.env}), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, errors="replace") as proc:
        for raw in proc.stdout:
            log.write(raw)
            point = plan.backend.parse_log_line(raw)
            if point:
                echo(f"step {point['step']:>6}/{plan.max_steps}  loss {point['loss']:.4f}  lr {point.get('lr', float('nan')):.3e}")
    if proc.returncode:
        raise UserError(f"training exited with status {proc.returncode}; log: {log_dir / 'train.log'}")
    return plan.output_dir
