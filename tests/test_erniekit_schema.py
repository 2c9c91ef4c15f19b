"""The OCR-VL-SFT key schema: reference coverage, validation, overrides, float-safe YAML."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from paddle_ocrvl_sft.backends import schema
from paddle_ocrvl_sft.backends.erniekit import KEYS, SCHEMA
from paddle_ocrvl_sft.errors import UserError

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "data" / "erniekit_run_ocr_vl_sft_16k.yaml"  # tests/data/README.md


@pytest.fixture(scope="module")
def reference() -> dict:
    return yaml.safe_load(REFERENCE.read_text())


def commented_keys(text: str) -> list[str]:
    return re.findall(r"^# (\w+): ", text, flags=re.M)


def test_every_reference_key_and_commented_key_is_in_the_schema(reference):
    assert [k for k in reference if k not in SCHEMA] == []
    commented = commented_keys(REFERENCE.read_text())
    assert {"do_eval", "eval_batch_size", "eval_iters", "eval_steps", "evaluation_strategy", "amp_master_grad"} <= set(commented)
    assert [k for k in commented if k not in SCHEMA] == []
    for k in ("resume_from_checkpoint", "overwrite_output_dir", "min_pixels", "max_pixels"):
        assert k in SCHEMA


def test_reference_config_is_valid_and_dumps_in_its_own_order(reference):
    assert SCHEMA.problems(reference) == []
    text = SCHEMA.dump_yaml(reference)
    loaded = yaml.safe_load(text)
    assert loaded == reference
    assert list(loaded) == list(reference)  # same key order as the upstream file
    assert [type(v) for v in loaded.values()] == [type(v) for v in reference.values()]
    # the commented-out keys stay visible as comments, as in the upstream file
    assert commented_keys(text) == [k for k in commented_keys(REFERENCE.read_text()) if k not in reference]


def test_schema_rows_are_well_formed():
    for key in KEYS:
        assert key.type in {schema.STR, schema.INT, schema.FLOAT, schema.NUMBER, schema.BOOL, schema.STR_LIST}, key
        assert key.meaning and key.source, key
        if key.default is not None:
            assert schema.type_ok(key.type, key.default), key
    assert len(SCHEMA.by_name) == len(KEYS)  # no duplicates
    for name in ("fine_tuning", "from_scratch", "multimodal", "do_train", "max_steps", "train_dataset_prob"):
        assert SCHEMA[name].required and SCHEMA[name].danger


def good_config() -> dict:
    return yaml.safe_load((REPO / "configs" / "ocr_16k.yaml").read_text())


def test_unknown_key_gets_did_you_mean():
    cfg = good_config() | {"learnig_rate": 1.0e-5}
    problems = SCHEMA.problems(cfg)
    assert any("'learnig_rate'" in p and "did you mean learning_rate" in p for p in problems)
    with pytest.raises(UserError, match="did you mean learning_rate"):
        SCHEMA.validate(cfg)


def test_exponent_without_dot_is_a_string_and_is_reported():
    cfg = yaml.safe_load(SCHEMA.dump_yaml(good_config()).replace("learning_rate: 5.0e-06", "learning_rate: 1e-5"))
    assert cfg["learning_rate"] == "1e-5"  # what PyYAML (and so ERNIEKit) reads
    (problem,) = [p for p in SCHEMA.problems(cfg) if p.startswith("learning_rate")]
    assert "expected float" in problem and "5.0e-06" in problem


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"fine_tuning": "LoRA"}, "fine_tuning: must be 'Full'"),
        ({"from_scratch": 1}, "from_scratch: must be 0"),
        ({"multimodal": False}, "multimodal: must be True"),
        ({"do_train": False}, "do_train: must be True"),
        ({"stage": "SFT"}, "stage: 'SFT' is not one of"),
        ({"max_steps": 0}, "max_steps: must be > 0"),
        ({"max_steps": "926"}, "max_steps: expected int"),
        ({"train_dataset_prob": 1.0}, "quote it"),
        ({"train_dataset_prob": "0.5,0.5"}, "2 weight(s) for 1"),
        ({"do_eval": True}, "do_eval: OCR-VL-SFT builds no eval dataset"),
        ({"eval_batch_size": 1}, "ERNIEKit does not read this key"),
        ({"amp_custom_white_list": "matmul"}, "expected list[str]"),
        ({"compute_type": "fp32"}, "compute_type: 'fp32' is not one of"),
        ({"output_dir": None}, "output_dir: required"),
    ],
)
def test_dangerous_or_wrong_values_are_rejected(change, expected):
    cfg = good_config() | change
    problems = SCHEMA.problems(cfg)
    assert any(expected in p for p in problems), problems


def test_missing_required_key_is_reported_with_its_danger():
    cfg = good_config()
    del cfg["from_scratch"]
    assert any(p.startswith("from_scratch: required") and "RANDOM" in p for p in SCHEMA.problems(cfg))


@pytest.mark.parametrize(
    "item, expected",
    [
        ("learning_rate=1e-5", ("learning_rate", 1e-05)),
        ("learning_rate=1", ("learning_rate", 1.0)),
        ("min_lr=5.0e-7", ("min_lr", 5e-07)),
        ("max_steps=100", ("max_steps", 100)),
        ("do_train=True", ("do_train", True)),
        ("use_pic_id=false", ("use_pic_id", False)),
        ("train_dataset_prob=1.0", ("train_dataset_prob", "1.0")),  # stays a string (ERNIEKit splits it)
        ("sharding=stage1", ("sharding", "stage1")),
        ("amp_custom_black_list=[sin, cos]", ("amp_custom_black_list", ["sin", "cos"])),
        ("num_train_epochs=1.5", ("num_train_epochs", 1.5)),
        ("save_total_limit=", ("save_total_limit", None)),
    ],
)
def test_override_typing(item, expected):
    assert SCHEMA.parse_override(item) == expected


@pytest.mark.parametrize(
    "item, message",
    [
        ("learnig_rate=1e-5", "did you mean learning_rate"),
        ("max_step=10", "did you mean max_steps"),
        ("max_steps=ten", "max_steps: expected int"),
        ("max_steps=1.5", "max_steps: expected int"),
        ("do_train=maybe", "do_train: expected bool"),
        ("fine_tuning=Lora", "not one of"),
        ("eval_batch_size=1", "does not read"),
        ("learning_rate", "expected key=value"),
    ],
)
def test_bad_overrides_are_rejected(item, message):
    with pytest.raises(UserError, match=re.escape(message)):
        SCHEMA.parse_override(item)


def test_parse_overrides_reports_every_bad_item():
    with pytest.raises(UserError) as exc:
        SCHEMA.parse_overrides(["learnig_rate=1", "save_steps=20", "max_steps=x"])
    assert "learnig_rate" in str(exc.value) and "max_steps" in str(exc.value)
    assert schema.apply_overrides({"a": 1, "save_total_limit": 5}, SCHEMA.parse_overrides(["save_total_limit="])) == {"a": 1}


@pytest.mark.parametrize("value, text", [(5e-6, "5.0e-06"), (1e-8, "1.0e-08"), (0.1, "0.1"), (1e20, "1.0e+20"), (2.5e-7, "2.5e-07")])
def test_format_float_examples(value, text):
    assert schema.format_float(value) == text
    assert yaml.safe_load(text) == value


@given(st.floats(allow_nan=False))
def test_every_float_round_trips_through_safe_load(value):
    loaded = yaml.safe_load(f"x: {schema.format_float(value)}")["x"]
    assert isinstance(loaded, float) and loaded == value


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_every_string_round_trips_through_safe_load(value):
    assert yaml.safe_load(f"x: {schema.format_scalar(value)}")["x"] == value


def test_presets_are_valid_and_the_ocr_preset_is_the_reference(reference):
    from paddle_ocrvl_sft import backends

    for name in backends.NAMES:  # each bundled preset against its own trainer's schema
        trainer = backends.get(name)
        for preset in trainer.presets:
            trainer.schema.validate(schema.load_yaml_config(REPO / "configs" / f"{preset}.yaml"), where=preset)
    assert {p.stem for p in (REPO / "configs").glob("*.yaml")} == {p for n in backends.NAMES for p in backends.get(n).presets}
    assert yaml.safe_load((REPO / "configs" / "ocr_16k.yaml").read_text()) == reference


def test_load_yaml_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\nb: 2\n")
    with pytest.raises(UserError, match=r"bad.yaml:\d+: not valid YAML"):
        schema.load_yaml_config(bad)
    with pytest.raises(UserError, match="no such file"):
        schema.load_yaml_config(tmp_path / "missing.yaml")


def test_docs_key_table_is_up_to_date():
    text = (REPO / "docs" / "plan.md").read_text()
    block = text.split("<!-- schema:begin -->\n")[1].split("<!-- schema:end -->")[0]
    assert block == SCHEMA.markdown(), "regenerate the table in docs/plan.md from backends.erniekit.SCHEMA.markdown()"
