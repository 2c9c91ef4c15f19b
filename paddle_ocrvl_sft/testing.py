"""A tiny random-weight PaddleOCR-VL of the real architecture, for tests and the demo (no download).

``build_tiny_model(dest, layout)`` writes, in about a second and byte-for-byte deterministically:

* ``layout="base"``: the released PaddleOCR-VL-0.9B file set (shared/reference/PaddleOCR-VL-0.9B-files)
  with shrunk dimensions: ``model.safetensors``, ``chat_template.jinja``, ``inference.yml``, configs,
  tokenizer files.
* ``layout="erniekit_output"``: what an ERNIEKit ``OCR-VL-SFT`` run leaves in ``output_dir``
  (FACTS.md "Output dir after training"): ``model-00001-of-00001.safetensors`` +
  ``model.safetensors.index.json`` + ``static_name_to_dyg_name.json`` + trainer files and
  ``checkpoint-N/`` dirs; no ``chat_template.jinja``, no ``inference.yml``, no ``model.safetensors``.
  Trainer/optimizer files are small placeholders with the upstream names, not real Paddle pickles.

Everything except the weights and ``tokenizer.model`` is the released file (copied into
``resources/paddleocr_vl_0.9b``), so token ids are the real ones: ``vocab_size`` stays 103424,
``<|IMAGE_PLACEHOLDER|>`` is 100295, ``<|IMAGE_START|>`` 101305, ``<|begin_of_sentence|>`` 100273.
The tokenizer is a SentencePiece BPE model trained on the fly on a small generated corpus and
padded with unused pieces so the in-vocabulary special tokens sit at their released ids; the
tokens from 100295 up are added tokens, exactly as in the release (``added_tokens.json``).

Weight names are the original checkpoint keys (``visual.*``, ``mlp_AR.*``, ``model.*``,
``lm_head.weight``, torch ``[out, in]`` layout) that PaddleX's PaddleOCR-VL loader
(``convert_from_hf=True``) and transformers' ``PaddleOCRVLForConditionalGeneration`` both read.
"""

from __future__ import annotations

import io
import json
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np

from paddle_ocrvl_sft.io import write_json
from paddle_ocrvl_sft.safetensors_file import write_safetensors

RESOURCES = Path(__file__).parent / "resources" / "paddleocr_vl_0.9b"
LAYOUTS = ("base", "erniekit_output")

# Shrunk dimensions; mrope_section must sum to head_dim / 2 (released: 16+24+24 = 128 / 2).
TINY_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16)
TINY_MROPE_SECTION = [2, 3, 3]
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
PACKING_POSITIONS = 32768  # PaddleX's SigLIP keeps a fixed 32768-row packing position table

# Released tokenizer layout (tokenizer_config.json added_tokens_decoder): digits are user-defined
# pieces 3..12; these special pieces live inside the SentencePiece vocabulary at fixed ids.
DIGITS = [str(d) for d in range(10)]
SPECIAL_PIECES = {100272: "<|end_of_sentence|>", 100273: "<|begin_of_sentence|>",
                  **{100273 + k: f"<mask:{k}>" for k in range(1, 8)}}
EOS_ID = 2  # </s>, the end of an answer (tokenizer_config.json eos_token)
SP_VOCAB_SIZE = 100295  # first added token (<|IMAGE_PLACEHOLDER|>) follows the SentencePiece pieces
TRAINED_PIECES = 800

BASE_FILES = ("added_tokens.json", "chat_template.jinja", "generation_config.json", "inference.yml",
              "preprocessor_config.json", "processor_config.json", "special_tokens_map.json",
              "tokenizer_config.json")
SHARD = "model-00001-of-00001.safetensors"


# --- config and weights ------------------------------------------------------------------------


def tiny_config() -> dict:
    """The released ``config.json`` with shrunk layer counts and widths (token ids untouched)."""
    cfg = json.loads((RESOURCES / "config.json").read_text(encoding="utf-8"))
    cfg.update(TINY_TEXT)
    cfg["rope_scaling"] = {**cfg["rope_scaling"], "mrope_section": TINY_MROPE_SECTION}
    cfg["vision_config"] = {**cfg["vision_config"], **TINY_VISION}
    return cfg


