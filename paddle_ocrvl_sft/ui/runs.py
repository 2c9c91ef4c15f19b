"""A plan's runs as ``train`` leaves them on disk, read for the Runs page.

The coupling to ``train`` is its documented files, nothing more (docs/train.md, docs/ui.md):

- ``PLAN/.train.lock`` (``.train.node-R.lock`` per node rank of a multi-node plan: ``run_lock.lock_name``):
  ``{"pid", "host", "run"}`` while a ``train`` process trains the plan;
- ``PLAN/runs/<id>/record.json``: the attempt (``started``, ``finished``, ``exit``, ``last_step``,
  ``resume_from``, the trainer ``config``), ``metrics.jsonl`` (one point per logged step: ``step``,
  ``loss``, ``lr``, ``tokens_per_second``, ``time``), ``train.log`` (the trainer's output), ``loss.png``;
- the plan's ``plan.json`` and ``config.yaml``, and the trainer's complete checkpoints (the
  backend's own ``complete_checkpoints``) to tell whether a stopped run can be resumed.

A run started by the UI is also a job (:mod:`.jobs`): its console output (what ``train`` prints:
the command, progress, the resume hint, export and eval) and its exit status.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from paddle_ocrvl_sft.ui import jobs

EVAL_LOSS = re.compile(r"\beval_loss: ([-+0-9.eE]+|nan|inf)")


def read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def live_lock(plan_dir: Path, nodes: int = 1) -> dict | None:
    """The lock of a ``train`` that is training this plan now (None: nobody is); a multi-node plan's
    ``train`` on each node holds its rank's lock, and only this host's pids can be seen alive."""
    from paddle_ocrvl_sft.run_lock import lock_name

    for name in [lock_name(), *(lock_name(rank) for rank in range(nodes if nodes > 1 else 0))]:
        lock = read_json(plan_dir / name)
        if lock and jobs.process_alive(lock.get("pid", -1), lock.get("host"), started=lock.get("pid_start")):
            return lock
    return None


def run_ids(plan_dir: Path) -> list[str]:
    runs = plan_dir / "runs"
    return sorted(p.name for p in runs.iterdir() if (p / "record.json").is_file()) if runs.is_dir() else []


def run_dir(plan_dir: Path, run_id: str) -> Path:
    if run_id not in run_ids(plan_dir):
        from paddle_ocrvl_sft.errors import UserError

        raise UserError(f"{plan_dir}: no run {run_id!r}")
    return plan_dir / "runs" / run_id


def checkpoints(plan_dir: Path, record: dict, config: dict | None) -> list[int]:
    """Steps of the complete checkpoints in the plan's output dir (what ``--resume`` can continue from)."""
    from paddle_ocrvl_sft import backends

    output = (config or {}).get("output_dir") or str(plan_dir / "output")
    try:
        backend = backends.get(record.get("backend", backends.DEFAULT))
    except Exception:  # an unknown backend name in a foreign plan.json
        return []
    return sorted(backend.complete_checkpoints(Path(output)))


