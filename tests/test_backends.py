"""The backends' small interface: key schemas, plans for each trainer, prepared inputs, the CPU
patches' version checks, the LoRA merge check, the pinned environments' lock files."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from paddle_ocrvl_sft import backends
from paddle_ocrvl_sft.backends import envs
from paddle_ocrvl_sft.backends import paddleformers as pf
from paddle_ocrvl_sft.backends.schema import load_yaml_config
from paddle_ocrvl_sft.cli import main
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.safetensors_file import read_tensors, write_safetensors
from paddle_ocrvl_sft.testing import build_tiny_model
from tests.conftest import sample, write_image, write_jsonl

REPO = Path(__file__).resolve().parents[1]
# Real lines from the two trainers' logs on this machine (rank 0, NO_COLOR unset: ANSI kept)
ERNIEKIT_LINE = ("\x1b[32m[2026-11-30 09:11:31,296] [    INFO]\x1b[0m - loss: 10.409850120544434, loss_cur_dp: 10.409850120544434, "
                 "learning_rate: 5.000000e-07, global_step: 12, mem_allocated_gb: 0.000000e+00, global_runtime: 1.694200, "
                 "tokens_per_sec_per_card: 1208.700000, progress_or_epoch: 1.000000, data_id: 11, src_id: 0, data_type: 0\x1b[0m")
PADDLEFORMERS_LINE = ("\x1b[32m[2026-11-30 09:12:47,928] [    INFO]\x1b[0m - loss: 11.57219028, learning_rate: 0.005, global_step: 1, "
                      "interval_runtime: 0.8251, interval_samples_per_second: 1.212, interval_tokens_per_second_per_device: 2482.2498, "
                      "interval_steps_per_second: 1.212, ppl: 106105.61871648917, progress_or_epoch: 0.0833\x1b[0m")


def test_both_trainers_log_lines_parse():
    # ERNIEKit's tokens_per_sec_per_card is max_seq_len per sequence (what full packs would give): kept apart as nominal
    assert backends.get("erniekit").parse_log_line(ERNIEKIT_LINE) == {
        "step": 12, "loss": 10.409850120544434, "lr": 5e-07, "nominal_tokens_per_second": 1208.7}
    assert backends.get("paddleformers").parse_log_line(PADDLEFORMERS_LINE) == {
        "step": 1, "loss": 11.57219028, "lr": 0.005, "tokens_per_second": 2482.2498}
    assert backends.get("paddleformers").parse_log_line("[x] [ DEBUG] - logging_steps : 1") is None
    assert math.isnan(backends.get("erniekit").parse_log_line("[t] [INFO] - loss: nan, learning_rate: 1.0, global_step: 3")["loss"])


def test_unknown_backend_is_a_usage_error():
    with pytest.raises(UserError, match="unknown backend 'torch'"):
        backends.get("torch")


@pytest.mark.parametrize("name", backends.NAMES)
def test_each_presets_and_cpu_keys_pass_their_own_schema(name):
    trainer = backends.get(name)
    for preset in trainer.presets:
        config = load_yaml_config(REPO / "configs" / f"{preset}.yaml")
        assert trainer.schema.problems(config) == []
        on_cpu = {**config, **{k: v for k, v in trainer.cpu_keys.items() if v is not None}}
        assert trainer.schema.problems(on_cpu) == []
    other = backends.get(next(n for n in backends.NAMES if n != name))
    foreign = load_yaml_config(REPO / "configs" / f"{next(iter(other.presets))}.yaml")
    assert trainer.schema.problems(foreign)  # a preset of the other trainer is refused, key by key


def test_paddleformers_schema_names_what_the_trainer_itself_would_do():
    problems = pf.SCHEMA.problems({"learnig_rate": 1.0, "lora": True, "fine_tuning": "full"})
    assert any("did you mean learning_rate" in p and "PdArgumentParser" in p for p in problems)
    assert any("lora: True contradicts fine_tuning: full" in p for p in problems)
    assert any(p.startswith("template: required") and "placeholder" in p for p in problems)


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    # no trainer installed: the prompt agreement check is recorded as not run (tests/test_agreement.py runs it)
    monkeypatch.setenv("PADDLE_OCRVL_SFT_HOME", str(tmp_path / "no-trainers"))
    write_image(tmp_path / "data" / "imgs" / "a.png")
    rows = [sample("imgs/a.png", answer=f"text {i}") for i in range(6)] + ['{"broken": ']
    return write_jsonl(tmp_path / "data" / "train.jsonl", rows[:-1]), tmp_path


def test_plan_for_paddleformers_writes_messages_data_and_a_prepared_model_copy(dataset, capsys):
    data, root = dataset
    base = build_tiny_model(root / "base")
    before = {p.name: p.read_bytes() for p in base.iterdir()}
    plan = root / "plan"
    assert main(["plan", "--backend", "paddleformers", "--data", str(data), "--model", str(base), "--epochs", "2",
                 "--gpus", "2", "-o", str(plan)]) == 0
    out = capsys.readouterr().out
    config = yaml.safe_load((plan / "config.yaml").read_text())
    record = json.loads((plan / "plan.json").read_text())
    assert record["backend"] == "paddleformers" and config["fine_tuning"] == "full" and config["lora"] is False
    # B is per_device_train_batch_size: the preset's 8 x 8 for 1 GPU, keep-samples to 2 GPUs -> 8 x 4
    assert (config["per_device_train_batch_size"], config["gradient_accumulation_steps"]) == (8, 4)
    assert config["max_steps"] == 1 and "packing_size" not in config
    assert record["train"]["command"] == ["paddleformers-cli", "train", str(plan.resolve() / "config.yaml")]
    assert record["train"]["env"]["PADDLEFORMERS_DIST_LOG"] == str(plan.resolve() / "logs" / "dist")
    # data: messages + images, the image path still resolving from the new file
    (messages,) = config["train_dataset_path"].split(",")
    row = json.loads(Path(messages).read_text().splitlines()[0])
    assert row["messages"][0] == {"role": "user", "content": "<image>OCR:"} and row["messages"][1]["role"] == "assistant"
    assert (Path(messages).parent / row["images"][0]).resolve() == (root / "data" / "imgs" / "a.png").resolve()
    # model: a copy PaddleFormers reads; weights hard-linked; BASE byte-identical
    model = Path(config["model_name_or_path"])
    assert model == plan.resolve() / "model"
    processor = json.loads((model / "preprocessor_config.json").read_text())
    assert processor["image_processor_type"] == "PaddleOCRVLImageProcessor" and "auto_map" not in processor
    assert os.path.samefile(model / "model.safetensors", base / "model.safetensors")
    assert "fuse_rms_norm" not in json.loads((model / "config.json").read_text())  # GPU: keep the fused kernel
    assert {p.name: p.read_bytes() for p in base.iterdir()} == before
    assert "prepared model: model/ is a prepared copy" in out


def test_cpu_plans_write_the_cpu_keys_and_say_what_the_cpu_is_for(dataset, capsys):
    data, root = dataset
    base = build_tiny_model(root / "base")
    for name in backends.NAMES:
        plan = root / f"cpu-{name}"
        assert main(["plan", "--backend", name, "--device", "cpu", "--data", str(data), "--model", str(base),
                     "--epochs", "5", "--lr", "5e-3", "-o", str(plan)]) == 0
        config = yaml.safe_load((plan / "config.yaml").read_text())
        trainer = backends.get(name)
        assert all(config.get(k) == v for k, v in trainer.cpu_keys.items() if v is not None)
        assert config[trainer.batch_key] == 1 and config["gradient_accumulation_steps"] == 1 and config["max_steps"] == 30
        record = json.loads((plan / "plan.json").read_text())
        assert record["train"]["command"][:3] == ["python", "-m", trainer.cpu_module]
        assert "tiny models and smoke runs" in capsys.readouterr().out
    assert json.loads((root / "cpu-paddleformers" / "model" / "config.json").read_text())["fuse_rms_norm"] is False


@pytest.mark.parametrize("argv, why", [
    (["--backend", "erniekit", "--lora"], "does not support LoRA"),
    (["--backend", "paddleformers", "--lora-rank", "4"], "--lora-rank needs --lora"),
    (["--backend", "paddleformers", "--prob", "0.7"], None),
    (["--device", "cpu", "--gpus", "2"], "trains in one process"),
])
def test_plan_options_each_backend_refuses(dataset, capsys, argv, why):
    data, root = dataset
    base = build_tiny_model(root / "base")
    status = main(["plan", "--data", str(data), "--model", str(base), "--epochs", "1", "-o", str(root / "p"), *argv])
    err = capsys.readouterr().err
    if why is None:  # equal weights (one file) are fine for PaddleFormers' concatenation
        assert status == 0
    else:
        assert status == 1 and why in err and not (root / "p").exists()


def test_lora_plan_takes_the_recipe_values(dataset):
    data, root = dataset
    base = build_tiny_model(root / "base")
    assert main(["plan", "--backend", "paddleformers", "--lora", "--lora-rank", "16", "--data", str(data), "--model",
                 str(base), "--epochs", "1", "-o", str(root / "p")]) == 0
    config = yaml.safe_load((root / "p" / "config.yaml").read_text())
    assert (config["fine_tuning"], config["lora"], config["lora_rank"], config["learning_rate"]) == ("lora", True, 16, 5.0e-04)


# --- safetensors reading (the LoRA merge check's reader: tests/test_lora.py) ---------------------


def test_read_tensors_widens_bf16_exactly(tmp_path):
    from paddle_ocrvl_sft.testing import to_bf16

    values = np.array([1.0, -2.5, 3.140625, 0.0], np.float32)
    write_safetensors(tmp_path / "t.safetensors", {"x": ("BF16", (2, 2), to_bf16(values))})
    assert np.array_equal(read_tensors(tmp_path / "t.safetensors")["x"], values.reshape(2, 2))


# --- environments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", backends.NAMES)
def test_every_direct_pin_is_in_the_lock(name):
    direct = re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (envs.REQUIREMENTS / f"{name}.in").read_text(), re.M)
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", envs.lock_file(name).read_text(), re.M))
    lock = {k.lower().replace("_", "-"): v for k, v in lock.items()}
    for package, version in direct:
        assert lock.get(package.lower().replace("_", "-")) == version, package
    unpinned = [line for line in envs.lock_file(name).read_text().splitlines()
                if line.strip() and not line.startswith("#") and "==" not in line.split("#")[0] and not line.startswith(" ")]
    assert unpinned == []
    # both trainers save HF-layout safetensors: 0.8.0 writes transposed arrays as raw buffers (CPU_TRAINING.md A.6)
    assert lock.get("safetensors") == "0.7.0"


def test_listing_and_require_without_any_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PADDLE_OCRVL_SFT_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert [(r["backend"], r["status"]) for r in envs.listing()] == [("erniekit", "missing"), ("paddleformers", "missing")]
    with pytest.raises(UserError, match=r"backend install erniekit \[--source ERNIE_CLONE_OR_TARBALL\]"):
        envs.require("erniekit")
    with pytest.raises(UserError, match="only ERNIEKit is installed from source"):
        envs.install("paddleformers", source=tmp_path)


def test_erniekit_source_must_have_the_ocr_vl_stage(tmp_path):
    tree = tmp_path / "ERNIE"
    (tree / "erniekit" / "train").mkdir(parents=True)
    (tree / "setup.py").write_text("")
    with pytest.raises(UserError, match="not an ERNIEKit >= 1.4 source tree"):
        envs._check_erniekit_tree(tree)


def test_docs_paddleformers_key_table_is_up_to_date():
    text = (REPO / "docs" / "plan.md").read_text()
    block = text.split("<!-- paddleformers-schema:begin -->\n")[1].split("<!-- paddleformers-schema:end -->")[0]
    assert block == pf.SCHEMA.markdown(), "regenerate the table in docs/plan.md from backends.paddleformers.SCHEMA.markdown()"


# --- the two key tables and the renderer they share -----------------------------------------------


@pytest.mark.parametrize("name", backends.NAMES)
def test_every_layout_line_is_a_key_of_its_schema(name):
    schema = backends.get(name).schema
    assert [k for k in schema.layout_keys() if k not in schema] == []


def test_both_tables_take_the_shared_training_arguments_rows():
    from paddle_ocrvl_sft.backends.training_args import SOURCE, TRAINING_ARGUMENTS

    for name in backends.NAMES:
        schema = backends.get(name).schema
        for key in TRAINING_ARGUMENTS.values():
            assert schema[key.name].type == key.type and schema[key.name].source == SOURCE, (name, key.name)


def test_both_trainers_render_the_plans_numbers_the_same_way(dataset):
    data, root = dataset
    base = build_tiny_model(root / "base")
    configs = {}
    for name in backends.NAMES:
        assert main(["plan", "--backend", name, "--data", str(data), "--model", str(base), "--epochs", "2", "--lr", "1e-5",
                     "-o", str(root / name)]) == 0
        configs[name] = yaml.safe_load((root / name / "config.yaml").read_text())
    ernie, pf_config = configs["erniekit"], configs["paddleformers"]
    for key in ("num_train_epochs", "max_steps", "warmup_steps", "learning_rate", "gradient_accumulation_steps", "max_seq_len"):
        assert (ernie[key], type(ernie[key])) == (pf_config[key], type(pf_config[key])), key
    assert ernie["packing_size"] == pf_config["per_device_train_batch_size"]
    assert [Path(c["output_dir"]).name for c in (ernie, pf_config)] == ["output", "output"]


# --- overrides whose key the trainer does not read ----------------------------------------------------


def test_an_erniekit_scheduler_override_goes_to_the_key_the_trainer_reads(dataset, capsys):
    data, root = dataset
    base = build_tiny_model(root / "base")
    assert main(["plan", "--data", str(data), "--model", str(base), "--epochs", "1", "-o", str(root / "p"),
                 "lr_scheduler_type=constant"]) == 0
    config = yaml.safe_load((root / "p" / "config.yaml").read_text())
    assert config["lr_scheduler"] == "constant"  # what PretrainingTrainer.create_scheduler reads
    assert "lr_scheduler_type=constant set as lr_scheduler=constant: ERNIEKit does not read lr_scheduler_type" in capsys.readouterr().out
    assert any("set as lr_scheduler=constant" in w for w in json.loads((root / "p" / "plan.json").read_text())["warnings"])


@pytest.mark.parametrize("backend, override, why", [
    ("erniekit", "lr_scheduler_type=linear", "ERNIEKit reads lr_scheduler for this .* 'linear' is not one of its values"),
    ("erniekit", "eval_steps=10", "eval_steps: setting it changes nothing for ERNIEKit .*builds no eval dataset"),
    ("erniekit", "warmup_ratio=0.1", "warmup_ratio: setting it changes nothing .*warmup_steps >= 1"),
    ("paddleformers", "lora_alpha=32", "lora_alpha: setting it changes nothing for PaddleFormers .*2·lora_rank"),
    ("paddleformers", "max_estimate_samples=10", "max_estimate_samples: setting it changes nothing"),
])
def test_an_override_that_would_change_nothing_is_refused(dataset, capsys, backend, override, why):
    data, root = dataset
    base = build_tiny_model(root / "base")
    assert main(["plan", "--backend", backend, "--data", str(data), "--model", str(base), "--epochs", "1",
                 "-o", str(root / "p"), override]) == 1
    assert re.search(why, capsys.readouterr().err)
    assert not (root / "p").exists()


def test_a_gpu_erniekit_plan_keeps_flash_attention_a_cpu_plan_does_not_need_it(dataset, capsys):
    data, root = dataset
    base = build_tiny_model(root / "base")
    argv = ["plan", "--data", str(data), "--model", str(base), "--epochs", "1"]
    assert main([*argv, "-o", str(root / "gpu"), "use_flash_attention=False"]) == 1
    assert "use_flash_attention: False on a GPU hits an ERNIEKit v1.4 bug" in capsys.readouterr().err
    assert main([*argv, "--device", "cpu", "-o", str(root / "cpu")]) == 0  # the CPU keys turn it off; the CPU patch fixes the mask
    assert yaml.safe_load((root / "cpu" / "config.yaml").read_text())["use_flash_attention"] is False