def weight_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Original checkpoint keys and torch-layout shapes of a PaddleOCR-VL config.

    Read off PaddleX ``PaddleOCRVLForConditionalGeneration.get_hf_state_dict`` and transformers'
    ``PaddleOCRVLForConditionalGeneration`` (which renames ``mlp_AR``/``visual``/``model`` on load
    and ignores the SigLIP ``head`` and packing table that PaddleX requires).
    """
    d, inter, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * cfg["head_dim"]
    vc = cfg["vision_config"]
    vd, vi = vc["hidden_size"], vc["intermediate_size"]
    merged = vd * vc["spatial_merge_size"] ** 2
    patches = (vc["image_size"] // vc["patch_size"]) ** 2

    shapes: dict[str, tuple[int, ...]] = {
        "mlp_AR.pre_norm.weight": (vd,), "mlp_AR.pre_norm.bias": (vd,),
        "mlp_AR.linear_1.weight": (merged, merged), "mlp_AR.linear_1.bias": (merged,),
        "mlp_AR.linear_2.weight": (d, merged), "mlp_AR.linear_2.bias": (d,),
    }
    v = "visual.vision_model."
    shapes.update({
        v + "embeddings.patch_embedding.weight": (vd, vc["num_channels"], vc["patch_size"], vc["patch_size"]),
        v + "embeddings.patch_embedding.bias": (vd,),
        v + "embeddings.position_embedding.weight": (patches, vd),
        v + "embeddings.packing_position_embedding.weight": (PACKING_POSITIONS, vd),
    })
    for i in range(vc["num_hidden_layers"]):
        shapes.update(_siglip_block(f"{v}encoder.layers.{i}.", vd, vi))
    shapes.update({v + "post_layernorm.weight": (vd,), v + "post_layernorm.bias": (vd,),
                   v + "head.probe": (1, 1, vd),
                   v + "head.attention.in_proj_weight": (3 * vd, vd), v + "head.attention.in_proj_bias": (3 * vd,),
                   v + "head.attention.out_proj.weight": (vd, vd), v + "head.attention.out_proj.bias": (vd,),
                   v + "head.layernorm.weight": (vd,), v + "head.layernorm.bias": (vd,),
                   v + "head.mlp.fc1.weight": (vi, vd), v + "head.mlp.fc1.bias": (vi,),
                   v + "head.mlp.fc2.weight": (vd, vi), v + "head.mlp.fc2.bias": (vd,)})

    shapes["model.embed_tokens.weight"] = (cfg["vocab_size"], d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (heads * cfg["head_dim"], d),
                       p + "self_attn.k_proj.weight": (kv, d), p + "self_attn.v_proj.weight": (kv, d),
                       p + "self_attn.o_proj.weight": (d, heads * cfg["head_dim"]),
                       p + "mlp.gate_proj.weight": (inter, d), p + "mlp.up_proj.weight": (inter, d),
                       p + "mlp.down_proj.weight": (d, inter),
                       p + "input_layernorm.weight": (d,), p + "post_attention_layernorm.weight": (d,)})
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (cfg["vocab_size"], d)
    return shapes


def _siglip_block(p: str, d: int, inter: int) -> dict[str, tuple[int, ...]]:
    out = {}
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        out[f"{p}self_attn.{proj}.weight"], out[f"{p}self_attn.{proj}.bias"] = (d, d), (d,)
    for norm in ("layer_norm1", "layer_norm2"):
        out[f"{p}{norm}.weight"], out[f"{p}{norm}.bias"] = (d,), (d,)
    out.update({f"{p}mlp.fc1.weight": (inter, d), f"{p}mlp.fc1.bias": (inter,),
                f"{p}mlp.fc2.weight": (d, inter), f"{p}mlp.fc2.bias": (d,)})
    return out


def random_weights(cfg: dict, seed: int, lm_head_std: float = 0.02, matrix_std: float = 0.02) -> dict[str, np.ndarray]:
    """Deterministic float32 weights: N(0, 0.02) matrices, unit norms, zero biases.

    ``matrix_std`` is the std of every matrix but the token embeddings, ``lm_head`` and the packing
    position table. The release's 0.02 (initializer_range) suits 1024-wide layers; in 32-wide ones
    it leaves each layer's output small beside the token embedding, so what attention brings from
    the image barely moves an answer and full fine-tuning takes thousands of steps to start
    reading. About 1/sqrt(width) (0.1 here) is what the demo's model uses.

    ``lm_head`` rows are zero except for the trained text pieces and ``</s>``, so greedy decoding
    emits readable pieces of the tiny vocabulary instead of padding, byte or special pieces. Their
    scale is ``lm_head_std``: LoRA freezes ``lm_head`` and the final norm, so with N(0, 0.02) rows
    and 32-wide hidden states no adapter can make any logit large (|logit| <= 0.02·32 ≈ 0.6) and
    the loss cannot fall; the LoRA fixture uses 1.0.
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for name, shape in weight_shapes(cfg).items():
        if name.endswith("norm.weight") or name.endswith(("layer_norm1.weight", "layer_norm2.weight")):
            weights[name] = np.ones(shape, np.float32)
        elif name.endswith("bias"):
            weights[name] = np.zeros(shape, np.float32)
        else:
            plain = name in ("model.embed_tokens.weight", "lm_head.weight") or "packing_position" in name
            weights[name] = rng.normal(0.0, 0.02 if plain else matrix_std, shape).astype(np.float32)
    readable = _readable_ids(cfg["vocab_size"])
    if lm_head_std != 0.02:
        weights["lm_head.weight"][readable] = rng.normal(0.0, lm_head_std, (int(readable.sum()), cfg["hidden_size"]))
    weights["lm_head.weight"][~readable] = 0.0
    return weights