def plan_config(plan_dir: Path) -> dict | None:
    import yaml

    try:
        value = yaml.safe_load((plan_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def train_jobs(workdir: Path, plan_dir: Path, known: list[dict] | None = None) -> list[dict]:
    """The UI's ``train`` jobs of this plan, newest first (``known``: every job, already read)."""
    return [j for j in (jobs.all_jobs(workdir) if known is None else known)
            if j.get("command") == ["train"] and j.get("plan") == str(plan_dir)]


def last_error(lines: list[str]) -> str | None:
    """The ``error: ...`` message ``train`` ended with (it may span lines: the diagnosis, the resume hint)."""
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error: "):
            return "\n".join(lines[i:])[:4000]
    return None


def plan_state(plan_dir: Path, workdir: Path, known_jobs: list[dict] | None = None) -> dict:
    """What the plan is doing: training, finishing (export and eval), stopped, finished, planned..."""
    record = read_json(plan_dir / "plan.json") or {}
    config = plan_config(plan_dir)
    runs = [{"id": rid, **_run_summary(plan_dir / "runs" / rid)} for rid in run_ids(plan_dir)]
    lock = live_lock(plan_dir, int((record.get("train") or {}).get("nodes") or 1))
    ui_jobs = train_jobs(workdir, plan_dir, known_jobs)
    job = ui_jobs[0] if ui_jobs else None
    job_alive = job is not None and job["state"] in ("running", "stopping")
    steps = checkpoints(plan_dir, record, config)
    last = runs[-1] if runs else None
    if lock:
        state = "stopping" if job_alive and job["state"] == "stopping" else "training"
        for run in runs:
            if run["id"] == lock.get("run"):
                run["state"] = "running"
    elif job_alive:
        started_after = last is None or (last.get("started") or "") < job["started"]
        state = "stopping" if job["state"] == "stopping" else "starting" if started_after else "exporting"
    elif last is None:
        state = "planned"
    elif last.get("exit") == 0:
        # the trainer finished; `train` can still fail after it (export, eval): then its job failed
        after = job is not None and job["state"] == "failed" and (job.get("started") or "") <= (last.get("started") or "")
        state = "failed" if after else "finished"
    else:
        state = "stopped" if steps else "failed"
    message = None
    if job is not None and not job_alive:
        message = last_error(jobs.tail(jobs.jobs_dir(workdir) / f"{job['id']}.log", 60))
    output = Path((config or {}).get("output_dir") or plan_dir / "output")
    return {
        "plan": str(plan_dir), "state": state, "backend": record.get("backend"), "device": record.get("device"),
        "model": record.get("model"), "max_steps": (config or {}).get("max_steps"),
        "runs": runs, "checkpoints": steps, "lock": lock, "job": job, "message": message,
        "can_start": not (lock or job_alive) and not (output.is_dir() and any(output.iterdir())),
        "can_resume": not (lock or job_alive) and bool(steps) and state != "finished",
        "can_stop": bool(lock) or job_alive,
        "bundle": str(plan_dir / "bundle") if (plan_dir / "bundle" / "inference.yml").is_file() else None,
        "eval": str(plan_dir / "eval") if (plan_dir / "eval" / "metrics.json").is_file() else None,
    }


def _run_summary(path: Path) -> dict:
    record = read_json(path / "record.json") or {}
    exit_code = record.get("exit")
    if exit_code == 0:
        state = "finished"
    elif not isinstance(exit_code, int):  # None (train did not get to record it) or "did not finish"
        state = "ended"
    elif exit_code < 0:  # the trainer's status: killed by a signal (Ctrl-C reaches it as SIGINT)
        state = f"stopped by {_signal_name(-exit_code)}"
    else:
        state = f"exit {exit_code}"
    return {"started": record.get("started"), "finished": record.get("finished"), "exit": exit_code,
            "last_step": record.get("last_step"), "resume_from": record.get("resume_from"), "state": state,
            "max_steps": (record.get("config") or {}).get("max_steps")}


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def metrics(run: Path) -> list[dict]:
    """The run's metrics.jsonl points (a torn last line is left for later)."""
    from paddle_ocrvl_sft.progress import read_metrics

    return [p for p in read_metrics(run / "metrics.jsonl") if isinstance(p, dict) and "step" in p]


def progress(points: list[dict], max_steps: int | None) -> dict:
    """Step, ETA and speed from a run's points (the rate since this run's first logged step)."""
    if not points:
        return {"step": None, "max_steps": max_steps}
    first, last = points[0], points[-1]
    out = {"step": last["step"], "max_steps": max_steps, "loss": last.get("loss"), "lr": last.get("lr"),
           "tokens_per_second": last.get("tokens_per_second"),
           # ERNIEKit logs upstream's nominal rate (max_seq_len per sequence), not the tokens trained
           "nominal_tokens_per_second": last.get("nominal_tokens_per_second")}
    done = last["step"] - first["step"]
    if max_steps and done > 0 and "time" in last and "time" in first:
        out["eta_seconds"] = round((last["time"] - first["time"]) / done * max(0, max_steps - last["step"]), 1)
    return out


_eval_cache: dict[str, tuple[int, int, int | None, list[dict]]] = {}  # log -> (inode, offset, step, points)


def eval_losses(train_log: Path, backend_name: str) -> list[dict]:
    """``eval_loss`` lines of the trainer's log, each at the step logged before it.

    ``metrics.jsonl`` holds the training loss only; both trainers (PaddleFormers' Trainer) print an
    evaluation as ``... - eval_loss: X, eval_runtime: ...`` after the step it ran at. The log is
    read on from where the last call stopped (the page polls it).
    """
    from paddle_ocrvl_sft import backends

    backend = backends.get(backend_name)
    try:
        fh = open(train_log, "rb")
    except OSError:
        return []
    with fh:
        inode = os.fstat(fh.fileno()).st_ino
        cached = _eval_cache.get(str(train_log))
        _, offset, step, points = cached if cached and cached[0] == inode else (inode, 0, None, [])
        points = list(points)
        fh.seek(offset)
        for raw in fh:
            if not raw.endswith(b"\n"):
                break  # a line still being written: read it next time
            offset += len(raw)
            line = raw.decode("utf-8", "replace")
            point = backend.parse_log_line(line)
            if point:
                step = point["step"]
                continue
            match = EVAL_LOSS.search(line)
            if match and step is not None:
                value = float(match.group(1))
                points.append({"step": step, "eval_loss": value if math.isfinite(value) else None})
    _eval_cache[str(train_log)] = (inode, offset, step, points)
    return points
