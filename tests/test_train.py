"""`train` as a launcher: checks before start, topology, dry runs, Docker, and the diagnosis of
failures a CPU cannot produce (replayed by a stand-in launcher, named as such). Real CPU training
of both backends is in tests/test_training_cpu.py."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml

from paddle_ocrvl_sft import processes, run_lock, train
from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.testing import build_tiny_model, write_standin_launcher, write_standin_program
from tests.conftest import sample, write_image, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
# A real Paddle CUDA out-of-memory error (paddle/phi/core/memory/allocation, as a GPU run logs it)
OOM_LINES = [
    "[2026-01-19 17:43:11,367] [    INFO] - loss: 2.5, loss_cur_dp: 2.5, learning_rate: 5.0e-06, global_step: 1, tokens_per_sec_per_card: 900.0",
    "ResourceExhaustedError: ",
    "Out of memory error on GPU 0. Cannot allocate 3.250000GB memory on GPU 0, 78.500000GB memory has been allocated and "
    "available memory is only 1.125000GB.",
]
FLASH_LINES = ["RuntimeError: FlashAttention only supports Ampere GPUs or newer."]


@pytest.fixture
def plan_dir(tmp_path, monkeypatch):
    """A real 8-GPU ERNIEKit plan over a small valid dataset (nothing installed: PATH holds only stand-ins)."""
    monkeypatch.setenv("PADDLE_OCRVL_SFT_HOME", str(tmp_path / "home"))
    write_image(tmp_path / "data" / "a.png")
    data = write_jsonl(tmp_path / "data" / "train.jsonl", [sample("a.png", answer=f"text {i}") for i in range(8)])
    model = build_tiny_model(tmp_path / "base")
    assert main(["plan", "--data", str(data), "--model", str(model), "--epochs", "1", "--gpus", "8", "-o",
                 str(tmp_path / "plan")]) == 0
    return tmp_path / "plan"


def standin(tmp_path, monkeypatch, lines, exit_code=1, name="erniekit"):
    bin_dir = tmp_path / "standin-bin"
    write_standin_launcher(bin_dir, name, lines, exit_code)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")


@pytest.fixture
def two_node_plan(plan_dir, capsys):
    """The 8-GPU plan re-planned for 2 nodes x 8 GPUs, as docs/train.md shows."""
    record = json.loads((plan_dir / "plan.json").read_text())
    data, model = record["datasets"]["train"][0]["path"], record["model"]
    two = plan_dir.parent / "plan2"
    assert main(["plan", "--data", data, "--model", model, "--epochs", "1", "--gpus", "8", "--nodes", "2",
                 "--master-addr", "10.0.0.1", "-o", str(two)]) == 0
    capsys.readouterr()
    return two


NODE_1 = ["--nodes", "2", "--node-rank", "1", "--master", "10.0.0.1:36123", "--gpus", "0,1,2,3,4,5,6,7"]


def test_node_1_of_2_starts_its_launcher_with_the_nodes_environment(two_node_plan, tmp_path, monkeypatch, capsys):
    """What the launcher really receives (a stand-in that records its environment), not the printed command."""
    monkeypatch.delenv("RANK", raising=False)
    seen = tmp_path / "launcher-env.json"
    write_standin_program(tmp_path / "standin-bin", "erniekit",
                          f"import json, os, sys\njson.dump({{'env': dict(os.environ), 'argv': sys.argv[1:]}}, "
                          f"open({str(seen)!r}, 'w'))\nprint({LOG_LINE.format(step=1)!r})\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'standin-bin'}:{__import__('os').environ['PATH']}")
    assert main(["train", str(two_node_plan), *NODE_1, "--no-export", "--skip-agreement-check"]) == 0
    launched = json.loads(seen.read_text())
    env = launched["env"]
    assert (env["CUDA_VISIBLE_DEVICES"], env["NNODES"], env["MASTER_ADDR"], env["MASTER_PORT"]) == \
        ("0,1,2,3,4,5,6,7", "2", "10.0.0.1", "36123")
    assert env["PADDLE_RANK"] == "1"  # this node's rank, read by paddle.distributed.launch
    assert "RANK" not in env  # a worker's own global rank is the launcher's to set, never one value for all workers
    assert env["ERNIEKIT_DIST_LOG"].startswith(str(two_node_plan / "runs")) and env["NO_COLOR"] == "1"
    assert Path(env["ERNIEKIT_DIST_LOG"]).parent.name.endswith("-node-1")  # never node 0's name on a shared plan dir
    assert launched["argv"] == ["train", f"{two_node_plan}/config.yaml"]
    assert not (two_node_plan / ".train.node-1.lock").exists()  # node 1 took (and released) its own lock


def test_the_docs_show_what_a_dry_run_of_node_1_prints(two_node_plan, capsys):
    assert main(["train", str(two_node_plan), *NODE_1, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "on node R: train" in out and "--node-rank R --master 10.0.0.1:36123" in out
    docs = (ROOT / "docs" / "train.md").read_text()
    assert "train PLAN --nodes 2 --node-rank 1 --master 10.0.0.1:36123 --gpus 0,1,2,3,4,5,6,7 --dry-run" in docs
    assert not (two_node_plan / "runs").exists()  # a dry run starts nothing and writes nothing


def test_a_node_without_its_rank_is_refused(two_node_plan, capsys):
    assert main(["train", str(two_node_plan), "--nodes", "2", "--master", "10.0.0.1:36123", "--dry-run"]) == 1
    assert "--nodes 2: give --node-rank R" in capsys.readouterr().err


def test_every_node_resumes_from_the_checkpoint_it_is_given(two_node_plan, tmp_path, capsys):
    from tests.test_checkpoints import unified

    out = Path(yaml.safe_load((two_node_plan / "config.yaml").read_text())["output_dir"])
    unified(out / "checkpoint-10", "trainer_state.json")
    unified(out / "checkpoint-20", "trainer_state.json")  # complete here, maybe not on the other node
    assert main(["train", str(two_node_plan), *NODE_1, "--resume", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "every node must resume from the SAME checkpoint: name it, e.g. --resume checkpoint-20" in err
    assert main(["train", str(two_node_plan), *NODE_1, "--resume", "checkpoint-10", "--dry-run"]) == 0
    assert f"resume_from_checkpoint={out / 'checkpoint-10'}" in capsys.readouterr().out


def test_docker_dry_run_prints_the_docker_command(plan_dir, capsys):
    assert main(["train", str(plan_dir), "save_steps=50", "--docker", "--image", "my/img:1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    cmd = next(line for line in out.splitlines() if line.startswith("$ docker run"))
    assert """--gpus '"device=0,1,2,3,4,5,6,7"'""" in cmd and "--shm-size 64g" in cmd and "--ipc=host" in cmd
    assert re.search(r"--user \d+:\d+", cmd)
    assert f"-v {plan_dir}:{plan_dir}" in cmd and f"my/img:1 train {plan_dir} save_steps=50" in cmd
    base = json.loads((plan_dir / "plan.json").read_text())["model"]
    assert f"-v {base}:{base}" in cmd


@pytest.mark.parametrize("argv, why", [
    (["--gpus", "0,1"], "the plan is for 8 GPU"),
    (["--nodes", "2"], "the plan is for 1 node"),
    (["--node-rank", "1"], "--node-rank 1: must be in 0..0"),
    (["--master", "nohost"], "expected HOST:PORT"),
    (["max_steps=5"], "computed by plan"),
    (["learnig_rate=1e-5"], "did you mean learning_rate"),
])
def test_bad_topology_and_overrides_are_refused_before_start(plan_dir, capsys, argv, why):
    assert main(["train", str(plan_dir), *[a for a in argv if "=" in a], "--dry-run", *[a for a in argv if "=" not in a]]) == 1
    assert why in capsys.readouterr().err


def test_a_busy_master_port_is_replaced_on_a_single_node(plan_dir, capsys):
    port = int(json.loads((plan_dir / "plan.json").read_text())["train"]["env"]["MASTER_PORT"])
    with socket.socket() as held:
        held.bind(("", port))
        held.listen()
        assert main(["train", str(plan_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    used = re.search(r"MASTER_PORT=(\d+)", out.split("$", 1)[-1] if "$" in out else out).group(1)
    assert int(used) != port and f"MASTER_PORT {port} is in use" in out


def test_output_dir_and_running_plan_are_not_reused(plan_dir, capsys):
    out = plan_dir / "output"
    (out / "checkpoint-3").mkdir(parents=True)
    assert main(["train", str(plan_dir), "--dry-run"]) == 1
    assert "output_dir is not empty (it holds no complete checkpoint)" in capsys.readouterr().err
    assert main(["train", str(plan_dir), "--resume", "--dry-run"]) == 1
    assert "no complete checkpoint-N" in capsys.readouterr().err
    (plan_dir / train.LOCK).write_text(json.dumps({"pid": __import__("os").getpid(), "host": socket.gethostname(), "run": "x"}))
    assert main(["train", str(plan_dir), "--force", "--dry-run"]) == 1
    assert "already being trained" in capsys.readouterr().err


def test_changed_data_that_would_crash_the_reader_is_refused(plan_dir, capsys):
    data = Path(json.loads((plan_dir / "plan.json").read_text())["datasets"]["train"][0]["path"])
    data.write_text(data.read_text() + '{"image_info": [\n', encoding="utf-8")
    assert main(["train", str(plan_dir), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert f"{data}:9:" in err and "would stop the trainer's reader at start-up" in err


@pytest.mark.parametrize("lines, name, expect", [
    (OOM_LINES, "out-of-memory", ["the GPU ran out of memory", "packing_size 8 -> 4, gradient_accumulation_steps 1 -> 2"]),
    (FLASH_LINES, "flashmask-gpu", ["Ampere or newer", "_attn_implementation=sdpa", "causal mask is built one key too long"]),
    (["ValueError: Unknown task: OCR-VL-SFT."], "unknown-stage", ["ERNIEKit >= 1.4"]),
    (["OSError: [Errno 98] Address already in use"], "port-in-use", ["JOINS the old one"]),
])
def test_gpu_failures_are_diagnosed_from_replayed_log_lines(plan_dir, tmp_path, monkeypatch, capsys, lines, name, expect):
    standin(tmp_path, monkeypatch, lines)  # a stand-in's Python has no trainer to build the agreement check's sample
    assert main(["train", str(plan_dir), "--no-export", "--skip-agreement-check"]) == 1
    err = capsys.readouterr().err
    assert f"  {name}: " in err, err
    for text in expect:
        assert text in err
    run = next((plan_dir / "runs").iterdir())
    assert (run / "train.log").read_text().splitlines() == lines  # the launcher's output, kept as is
    record = json.loads((run / "record.json").read_text())
    assert record["exit"] == 1 and record["datasets"][0]["sha256"] and record["command"][-1].endswith("config.yaml")
    assert not (plan_dir / train.LOCK).exists()


def test_the_stand_in_success_path_follows_progress_and_writes_metrics(plan_dir, tmp_path, monkeypatch, capsys):
    lines = [f"[2026-01-19 17:43:1{i},000] [    INFO] - loss: {3.0 - i * 0.5}, learning_rate: 1.0e-05, global_step: {i + 1}, "
             f"tokens_per_sec_per_card: 100.0" for i in range(3)]
    standin(tmp_path, monkeypatch, lines, exit_code=0)
    assert main(["train", str(plan_dir), "--no-export", "--skip-agreement-check"]) == 0
    run = next((plan_dir / "runs").iterdir())
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["loss"], m["nominal_tokens_per_second"]) for m in metrics] == [(1, 3.0, 100.0), (2, 2.5, 100.0), (3, 2.0, 100.0)]
    from PIL import Image

    assert json.loads(Image.open(run / "loss.png").text["Description"]) == {"steps": 3, "first_step": 1, "last_step": 3, "non_finite": 0,
                                                                          "lr": "constant"}
    out = capsys.readouterr().out
    assert "training finished at step 3" in out and "ETA" in out


def test_missing_plan_is_explained(tmp_path):
    with pytest.raises(UserError, match="plan.json: not found"):
        train.load_plan(tmp_path)


# --- stopping: the whole process tree, default signal dispositions, what really happened -----------

LOG_LINE = "[2026-01-19 17:43:10,000] [    INFO] - loss: 1.5, learning_rate: 1.0e-05, global_step: {step}, tokens_per_sec_per_card: 100.0"
# A stand-in worker: logs a step every 0.1 s up to LAST (then exits 0), its pid in PIDS.
WORKER = """
import os, signal, sys, time
if {ignore}:  # a worker that does not stop when asked
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open({pids!r}, "a").write(f"{{os.getpid()}}\\n")
for step in range(1, {last} + 1):
    print({line!r}.format(step=step), flush=True)
    time.sleep(0.1)
