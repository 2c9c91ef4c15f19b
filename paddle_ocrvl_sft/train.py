"""``train PLAN_DIR``: run the trainer a plan names (ERNIEKit or PaddleFormers), on GPUs or a CPU,
and follow it: progress, metrics, a loss plot, interruption and resume, diagnosis, export, eval.

The plan recorded the command and environment (``plan.json`` "train"); here they are bound to a
trainer environment (``backend install``, a trainer on PATH, or the Docker image) and started in
their own process group. Each attempt gets ``PLAN_DIR/runs/<id>/``: ``record.json`` (config,
dataset fingerprint, versions, git state, the exact command and environment), ``train.log``,
``metrics.jsonl``, ``loss.png`` and the launcher's own log dir (``workerlog.N`` files are
appended to across runs otherwise: FACTS "Launch").

Nothing is reused by accident: a non-empty output dir needs ``--resume`` (its newest complete
checkpoint, passed explicitly as ``resume_from_checkpoint``; several nodes name it) or ``--force``;
a plan that is being trained is refused (:mod:`paddle_ocrvl_sft.run_lock`, taken before anything
is deleted). Ctrl-C/SIGTERM go to every process of the trainer (:mod:`paddle_ocrvl_sft.processes`),
and the newest complete checkpoint and the way to resume are printed.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from paddle_ocrvl_sft import __version__, backends, run_lock
from paddle_ocrvl_sft.backends import envs
from paddle_ocrvl_sft.backends.base import Backend, Launch
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import write_json

DEFAULT_IMAGE = "paddle-ocrvl-sft:latest"  # built from docker/Dockerfile (the guide's paddle:3.2.0-gpu-cuda12.6-cudnn9.5)
LOCK = run_lock.lock_name()  # PLAN_DIR/LOCK (ui/runs.py reads it); one per node rank on a multi-node plan
STOP_GRACE_SECONDS = 60  # after a stop signal, what is still running is SIGKILLed (--stop-grace)
TREE_REFRESH_SECONDS = 2.0
# validator rules whose problem stops the trainer's reader at start-up (the whole file is loaded
# with json.loads per line: FACTS "Dataset reader"), as opposed to one dropped sample
READER_FATAL = {"invalid-json", "bom", "blank-line", "not-array"}


class Interrupted(UserError):
    """The user stopped training (Ctrl-C: 130, SIGTERM: 143); the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


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


@dataclass
class Options:
    resume: str | bool | None = None  # True/"last" or a checkpoint dir
    force: bool = False
    dry_run: bool = False
    gpus: str | None = None  # "0,1,2,3": this node's cards (must be as many as the plan's)
    nodes: int | None = None
    node_rank: int | None = None  # required with nodes > 1
    master: str | None = None  # HOST:PORT of node 0
    docker: bool = False
    image: str = DEFAULT_IMAGE
    overrides: tuple[str, ...] = ()
    export: bool = True
    evaluate: bool = True
    check_agreement: bool = True  # the prompt agreement check before the launch (agreement.py)
    bar: bool | None = None  # None: a progress bar when stderr is a terminal
    stop_grace: float = STOP_GRACE_SECONDS


@dataclass
class Result:
    output_dir: Path
    run_dir: Path | None = None
    bundle: Path | None = None
    eval_dir: Path | None = None
    last_step: int | None = None


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


# --- checks before anything starts --------------------------------------------------------------


def check_run_overrides(plan: PlanRun, items) -> tuple[dict, list[str]]:
    """This run's ``key=value`` overrides, typed and checked against the plan: keys the plan computes,
    keys the trainer does not read (refused, or mapped to the key it reads, with a note), and a
    device other than the plan's (a CPU plan's keys and in-memory patches are for the CPU only)."""
    from paddle_ocrvl_sft.backends.schema import apply_overrides
    from paddle_ocrvl_sft.plan import check_overrides

    overrides = plan.backend.schema.parse_overrides(items)
    overrides, notes = plan.backend.schema.effective_overrides(overrides)
    check_overrides({k: v for k, v in overrides.items() if k != "resume_from_checkpoint"})
    device = overrides.get("device") or plan.config.get("device", "gpu")
    if device != plan.device:
        raise UserError(f"device={device}: this plan was made for the {plan.device.upper()} (plan --device {plan.device}"
                        + (": CPU keys and the CPU patches, which are for paddle's CPU build only" if plan.device == "cpu" else "")
                        + f"); re-plan with --device {device}")
    problems = plan.backend.device_problems(apply_overrides(plan.config, overrides), plan.device)
    if problems:
        raise UserError("\n".join(problems))
    return overrides, notes


