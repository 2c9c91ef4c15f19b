"""`train` as a launcher: checks before start, topology, dry runs, Docker, and the diagnosis of
failures a CPU cannot produce (replayed by a stand-in launcher, named as such). Real CPU training
of both backends is in tests/test_training_cpu.py."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from paddle_ocrvl_sft import train
from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.testing import build_tiny_model, write_standin_launcher
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


def test_node_1_of_2_dry_run_prints_what_the_docs_say(plan_dir, capsys):
    # the plan is for 8 GPUs on one node: re-plan for 2 nodes first, as docs/train.md shows
    record = json.loads((plan_dir / "plan.json").read_text())
    data, model = record["datasets"]["train"][0]["path"], record["model"]
    two = plan_dir.parent / "plan2"
    assert main(["plan", "--data", data, "--model", model, "--epochs", "1", "--gpus", "8", "--nodes", "2",
                 "--master-addr", "10.0.0.1", "-o", str(two)]) == 0
    capsys.readouterr()
    argv = ["train", str(two), "--nodes", "2", "--node-rank", "1", "--master", "10.0.0.1:36123",
            "--gpus", "0,1,2,3,4,5,6,7", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    command = next(line for line in out.splitlines() if "erniekit train" in line)
    env = dict(re.findall(r"(\w+)=(\S+)", command.split(" erniekit ")[0]))
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7" and env["NNODES"] == "2"
    assert (env["MASTER_ADDR"], env["MASTER_PORT"], env["PADDLE_RANK"], env["RANK"]) == ("10.0.0.1", "36123", "1", "1")
    assert env["NO_COLOR"] == "1" and env["ERNIEKIT_DIST_LOG"].startswith(str(two / "runs"))
    assert command.endswith(f"erniekit train {two}/config.yaml")
    assert "on node R: train" in out and "--node-rank R --master 10.0.0.1:36123" in out
    docs = (ROOT / "docs" / "train.md").read_text()
    assert "train PLAN --nodes 2 --node-rank 1 --master 10.0.0.1:36123 --gpus 0,1,2,3,4,5,6,7 --dry-run" in docs
    assert not (two / "runs").exists()  # a dry run starts nothing and writes nothing


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
    (FLASH_LINES, "flashmask-gpu", ["Ampere or newer", "use_flash_attention=False"]),
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
    assert [(m["step"], m["loss"], m["tokens_per_second"]) for m in metrics] == [(1, 3.0, 100.0), (2, 2.5, 100.0), (3, 2.0, 100.0)]
    from PIL import Image

    assert json.loads(Image.open(run / "loss.png").text["Description"]) == {"steps": 3, "first_step": 1, "last_step": 3, "non_finite": 0}
    out = capsys.readouterr().out
    assert "training finished at step 3" in out and "ETA" in out


def test_missing_plan_is_explained(tmp_path):
    with pytest.raises(UserError, match="plan.json: not found"):
        train.load_plan(tmp_path)