"""
# A stand-in of paddle.distributed.launch: starts the worker in a session of its own and waits for it.
SETSID_LAUNCHER = """
import subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", {worker!r}], start_new_session=True)
sys.exit(worker.wait())
"""


def train_process(plan_dir, *args, ignore_sigint=False):
    """`train` as its own process; ``ignore_sigint``: started as a script's background job is (SIGINT ignored)."""
    import os
    import signal
    import subprocess
    import sys

    preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    return subprocess.Popen([sys.executable, "-m", "paddle_ocrvl_sft", "train", str(plan_dir), "--no-export", "--skip-agreement-check", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
                            preexec_fn=preexec)


def until_step(proc, step: int) -> None:
    for line in proc.stdout:
        if line.startswith("step") and int(line.split()[1].split("/")[0]) >= step:
            return
    raise AssertionError("train ended before the stand-in logged a step")


@pytest.fixture
def reap():
    """What a test started (Popen objects, files of pids), SIGKILLed by pid if still running at the end:
    a red run must not leave stand-in workers behind."""
    import os
    import signal

    started: list = []
    yield started
    for item in started:
        pids = [item.pid] if not isinstance(item, Path) else [int(p) for p in item.read_text().split()] if item.exists() else []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] if Path(f"/proc/{pid}").exists() else "Z"
    return state != "Z"