def resume_checkpoint(plan: PlanRun, resume: str | bool | None, *, nodes: int = 1) -> Path | None:
    """The checkpoint to resume from: ``True``/"last" = the newest complete one, or a given dir.

    Several nodes must all resume from the same one, so a multi-node resume names it: each node's
    own newest dir may differ (a save that finished on one node and not on another).
    """
    if not resume:
        return None
    found = plan.backend.complete_checkpoints(plan.output_dir)
    if resume is True or resume == "last":
        if not found:
            raise UserError(f"--resume: no complete checkpoint-N in {plan.output_dir} (nothing to resume; drop --resume)")
        if nodes > 1:
            raise UserError(f"--resume: with {nodes} nodes every node must resume from the SAME checkpoint: name it, e.g. "
                            f"--resume {found[max(found)].name} (the newest complete one on this node), on every node")
        return found[max(found)]
    path = Path(resume)
    if not path.is_absolute() and not path.exists():
        path = plan.output_dir / path
    if path.resolve() not in [p.resolve() for p in found.values()]:
        have = ", ".join(p.name for p in found.values()) or "none"
        why = plan.backend.checkpoint_problem(path) if path.is_dir() else "not found"
        raise UserError(f"--resume {resume}: not a complete checkpoint of {plan.output_dir} ({why}; complete: {have})")
    return path


def check_output_dir(plan: PlanRun, *, resume: Path | None, force: bool) -> None:
    """A non-empty output dir is an earlier run: continue it (--resume) or replace it (--force)."""
    out = plan.output_dir
    if resume is not None or force or not (out.is_dir() and any(out.iterdir())):
        return
    found = plan.backend.complete_checkpoints(out)
    hint = (f"its newest complete checkpoint is {found[max(found)].name}: pass --resume to continue it"
            if found else "it holds no complete checkpoint")
    raise UserError(f"{out}: output_dir is not empty ({hint}), or --force to start over and replace it")


def check_data(plan: PlanRun) -> list[str]:
    """Validate the plan's training files again (they may have changed since `plan`): refuse what
    would stop the trainer's reader at start-up or leave it nothing to train on."""
    from paddle_ocrvl_sft.data.validate import ValidateOptions, validate_paths

    notes = []
    for item in plan.record.get("datasets", {}).get("train", []):
        path = item["path"]
        if not Path(path).is_file():
            raise UserError(f"{path}: the plan's training file is gone (re-run `plan`)")
        report = validate_paths([path], ValidateOptions(max_seq_len=None, decode=False))
        fatal = [p for p in report.problems if p.rule in READER_FATAL]
        if fatal:
            first = fatal[0]
            raise UserError(f"{first.path}:{first.line}: {first.message} — the training data changed since `plan` and would "
                            "stop the trainer's reader at start-up; fix the file (`data validate --write-clean`) and re-run `plan`")
        if report.valid == 0:
            raise UserError(f"{path}: no valid sample left ({plan.backend.title} would drop them all and loop forever); "
                            "run `python -m paddle_ocrvl_sft data validate`")
        if report.valid != item.get("valid", report.valid):
            notes.append(f"{path}: {report.valid} valid samples now, {item['valid']} when planned: max_steps assumed the latter")
    return notes


def port_is_free(port: int, host: str = "") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


# --- the command ----------------------------------------------------------------------------------