def to_bf16(array: np.ndarray) -> bytes:
    """float32 -> bfloat16 bytes (round to nearest even), as the released checkpoint is stored."""
    bits = np.ascontiguousarray(array, np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def save_weights(path: Path, weights: dict[str, np.ndarray], fmt: str) -> None:
    write_safetensors(path, {k: ("BF16", v.shape, to_bf16(v)) for k, v in weights.items()}, {"format": fmt})


# --- tokenizer ----------------------------------------------------------------------------------


def _corpus() -> list[str]:
    """Receipt/KIE-flavoured lines: enough for a few hundred BPE merges of realistic pieces."""
    words = ("TOTAL SUBTOTAL TAX CASH CHANGE DATE TIME STORE RECEIPT INVOICE ITEM QTY PRICE AMOUNT "
             "Coffee Tea Bread Milk Apple Rice Water Juice Sandwich Cake Market Street Road Thank you "
             "company address total date name number table formula chart OCR Recognition User Assistant "
             "the of and to in for with on from").split()
    lines = []
    for i in range(400):
        a, b, c = words[i % len(words)], words[(i * 7) % len(words)], words[(i * 13) % len(words)]
        lines.append(f"{a} {b} {c} {i % 97}.{i % 10}{(i * 3) % 10} {2020 + i % 6}-{1 + i % 12:02d}-{1 + i % 28:02d}")
        lines.append(f'OCR:{{"{a.lower()}": "", "{b.lower()}": ""}} {{"{c.lower()}": "{i}"}}')
    lines += ["OCR:", "Table Recognition:", "Formula Recognition:", "Chart Recognition:",
              "User: ", "Assistant: ", "<fcel> <lcel> <nl>"]
    return lines


@lru_cache(maxsize=1)
def tokenizer_model_bytes() -> bytes:
    """SentencePiece BPE trained on :func:`_corpus`, padded to the released id layout.

    No dummy prefix: the released tokenizer_config.json says ``add_prefix_space: false`` (and
    PaddleX's and transformers' tokenizers then agree on every id).
    Pieces: <unk> <s> </s> (0-2), digits (3-12, user-defined), byte fallback and trained pieces,
    unused padding, the special pieces at their released ids (100272-100280, user-defined so they
    stay whole), unused padding up to 100295.
    """
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2 as pb

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()), model_writer=buf, model_type="bpe", vocab_size=TRAINED_PIECES,
        user_defined_symbols=DIGITS, byte_fallback=True, character_coverage=1.0, num_threads=1,
        split_digits=True, add_dummy_prefix=False, remove_extra_whitespaces=False, minloglevel=2,
        normalization_rule_name="identity",
        unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", pad_id=-1,
    )
    proto = pb.ModelProto()
    proto.ParseFromString(buf.getvalue())
    proto.trainer_spec.vocab_size = SP_VOCAB_SIZE
    proto.trainer_spec.user_defined_symbols.extend(SPECIAL_PIECES.values())
    lowest = min(p.score for p in proto.pieces)
    for idx in range(len(proto.pieces), SP_VOCAB_SIZE):
        piece = proto.pieces.add()
        piece.piece = SPECIAL_PIECES.get(idx, f"<unused_{idx}>")
        piece.type = pb.ModelProto.SentencePiece.USER_DEFINED if idx in SPECIAL_PIECES else pb.ModelProto.SentencePiece.UNUSED
        piece.score = 0.0 if idx in SPECIAL_PIECES else lowest - 1.0
    return proto.SerializeToString()