def test_ctrl_c_stops_a_worker_the_launcher_started_in_its_own_session(plan_dir, tmp_path, monkeypatch, reap):
    import signal

    pids = tmp_path / "worker.pids"
    worker = WORKER.format(ignore=False, pids=str(pids), last=100000, line=LOG_LINE)
    write_standin_program(tmp_path / "standin-bin", "erniekit", SETSID_LAUNCHER.format(worker=worker))
    monkeypatch.setenv("PATH", f"{tmp_path / 'standin-bin'}:{__import__('os').environ['PATH']}")
    proc = train_process(plan_dir)
    reap += [proc, pids]
    until_step(proc, 3)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]  # before: the worker kept the log pipe open and train never returned
    assert proc.returncode == 130, out
    assert "stopped by SIGINT at step" in out and "no checkpoint was completed yet" in out
    (pid,) = [int(p) for p in pids.read_text().split()]
    assert not alive(pid)  # the worker in its own session was stopped too


def test_a_worker_that_ignores_the_stop_is_killed_after_the_grace_period(plan_dir, tmp_path, monkeypatch, reap):
    import signal

    pids = tmp_path / "worker.pids"
    worker = WORKER.format(ignore=True, pids=str(pids), last=100000, line=LOG_LINE)
    write_standin_program(tmp_path / "standin-bin", "erniekit", SETSID_LAUNCHER.format(worker=worker))
    monkeypatch.setenv("PATH", f"{tmp_path / 'standin-bin'}:{__import__('os').environ['PATH']}")
    proc = train_process(plan_dir, "--stop-grace", "2")
    reap += [proc, pids]
    until_step(proc, 3)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    (pid,) = [int(p) for p in pids.read_text().split()]
    assert proc.returncode == 130 and f"still running 2 s after the stop signal: SIGKILL ({pid})" in out, out
    assert not alive(pid)


