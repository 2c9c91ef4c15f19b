"""backends/lora.py: which LoRA dirs export merges, the scale PaddleFormers merges with, and the merge check.

The adapters here are built like PaddleFormers 1.2 writes them (``lora_config.json`` with its
LoRAConfig fields, ``peft_model-*.safetensors`` with ``<target>.lora_A`` [in, r] and
``<target>.lora_B`` [r, out]); the scale is rslora's alpha/sqrt(r), which differs from alpha/r,
so a check that used the wrong one fails. The real exporter's merge is checked in
tests/test_training_cpu.py (a LoRA run trained, exported and verified).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from paddle_ocrvl_sft.backends import lora
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.safetensors_file import write_safetensors

Q, UP = "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj"
R, ALPHA = 4, 4  # rslora: scale alpha / sqrt(r) = 2.0, where alpha / r would be 1.0
SCALE = ALPHA / math.sqrt(R)


def save(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    write_safetensors(path, {k: ("F32", v.shape, np.ascontiguousarray(v, np.float32).tobytes()) for k, v in tensors.items()})
    return path


def pf_config(**changes) -> dict:
    """lora_config.json as PaddleFormers' LoRAConfig.save_pretrained writes it (fields and computed scaling)."""
    config = {"r": R, "lora_alpha": ALPHA, "rslora": True, "scaling": SCALE, "target_modules": [".*q_proj.*", ".*up_proj.*"],
              "lora_dropout": 0.0, "merge_weights": False, "base_model_name_or_path": "", "dtype": "float32"}
    return {**config, **changes}


@pytest.fixture
def adapter(tmp_path):
    """(run dir, base file, base weights, adapter tensors) of a two-target rslora adapter."""
    rng = np.random.default_rng(0)
    base = {f"{Q}.weight": rng.normal(size=(6, 4)), f"{UP}.weight": rng.normal(size=(8, 4)), "model.norm.weight": np.ones(4)}
    tensors = {f"{Q}.lora_A": rng.normal(size=(4, R)), f"{Q}.lora_B": rng.normal(size=(R, 6)),
               f"{UP}.lora_A": rng.normal(size=(4, R)), f"{UP}.lora_B": rng.normal(size=(R, 8))}
    run = tmp_path / "run"
    run.mkdir()
    (run / lora.ADAPTER_CONFIG).write_text(json.dumps(pf_config()))
    save(run / "peft_model-00001-of-00001.safetensors", tensors)
    return run, save(tmp_path / "base.safetensors", base), base, tensors


def merged_file(path: Path, base: dict, tensors: dict, scale: float, targets=(Q, UP)) -> Path:
    out = dict(base)
    for t in targets:
        out[f"{t}.weight"] = base[f"{t}.weight"] + scale * (tensors[f"{t}.lora_A"] @ tensors[f"{t}.lora_B"]).T
    return save(path, out)


def test_a_correct_merge_passes_counting_what_it_compared(adapter, tmp_path):
    run, base_file, base, tensors = adapter
    scale = lora.scaling(lora.read_adapter_config(run))
    assert scale == SCALE == 2.0
    good = merged_file(tmp_path / "good.safetensors", base, tensors, SCALE)
    assert lora.verify_merge(run, [base_file], good, scale) == (
        "verified the LoRA merge: compared 2 LoRA target tensors == W + 2·(A·B)ᵀ and 1 other tensors == W (to bfloat16 rounding)")


def test_a_merge_at_alpha_over_r_is_wrong_for_rslora(adapter, tmp_path):
    run, base_file, base, tensors = adapter
    at_alpha_over_r = merged_file(tmp_path / "m.safetensors", base, tensors, ALPHA / R)
    with pytest.raises(UserError, match=r"the LoRA merge is WRONG \(2 tensor\(s\); expected W \+ 2·\(A·B\)ᵀ\)"):
        lora.verify_merge(run, [base_file], at_alpha_over_r, lora.scaling(lora.read_adapter_config(run)))


