import json

import pytest
import yaml

from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.train import LOG_LINE, check_output_dir, load_launch


def write_plan(tmp_path, max_steps=3, save_steps=2):
    plan = tmp_path / "plan"
    plan.mkdir()
    out = plan / "output"
    (plan / "config.yaml").write_text(yaml.safe_dump({"output_dir": str(out), "max_steps": max_steps, "save_steps": save_steps,
                                                      "learning_rate": 5.0e-06, "warmup_steps": 1}))
    env = {"CUDA_VISIBLE_DEVICES": "0", "NNODES": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "23456",
           "ERNIEKIT_DIST_LOG": str(plan / "logs" / "dist"), "NO_COLOR": "1"}
    (plan / "plan.json").write_text(json.dumps({"train": {"command": ["erniekit", "train", str(plan / "config.yaml")], "env": env}}))
    return plan


def test_log_line_format_from_facts():
    line = ("[2026-01-19 17:43:11,367] [    INFO] - loss: 22.99, loss_cur_dp: 22.99, learning_rate: 1.666667e-06, "
            "global_step: 1, mem_allocated_gb: 3.1, global_runtime: 9.9, tokens_per_sec_per_card: 1.0, "
            "progress_or_epoch: 0.007700, data_id: 7, src_id: 0, data_type: 0")
    match = LOG_LINE.search(line)
    assert (match["loss"], match["lr"], match["step"]) == ("22.99", "1.666667e-06", "1")


def test_without_erniekit_the_exact_command_is_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no erniekit, no nvidia-smi
    plan = write_plan(tmp_path)
    assert main(["train", str(plan)]) == 1
    err = capsys.readouterr().err
    assert "cannot train here: `erniekit` is not installed" in err
    assert f"MASTER_PORT=23456 ERNIEKIT_DIST_LOG={plan}/logs/dist NO_COLOR=1 erniekit train {plan}/config.yaml" in err


@pytest.mark.slow
def test_simulated_run_writes_erniekit_layout_and_refuses_a_second_run(tmp_path, capsys):
    plan = write_plan(tmp_path, max_steps=3, save_steps=2)
    assert main(["train", str(plan), "--simulate"]) == 0
    out = capsys.readouterr().out
    assert "SIMULATED TRAINING" in out and "not ERNIEKit" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("step ")] == ["1", "2", "3"]
    output = plan / "output"
    assert (output / "model-00001-of-00001.safetensors").is_file() and (output / "checkpoint-2").is_dir()
    assert not (output / "model.safetensors").exists()  # ERNIEKit's layout: export adds it
    with pytest.raises(UserError, match="checkpoint-2: ERNIEKit would resume"):
        check_output_dir(output, force=False)
    assert main(["train", str(plan), "--simulate"]) == 1


def test_missing_plan_is_explained(tmp_path):
    with pytest.raises(UserError, match="plan.json: not found"):
        load_launch(tmp_path)