def test_a_trainer_started_from_a_background_job_still_stops_on_sigint(plan_dir, tmp_path, monkeypatch, reap):
    """`train PLAN &` in a script: SIGINT is ignored in train and, before, in the trainer it started."""
    import signal

    pids = tmp_path / "trainer.pids"
    write_standin_program(tmp_path / "standin-bin", "erniekit",
                          WORKER.format(ignore=False, pids=str(pids), last=300, line=LOG_LINE))
    monkeypatch.setenv("PATH", f"{tmp_path / 'standin-bin'}:{__import__('os').environ['PATH']}")
    proc = train_process(plan_dir, ignore_sigint=True)
    reap += [proc, pids]
    until_step(proc, 3)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    run = next((plan_dir / "runs").iterdir())
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert proc.returncode == 130 and "stopped by SIGINT" in out, out
    assert steps[-1] < 300, "the stand-in trainer ignored SIGINT and ran to its end"
    assert "KeyboardInterrupt" in (run / "train.log").read_text()  # Python's default SIGINT handling, in the trainer


def test_a_signal_after_the_last_step_leaves_a_finished_run(plan_dir, tmp_path, monkeypatch, reap):
    """The trainer logged max_steps and saved; a Ctrl-C while it exits does not make it an interrupted run."""
    import signal

    max_steps = yaml.safe_load((plan_dir / "config.yaml").read_text())["max_steps"]
    finishing = f"""
import signal, sys, time
signal.signal(signal.SIGINT, lambda *a: None)  # finishing up: the final save is done, the signal changes nothing
for step in range(1, {max_steps} + 1):
    print({LOG_LINE!r}.format(step=step), flush=True)
time.sleep(5)  # exits 0 a while after its last step: the signal lands in between
"""
    write_standin_program(tmp_path / "standin-bin", "erniekit", finishing)
    monkeypatch.setenv("PATH", f"{tmp_path / 'standin-bin'}:{__import__('os').environ['PATH']}")
    proc = train_process(plan_dir)
    reap.append(proc)
    until_step(proc, max_steps)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    assert f"SIGINT arrived after the trainer had finished (step {max_steps} of {max_steps}, exit 0, saved)" in out
    assert f"training finished at step {max_steps}" in out
    record = json.loads((next((plan_dir / "runs").iterdir()) / "record.json").read_text())
    assert (record["exit"], record["state"], record["signal"]) == (0, "finished", "SIGINT")