def test_transposed_and_unmerged_files_are_wrong(adapter, tmp_path):
    run, base_file, base, tensors = adapter
    w = base[f"{Q}.weight"]
    # what safetensors 0.8 made of PaddleFormers' merge: the raw buffer of Wᵀ + ΔW in W's shape
    scrambled = {**base, f"{Q}.weight": np.ascontiguousarray(w.T + SCALE * (tensors[f"{Q}.lora_A"] @ tensors[f"{Q}.lora_B"])).reshape(w.shape)}
    with pytest.raises(UserError, match=f"WRONG .*{Q}.weight: differs by up to .*safetensors 0.8"):
        lora.verify_merge(run, [base_file], save(tmp_path / "t.safetensors", scrambled), SCALE)
    with pytest.raises(UserError, match="WRONG"):
        lora.verify_merge(run, [base_file], base_file, SCALE)  # the adapter forgotten: W alone


def test_targets_that_are_not_base_tensors_are_refused(adapter, tmp_path):
    """A merge that changed nothing must not pass because the check compared nothing."""
    run, base_file, base, tensors = adapter
    renamed = {k.replace("model.layers.", "model.language_model.layers."): v for k, v in tensors.items()}
    save(run / "peft_model-00001-of-00001.safetensors", renamed)
    with pytest.raises(UserError, match=r"2 of 2 LoRA target\(s\) are not tensors of the base model: "
                                        r"model.language_model.layers.0.mlp.up_proj.weight, model.language_model"):
        lora.verify_merge(run, [base_file], base_file, SCALE)


def test_a_zero_update_is_refused_by_name(adapter, tmp_path):
    run, base_file, base, tensors = adapter
    untrained = {**tensors, f"{UP}.lora_B": np.zeros((R, 8))}  # LoRA initialises B to zeros
    save(run / "peft_model-00001-of-00001.safetensors", untrained)
    merged = merged_file(tmp_path / "m.safetensors", base, untrained, SCALE)
    with pytest.raises(UserError, match=rf"1 of 2 LoRA target\(s\) have a zero update .*: {UP}.weight"):
        lora.verify_merge(run, [base_file], merged, SCALE)


def test_an_update_below_bf16_precision_everywhere_cannot_be_verified(adapter, tmp_path):
    run, base_file, base, tensors = adapter
    faint = {k: v * (1e-9 if k.endswith("lora_B") else 1.0) for k, v in tensors.items()}
    save(run / "peft_model-00001-of-00001.safetensors", faint)
    with pytest.raises(UserError, match="below bfloat16 precision .* cannot be verified"):
        lora.verify_merge(run, [base_file], base_file, SCALE)  # the unmerged base would pass a check that allowed it


def test_a_missing_lora_b_is_named(adapter):
    run, base_file, _, tensors = adapter
    save(run / "peft_model-00001-of-00001.safetensors", {k: v for k, v in tensors.items() if k != f"{Q}.lora_B"})
    with pytest.raises(UserError, match=rf"lacks 1 tensor\(s\) of its LoRA pairs: {Q}.lora_B"):
        lora.verify_merge(run, [base_file], base_file, SCALE)


@pytest.mark.parametrize("changes, expect", [
    ({"rslora": False, "scaling": 1.0}, 1.0),  # alpha / r
    ({"rslora": True, "r": 16, "lora_alpha": 4, "scaling": 1.0}, 1.0),  # alpha / sqrt(r)
    ({"scaling": None}, SCALE),  # not stored: computed as PaddleFormers does
])
def test_scaling_is_what_paddleformers_merges_with(changes, expect):
    assert lora.scaling({k: v for k, v in pf_config(**changes).items() if v is not None}) == expect


