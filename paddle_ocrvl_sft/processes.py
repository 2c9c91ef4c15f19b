"""Stopping a trainer and every process it started.

``paddle.distributed.launch`` starts each worker in a session of its own, so signalling the
launcher's process group leaves the GPU workers running (holding the GPUs, writing checkpoints).
A :class:`ProcessTree` finds the trainer's descendants when it is asked to stop (walking ``/proc``),
remembers each one by pid AND start time (a pid the kernel hands out again later is never
signalled), and signals them all. The first stop also starts a timer that SIGKILLs whatever is
left after a grace period: it runs on its own thread, so it fires while the trainer's log pipe is
still open (an orphaned worker holding the pipe would otherwise keep `train` reading forever).

Linux: the tree is read from ``/proc``. Without it only the trainer's own process group is signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

PROC = Path("/proc")


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, else None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":  # a zombie is dead: nothing to signal
        return None
    return int(fields[1]), int(fields[19])


def start_time(pid: int) -> int | None:
    """When a live process started (clock ticks since boot; with its pid, what names it uniquely), else None."""
    stat = _stat(pid)
    return stat[1] if stat else None


def alive(pid: int, started: int | None = None, marker: str | None = None) -> bool:
    """Whether ``pid`` is a live process (not a zombie) and, given its start time ``started``, still
    the same one: a dead process's pid handed out again names another process. ``marker``, for a
    record that kept no start time: the process's command line must contain it.

    Without ``/proc`` (not Linux) only whether some process has the pid can be told.
    """
    if pid <= 0:  # os.kill would signal a process group
        return False
    if not PROC.is_dir():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    now = start_time(pid)
    if now is None or (started is not None and now != started):
        return False
    if marker is None:
        return True
    try:
        return marker in (PROC / str(pid) / "cmdline").read_bytes().decode("utf-8", "replace")
    except OSError:
        return False


def processes() -> dict[int, tuple[int, int]]:
    """Every live process: ``{pid: (parent pid, start time)}``."""
    out = {}
    for entry in PROC.iterdir() if PROC.is_dir() else ():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))):
            out[int(entry.name)] = stat
    return out


def descendants(pid: int, table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """``{pid: start time}`` of every live descendant of ``pid`` (children, their children, ...)."""
    table = processes() if table is None else table
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, todo = {}, list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if child not in found:
            found[child] = table[child][1]
            todo += children.get(child, [])
    return found


class ProcessTree:
    """A started trainer (``root``) and everything below it, signalled together."""

    def __init__(self, root: subprocess.Popen, grace: float, on_kill=lambda pids: None):
        self.root = root
        self.grace = grace
        self.on_kill = on_kill  # called with the pids a SIGKILL went to (for the log)
        self.known: dict[int, int] = {}  # pid -> start time, of every process seen in the tree
        self.timer: threading.Timer | None = None
        self.closed = False  # the run is over: no timer is armed any more
        self.lock = threading.Lock()
        self.refresh()

    def running(self) -> bool:
        """Whether the trainer itself still runs (once it is reaped its pid may name another process)."""
        return self.root.returncode is None and self.root.poll() is None

    def refresh(self) -> dict[int, int]:
        """Add the current descendants of the trainer (and the trainer) to the processes known."""
        table = processes()
        with self.lock:
            if self.running():
                if self.root.pid in table:
                    self.known.setdefault(self.root.pid, table[self.root.pid][1])
                for pid, start in descendants(self.root.pid, table).items():
                    self.known.setdefault(pid, start)
            return dict(self.known)

    def alive(self) -> list[int]:
        """The known processes still running (same pid, same start time)."""
        return [pid for pid, start in self.refresh().items() if alive(pid, start)]

    def signal(self, signum: int) -> list[int]:
        """Send ``signum`` to every live process of the tree and to the trainer's process group."""
        sent = []
        for pid in self.alive():
            try:
                os.kill(pid, signum)
                sent.append(pid)
            except (ProcessLookupError, PermissionError):
                continue
        if self.running():  # start_new_session: the group id is the trainer's pid, while it lives
            try:
                os.killpg(self.root.pid, signum)
            except (ProcessLookupError, PermissionError):
                pass
        return sent

    def stop(self, signum: int) -> None:
        """Signal the whole tree and, the first time, arm the SIGKILL timer."""
        self.signal(signum)
        self.arm()

    def arm(self) -> None:
        """SIGKILL whatever of the tree is still running ``grace`` seconds from now (once)."""
        with self.lock:
            if self.timer is not None or self.closed:
                return
            self.timer = threading.Timer(self.grace, self.kill)
            self.timer.daemon = True
            self.timer.start()

    def kill(self) -> None:
        left = self.alive()
        if left:
            self.on_kill(left)
            self.signal(signal.SIGKILL)

    def cancel(self) -> None:
        """The run is over (its log pipe closed): no SIGKILL from now on."""
        with self.lock:
            self.closed = True
            if self.timer is not None:
                self.timer.cancel()
