"""processes.py: the trainer's process tree (the end-to-end stops are in tests/test_train.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from paddle_ocrvl_sft import processes

# A stand-in launcher: a child in its own session (as paddle.distributed.launch starts its workers)
# that starts a grandchild; all sleep until signalled.
LAUNCHER = """
import subprocess, sys, time
code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"
subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
print("started", flush=True)
time.sleep(600)
"""


def test_descendants_walk_every_generation():
    table = {1: (0, 10), 2: (1, 20), 3: (2, 30), 4: (1, 40), 5: (9, 50)}  # pid: (parent, start time)
    assert processes.descendants(1, table) == {2: 20, 3: 30, 4: 40}
    assert processes.descendants(5, table) == {}


def test_a_process_is_alive_while_it_runs_and_only_as_itself():
    import os

    me = os.getpid()
    assert processes.alive(me) and processes.alive(me, processes.start_time(me))
    assert not processes.alive(me, processes.start_time(me) + 1)  # a pid handed to another process since
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert not processes.alive(int(done.stdout)) and processes.start_time(int(done.stdout)) is None
    assert not processes.alive(0) and not processes.alive(-1)  # never a process group
    assert processes.alive(me, marker="python") and not processes.alive(me, marker="no such command line")


def test_stop_reaches_a_worker_in_its_own_session_and_its_child():
    root = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    tree = processes.ProcessTree(root, grace=60)
    try:
        assert root.stdout.readline() == "started\n"
        for _ in range(200):  # the grandchild appears once the worker has started it
            if len(tree.refresh()) == 3:
                break
            time.sleep(0.05)
        members = tree.refresh()
        assert len(members) == 3 and root.pid in members  # launcher, worker (own session), its child; no one else
        tree.stop(signal.SIGTERM)
        root.wait(timeout=60)
        for _ in range(200):
            if not tree.alive():
                break
            time.sleep(0.05)
        assert tree.alive() == []
    finally:
        tree.cancel()
        for pid in tree.known:
            try:
                __import__("os").kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_finished_run_arms_no_kill():
    root = subprocess.Popen([sys.executable, "-c", "pass"])
    root.wait()
    tree = processes.ProcessTree(root, grace=0.01)
    tree.cancel()
    tree.arm()
    assert tree.timer is None and tree.refresh() == {}  # a reaped trainer's pid is never walked (it may be reused)
