"""The lock that keeps a second `train` off a plan (or off a node rank of it) that is being trained.

Taken FIRST, atomically, before anything is deleted or written: an ``flock`` on ``PLAN_DIR/.train.lock``
(released by the kernel when the holder dies, so a crash leaves no live lock on this host), with the
holder written into the file (pid, host, run, start time). Two runs racing for it cannot both win:
the loser's ``flock`` fails. A lock file naming another host is respected even when the file
system does not share ``flock`` between hosts (it says who holds it and how to clear it if that
run is gone); one naming a dead process on this host is stale and taken over — dead by its pid AND
the process's start time, so a pid the kernel has since handed to another process does not keep
the plan locked. A run removes the file only while it still names that run.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from paddle_ocrvl_sft import processes
from paddle_ocrvl_sft.errors import UserError


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    run: str
    started: str = ""
    pid_start: int | None = None  # the process's start time (processes.start_time): tells a reused pid apart

    def text(self) -> str:
        return f"pid {self.pid} on host {self.host}, run {self.run}" + (f", since {self.started}" if self.started else "")


def lock_name(node_rank: int | None = None) -> str:
    """``.train.lock``; one per node rank for a multi-node plan (each node runs its own `train`)."""
    return ".train.lock" if node_rank is None else f".train.node-{node_rank}.lock"


def _parse(text: str) -> Holder | None:
    try:
        data = json.loads(text)
        pid_start = data.get("pid_start")
        return Holder(int(data["pid"]), str(data["host"]), str(data.get("run", "?")), str(data.get("started", "")),
                      None if pid_start is None else int(pid_start))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def now() -> str:
    """The local time with its UTC offset, to the second: what lock files and run records say."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _refusal(path: Path, holder: Holder | None, plan_dir: Path) -> UserError:
    who = holder.text() if holder else "a process that has not written its name yet"
    # always: whatever this check concluded, the user can see what it cannot (a host that went down)
    return UserError(f"{plan_dir}: already being trained ({who}): wait for it or stop it first; if that run is no "
                     f"longer running (e.g. its host went down), remove {path} and start again")


def _blocks(holder: Holder | None) -> bool:
    """A holder found in a lock file whose flock is free: another host's (respected), or a live
    process of this host (a `train` that does not flock); a dead one of this host is stale, and so is
    one whose pid now names a process that started at another time (the pid was reused)."""
    if holder is None:
        return False
    return holder.host != socket.gethostname() or processes.alive(holder.pid, holder.pid_start)


class RunLock:
    """``with RunLock(plan_dir, run_id):`` — held for the run, released (and removed) at the end."""

    def __init__(self, plan_dir: Path, run: str, node_rank: int | None = None):
        self.plan_dir = Path(plan_dir)
        self.path = self.plan_dir / lock_name(node_rank)
        self.me = Holder(os.getpid(), socket.gethostname(), run, now(), processes.start_time(os.getpid()))
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
                os.close(fd)
                raise _refusal(self.path, holder, self.plan_dir) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False  # the previous holder removed it between our open and our flock: open it again
            if not same:
                os.close(fd)
                continue
            holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            if _blocks(holder):
                os.close(fd)
                raise _refusal(self.path, holder, self.plan_dir)
            data = json.dumps({"pid": self.me.pid, "host": self.me.host, "run": self.me.run, "started": self.me.started,
                               "pid_start": self.me.pid_start})
            os.ftruncate(fd, 0)
            os.pwrite(fd, data.encode(), 0)
            os.fsync(fd)
            self.fd = fd
            return

    def release(self) -> None:
        """Remove the lock file if it still names this run, then let go of the flock."""
        if self.fd is None:
            return
        try:
            ours = os.fstat(self.fd).st_ino == os.stat(self.path).st_ino and \
                _parse(os.pread(self.fd, 4096, 0).decode("utf-8", "replace")) == self.me
            if ours:
                self.path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def check_free(plan_dir: Path, node_rank: int | None = None) -> None:
    """Refuse when the plan (node rank) is being trained; takes nothing (``--dry-run``)."""
    path = Path(plan_dir) / lock_name(node_rank)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        holder = _parse(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            raise _refusal(path, holder, Path(plan_dir)) from None
        if _blocks(holder):
            raise _refusal(path, holder, Path(plan_dir))
    finally:
        os.close(fd)
