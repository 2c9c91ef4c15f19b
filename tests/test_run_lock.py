"""The training lock (run_lock.py): taken atomically before anything is deleted, respected across
hosts, removed only by its own run. Other processes hold it here, as a second `train` would."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from paddle_ocrvl_sft import processes, run_lock
from paddle_ocrvl_sft.errors import UserError

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)  # taken, its holder not written yet: the moment a racing run must not slip through
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding PLAN/.train.lock (until the test ends)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / ".train.lock")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    yield proc
    proc.stdin.close()
    proc.wait(timeout=60)


def test_a_lock_being_taken_by_another_process_is_respected(tmp_path, holder):
    with pytest.raises(UserError, match="already being trained"):
        run_lock.RunLock(tmp_path, "b").acquire()
    with pytest.raises(UserError, match="already being trained"):
        run_lock.check_free(tmp_path)


def test_another_hosts_lock_is_respected_with_how_to_clear_it(tmp_path):
    lock = tmp_path / ".train.lock"
    lock.write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "run": "20260101-000000", "started": "2026-01-01T00:00:00"}))
    for attempt in (lambda: run_lock.RunLock(tmp_path, "mine").acquire(), lambda: run_lock.check_free(tmp_path)):
        with pytest.raises(UserError, match=rf"already being trained \(pid 1 on host gpu-node-7, run 20260101-000000, .*\): "
                                            rf"wait for it or stop it first; if that run is no longer running .* remove {lock}"):
            attempt()
    assert json.loads(lock.read_text())["host"] == "gpu-node-7"


def test_a_dead_holder_on_this_host_is_stale_and_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / ".train.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "run": "old"}))
    with run_lock.RunLock(tmp_path, "new"):
        assert json.loads(lock.read_text())["run"] == "new"
    assert not lock.exists()


def test_a_holder_whose_pid_now_names_another_process_is_stale(tmp_path):
    """The holder died and the kernel gave its pid to another process (here: this one): its start time differs."""
    me = os.getpid()
    lock = tmp_path / ".train.lock"
    lock.write_text(json.dumps({"pid": me, "host": socket.gethostname(), "run": "old",
                                "pid_start": processes.start_time(me) - 1}))
    run_lock.check_free(tmp_path)
    with run_lock.RunLock(tmp_path, "new"):
        assert json.loads(lock.read_text())["pid_start"] == processes.start_time(me)
    assert not lock.exists()


def test_a_live_holder_of_this_host_is_refused_with_how_to_clear_it(tmp_path):
    me = os.getpid()
    lock = tmp_path / ".train.lock"
    lock.write_text(json.dumps({"pid": me, "host": socket.gethostname(), "run": "r", "pid_start": processes.start_time(me)}))
    with pytest.raises(UserError, match=rf"already being trained \(pid {me} .*if that run is no longer running .* remove {lock}"):
        run_lock.check_free(tmp_path)


def test_only_the_runs_own_lock_is_removed(tmp_path):
    lock = tmp_path / ".train.lock"
    with run_lock.RunLock(tmp_path, "mine"):
        lock.unlink()  # someone cleared it and another run took it (a file system that does not share flock)
        lock.write_text(json.dumps({"pid": 1, "host": "gpu-node-7", "run": "theirs"}))
    assert json.loads(lock.read_text())["run"] == "theirs"


def test_each_node_rank_has_its_own_lock(tmp_path):
    with run_lock.RunLock(tmp_path, "a", node_rank=0), run_lock.RunLock(tmp_path, "b", node_rank=1):
        assert sorted(p.name for p in tmp_path.iterdir()) == [".train.node-0.lock", ".train.node-1.lock"]
        with pytest.raises(UserError, match="already being trained"):
            run_lock.RunLock(tmp_path, "c", node_rank=1).acquire()
    assert list(tmp_path.iterdir()) == []
