"""plan: the guide's formulas, scaling, token-aware checks, the reference config, files and CLI."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from paddle_ocrvl_sft import cli
from paddle_ocrvl_sft import backends
from paddle_ocrvl_sft.backends import base as backend_base
from paddle_ocrvl_sft.backends import schema
from paddle_ocrvl_sft.backends.erniekit import SCHEMA as ERNIEKIT
from paddle_ocrvl_sft import plan
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.testing import RESOURCES

REFERENCE = Path(__file__).resolve().parent / "data" / "erniekit_run_ocr_vl_sft_16k.yaml"  # tests/data/README.md
PATH_KEYS = ("train_dataset_path", "eval_dataset_path", "model_name_or_path", "output_dir", "logging_dir")


def make_model_dir(root: Path) -> Path:
    model = root / "model"
    model.mkdir()
    shutil.copy(RESOURCES / "preprocessor_config.json", model)  # the released file (test_testing checks it)
    return model


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return make_model_dir(tmp_path)


def stats(n: int, tokens: int = 300, path: str = "/data/train.jsonl", **kw) -> plan.FileSummary:
    return plan.FileSummary(path=path, samples=n, valid=n, token_lengths=(tokens,) * n, **kw)


# --- the guide's formulas ---------------------------------------------------------------------


def test_guide_reference_numbers():
    assert plan.max_steps(29605, 2, 1, 8, 8) == 926
    assert plan.warmup_steps(926) == 10
    assert plan.warmup_steps(80) == 1  # seed 001 appendix: max_steps 80, warmup 1
    assert plan.warmup_steps(1) == 1 and plan.warmup_steps(100) == 1 and plan.warmup_steps(101) == 2


@pytest.mark.parametrize("args", [(0, 2, 1, 8, 8), (10, 0, 1, 8, 8), (10, -1, 1, 8, 8), (10, 2, 0, 8, 8), (10, 2, 1, 0, 8), (10, float("nan"), 1, 8, 8)])
def test_max_steps_rejects_non_positive_inputs(args):
    with pytest.raises(UserError, match="must be > 0"):
        plan.max_steps(*args)


@given(st.integers(1, 10**7), st.integers(1, 20), st.integers(1, 64), st.integers(1, 32), st.integers(1, 32))
def test_max_steps_covers_d_times_e_samples(d, e, g, b, a):
    steps = plan.max_steps(d, e, g, b, a)
    assert steps * g * b * a >= d * e > (steps - 1) * g * b * a


@pytest.mark.parametrize("n, b, a, xy", [(8, 8, 8, (1, 8)), (2, 8, 8, (1, 2)), (16, 8, 8, (2, 8)), (64, 8, 8, (8, 8)), (4, 4, 1, (4, 1)), (6, 8, 6, (1, 6)), (6, 2, 3, (2, 3))])
def test_keep_samples_split(n, b, a, xy):
    x, y = plan.keep_samples_split(n, b, a)
    assert (x, y) == xy and x * y == n and b % x == 0 and a % y == 0


@pytest.mark.parametrize("n, b, a", [(3, 8, 8), (128, 8, 8), (5, 4, 4)])
def test_keep_samples_split_impossible(n, b, a):
    with pytest.raises(UserError, match="cannot split N"):
        plan.keep_samples_split(n, b, a)


def test_scale_1_to_8_gpus_both_strategies():
    base = plan.Batch(8, 8, 5e-6)
    keep, rec = plan.scale_to_gpus(base, 1, 8, "keep-samples")
    assert keep == plan.Batch(8, 1, 5e-6) and (rec["x"], rec["y"]) == (1, 8)
    assert plan.max_steps(29605, 2, 8, keep.packing_size, keep.grad_accum) == 926
    lr, _ = plan.scale_to_gpus(base, 1, 8, "scale-lr")
    assert lr == plan.Batch(8, 8, 4e-5)
    assert plan.max_steps(29605, 2, 8, 8, 8) == 116
    down, _ = plan.scale_to_gpus(plan.Batch(8, 1, 5e-6), 8, 2, None)  # default keep-samples, going down
    assert down == plan.Batch(8, 4, 5e-6)
    with pytest.raises(UserError, match="not a multiple"):
        plan.scale_to_gpus(base, 2, 3, "keep-samples")


def test_dataset_size_single_and_weighted_files():
    assert plan.dataset_size([29605], [29605], [1.0])[0] == 29605
    assert plan.dataset_size([30000], [29605], [1.0])[0] == 29605  # invalid records are drawn, then skipped
    probs = plan.normalize_probs([3, 1], 2)
    assert probs == [0.75, 0.25]
    # ERNIEKit draws int(p_i * N) records of file i per cycle, N = 1200 records in all
    d, rec = plan.dataset_size([1000, 200], [1000, 100], probs)
    assert d == round(0.75 * 1200 + 0.25 * 1200 * 100 / 200) == 1050 and rec["inputs"]["n_i"] == [1000, 200]
    assert plan.passes_per_epoch([1000, 200], probs) == [0.9, 1.5]
    with pytest.raises(UserError, match="D = 0"):
        plan.dataset_size([5, 5], [0, 0], [0.5, 0.5])
    with pytest.raises(UserError, match="one per file"):
        plan.normalize_probs([1.0], 2)
    with pytest.raises(UserError, match="positive sum"):
        plan.normalize_probs([0, 0], 2)


def test_max_seq_len_check_and_drop_count():
    lengths = [100, 5000, 20000, 17000]
    assert plan.too_long(lengths, 16384) == 2
    with pytest.raises(UserError, match=r"would drop 2 of 4 sample\(s\); use --max-seq-len 20480 or --allow-drop"):
        plan.check_max_seq_len(lengths, 16384, allow_drop=False)
    assert plan.check_max_seq_len(lengths, 16384, allow_drop=True) == 2
    assert plan.check_max_seq_len(lengths, 20000, allow_drop=False) == 0


def test_simulate_packing():
    p = plan.simulate_packing([100] * 16, 8, 16384)
    assert (p.packs, p.mean_samples, p.max_tokens) == (2, 8.0, 800)
    p = plan.simulate_packing([6000] * 6 + [99999], 8, 16384)  # 2 fit per pack; the too-long one is dropped
    assert (p.packs, p.mean_samples, p.max_tokens) == (3, 2.0, 12000)


def test_estimates_are_labelled_and_calibrated_on_the_guide():
    # the guide's reference run, at the assumed tokens per sample, takes ≈ 2 h
    sec = plan.estimate_step_seconds(8, 8 * plan.REF_TOKENS_PER_SAMPLE)["value"]
    assert math.isclose(926 * sec / 3600, 2.0, rel_tol=0.01)
    small, big = plan.estimate_memory_gb(2400)["value"], plan.estimate_memory_gb(16384)["value"]
    assert 15 < small < big < 80
    assert plan.estimate_memory_gb(16384, sharding_degree=8)["value"] < big
    assert any("ESTIMATE" in a for a in plan.ESTIMATE_ASSUMPTIONS)


def test_launch_spec(tmp_path):
    erniekit = backends.get("erniekit")
    config = tmp_path / "config.yaml"

    def launch(gpus, nodes, **kw):
        return erniekit.launch(tmp_path, config, "gpu", gpus_per_node=gpus, nodes=nodes, **{
            "master_addr": None, "master_port": None, "cuda_visible_devices": None, **kw})

    spec = launch(4, 2, master_addr="10.0.0.1", master_port=29555, cuda_visible_devices="4,5,6,7")
    assert spec["command"] == ["erniekit", "train", str(config)]
    assert spec["env"] == {"CUDA_VISIBLE_DEVICES": "4,5,6,7", "NNODES": "2", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29555",
                           "ERNIEKIT_DIST_LOG": str(tmp_path / "logs" / "dist"), "NO_COLOR": "1"}
    default = launch(2, 1)
    assert default["env"]["CUDA_VISIBLE_DEVICES"] == "0,1" and default["env"]["MASTER_ADDR"] == "127.0.0.1"
    assert default["env"]["MASTER_PORT"] == str(backend_base.default_master_port(tmp_path))  # stable per dir
    with pytest.raises(UserError, match="does not match CUDA_VISIBLE_DEVICES"):
        launch(8, 1, cuda_visible_devices="0,1")
    with pytest.raises(UserError, match="--master-addr"):
        launch(8, 2)


def test_model_dir_checks(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        plan.model_bounds(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="preprocessor_config.json"):
        plan.model_bounds(tmp_path / "empty")
    model = make_model_dir(tmp_path)
    assert plan.model_bounds(model).max_pixels == 2822400
    assert plan.model_bounds(model, max_pixels=1003520).max_pixels == 1003520
    with pytest.raises(UserError, match="min_pixels <= max_pixels"):
        plan.model_bounds(model, min_pixels=2000000, max_pixels=1000000)


# --- the reference config ----------------------------------------------------------------------


def test_guide_inputs_reproduce_the_reference_config(model_dir, tmp_path):
    reference = yaml.safe_load(REFERENCE.read_text())
    result = plan.make_plan(
        train=[stats(29605)], eval_sets=[stats(500, path="/data/test.jsonl")], model_dir=model_dir,
        epochs=2, gpus=1, plan_dir=tmp_path / "plan",
    )
    out = plan.write_plan(result, tmp_path / "plan", check_agreement=False)  # stats of files that do not exist
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert list(written) == list(reference)
    for key, want in reference.items():
        if key in PATH_KEYS:
            continue
        assert written[key] == want and type(written[key]) is type(want), key
    numbers = json.loads((out / "plan.json").read_text())["numbers"]
    assert numbers["max_steps"]["value"] == 926 and numbers["max_steps"]["inputs"] == {"D": 29605, "E": 2, "G": 1, "B": 8, "A": 8}
    assert numbers["warmup_steps"]["value"] == 10 and numbers["learning_rate"]["value"] == 5e-06
    assert written["model_name_or_path"] == str(model_dir.resolve())


def test_multi_file_plan_records_probabilities(model_dir, tmp_path):
    result = plan.make_plan(train=[stats(1000, path="/a.jsonl"), stats(200, path="/b.jsonl")], probs=[0.75, 0.25],
                            model_dir=model_dir, epochs=2, gpus=8, scale="scale-lr", plan_dir=tmp_path / "p")
    cfg, rec = result.config, result.record
    assert (cfg["train_dataset_path"], cfg["train_dataset_prob"], cfg["train_dataset_type"]) == ("/a.jsonl,/b.jsonl", "0.75,0.25", "erniekit,erniekit")
    assert rec["numbers"]["D"]["value"] == 1200  # 900 draws of a.jsonl + 300 of b.jsonl per cycle
    assert cfg["max_steps"] == math.ceil(1200 * 2 / (8 * 8 * 8)) and cfg["learning_rate"] == 4e-05
    assert [f["expected_passes"] for f in rec["datasets"]["train"]] == [1.8, 3.0]  # E * p_i * N / n_i
    assert "eval_dataset_path" not in cfg  # the preset's example eval path would point nowhere


def test_overrides_applied_but_plan_keys_refused(model_dir, tmp_path):
    overrides = ERNIEKIT.parse_overrides(["save_steps=50", "adam_epsilon=1e-6", "overwrite_output_dir=True"])
    result = plan.make_plan(train=[stats(100)], model_dir=model_dir, epochs=1, gpus=1, plan_dir=tmp_path / "p", overrides=overrides)
    assert (result.config["save_steps"], result.config["adam_epsilon"], result.config["overwrite_output_dir"]) == (50, 1e-06, True)
    with pytest.raises(UserError, match=r"max_steps \(use --epochs"):
        plan.make_plan(train=[stats(100)], model_dir=model_dir, epochs=1, gpus=1, plan_dir=tmp_path / "p", overrides={"max_steps": 5})


def test_short_packs_warn_with_token_aware_steps(model_dir, tmp_path):
    result = plan.make_plan(train=[stats(1000, tokens=6000)], model_dir=model_dir, epochs=1, gpus=1, plan_dir=tmp_path / "p")
    assert result.record["packing"]["mean_samples_per_pack"] == 2.0
    assert any("packs hold ≈ 2.00 samples" in w for w in result.warnings)


# --- writing ----------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    d=st.integers(1, 200_000),
    epochs=st.one_of(st.integers(1, 10), st.floats(0.05, 10, allow_nan=False)),
    gpus=st.sampled_from([1, 2, 4, 8]),
    nodes=st.integers(1, 3),
    b=st.sampled_from([1, 2, 4, 8, 16]),
    a=st.integers(1, 16),
    lr=st.floats(1e-9, 1e-2),
    min_lr=st.floats(0, 1e-3),
    eps=st.floats(1e-12, 1e-3),
    beta2=st.floats(0.5, 0.9999),
    scale=st.sampled_from(["scale-lr", "keep-samples"]),
)
def test_every_written_yaml_round_trips_into_the_schema_types(d, epochs, gpus, nodes, b, a, lr, min_lr, eps, beta2, scale):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = make_model_dir(root)
        try:
            result = plan.make_plan(
                train=[stats(d, tokens=250)], model_dir=model, epochs=epochs, gpus=gpus, nodes=nodes, plan_dir=root / "p",
                batch=b, grad_accum=a, learning_rate=lr, scale=scale, master_addr="10.0.0.1",
                overrides={"min_lr": min_lr, "adam_epsilon": eps, "adam_beta2": beta2},
            )
        except UserError as exc:  # keep-samples cannot always split: that is a clear error, not a bad file
            assert "keep-samples" in str(exc)
            return
        plan.write_plan(result, root / "p", check_agreement=False)
        loaded = yaml.safe_load((root / "p" / "config.yaml").read_text())
    assert loaded == result.config
    for key, value in loaded.items():
        assert schema.type_ok(ERNIEKIT[key].type, value), (key, value)
    assert isinstance(loaded["learning_rate"], float) and isinstance(loaded["adam_epsilon"], float)
    assert ERNIEKIT.problems(loaded) == []


def test_write_plan_refuses_existing_and_foreign_dirs(model_dir, tmp_path):
    result = plan.make_plan(train=[stats(100)], model_dir=model_dir, epochs=1, gpus=1, plan_dir=tmp_path / "p")
    out = plan.write_plan(result, tmp_path / "p", check_agreement=False)
    before = (out / "config.yaml").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        plan.write_plan(result, out, check_agreement=False)
    plan.write_plan(result, out, force=True, check_agreement=False)  # a dir holding only a previous plan may be replaced
    assert (out / "config.yaml").read_bytes() == before
    (out / "output").mkdir()
    (out / "output" / "checkpoint-10").mkdir()
    with pytest.raises(UserError, match="holds output"):
        plan.write_plan(result, out, force=True, check_agreement=False)
    assert (out / "output" / "checkpoint-10").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "p"]  # no staging leftovers


# --- CLI ----------------------------------------------------------------------------------------------


def write_dataset(path: Path, n: int, *, bad: int = 0, size=(200, 60), text="hello") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, "white").save(path.parent / "img.png")
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(json.dumps({"image_info": [{"matched_text_index": 0, "image_url": "img.png"}],
                                 "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": f"{text} {i}", "tag": "no_mask"}]}) + "\n")
        for _ in range(bad):
            fh.write(json.dumps({"image_info": [], "text_info": [{"text": "x", "tag": "no_mask"}]}) + "\n")
    return path


@pytest.fixture
def cli_env(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    # no trainer installed: the prompt agreement check is recorded as not run (tests/test_agreement.py runs it)
    monkeypatch.setenv("PADDLE_OCRVL_SFT_HOME", str(tmp_path / "no-trainers"))
    return tmp_path


def run(*args) -> int:
    return cli.main(["plan", *map(str, args)])


def test_cli_writes_plan_and_config(cli_env, model_dir, capsys):
    train = write_dataset(cli_env / "d" / "train.jsonl", 40)
    val = write_dataset(cli_env / "d" / "val.jsonl", 5)
    out = cli_env / "plan"
    assert run("--data", train, "--eval", val, "--model", model_dir, "--epochs", 3, "--gpus", 2, "-o", out, "save_steps=10") == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    rec = json.loads((out / "plan.json").read_text())
    assert cfg["max_steps"] == math.ceil(40 * 3 / 64) == rec["numbers"]["max_steps"]["value"]
    assert (cfg["packing_size"], cfg["gradient_accumulation_steps"]) == (8, 4)  # keep-samples 1 -> 2 GPUs
    assert cfg["train_dataset_path"] == str(train.resolve()) and cfg["eval_dataset_path"] == str(val.resolve())
    assert cfg["save_steps"] == 10 and ERNIEKIT.problems(cfg) == []
    assert rec["datasets"]["train"][0]["valid"] == 40 and rec["numbers"]["max_seq_len"]["inputs"]["longest_sample"] > 188
    assert rec["train"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1" and rec["estimates"]["label"] == "ESTIMATE"
    printed = capsys.readouterr().out
    assert "max_steps" in printed and "ESTIMATE" in printed and "erniekit train" in printed
    assert run("--data", train, "--model", model_dir, "--epochs", 3, "--gpus", 2, "-o", out) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert run("--data", train, "--model", model_dir, "--epochs", 1, "--gpus", 1, "-o", out, "--force") == 0


def test_every_continued_example_line_of_the_help_ends_with_a_backslash(capsys):
    with pytest.raises(SystemExit):
        cli.main(["plan", "--help"])
    lines = capsys.readouterr().out.splitlines()
    examples = [i for i, line in enumerate(lines) if line.startswith("  paddle-ocrvl-sft plan ")]
    assert len(examples) == 6
    for i in examples:
        assert "      --" not in lines[i], lines[i]  # a continuation line joined to it (a lone backslash in EPILOG)
        assert lines[i].endswith(" \\") == lines[i + 1].startswith("      --"), lines[i]


def test_the_cli_offers_the_devices_the_backends_know():
    parser = cli.build_parser()
    plan_parser = next(a for a in parser._subparsers._group_actions if a.choices and "plan" in a.choices).choices["plan"]
    (device,) = [a for a in plan_parser._actions if "--device" in a.option_strings]
    assert tuple(device.choices) == backend_base.DEVICES


def test_cli_preset_and_multi_node(cli_env, model_dir):
    train = write_dataset(cli_env / "d" / "train.jsonl", 30)
    out = cli_env / "kie"
    assert run("--preset", "kie_16k", "--data", train, "--model", model_dir, "--epochs", 2, "--gpus", 4, "--nodes", 2,
               "--master-addr", "10.1.1.1", "--scale", "scale-lr", "-o", out) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    env = json.loads((out / "plan.json").read_text())["train"]["env"]
    assert cfg["save_steps"] == 20 and cfg["learning_rate"] == 4e-05  # kie preset, lr x 8
    assert (env["NNODES"], env["MASTER_ADDR"]) == ("2", "10.1.1.1")


def bad_inputs(root: Path, model: Path):
    good = write_dataset(root / "d" / "train.jsonl", 10)
    invalid = write_dataset(root / "bad" / "train.jsonl", 0, bad=3)
    no_cfg = root / "bare"
    no_cfg.mkdir()
    base = ["--model", model, "--gpus", 1, "--epochs", 1]
    return {
        "D=0": (["--data", invalid, *base], "D = 0"),
        "E=0": (["--data", good, "--model", model, "--gpus", 1, "--epochs", 0], "--epochs must be > 0"),
        "E<0": (["--data", good, "--model", model, "--gpus", 1, "--epochs", -2], "--epochs must be > 0"),
        "G vs devices": (["--data", good, "--model", model, "--gpus", 4, "--epochs", 1, "--cuda-visible-devices", "0,1"], "does not match CUDA_VISIBLE_DEVICES"),
        "model missing": (["--data", good, "--model", root / "nope", "--gpus", 1, "--epochs", 1], "no such directory"),
        "no preprocessor": (["--data", good, "--model", no_cfg, "--gpus", 1, "--epochs", 1], "preprocessor_config.json"),
        "seq len": (["--data", good, *base, "--max-seq-len", 100], "below the longest sample"),
        "unknown override": (["--data", good, *base, "learnig_rate=1e-5"], "did you mean learning_rate"),
        "typed override": (["--data", good, *base, "save_steps=often"], "save_steps: expected int"),
        "probs": (["--data", good, *base, "--prob", 0.5, "--prob", 0.5], "2 weight(s) for 1"),
        "preset": (["--data", good, *base, "--preset", "nope"], "unknown preset"),
    }


@pytest.mark.parametrize("case", ["D=0", "E=0", "E<0", "G vs devices", "model missing", "no preprocessor", "seq len",
                                  "unknown override", "typed override", "probs", "preset"])
def test_cli_bad_input_clear_error_and_no_file(case, cli_env, model_dir, capsys):
    args, message = bad_inputs(cli_env, model_dir)[case]
    out = cli_env / "plan"
    assert run(*args, "-o", out) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()
    assert not [p for p in cli_env.iterdir() if p.name.startswith(".plan")]  # no staging leftovers


def test_cli_cuda_visible_devices_from_env(cli_env, model_dir, monkeypatch, capsys):
    train = write_dataset(cli_env / "d" / "train.jsonl", 10)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert run("--data", train, "--model", model_dir, "--epochs", 1, "--gpus", 4, "-o", cli_env / "p") == 1
    assert "does not match CUDA_VISIBLE_DEVICES" in capsys.readouterr().err
    assert run("--data", train, "--model", model_dir, "--epochs", 1, "--gpus", 2, "-o", cli_env / "p") == 0
    assert json.loads((cli_env / "p" / "plan.json").read_text())["train"]["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_cli_allow_drop_counts_only_kept_samples(cli_env, model_dir):
    train = write_dataset(cli_env / "d" / "train.jsonl", 10)
    big = write_dataset(cli_env / "big" / "train.jsonl", 3, size=(2000, 1400))  # ~3500 image tokens each
    out = cli_env / "p"
    assert run("--data", train, "--data", big, "--model", model_dir, "--epochs", 1, "--gpus", 1, "--max-seq-len", 1024, "--allow-drop", "-o", out) == 0
    rec = json.loads((out / "plan.json").read_text())
    assert [f["dropped_too_long"] for f in rec["datasets"]["train"]] == [0, 3]
    assert rec["numbers"]["D"]["inputs"]["n_i"] == [10, 3] and rec["numbers"]["D"]["inputs"]["kept_i"] == [10, 0]
    assert rec["numbers"]["D"]["value"] == round(0.5 * 13 * 10 / 10)  # equal weights; the dropped file's draws train nothing
    assert any("drop 3 sample(s)" in w for w in rec["warnings"])


# --- releases: plan takes the base's release, records it, and counts with it -------------------------


def test_plan_records_the_release_of_the_base_and_counts_with_it(cli_env, capsys):
    """A 1.5 base: plan.json["release"] says so with the evidence, and the token counts use 1.5's
    pixel bounds (a 1400x1000 page: 1.5 caps it at 1280 image tokens, v1 gives it 1800)."""
    from paddle_ocrvl_sft import releases
    from paddle_ocrvl_sft.data.validate import ValidateOptions, validate_paths
    from paddle_ocrvl_sft.testing import build_tiny_model
    from paddle_ocrvl_sft.tokens import PixelBounds

    base = build_tiny_model(cli_env / "base15", release="v1.5")
    data = write_dataset(cli_env / "d" / "train.jsonl", 4, size=(1400, 1000))
    out = cli_env / "plan"
    assert run("--data", data, "--model", base, "--epochs", 1, "-o", out) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "plan.json").read_text())
    assert record["release"] == {"name": "v1.5", "notes": [], "evidence": [
        "chat_template.jinja: ends the user turn with '\\nAssistant:\\n'",
        "preprocessor_config.json: min/max pixels 112896/1003520", "inference.yml: model_name PaddleOCR-VL-1.5-0.9B"], "given": False}
    assert printed.startswith("release v1.5 (PaddleOCR-VL-1.5): chat_template.jinja: ends the user turn with")
    assert ("release v1.5 (PaddleOCR-VL-1.5): template marker '\\nAssistant:\\n', PaddleX model PaddleOCR-VL-1.5-0.9B, "
            "doc_parser --pipeline_version v1.5") in printed
    assert record["numbers"]["min_pixels"]["value"] == 112896 and record["numbers"]["max_pixels"]["value"] == 1003520
    longest = record["numbers"]["max_seq_len"]["inputs"]["longest_sample"]
    as_15 = validate_paths([data], ValidateOptions(max_seq_len=None, bounds=PixelBounds(112896, 1003520),
                                                   tokenizer_dir=base, release=releases.get("v1.5"))).max_tokens
    as_v1 = validate_paths([data], ValidateOptions(max_seq_len=None, tokenizer_dir=base)).max_tokens
    assert longest == as_15 and as_v1 - as_15 >= 1800 - 1280


def test_a_v1_plan_warns_on_tasks_v1_was_never_trained_on(cli_env, model_dir):
    data = write_dataset(cli_env / "d" / "train.jsonl", 3)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[0]["text_info"][0]["text"], rows[1]["text_info"][0]["text"] = "Spotting:", "Seal Recognition:"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = cli_env / "plan"
    assert run("--data", data, "--model", model_dir, "--epochs", 1, "-o", out) == 0
    record = json.loads((out / "plan.json").read_text())
    assert record["release"]["name"] == "v1"  # the released v1 pixel bounds say so
    tasks = [w for w in record["warnings"] if "was not trained on this task" in w]
    assert tasks == [f"{data.resolve()}: 1 sample(s): prompt 'Spotting:': PaddleOCR-VL (0.9B, first release) was not "
                     "trained on this task (known to v1.5, v1.6); fine-tuning teaches it from your data alone",
                     f"{data.resolve()}: 1 sample(s): prompt 'Seal Recognition:': PaddleOCR-VL (0.9B, first release) was "
                     "not trained on this task (known to v1.5, v1.6); fine-tuning teaches it from your data alone"]
    out15 = cli_env / "plan15"
    assert run("--data", data, "--model", model_dir, "--release", "v1.5", "--epochs", 1, "-o", out15) == 0
    record = json.loads((out15 / "plan.json").read_text())
    assert record["release"]["name"] == "v1.5" and not [w for w in record["warnings"] if "not trained on" in w]
    assert record["warnings"][0].startswith("release v1.5: --release v1.5 overrides what")  # and says what it overrode


def test_a_base_that_does_not_say_its_release_is_refused_until_release_is_given(cli_env, capsys):
    from paddle_ocrvl_sft.testing import build_tiny_model

    run_dir = build_tiny_model(cli_env / "run16", "erniekit_output", release="v1.6", checkpoints=())
    data = write_dataset(cli_env / "d" / "train.jsonl", 3)
    out = cli_env / "plan"
    assert run("--data", data, "--model", run_dir, "--epochs", 1, "-o", out) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {run_dir}: could be any of v1.5, v1.6 (") and "pass --release v1.5|v1.6" in err
    assert not out.exists()
    assert run("--data", data, "--model", run_dir, "--release", "1.6", "-o", out, "--epochs", 1) == 0
    assert json.loads((out / "plan.json").read_text())["release"]["name"] == "v1.6"


def test_make_plan_takes_a_release_name_or_a_detection(model_dir, tmp_path):
    from paddle_ocrvl_sft import releases

    detected = plan.make_plan(train=[stats(10)], model_dir=model_dir, epochs=1, plan_dir=tmp_path / "p")
    assert detected.record["release"]["name"] == "v1"
    named = plan.make_plan(train=[stats(10)], model_dir=model_dir, epochs=1, plan_dir=tmp_path / "p", release="v1.6")
    assert named.record["release"]["name"] == "v1.6" and "overrides" in named.record["release"]["notes"][0]
    given = releases.detect(model_dir, "v1.5")
    assert plan.make_plan(train=[stats(10)], model_dir=model_dir, epochs=1, plan_dir=tmp_path / "p",
                          release=given).record["release"] == given.to_record()
