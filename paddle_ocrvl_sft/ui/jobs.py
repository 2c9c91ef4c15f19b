"""The UI's jobs: CLI commands started as ordinary processes that outlive the page and the UI.

A job is ``python -m paddle_ocrvl_sft COMMAND ARGS`` started in its own session (so it survives
the UI and a stop reaches its whole process group), with stdout and stderr in
``WORKDIR/.ui/jobs/<id>.log`` and what was started in ``<id>.json`` (argv, pid, host, times). While
the UI that started it runs, a thread waits for it and records its exit status; a UI started later
finds it again from these files (the pid is checked to still be this command, not a reused pid).

Stop is Ctrl-C: SIGINT to the job's process group, what a terminal sends to a foreground
``train`` (which forwards it to the trainer and leaves a resumable run).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from paddle_ocrvl_sft import processes
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import write_json

JOBS_DIR = Path(".ui") / "jobs"
JOB_ID = re.compile(r"^[0-9]{8}-[0-9]{6}-[a-z-]+-[0-9a-f]{6}$")
# what the UI may start, by the name its pages use: (command, subcommand) of the CLI; the arguments
# come from checked forms (app.FORMS are these commands' forms)
COMMANDS = {"plan": ("plan",), "train": ("train",), "eval": ("eval",), "data-split": ("data", "split"),
            "data-convert": ("data", "convert"), "data-kie": ("data", "kie"), "data-validate": ("data", "validate")}
RUNNABLE = set(COMMANDS.values())
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_write_lock = threading.Lock()
_children: dict[str, subprocess.Popen] = {}  # jobs this process started (their exit status is ours to read)


def jobs_dir(workdir: Path) -> Path:
    return workdir / JOBS_DIR


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def start(workdir: Path, names: tuple[str, ...], argv: list[str], **meta) -> dict:
    """Start ``paddle-ocrvl-sft NAMES ARGV`` detached; its record (also written to ``<id>.json``)."""
    if tuple(names) not in RUNNABLE:
        raise UserError(f"{' '.join(names)}: not a command the UI starts")
    folder = jobs_dir(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    job_id = f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{'-'.join(names)}-{secrets.token_hex(3)}"
    log_path = folder / f"{job_id}.log"
    command = [sys.executable, "-m", "paddle_ocrvl_sft", *names, *argv]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NO_COLOR": "1"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, cwd=workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True)
    record = {"id": job_id, "command": list(names), "argv": argv, "pid": proc.pid, "host": socket.gethostname(),
              "started": _now(), "finished": None, "exit": None, "stop_requested": None, **meta}
    write_json(folder / f"{job_id}.json", record)
    _children[job_id] = proc
    threading.Thread(target=_reap, args=(proc, folder / f"{job_id}.json"), daemon=True, name=f"job {job_id}").start()
    return record


def _reap(proc: subprocess.Popen, path: Path) -> None:
    """Wait for the job (no zombie) and record how it ended."""
    _update(path, exit=proc.wait(), finished=_now())


def _settled(path: Path, record: dict) -> dict:
    """A job this process started that has just ended: its exit status now, not when the reaper gets to it."""
    proc = _children.get(record.get("id"))
    if record.get("exit") is None and proc is not None and proc.poll() is not None:
        return _update(path, exit=proc.returncode, finished=_now())
    return record


def _update(path: Path, **changes) -> dict:
    """Read, change and write a job record under the lock (the reaper thread and requests both write it);
    an exit status is recorded once, by whichever sees it first."""
    with _write_lock:
        record = json.loads(path.read_text(encoding="utf-8"))
        if "exit" in changes and record.get("exit") is not None:
            return record
        record.update(changes)
        write_json(path, record)
    return record


def load(workdir: Path, job_id: str) -> dict:
    if not JOB_ID.match(job_id or ""):
        raise UserError(f"job {job_id!r}: not a job id")
    path = jobs_dir(workdir) / f"{job_id}.json"
    try:
        record = _settled(path, json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        raise UserError(f"job {job_id}: not found") from None
    record["state"] = state(record)
    return record


def all_jobs(workdir: Path) -> list[dict]:
    """Every job record, newest first."""
    out = []
    folder = jobs_dir(workdir)
    for path in sorted(folder.glob("*.json"), reverse=True) if folder.is_dir() else []:
        try:
            record = _settled(path, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        record["state"] = state(record)
        out.append(record)
    return out


def process_alive(pid, host: str | None = None, marker: str = "paddle_ocrvl_sft", started: int | None = None) -> bool:
    """Whether ``pid`` on this host is still a running ``marker`` process (not a zombie, not a reused
    pid: ``started``, its start time when the record kept it)."""
    if host is not None and host != socket.gethostname():
        return False
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    return processes.alive(pid, started, marker)


def state(record: dict) -> str:
    """running, done (exit 0), stopped (a stop was asked), failed, or ended (exit status not seen)."""
    if record.get("exit") is not None:
        if record["exit"] == 0:
            return "done"
        return "stopped" if record.get("stop_requested") else "failed"
    ours = _children.get(record.get("id"))
    if (ours is not None and ours.returncode is None) or process_alive(record.get("pid", -1), record.get("host")):
        # ours: until our reaper has its exit status (a zombie the reaper is collecting is not "ended")
        return "stopping" if record.get("stop_requested") else "running"
    return "ended"


def stop(workdir: Path, job_id: str) -> dict:
    """Ctrl-C: SIGINT to the job's process group (its own session: the group id is its pid)."""
    record = load(workdir, job_id)
    if record["state"] not in ("running", "stopping"):
        raise UserError(f"job {job_id} is not running ({record['state']})")
    try:
        os.killpg(int(record["pid"]), signal.SIGINT)
    except ProcessLookupError:
        pass
    return {**_update(jobs_dir(workdir) / f"{job_id}.json", stop_requested=_now()), "state": "stopping"}


def interrupt(pid: int) -> None:
    """Ctrl-C for a ``train`` started elsewhere (a terminal): SIGINT to the process itself,
    which forwards it to its trainer's process group."""
    os.kill(int(pid), signal.SIGINT)


def tail(path: Path, lines: int = 200, max_bytes: int = 256 * 1024) -> list[str]:
    """The last ``lines`` lines of a log (colour codes and carriage-return progress bars cleaned)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    text = ANSI.sub("", data.decode("utf-8", "replace"))
    out = [line.rstrip("\r").rsplit("\r", 1)[-1] for line in text.split("\n")]
    if out and not out[-1]:
        out.pop()
    if size > max_bytes and out:
        out = out[1:]  # the first line was cut
    return out[-lines:]


def log_path(workdir: Path, job_id: str) -> Path:
    load(workdir, job_id)  # checks the id
    return jobs_dir(workdir) / f"{job_id}.log"