def topology(plan: PlanRun, options: Options, notes: list[str]) -> dict[str, str]:
    """The launch environment for this node: the plan's, with --gpus/--nodes/--master/--node-rank applied.

    The plan's numbers were computed for its G = gpus x nodes: a different count is refused
    (re-plan), not silently trained with other steps. Single node: a busy master port is replaced
    by a free one (a job on a busy port JOINS the running one: FACTS "Launch").
    """
    env = dict(plan.launch["env"])
    if plan.device == "cpu":
        if options.gpus or (options.nodes or 1) > 1:
            raise UserError("this plan trains on the CPU (plan --device cpu): --gpus/--nodes do not apply; re-plan for GPUs")
    else:
        if options.gpus is not None:
            cards = [c.strip() for c in options.gpus.split(",") if c.strip()]
            if len(cards) != plan.launch["gpus_per_node"] or len(set(cards)) != len(cards):
                raise UserError(f"--gpus {options.gpus}: the plan is for {plan.launch['gpus_per_node']} GPU(s) per node; "
                                "its max_steps and batch were computed for that: re-plan with --gpus N")
            env["CUDA_VISIBLE_DEVICES"] = ",".join(cards)
        nodes = options.nodes or plan.launch.get("nodes", 1)
        if nodes != plan.launch.get("nodes", 1):
            raise UserError(f"--nodes {nodes}: the plan is for {plan.launch.get('nodes', 1)} node(s); re-plan with --nodes {nodes}")
        if nodes > 1 and options.node_rank is None:
            raise UserError(f"--nodes {nodes}: give --node-rank R (0 on the master node, 1..{nodes - 1} on the others): "
                            "without it every node would start as rank 0")
        rank = options.node_rank or 0
        if not 0 <= rank < nodes:
            raise UserError(f"--node-rank {rank}: must be in 0..{nodes - 1}")
        env["NNODES"] = str(nodes)
        if options.master:
            host, _, port = options.master.rpartition(":")
            if not host or not port.isdigit() or not 1024 <= int(port) <= 65535:
                raise UserError(f"--master {options.master}: expected HOST:PORT with a port in 1024..65535")
            env["MASTER_ADDR"], env["MASTER_PORT"] = host, port
        elif nodes > 1 and env.get("MASTER_ADDR") in (None, "127.0.0.1"):
            raise UserError(f"a {nodes}-node plan: give --master HOST:PORT (node 0's address, the same on every node)")
        env.pop("RANK", None)  # a worker's global rank, set by the launcher per process: never one value for all
        if nodes > 1:
            env["PADDLE_RANK"] = str(rank)  # this node's rank: paddle.distributed.launch --rank
    if (options.nodes or plan.launch.get("nodes", 1)) == 1 and not options.master:
        port = int(env.get("MASTER_PORT") or 0)
        if not port or not port_is_free(port):
            new = free_port()
            if port:
                notes.append(f"MASTER_PORT {port} is in use (another job?): this run uses {new}")
            env.setdefault("MASTER_ADDR", "127.0.0.1")
            env["MASTER_PORT"] = str(new)
    return env


def command_for(plan: PlanRun, trainer_env, env: dict[str, str], overrides: list[str]) -> Launch:
    """The plan's command bound to a trainer environment (GPU: its launcher; CPU: its Python)."""
    command = list(plan.launch["command"])
    env = dict(env)
    # the plan's PYTHONPATH (an ERNIEKit 1.5/1.6 plan's trainer_hooks) goes first, the user's stays after it
    python_path = [env.get("PYTHONPATH"), os.environ.get("PYTHONPATH")]
    if plan.device == "cpu":
        command[0] = str(trainer_env.python) if trainer_env else "python"
        # only this package (backends.cpu), never the rest of this environment: the trainer's pins come first
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(envs.project_path()), *python_path]))
    else:
        if trainer_env:
            command[0] = str(trainer_env.bin_dir / plan.backend.executable)
        if env.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.pathsep.join(filter(None, python_path))
    return Launch(command + overrides, env)