# --- the lock: taken before --force deletes anything -------------------------------------------------


def test_force_deletes_nothing_while_another_run_holds_the_lock(plan_dir, tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    standin(tmp_path, monkeypatch, [LOG_LINE.format(step=1)], exit_code=0)
    kept = plan_dir / "output" / "checkpoint-3" / "weights.bin"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"an earlier run's checkpoint")
    hold = ("import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\nfcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\nsys.stdin.read()\n")  # another `train` that took the lock, not yet written its name
    other = subprocess.Popen([sys.executable, "-c", hold, str(plan_dir / train.LOCK)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline() == "held\n"
        assert main(["train", str(plan_dir), "--force", "--no-export", "--skip-agreement-check"]) == 1
    finally:
        other.stdin.close()
        other.wait(timeout=60)
    assert "already being trained" in capsys.readouterr().err
    assert kept.read_bytes() == b"an earlier run's checkpoint" and not (plan_dir / "runs").exists()


def test_a_lock_of_another_host_is_respected(plan_dir, tmp_path, monkeypatch, capsys):
    standin(tmp_path, monkeypatch, [LOG_LINE.format(step=1)], exit_code=0)
    (plan_dir / train.LOCK).write_text(json.dumps({"pid": 4242, "host": "gpu-node-7", "run": "20260101-000000"}))
    assert main(["train", str(plan_dir), "--no-export", "--skip-agreement-check"]) == 1
    err = capsys.readouterr().err
    assert "already being trained (pid 4242 on host gpu-node-7" in err and f"remove {plan_dir / train.LOCK}" in err
    assert not (plan_dir / "runs").exists()


def test_a_run_leaves_a_lock_that_is_not_its_own(plan_dir, tmp_path, monkeypatch, capsys):
    """The stand-in replaces the lock while the run goes (another host took it over): the run must not remove it."""
    theirs = json.dumps({"pid": 4242, "host": "gpu-node-7", "run": "theirs"})
    write_standin_program(tmp_path / "standin-bin", "erniekit",
                          f"import pathlib\npathlib.Path({str(plan_dir / train.LOCK)!r}).write_text({theirs!r})\n"
                          f"print({LOG_LINE.format(step=1)!r})\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'standin-bin'}:{__import__('os').environ['PATH']}")
    assert main(["train", str(plan_dir), "--no-export", "--skip-agreement-check"]) == 0
    assert json.loads((plan_dir / train.LOCK).read_text())["run"] == "theirs"


def test_export_and_eval_run_while_the_run_still_holds_the_lock(plan_dir, tmp_path, monkeypatch, capsys):
    """They read output_dir: a `train --force` started meanwhile must be refused, not delete it under them."""
    standin(tmp_path, monkeypatch, [LOG_LINE.format(step=1)], exit_code=0)
    seen = []

    def export_and_evaluate(plan, result, options, echo):
        try:
            run_lock.check_free(plan.plan_dir)
            seen.append("free")
        except UserError:
            seen.append("held")

    monkeypatch.setattr(train, "export_and_evaluate", export_and_evaluate)
    assert main(["train", str(plan_dir), "--skip-agreement-check"]) == 0
    assert seen == ["held"] and not (plan_dir / train.LOCK).exists()


def test_a_run_dir_name_taken_since_it_was_chosen_gets_the_next_one(plan_dir, tmp_path, monkeypatch):
    """Another run (another node rank on a shared plan dir) made the dir between the choice and the start."""
    assert train.new_run_dir(plan_dir, 0) != train.new_run_dir(plan_dir, 1)  # node ranks never pick the same name
    standin(tmp_path, monkeypatch, [LOG_LINE.format(step=1)], exit_code=0)
    taken = plan_dir / "runs" / "20260101-000000"
    taken.mkdir(parents=True)
    monkeypatch.setattr(train, "new_run_dir", lambda plan_dir, node_rank=None: taken)
    assert main(["train", str(plan_dir), "--no-export", "--skip-agreement-check"]) == 0
    run = plan_dir / "runs" / "20260101-000000-2"
    record = json.loads((run / "record.json").read_text())
    assert record["env"]["ERNIEKIT_DIST_LOG"] == str(run / "dist") and list(taken.iterdir()) == []


class NoReentry:
    """A lock that fails, instead of deadlocking, when the thread holding it takes it again."""

    def __init__(self):
        import threading

        self.inner, self.owner = threading.Lock(), None

    def __enter__(self):
        import threading

        if self.owner == threading.get_ident():
            raise AssertionError("the thread holding the tree's lock took it again: a deadlock")
        self.inner.acquire()
        self.owner = threading.get_ident()

    def __exit__(self, *exc):
        self.owner = None
        self.inner.release()


def test_a_second_ctrl_c_while_the_first_holds_the_trees_lock_does_not_deadlock(plan_dir, tmp_path, monkeypatch, capsys):
    """A signal handler runs in the main thread between two bytecodes, maybe inside the process tree's
    lock (the first stop): two Ctrl-C arrive there. Before, the handler took the lock itself."""
    import signal

    write_standin_program(tmp_path / "standin-bin", "erniekit",
                          f"import time\nprint({LOG_LINE.format(step=1)!r}, flush=True)\ntime.sleep(600)\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'standin-bin'}:{__import__('os').environ['PATH']}")
    trees = []

    class Tree(processes.ProcessTree):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lock = NoReentry()
            trees.append(self)

    monkeypatch.setattr(processes, "ProcessTree", Tree)
    backend = train.load_plan(plan_dir).backend
    parse = backend.parse_log_line

    def parse_and_interrupt(line):
        point = parse(line)
        if point:
            with trees[0].lock:  # where the first Ctrl-C's stop is, when the second one comes
                handler = signal.getsignal(signal.SIGINT)
                handler(signal.SIGINT, None)
                handler(signal.SIGINT, None)
        return point

    monkeypatch.setattr(backend, "parse_log_line", parse_and_interrupt)
    assert main(["train", str(plan_dir), "--no-export", "--skip-agreement-check"]) == 130
    assert "stopped by SIGINT at step 1" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "soon"])
