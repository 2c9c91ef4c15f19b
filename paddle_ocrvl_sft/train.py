"""``train PLAN_DIR``: run the exact ``erniekit train`` command a plan recorded (FACTS "Launch").

ERNIEKit's OCR-VL-SFT stage needs CUDA GPUs and the Paddle GPU build (GPU-only attention and
fused RMSNorm, no fp32 path). Where those are missing this says so and prints the command to run
on a GPU machine. ``simulate=True`` runs :mod:`paddle_ocrvl_sft.standin_erniekit` instead — a
stand-in that is NOT ERNIEKit: it prints log lines in ERNIEKit's format and writes a random tiny
model in ERNIEKit's output layout, so the rest of the pipeline can be exercised on a CPU.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from paddle_ocrvl_sft.errors import UserError

# [2026-01-19 17:43:11,367] [    INFO] - loss: 22.99, ..., learning_rate: 1.666667e-06, global_step: 1, ...
LOG_LINE = re.compile(r"\] - loss: (?P<loss>[-+0-9.eE]+),.*?learning_rate: (?P<lr>[-+0-9.eE]+),.*?global_step: (?P<step>\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Launch:
    command: list[str]
    env: dict[str, str]
    output_dir: Path

    def shell(self) -> str:
        """The command as one line to paste on a GPU machine."""
        import shlex

        return " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items()) + " " + shlex.join(self.command)


def load_launch(plan_dir: str | os.PathLike) -> Launch:
    plan_dir = Path(plan_dir)
    try:
        record = json.loads((plan_dir / "plan.json").read_text(encoding="utf-8"))
        config = yaml.safe_load((plan_dir / "config.yaml").read_text(encoding="utf-8"))
        launch = record["train"]
        return Launch(list(launch["command"]), dict(launch["env"]), Path(config["output_dir"]))
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename}: not found (create the plan with `plan ... -o {plan_dir}`)") from None
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise UserError(f"{plan_dir}: plan.json/config.yaml unreadable ({exc}); re-run `plan`") from None


def why_not_runnable() -> str | None:
    """None when a real ERNIEKit run can start here, else the reason."""
    if shutil.which("erniekit") is None:
        return ("`erniekit` is not installed: ERNIEKit's OCR-VL-SFT stage ships in ERNIEKit >= 1.4, installed from a clone "
                "(git clone -b release/v1.4 https://github.com/PaddlePaddle/ERNIE && pip install -e .); see docs/train.md")
    if shutil.which("nvidia-smi") is None:
        return "no NVIDIA GPU found: ERNIEKit training needs CUDA GPUs (GPU-only attention and fused RMSNorm, no fp32 path)"
    return None


def check_output_dir(output_dir: Path, force: bool) -> None:
    """ERNIEKit resumes from the newest checkpoint-* in a non-empty output_dir and raises on a
    non-empty one without checkpoints: say which will happen before starting."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not force:
        checkpoints = sorted(output_dir.glob("checkpoint-*"))
        hint = f"it holds {checkpoints[-1].name}: ERNIEKit would resume from it" if checkpoints else "it is not empty"
        raise UserError(f"{output_dir}: output_dir already exists and {hint}; pass --resume to continue it, or choose a new output_dir")


def run(plan_dir: str | os.PathLike, *, simulate: bool = False, resume: bool = False, echo=print) -> Path:
    """Run training for a plan; returns the output dir. Progress lines are passed to ``echo``."""
    launch = load_launch(plan_dir)
    check_output_dir(launch.output_dir, force=resume)
    command = launch.command
    if simulate:
        echo("SIMULATED TRAINING: running paddle_ocrvl_sft.standin_erniekit, a stand-in that is not ERNIEKit "
             "(random tiny weights, ERNIEKit's log format and output layout)")
        command = [sys.executable, "-m", "paddle_ocrvl_sft.standin_erniekit", *command[1:]]
    else:
        reason = why_not_runnable()
        if reason:
            raise UserError(f"cannot train here: {reason}.\nOn a GPU machine run:\n  {launch.shell()}")
    echo(f"$ {launch.shell()}")
    env = {**os.environ, **launch.env}
    Path(env["ERNIEKIT_DIST_LOG"]).mkdir(parents=True, exist_ok=True)
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for raw in proc.stdout:
            line = ANSI.sub("", raw.rstrip("\n"))
            match = LOG_LINE.search(line)
            if match:
                echo(f"step {match['step']:>6}  loss {float(match['loss']):.4f}  lr {float(match['lr']):.3e}")
            elif "train metrics" in line or "Traceback" in line or "Error" in line:
                echo(line)
    if proc.returncode:
        raise UserError(f"training exited with status {proc.returncode}; logs in {launch.env['ERNIEKIT_DIST_LOG']}")
    return launch.output_dir