@pytest.mark.parametrize("changes, why", [
    ({"lora_alpha": -1}, "lora_alpha -1: PaddleFormers saves the alpha it trained with"),
    ({"scaling": 0.5}, r"scaling 0.5 disagrees with lora_alpha / sqrt\(r\) = 2"),
    ({"r": 0}, "r must be a positive integer"),
])
def test_a_scale_that_is_not_known_is_refused(changes, why):
    with pytest.raises(UserError, match=why):
        lora.scaling(pf_config(**changes))


def test_an_empty_base_model_name_merges_into_the_given_base_not_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the working dir is a directory too: "" must not become "."
    assert lora.trained_on(pf_config(base_model_name_or_path=""), tmp_path / "base") == (
        tmp_path / "base", f"lora_config.json names no base model: merging into --base {tmp_path / 'base'}")
    model = tmp_path / "plan" / "model"
    model.mkdir(parents=True)
    assert lora.trained_on(pf_config(base_model_name_or_path=str(model)), tmp_path / "base") == (model, None)
    assert lora.trained_on(pf_config(base_model_name_or_path="model"), tmp_path / "base")[0] == tmp_path / "base"


def test_adapters_of_other_trainers_are_refused(tmp_path):
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16, "peft_type": "LORA"}))
    save(peft / "adapter_model.safetensors", {"base_model.model.q_proj.lora_A.weight": np.ones((2, 2))})
    with pytest.raises(UserError, match="a LoRA adapter of an unknown trainer .*adapter_config.json"):
        lora.read_adapter_config(peft)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / lora.ADAPTER_CONFIG).write_text(json.dumps({"r": 8}))
    save(odd / "peft_model-00001-of-00001.safetensors", {f"{Q}.lora_A": np.ones((4, 8))})
    with pytest.raises(UserError, match="not written by PaddleFormers .*lora_alpha, target_modules, rslora, scaling"):
        lora.read_adapter_config(odd)
    bare = tmp_path / "bare"
    bare.mkdir()
    save(bare / "peft_model-00001-of-00001.safetensors", {f"{Q}.lora_A": np.ones((4, 8))})
    with pytest.raises(UserError, match="without lora_config.json: the trainer and scaling are unknown"):
        lora.read_adapter_config(bare)


def test_export_refuses_an_adapter_it_cannot_merge_before_building_anything(tmp_path):
    from paddle_ocrvl_sft.export import export
    from paddle_ocrvl_sft.testing import build_tiny_model

    base = build_tiny_model(tmp_path / "base")
    peft = tmp_path / "peft"
    peft.mkdir()
    (peft / "adapter_config.json").write_text("{}")
    save(peft / "adapter_model.safetensors", {"x.lora_A.weight": np.ones((2, 2))})
    with pytest.raises(UserError, match="unknown trainer"):
        export(peft, base, tmp_path / "out", verify=False)
    assert not (tmp_path / "out").exists()


def test_a_merge_stored_in_bfloat16_passes_when_the_update_outweighs_w(adapter, tmp_path):
    """PaddleFormers writes the merged weights in bfloat16: each value is W + ΔW rounded to 8 bits of
    mantissa, so the tolerance is relative to the MERGED value (the real LoRA run's updates are ~6x W)."""
    from paddle_ocrvl_sft.testing import to_bf16

    run, _, base, tensors = adapter
    small = {k: v * 0.01 for k, v in base.items()}  # |W| ~ 0.01, |ΔW| ~ 1
    base_file = save(tmp_path / "small-base.safetensors", small)
    merged = dict(small)
    for t in (Q, UP):
        merged[f"{t}.weight"] = small[f"{t}.weight"] + SCALE * (tensors[f"{t}.lora_A"] @ tensors[f"{t}.lora_B"]).T
    path = tmp_path / "bf16.safetensors"
    write_safetensors(path, {k: ("BF16", v.shape, to_bf16(np.asarray(v, np.float32))) for k, v in merged.items()})
    assert "compared 2 LoRA target tensors" in lora.verify_merge(run, [base_file], path, SCALE)