def check_docker_image(plan: PlanRun, options: Options) -> None:
    """The default image (docker/Dockerfile) carries ERNIEKit and the paddleformers 0.3.2 it needs, not
    PaddleFormers 1.2: a PaddleFormers plan there would run the wrong trainer. Another image is
    checked inside (`train` there refuses a trainer on PATH of another version)."""
    if plan.backend.name == "paddleformers" and options.image == DEFAULT_IMAGE:
        raise UserError(f"--docker: the image {DEFAULT_IMAGE} (docker/Dockerfile) carries ERNIEKit with paddleformers 0.3.2, and "
                        "this PaddleFormers plan needs paddleformers >= 1.2: train it without --docker (`backend install "
                        "paddleformers`, then paddlepaddle-gpu in that environment: docs/train.md), or pass --image with an "
                        "image whose paddleformers-cli is 1.2 (train checks it there)")


def docker_command(plan: PlanRun, options: Options, env: dict[str, str]) -> list[str]:
    """``docker run`` of the same `train` inside the image, paths mounted at the same places."""
    mounts = {plan.plan_dir, plan.output_dir.parent, Path(plan.record.get("model") or plan.config["model_name_or_path"])}
    mounts |= {Path(item["path"]).parent for item in plan.record.get("datasets", {}).get("train", [])}
    mounts |= {Path(item["path"]).parent for item in plan.record.get("datasets", {}).get("eval", [])}
    gpus = env.get("CUDA_VISIBLE_DEVICES", "all")
    # --gpus takes a CSV value: a list of cards is one quoted field ("device=0,1"), quotes included
    cmd = ["docker", "run", "--rm", "--gpus", f'"device={gpus}"', "--shm-size", "64g", "--ipc=host",
           "--user", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp"]
    if int(env.get("NNODES", "1")) > 1:
        cmd.append("--network=host")  # the nodes reach each other's master port directly
    for path in sorted(_outermost(mounts)):
        cmd += ["-v", f"{path}:{path}"]
    inner = ["train", str(plan.plan_dir)]
    if options.gpus:
        inner += ["--gpus", options.gpus]
    if options.nodes:
        inner += ["--nodes", str(options.nodes)] + (["--node-rank", str(options.node_rank)] if options.node_rank is not None else [])
    if options.master:
        inner += ["--master", options.master]
    if options.resume:
        inner += ["--resume"] + ([] if options.resume in (True, "last") else [str(options.resume)])
    if options.force:
        inner.append("--force")
    if not options.check_agreement:
        inner.append("--skip-agreement-check")
    return cmd + [options.image, *inner, *options.overrides]


def _outermost(paths: set[Path]) -> set[Path]:
    paths = {p.resolve() for p in paths}
    return {p for p in paths if not any(q != p and q in p.parents for q in paths)}


# --- the run record -------------------------------------------------------------------------------


def fingerprint(paths: list[str]) -> list[dict]:
    """Size and SHA-256 of each dataset file: which data a run saw."""
    out = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        out.append({"path": path, "bytes": os.path.getsize(path), "sha256": digest.hexdigest()})
    return out


def git_state(repo: Path) -> dict:
    """This project's commit and whether the tree had changes (None outside a git checkout)."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode:
            return {"commit": None}
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None}


def run_record(plan: PlanRun, launch: Launch, trainer_env, checkpoint: Path | None) -> dict:
    datasets = [item["path"] for group in ("train", "eval") for item in plan.record.get("datasets", {}).get(group, [])]
    installed = envs.read_record(plan.backend.name) if trainer_env and "installed" in trainer_env.origin else None
    return {
        "plan": str(plan.plan_dir), "backend": plan.backend.name, "device": plan.device,
        "command": launch.command, "env": launch.env, "shell": launch.shell(),
        "trainer": {"origin": trainer_env.origin if trainer_env else "docker image",
                    "versions": (installed or {}).get("versions", {}), "source": (installed or {}).get("source"),
                    **({"erniekit_commit": (installed or {}).get("erniekit_commit")} if plan.backend.name == "erniekit" else {})},
        "config": plan.config, "resume_from": str(checkpoint) if checkpoint else None,
        "datasets": fingerprint(datasets),
        "versions": {"paddle-ocrvl-sft": __version__, "python": platform.python_version(), "platform": platform.platform()},
        "git": git_state(envs.PACKAGE_PARENT),
        "started": run_lock.now(), "finished": None, "exit": None, "last_step": None,
    }


def new_run_dir(plan_dir: Path, node_rank: int | None = None) -> Path:
    """``PLAN_DIR/runs/<time>``, ``<time>-node-R`` on node rank R of a multi-node plan (the nodes start
    together and may share PLAN_DIR), not yet taken: the name :func:`claim_run_dir` creates."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return _free_name(plan_dir / "runs" / (stamp if node_rank is None else f"{stamp}-node-{node_rank}"))


def _free_name(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``... : the first that does not exist."""
    stem, n = path, 1
    while path.exists():
        n += 1
        path = stem.with_name(f"{stem.name}-{n}")
    return path


def claim_run_dir(path: Path) -> Path:
    """Create ``path`` (or the next free ``path-N``) atomically: mkdir fails on a name another run made
    since it was chosen (two runs within one second), and the next one is tried."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path = _free_name(path)


# --- running --------------------------------------------------------------------------------------


def run(plan_dir: str | os.PathLike, options: Options | None = None, *, echo: Callable[[str], None] = print) -> Result:
    """Train a plan; returns where everything went. Raises :class:`UserError` on failure."""
    options = options or Options()
    plan = load_plan(plan_dir)
    overrides, notes = check_run_overrides(plan, options.overrides)
    notes += check_data(plan)
    env = topology(plan, options, notes)
    nodes = int(env.get("NNODES", "1"))
    node_rank = options.node_rank if nodes > 1 else None
    checkpoint = resume_checkpoint(plan, options.resume, nodes=nodes)
    check_output_dir(plan, resume=checkpoint, force=options.force)
    if options.docker:
        check_docker_image(plan, options)
    else:
        run_lock.check_free(plan.plan_dir, node_rank)
    trainer_env = None if options.docker else (envs.resolve(plan.backend.name) if options.dry_run else envs.require(plan.backend.name))
    if trainer_env and trainer_env.note:
        notes.append(trainer_env.note)
    args = [f"{k}={v}" for k, v in overrides.items()] + ([f"resume_from_checkpoint={checkpoint}"] if checkpoint else [])

    def launch_in(run_dir: Path) -> Launch:
        env[plan.backend.dist_log_env] = str(run_dir / "dist")  # workerlog.N files are appended to: one dir per run
        return command_for(plan, trainer_env, env, args)

    run_dir = new_run_dir(plan.plan_dir, node_rank)
    launch = launch_in(run_dir)
    for note in notes:
        echo(f"note: {note}")
    if plan.device == "cpu":
        echo("note: CPU training is for tiny models and smoke runs; a 0.9B fine-tune belongs on a GPU")
    if options.docker:
        cmd = docker_command(plan, options, env)
        echo("$ " + shlex.join(cmd))
        if options.dry_run:
            return Result(plan.output_dir)
        proc = subprocess.run(cmd)
        if proc.returncode:
            raise UserError(f"docker run exited with status {proc.returncode}")
        return Result(plan.output_dir)
    if options.dry_run:
        echo(launch.shell())
        if nodes > 1:
            echo(f"run the same on every node (node 0 first); on node R: train {plan.plan_dir} --nodes {nodes} --node-rank R "
                 f"--master {env['MASTER_ADDR']}:{env['MASTER_PORT']}" + (f" --gpus {options.gpus}" if options.gpus else ""))
        if trainer_env is None:
            echo(f"note: {plan.backend.title} is not installed here: `python -m paddle_ocrvl_sft backend install {plan.backend.name}`")
        return Result(plan.output_dir)

    from paddle_ocrvl_sft.agreement import before_launch

    agreed = before_launch(plan.plan_dir, trainer_env, options.check_agreement, echo, overrides)  # before --force deletes anything
    # the lock first: nothing is deleted or written for a plan another run holds
    with run_lock.RunLock(plan.plan_dir, run_dir.name, node_rank):
        check_output_dir(plan, resume=checkpoint, force=options.force)  # again, now that no other run can change it
        if options.force and checkpoint is None and plan.output_dir.is_dir():
            import shutil

            shutil.rmtree(plan.output_dir)
        claimed = claim_run_dir(run_dir)
        if claimed != run_dir:  # taken since it was chosen: the launcher's log dir goes with the new name
            run_dir, launch = claimed, launch_in(claimed)
        record = run_record(plan, launch, trainer_env, checkpoint)
        record["agreement"] = agreed
        write_json(run_dir / "record.json", record)
        echo(f"$ {launch.shell()}")
        echo(f"run dir: {run_dir} (train.log, metrics.jsonl, loss.png); {plan.backend.title}'s event logs: "
             f"{plan.config.get('logging_dir')}")
        outcome = None
        try:
            outcome = follow(plan, launch, trainer_env, run_dir, checkpoint, options, echo)
        finally:
            record.update(finished=run_lock.now(), exit=outcome.exit if outcome else "did not finish",
                          last_step=outcome.last_step if outcome else None, state=run_state(outcome, plan.max_steps),
                          signal=signal.Signals(outcome.signal).name if outcome and outcome.signal else None,
                          killed=outcome.killed if outcome else [])
            write_json(run_dir / "record.json", record)
        result = Result(plan.output_dir, run_dir, last_step=outcome.last_step)
        # still under the lock: export and eval read output_dir, which a `train --force` would delete
        finish(plan, outcome, result, options, echo)
    return result


def run_state(outcome, max_steps: int) -> str:
    """finished, interrupted (a signal), failed, or did not finish (train itself stopped)."""
    if outcome is None:
        return "did not finish"
    if outcome.signal is not None:
        return "finished" if outcome.finished(max_steps) else "interrupted"
    return "finished" if outcome.exit == 0 and outcome.nan_step is None else "failed"


@dataclass
class Outcome:
    exit: int
    last_step: int | None
    signal: int | None = None
    nan_step: int | None = None
    tail: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)  # pids SIGKILLed after the grace period

    def finished(self, max_steps: int) -> bool:
        """The trainer reached max_steps and exited 0 (it saved): finished, whatever signal came late."""
        return self.exit == 0 and self.nan_step is None and (self.last_step or 0) >= max_steps


def follow(plan: PlanRun, launch: Launch, trainer_env, run_dir: Path, checkpoint: Path | None, options: Options,
           echo) -> Outcome:
    """Start the trainer, stream rank 0's log, and pass Ctrl-C/SIGTERM to every process it started.

    Our handlers are installed BEFORE the trainer starts: a handled signal is reset to its default
    in the new program, so the trainer reacts to SIGINT even when `train` itself was started with
    it ignored (a script's background job: ``train PLAN &``). A stop signal goes to the trainer's
    whole process tree (:class:`~paddle_ocrvl_sft.processes.ProcessTree`: the launcher's workers
    run in sessions of their own) and arms a SIGKILL after ``options.stop_grace`` seconds.
    """
    import queue
    import threading

    from paddle_ocrvl_sft.processes import ProcessTree
    from paddle_ocrvl_sft.progress import Progress

    start = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
    bar = sys.stderr.isatty() if options.bar is None else options.bar
    progress = Progress(run_dir, plan.max_steps, start_step=start, bar=bar, echo=echo)
    tail: collections.deque[str] = collections.deque(maxlen=400)
    received: list[int] = []
    killed: list[int] = []
    nan_step = None
    tree: ProcessTree | None = None
    stops: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def forward(signum, frame):
        # Only noted here; the "trainer-stop" thread signals the tree. A handler runs in the main thread
        # between two of its bytecodes, maybe inside the tree's lock (a second Ctrl-C during the first
        # stop): taking that lock here would deadlock. SimpleQueue.put is safe in a signal handler.
        received.append(signum)
        stops.put(signum)

    def stopper():
        while (signum := stops.get()) is not None:
            tree.stop(signum)

    def killing(pids):
        killed.extend(pids)
        echo(f"\n{len(pids)} trainer process(es) still running {options.stop_grace:g} s after the stop signal: "
             f"SIGKILL ({', '.join(map(str, pids))})")

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc = subprocess.Popen(launch.command, env=trainer_env.env({**os.environ, **launch.env}), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True,
                                cwd=run_dir)  # stray files a trainer writes to its working dir land in the run dir
        tree = ProcessTree(proc, options.stop_grace, on_kill=killing)
        threading.Thread(target=stopper, daemon=True, name="trainer-stop").start()  # also a signal that came before

        def watch():
            """Keep the tree's membership current while the trainer runs (workers start late and are
            re-parented when their launcher exits); once it exits, anything it left holding the log
            pipe is killed after the grace period."""
            while proc.poll() is None:
                tree.refresh()
                time.sleep(TREE_REFRESH_SECONDS)
            tree.arm()

        threading.Thread(target=watch, daemon=True, name="trainer-tree").start()
        with open(run_dir / "train.log", "w", encoding="utf-8") as log:
            for raw in proc.stdout:
                log.write(raw)
                log.flush()
                tail.append(raw.rstrip("\n"))
                point = plan.backend.parse_log_line(raw)
                if point:
                    progress.update(point)
                    if not math.isfinite(point["loss"]) and nan_step is None:
                        nan_step = point["step"]
                        echo(f"\nloss is {point['loss']} at step {point['step']}: stopping the run (it has diverged)")
                        tree.stop(signal.SIGTERM)
        proc.wait()
        tree.cancel()
    except BaseException:
        if tree is not None:  # train itself failed (a full disk, ...): do not leave the trainer running unwatched
            tree.stop(signal.SIGTERM)
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        stops.put(None)  # the stopper thread ends once it has passed on what came before
        progress.close()
    return Outcome(proc.returncode, progress.last_step, received[0] if received else None, nan_step, list(tail), killed)


def resume_advice(plan: PlanRun, options: Options) -> str:
    """The newest COMPLETE checkpoint and the exact command to continue from it (or why there is none).

    Several nodes must all resume from the same checkpoint: the command names it explicitly.
    """
    from paddle_ocrvl_sft.backends.checkpoints import checkpoint_states

    found, incomplete = checkpoint_states(plan.output_dir, plan.backend.checkpoint_layouts)
    newest = max(found) if found else None
    cut = {n: why for n, why in incomplete.items() if newest is None or n > newest}
    skipped = "".join(f" (checkpoint-{n} is incomplete, its save was cut short: {why})" for n, why in cut.items())
    if newest is None:
        return f"no checkpoint was completed yet{skipped}: starting again needs --force"
    nodes = int(plan.launch.get("nodes", 1) or 1)
    resume = f"python -m paddle_ocrvl_sft train {plan.plan_dir} --resume"
    if nodes > 1:
        resume = (f"{resume} {found[newest].name} --nodes {nodes} --node-rank R --master {options.master or 'HOST:PORT'}"
                  "   (on every node, the same checkpoint)")
    return f"the last complete checkpoint is {found[newest]}{skipped}; continue with:\n  {resume}"


def finish(plan: PlanRun, outcome: Outcome, result: Result, options: Options, echo) -> None:
    """Say what happened: resume instructions, diagnoses, or export (and eval) of the final model."""
    from paddle_ocrvl_sft.diagnose import diagnose, replan_for_oom

    last_ckpt = resume_advice(plan, options)
    if outcome.signal is not None and not outcome.finished(plan.max_steps):
        name = signal.Signals(outcome.signal).name
        raise Interrupted(f"stopped by {name} at step {outcome.last_step or 0}; {last_ckpt}", outcome.signal)
    if outcome.signal is not None:
        echo(f"note: {signal.Signals(outcome.signal).name} arrived after the trainer had finished (step {outcome.last_step} "
             f"of {plan.max_steps}, exit 0, saved): the run is complete, nothing was stopped")
    if outcome.exit or outcome.nan_step is not None:
        found_issues = diagnose(outcome.tail)
        lines = [f"{plan.backend.title} " + (f"diverged at step {outcome.nan_step}" if outcome.nan_step is not None
                                              else f"exited with status {outcome.exit}") + f"; log: {result.run_dir / 'train.log'}"]
        for known, line in found_issues:
            lines.append(f"  {known.name}: {known.meaning}\n    seen: {line}\n    fix: {known.fix}")
            if known.name == "out-of-memory":
                lines.append("    " + replan_for_oom(plan.backend.batch_key, int(plan.config[plan.backend.batch_key]),
                                                    int(plan.config["gradient_accumulation_steps"])))
        if not found_issues:
            lines.append("  (no known failure recognised: the end of the log follows)\n    " + "\n    ".join(outcome.tail[-15:]))
        lines.append(f"  {last_ckpt}")
        raise UserError("\n".join(lines))
    echo(f"training finished at step {outcome.last_step}: {plan.output_dir}")
    echo(f"loss curve: {result.run_dir / 'loss.png'}; metrics: {result.run_dir / 'metrics.jsonl'}")
    found = plan.backend.complete_checkpoints(plan.output_dir)
    if found:
        echo(f"export a checkpoint: python -m paddle_ocrvl_sft export {plan.output_dir} --checkpoint N|last|all "
             f"--base {plan.record.get('model', 'BASE')}   (checkpoints: {', '.join(str(n) for n in found)})")
    if options.export:
        export_and_evaluate(plan, result, options, echo)


def answer_token_cap(dataset: str) -> int:
    """A generation cap for eval: no answer needs more tokens than twice the longest reference has
    characters (a model that never stops would otherwise generate up to the backend's default)."""
    from paddle_ocrvl_sft.data.sample import sample_turns
    from paddle_ocrvl_sft.io import iter_records

    longest = 0
    for record in iter_records(dataset):
        if record.error is None and isinstance(record.value, dict):
            try:
                longest = max(longest, *(len(answer) for _, answer in sample_turns(record.value)))
            except (KeyError, TypeError, ValueError):
                continue
    return max(32, 2 * longest)


def export_and_evaluate(plan: PlanRun, result: Result, options: Options, echo) -> None:
    from paddle_ocrvl_sft.export import export

    base = plan.record.get("model")
    if not base:
        echo("note: plan.json names no base model (an older plan): export with `export OUTPUT --base BASE`")
        return
    bundle = plan.plan_dir / "bundle"
    from paddle_ocrvl_sft.releases import of_plan

    release = of_plan(plan.record)  # the plan's release names the bundle's model (None: an older plan, BASE says)
    report = export(plan.output_dir, base, bundle, release=release and release.name, force=True,
                    log=lambda line: echo(f"  {line}"), plan_dir=plan.plan_dir)
    result.bundle = report.out
    echo(f"inference bundle: {report.out}")
    evals = [item["path"] for item in plan.record.get("datasets", {}).get("eval", [])]
    metrics = None
    if options.evaluate and evals:
        from paddle_ocrvl_sft.evaluate import evaluate, summary

        result.eval_dir = plan.plan_dir / "eval"
        metrics = evaluate(report.out, evals[0], out_dir=result.eval_dir, baseline=base, force=True,
                           device="cpu" if plan.device == "cpu" else None, progress=False,
                           max_new_tokens=answer_token_cap(evals[0]))
        echo(f"eval of {evals[0]} (base vs fine-tuned): {result.eval_dir / 'report.html'}\n{summary(metrics)}")
    if options.evaluate and (evals or plan.record.get("general")):  # the verdict table (docs/eval.md)
        from paddle_ocrvl_sft.evaluate.verdict import CPU_TOKEN_CAP, judge_run

        result.eval_dir = plan.plan_dir / "eval"
        cpu = plan.device == "cpu"
        judge_run(plan.record, report.out, base, metrics, result.eval_dir, result.run_dir, device="cpu" if cpu else None,
                  max_new_tokens=(answer_token_cap(evals[0]) if evals else CPU_TOKEN_CAP) if cpu else None, echo=echo)