@lru_cache(maxsize=1)
def _readable_ids(vocab_size: int) -> np.ndarray:
    """Mask of the ids greedy decoding may pick: trained NORMAL pieces, the digits and ``</s>``."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    proto = pb.ModelProto()
    proto.ParseFromString(tokenizer_model_bytes())
    kinds = pb.ModelProto.SentencePiece
    mask = np.zeros(vocab_size, bool)
    for idx, piece in enumerate(proto.pieces[:TRAINED_PIECES]):
        mask[idx] = piece.type == kinds.NORMAL or piece.piece in DIGITS or piece.piece == "</s>"
    return mask


# --- layouts ------------------------------------------------------------------------------------


def release_file(name: str, release: str = "v1") -> Path:
    """A released text file of ``release``: the release's own where it differs from v1
    (chat template, image processor, inference.yml), else v1's (config layout and tokenizer are
    the same in 1.5/1.6: shared/reference/MODEL_VERSIONS.md)."""
    from paddle_ocrvl_sft import releases

    own = releases.get(release).resource_dir / name
    return own if own.is_file() else RESOURCES / name


def build_tiny_model(dest: str | Path, layout: str = "base", *, checkpoints: tuple[int, ...] = (5, 10),
                     seed: int = 0, lm_head_std: float = 0.02, release: str = "v1", matrix_std: float = 0.02) -> Path:
    """Write a tiny PaddleOCR-VL dir in ``layout`` ("base" or "erniekit_output") to ``dest``.

    ``release`` (v1, v1.5, v1.6) picks the released text files: 1.5/1.6 are the v1 config and
    tokenizer with their own chat template, image processor and inference.yml. The ERNIEKit
    output's final weights equal its last checkpoint's (a run that saved at ``max_steps``); each
    checkpoint has its own weights so tests can tell them apart.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config()
    if layout == "base":
        _write_common(dest, cfg)
        for name in BASE_FILES:
            shutil.copyfile(release_file(name, release), dest / name)
        save_weights(dest / "model.safetensors", random_weights(cfg, seed, lm_head_std, matrix_std), "pt")
        return dest

    # ERNIEKit/PaddleFormers saves a dtype with the config and no chat template or inference.yml.
    run_cfg = {**cfg, "dtype": "bfloat16"}
    steps = sorted(checkpoints)
    for step in steps:
        ckpt = dest / f"checkpoint-{step}"
        ckpt.mkdir(exist_ok=True)
        _write_run_files(ckpt, run_cfg, random_weights(cfg, seed + step), step, steps[-1], release)
        _write_checkpoint_state(ckpt)
    final = random_weights(cfg, seed + steps[-1]) if steps else random_weights(cfg, seed + 1)
    _write_run_files(dest, run_cfg, final, steps[-1] if steps else 1, steps[-1] if steps else 1, release)
    for name in ("train_results.json", "all_results.json"):
        write_json(dest / name, {"epoch": 1.0, "train_loss": 1.234, "train_runtime": 12.3,
                                  "train_samples_per_second": 1.0, "train_steps_per_second": 0.1})
    return dest


def _write_common(dest: Path, cfg: dict) -> None:
    write_json(dest / "config.json", cfg)
    (dest / "tokenizer.model").write_bytes(tokenizer_model_bytes())