def test_stop_grace_is_a_finite_number_of_seconds(plan_dir, capsys, value):
    with pytest.raises(SystemExit) as stopped:
        main(["train", str(plan_dir), "--dry-run", "--stop-grace", value])
    assert stopped.value.code == 2 and "--stop-grace" in capsys.readouterr().err
    assert main(["train", str(plan_dir), "--dry-run", "--stop-grace", "0"]) == 0


# --- CPU plans stay on the CPU; ERNIEKit GPU plans keep flash attention ------------------------------


@pytest.fixture
def cpu_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_OCRVL_SFT_HOME", str(tmp_path / "home"))
    write_image(tmp_path / "data" / "a.png")
    data = write_jsonl(tmp_path / "data" / "train.jsonl", [sample("a.png", answer=f"text {i}") for i in range(4)])
    model = build_tiny_model(tmp_path / "base")
    assert main(["plan", "--device", "cpu", "--data", str(data), "--model", str(model), "--epochs", "1", "-o",
                 str(tmp_path / "cpuplan")]) == 0
    return tmp_path / "cpuplan"


def test_a_cpu_plan_is_not_run_on_a_gpu(cpu_plan, capsys):
    assert main(["train", str(cpu_plan), "device=gpu", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "device=gpu: this plan was made for the CPU" in err and "re-plan with --device gpu" in err


def test_the_cpu_launch_puts_only_this_package_on_the_trainers_path(cpu_plan, capsys):
    import os

    assert main(["train", str(cpu_plan), "--dry-run"]) == 0
    pythonpath = re.search(r"PYTHONPATH=(\S+)", capsys.readouterr().out).group(1)
    first = Path(pythonpath.split(os.pathsep)[0])
    assert sorted(p.name for p in first.iterdir()) == ["paddle_ocrvl_sft"]  # not a site-packages full of our pins
    assert (first / "paddle_ocrvl_sft").resolve() == Path(train.__file__).resolve().parent


def test_an_erniekit_gpu_run_without_flash_attention_is_refused(plan_dir, capsys):
    assert main(["train", str(plan_dir), "use_flash_attention=False", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "use_flash_attention: False on a GPU hits an ERNIEKit v1.4 bug" in err and "_attn_implementation=sdpa" in err


def test_a_causal_mask_failure_is_diagnosed(plan_dir, tmp_path, monkeypatch, capsys):
    line = "ValueError: (InvalidArgument) Broadcast dimension mismatch. Operands could not be broadcast together with the shape of X = [1, 2, 218, 218] and the shape of Y = [1, 1, 218, 219]."
    standin(tmp_path, monkeypatch, [line])
    assert main(["train", str(plan_dir), "--no-export", "--skip-agreement-check"]) == 1
    err = capsys.readouterr().err
    assert "  causal-mask: " in err and "use_flash_attention" in err


def test_docker_refuses_a_paddleformers_plan_the_image_cannot_train(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PADDLE_OCRVL_SFT_HOME", str(tmp_path / "home"))
    write_image(tmp_path / "data" / "a.png")
    data = write_jsonl(tmp_path / "data" / "train.jsonl", [sample("a.png", answer=f"text {i}") for i in range(4)])
    model = build_tiny_model(tmp_path / "base")
    assert main(["plan", "--backend", "paddleformers", "--data", str(data), "--model", str(model), "--epochs", "1",
                 "-o", str(tmp_path / "pf")]) == 0
    capsys.readouterr()
    assert main(["train", str(tmp_path / "pf"), "--docker", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "carries ERNIEKit with paddleformers 0.3.2, and this PaddleFormers plan needs paddleformers >= 1.2" in err
    assert main(["train", str(tmp_path / "pf"), "--docker", "--image", "my/pf-1.2-image", "--dry-run"]) == 0
    assert "my/pf-1.2-image train" in capsys.readouterr().out  # another image: `train` inside checks its trainer
