"""The tiny fixture model: released layout, real token ids, deterministic, loadable by both stacks."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from paddle_ocrvl_sft.safetensors_file import read_header, tensor_specs
from paddle_ocrvl_sft.testing import RESOURCES, SHARD, build_tiny_model, weight_shapes

RELEASE_DIGESTS = Path(__file__).resolve().parent / "data" / "paddleocr_vl_0.9b_release.sha256"  # tests/data/README.md
RELEASED = sorted(p.name for p in RESOURCES.iterdir())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return build_tiny_model(root / "base", "base"), build_tiny_model(root / "run", "erniekit_output")


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bundled_release_files_are_the_reference_copies():
    recorded = dict(reversed(line.split()) for line in RELEASE_DIGESTS.read_text().splitlines())
    assert {name: hashlib.sha256((RESOURCES / name).read_bytes()).hexdigest() for name in RELEASED} == recorded


def test_base_layout_is_the_released_file_set_with_tiny_dims(tiny):
    base, _ = tiny
    assert sorted(p.name for p in base.iterdir()) == sorted([*RELEASED, "model.safetensors", "tokenizer.model"])
    for name in RELEASED:
        if name != "config.json":
            assert (base / name).read_bytes() == (RESOURCES / name).read_bytes(), name
    released = json.loads((RESOURCES / "config.json").read_text())
    cfg = json.loads((base / "config.json").read_text())
    assert cfg.keys() == released.keys()
    changed = {k for k in cfg if cfg[k] != released[k]}
    assert changed == {"hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "num_key_value_heads", "head_dim", "rope_scaling", "vision_config"}
    for key in ("vocab_size", "image_token_id", "video_token_id", "vision_start_token_id", "tie_word_embeddings"):
        assert cfg[key] == released[key]
    specs = tensor_specs(read_header(base / "model.safetensors"))
    assert {k: s for k, (_, s) in specs.items()} == weight_shapes(cfg)
    assert {dtype for dtype, _ in specs.values()} == {"BF16"}  # stored like the release


def test_erniekit_layout_has_shard_index_and_checkpoints_but_no_inference_files(tiny):
    _, run = tiny
    names = {p.name for p in run.iterdir()}
    assert {SHARD, "model.safetensors.index.json", "static_name_to_dyg_name.json", "trainer_state.json",
            "training_args.bin", "train_results.json", "all_results.json", "tokenizer.model",
            "checkpoint-5", "checkpoint-10"} <= names
    assert not names & {"model.safetensors", "chat_template.jinja", "inference.yml"}
    index = json.loads((run / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {SHARD}
    assert set(index["weight_map"]) == set(tensor_specs(read_header(run / SHARD)))
    # the final weights are the last checkpoint's; the earlier checkpoint differs
    final = (run / SHARD).read_bytes()
    assert (run / "checkpoint-10" / SHARD).read_bytes() == final
    assert (run / "checkpoint-5" / SHARD).read_bytes() != final
    assert json.loads((run / "checkpoint-5" / "trainer_state.json").read_text())["global_step"] == 5


def test_build_is_deterministic(tmp_path, tiny):
    from paddle_ocrvl_sft import testing

    base, run = tiny
    testing.tokenizer_model_bytes.cache_clear()  # retrain the tokenizer too
    testing._readable_ids.cache_clear()
    assert digests(build_tiny_model(tmp_path / "b", "base")) == digests(base)
    assert digests(build_tiny_model(tmp_path / "r", "erniekit_output")) == digests(run)


def test_unknown_layout_is_refused(tmp_path):
    with pytest.raises(ValueError, match="layout"):
        build_tiny_model(tmp_path, "hf")


def test_sentencepiece_keeps_special_tokens_whole_at_released_ids(tiny):
    import sentencepiece as spm

    base, _ = tiny
    sp = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    assert sp.get_piece_size() == 100295  # the added tokens (100295+) follow, as released
    text = "<|begin_of_sentence|>User: TOTAL 12.50\nAssistant: "
    ids = sp.encode(text)
    assert [i for i in ids if i >= 100272] == [100273]  # one whole token, at its released id
    assert sp.id_to_piece(100272) == "<|end_of_sentence|>" and sp.id_to_piece(100274) == "<mask:1>"
    assert [sp.id_to_piece(i) for i in range(3, 13)] == [str(d) for d in range(10)]
    assert sp.decode(ids) == text  # identity normalisation keeps the newline


@pytest.mark.slow
def test_both_tokenizer_stacks_give_released_ids_for_the_chat_prompt(tiny):
    base, _ = tiny
    prompt = '<|begin_of_sentence|>User: <|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>OCR:{"total": ""}\nAssistant: '
    from transformers import AutoTokenizer

    hf_ids = AutoTokenizer.from_pretrained(str(base))(prompt)["input_ids"]
    from paddlex.inference.models.common.tokenizer import LlamaTokenizer

    pd_ids = LlamaTokenizer.from_pretrained(str(base), vocab_file=str(base / "tokenizer.model"))(prompt)["input_ids"]
    for ids in (hf_ids, pd_ids):
        assert [i for i in ids if i >= 100272] == [100273, 101305, 100295, 101306]
    assert hf_ids == pd_ids