def _write_run_files(dest: Path, cfg: dict, weights: dict[str, np.ndarray], step: int, max_steps: int,
                     release: str = "v1") -> None:
    _write_common(dest, cfg)
    for name in ("generation_config.json", "preprocessor_config.json", "tokenizer_config.json",
                 "special_tokens_map.json", "added_tokens.json"):
        shutil.copyfile(release_file(name, release), dest / name)
    save_weights(dest / SHARD, weights, "np")
    total = sum(v.size * 2 for v in weights.values())
    write_json(dest / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": {k: SHARD for k in sorted(weights)}})
    write_json(dest / "static_name_to_dyg_name.json",
                {f"param_{i}": name for i, name in enumerate(sorted(weights))})
    write_json(dest / "trainer_state.json", {
        "global_step": step, "max_steps": max_steps, "epoch": step / max_steps,
        "log_history": [{"loss": round(2.0 / (1 + s), 4), "learning_rate": 5.0e-6, "step": s}
                        for s in range(1, step + 1)],
    })
    (dest / "training_args.bin").write_bytes(b"placeholder: ERNIEKit pickles its TrainingArguments here\n")


def _write_checkpoint_state(ckpt: Path) -> None:
    """The state a checkpoint adds, under the upstream names: a (tiny) optimizer shard and its index,
    and placeholders for the Paddle pickles (master weights, scheduler, RNG state). The result is a
    COMPLETE checkpoint by ``backends.checkpoints`` (ERNIEKit's unified layout)."""
    moment = np.zeros(4, np.float32)
    shard = "optimizer-00001-of-00001.safetensors"
    save_weights(ckpt / shard, {"lm_head.weight_fp32_master_0_moment1_0": moment}, "np")
    write_json(ckpt / "optimizer.safetensors.index.json",
               {"metadata": {"total_size": moment.size * 2}, "weight_map": {"lm_head.weight_fp32_master_0_moment1_0": shard}})
    for name in ("master_weights-00001-of-00001.safetensors", "scheduler.pdparams", "rng_state.pth"):
        (ckpt / name).write_bytes(b"placeholder\n")


# --- upstream sources for tests -------------------------------------------------------------------


def erniekit_source() -> Path | None:
    """ERNIEKit's source for tests that run the real reader or trainer: ``$ERNIEKIT_SRC`` (a clone
    or a tarball), else the vendored ``../shared/vendor/ERNIE-*.tar.gz`` beside a checkout of this
    repo (develop@41ab1c5 ≈ release/v1.4), else None (the caller skips and says why)."""
    import os

    given = os.environ.get("ERNIEKIT_SRC")
    if given:
        return Path(given)
    vendored = sorted((Path(__file__).resolve().parents[2] / "shared" / "vendor").glob("ERNIE-*.tar.gz"))
    return vendored[-1] if vendored else None


def erniekit_module(relpath: str, dest: str | Path):
    """Import one module of ERNIEKit's source (``relpath`` inside the repo, e.g.
    ``ernie/dataset/vl_sft_reader/vl_sft_dataset_json.py``) from its file, copied to ``dest``;
    None without a source. Loaded on its own, not through its package, whose ``__init__`` pulls in
    the trainer: only the module's own imports must be installed."""
    import importlib.util
    import tarfile

    source = erniekit_source()
    if source is None:
        return None
    target = Path(dest) / Path(relpath).name
    if source.is_dir():
        shutil.copyfile(source / relpath, target)
    else:
        with tarfile.open(source) as tar:
            member = next(m for m in tar.getmembers() if m.name.split("/", 1)[-1] == relpath)
            target.write_bytes(tar.extractfile(member).read())
    spec = importlib.util.spec_from_file_location(f"erniekit_{target.stem}", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- synthetic images ---------------------------------------------------------------------------


def receipt_image(fields: dict[str, str], *, width: int = 320):
    """A receipt-like PIL image with one ``NAME: value`` line per field."""
    from paddle_ocrvl_sft.receipts import draw_lines

    return draw_lines(["RECEIPT", *(f"{name.upper()}: {value}" for name, value in fields.items())], width)


# --- a stand-in launcher, for failures a CPU cannot produce ---------------------------------------


def write_standin_launcher(bin_dir: str | Path, name: str, lines: list[str], exit_code: int = 1) -> Path:
    """A STAND-IN for a GPU trainer's launcher (``erniekit`` / ``paddleformers-cli``) — not a trainer.

    It prints ``lines`` (log lines in the real format, e.g. a CUDA out-of-memory error that a CPU
    cannot produce) and exits with ``exit_code``, so `train`'s following and diagnosis can be
    tested on the very lines a GPU run writes. Put ``bin_dir`` first on PATH.
    """
    import stat
    import sys

    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text(
        f"#!{sys.executable}\n"
        "# STAND-IN launcher written by paddle_ocrvl_sft.testing.write_standin_launcher: replays log lines, trains nothing\n"
        "import sys\n"
        f"for line in {list(lines)!r}:\n"
        "    print(line, flush=True)\n"
        f"sys.exit({int(exit_code)})\n",
        encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


def write_standin_program(bin_dir: str | Path, name: str, source: str) -> Path:
    """A STAND-IN for a trainer's launcher running ``source`` (Python) — not a trainer.

    For what a CPU cannot show: a launcher that starts its workers in sessions of their own
    (``paddle.distributed.launch``), a worker that ignores signals, a run that ends as a signal
    arrives. Put ``bin_dir`` first on PATH.
    """
    import stat
    import sys

    bin_dir = Path(bin_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text(f"#!{sys.executable}\n# STAND-IN launcher written by paddle_ocrvl_sft.testing.write_standin_program: "
                      f"trains nothing\n{source}", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


# --- models with a known behaviour: a planted loop, a perturbed copy ---------------------------------


def _rewrite_weights(src: Path, dest: Path, change) -> Path:
    """A copy of the tiny base model dir ``src`` at ``dest`` whose weights ``change(weights)`` edits."""
    from paddle_ocrvl_sft.safetensors_file import read_tensors

    shutil.copytree(src, dest)
    weights = {k: np.asarray(v, np.float32).copy() for k, v in read_tensors(src / "model.safetensors").items()}
    change(weights)
    save_weights(dest / "model.safetensors", weights, "pt")
    return dest


def build_scripted_model(dest: str | Path, digits: str = "123", *, loop: bool = True, **base_options) -> Path:
    """A tiny base model whose greedy answer to any image and prompt is ``digits`` — repeated until
    the token cap (``loop``: a planted runaway) or followed by end-of-sequence.

    Every layer's attention and MLP output projections are zero, so the last hidden state is the
    last token's own embedding; every token embeds to the direction that predicts ``digits[0]``,
    and ``digits[i]`` to the one that predicts ``digits[i + 1]`` (then ``digits[0]`` again, or
    ``</s>``). Digits are single pieces of the tiny tokenizer, so the answer is exactly ``digits``.
    """
    dest = Path(dest)
    base = build_tiny_model(dest.with_name(dest.name + ".base"), "base", **base_options)
    ids = [3 + DIGITS.index(c) for c in digits]  # digits are pieces 3..12
    if len(set(ids)) != len(ids):
        raise ValueError(f"digits {digits!r}: distinct digits only")
    following = ids[1:] + ([ids[0]] if loop else [EOS_ID])

    def plant(weights):
        hidden = weights["model.embed_tokens.weight"].shape[1]
        basis = np.eye(hidden, dtype=np.float32)
        for name in weights:
            if name.startswith("model.layers.") and name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
                weights[name][:] = 0.0
        weights["model.embed_tokens.weight"][:] = basis[len(ids)]  # anything -> digits[0]
        weights["lm_head.weight"][:] = 0.0
        weights["lm_head.weight"][ids[0]] = 10.0 * basis[len(ids)]
        for i, (token, after) in enumerate(zip(ids, following)):
            weights["model.embed_tokens.weight"][token] = basis[i]
            weights["lm_head.weight"][after] += 10.0 * basis[i]

    model = _rewrite_weights(base, dest, plant)
    shutil.rmtree(base)
    return model


def build_looping_model(dest: str | Path, cycle: str = "123", **base_options) -> Path:
    """:func:`build_scripted_model` that answers ``cycle`` over and over until the token cap."""
    return build_scripted_model(dest, cycle, loop=True, **base_options)


def perturbed_copy(src: str | Path, dest: str | Path, scale: float, seed: int = 1) -> Path:
    """A copy of a tiny base model with N(0, scale) noise added to every weight matrix: a stand-in
    for a fine-tune that moved away from its base (``scale`` 0 gives the same answers)."""
    rng = np.random.default_rng(seed)

    def perturb(weights):
        for name, value in weights.items():
            if value.ndim >= 2:
                value += rng.normal(0.0, scale, value.shape).astype(np.float32)

    return _rewrite_weights(Path(src), Path(dest), perturb)
