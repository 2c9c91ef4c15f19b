"""Turn a training run's output (ERNIEKit ``OCR-VL-SFT``, PaddleFormers ``VL-SFT`` full or LoRA, or one of
their checkpoints) into a bundle that PaddleX/PaddleOCR or transformers loads.

Why (shared/reference/FACTS.md "Output dir after training", "PaddleX / PaddleOCR inference",
"transformers"): the run dir has no ``chat_template.jinja``, no ``inference.yml`` and no file named
``model.safetensors`` (PaddleX >= 3.5: "No Paddle model files were found"); its
``model.safetensors.index.json`` goes stale as soon as the shard is renamed (FileNotFoundError); and
transformers needs the base model's HF files with only the weights replaced.

* ``paddle`` format: the run's config/preprocessor files, the tokenizer files and chat template of
  the base model (what training tokenized with: both trainers read the base's tokenizer; a
  PaddleFormers run's saved ``tokenizer_config.json`` lost ``add_bos_token: false``, and PaddleX
  would prompt with a ``<s>`` training never saw), ``inference.yml``, and one ``model.safetensors``
  (a hard link to the single shard, or the shards merged byte for byte), with no index.
* ``hf`` format: the base model's files + the fine-tuned ``model.safetensors``; ``config.json`` gets
  ``tie_word_embeddings: false`` at both levels (transformers 5 otherwise ties the flat released
  config and silently drops the fine-tuned ``lm_head``), ``tokenizer_config.json`` gets the
  ``image_token`` its processor needs, ``preprocessor_config.json`` names transformers'
  ``PaddleOCRVLImageProcessor`` (the released ``SiglipImageProcessor`` name makes ``AutoProcessor``
  build a SigLIP processor that rejects the pixel bounds) and the chat template keeps the image
  start/end markers under a plain ``apply_chat_template`` (see :func:`pin_image_block`).

Both formats are then checked against the training prompt (``agreement.check_bundle``): the
bundle's inference input for the plan's sample (or, without a plan, the base model's for a probe
image) must be the very token ids training used.

The bundle is for BASE's release (``releases.detect``, or ``release``): inference.yml names the
release's PaddleX model (``PaddleOCR-VL-1.5-0.9B`` for 1.5), the name ``doc_parser --pipeline_version``
and PaddleX's loader expect. RUN_DIR and BASE_DIR are only read. The bundle is built under a
temporary name, verified by loading it, and only then moved to OUT (``io.staged_dir``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from paddle_ocrvl_sft import releases
from paddle_ocrvl_sft.backends.base import link_or_copy
from paddle_ocrvl_sft.bundle import DEFAULT_MODEL_NAME, INDEX, VL_REC_REQUIRED, WEIGHTS, yml_model_name
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import staged_dir, write_json
from paddle_ocrvl_sft.safetensors_file import merge_safetensors, read_header, tensor_specs

FORMATS = ("paddle", "hf")
IMAGE_TOKEN = "<|IMAGE_PLACEHOLDER|>"
VIDEO_TOKEN = "<|video_pad|>"
HF_IMAGE_PROCESSOR = "PaddleOCRVLImageProcessor"  # transformers' class (min/max pixels smart resize)
PINNED_IMAGE_VARIABLE = "paddleocr_vl_image_block"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")
# paddle bundle: files taken from the run (what it trained with) and those taken from BASE: its chat
# template and tokenizer, which training tokenized with (a PaddleFormers run re-saves the tokenizer
# without add_bos_token: false, and PaddleX would then prompt with <s>).
PADDLE_RUN_FILES = ("config.json", "generation_config.json", "preprocessor_config.json")
PADDLE_BASE_FILES = ("chat_template.jinja", "processor_config.json", *TOKENIZER_FILES)
HF_BASE_FILES = ("generation_config.json", "preprocessor_config.json", "processor_config.json",
                 "chat_template.jinja", *TOKENIZER_FILES)


# --- finding the fine-tuned weights -------------------------------------------------------------


@dataclass
class Weights:
    """The safetensors file(s) holding one model, tensors taken from elsewhere, and notes."""

    files: list[Path]
    notes: list[str] = field(default_factory=list)
    take: dict[str, Path] = field(default_factory=dict)  # tensor name -> the file it is copied from

    @property
    def specs(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        specs = {}
        for path in [*self.files, *dict.fromkeys(self.take.values())]:
            header = tensor_specs(read_header(path))
            specs.update(header if path in self.files else {k: v for k, v in header.items() if self.take.get(k) == path})
        return specs

    def file_of(self, name: str) -> Path:
        return next(path for path in self.files if name in read_header(path))


def find_weights(src: Path) -> Weights:
    """The weights of a run/checkpoint dir: the index's shards if all exist, else ``model.safetensors``.

    A stale index (shards missing, e.g. after renaming the shard to model.safetensors, PaddleX
    #5012) is ignored when ``model.safetensors`` is there; otherwise it is an error naming the
    missing shard.
    """
    index = src / INDEX
    single = src / WEIGHTS
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({src / name for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{index}: not a safetensors index (needs a 'weight_map' object: {exc})") from None
        missing = [p.name for p in shards if not p.is_file()]
        if not missing:
            return Weights(shards)
        if single.is_file():
            return Weights([single], [f"ignored stale {INDEX} (lists missing {', '.join(missing)})"])
        raise UserError(f"{index}: lists {', '.join(missing)}, not found in {src}")
    if single.is_file():
        return Weights([single])
    shards = sorted(src.glob("model-*-of-*.safetensors"))
    if shards:
        return Weights(shards, [f"no {INDEX}: using {', '.join(p.name for p in shards)}"])
    raise UserError(f"{src}: no model weights (expected {INDEX} + shards or {WEIGHTS})")


# PaddleFormers' PaddleOCR-VL has no SigLIP pooling head, so its saved weights lack these tensors,
# which PaddleX's loader requires (set_hf_state_dict AssertionError): CPU_TRAINING.md A.5.
HEAD_PREFIX = "visual.vision_model.head."


def missing_head(run_names: set[str], base_names: set[str]) -> list[str]:
    """The base tensors a PaddleFormers output lacks, when they are exactly the SigLIP head (else [])."""
    missing = sorted(base_names - run_names)
    return missing if missing and all(n.startswith(HEAD_PREFIX) for n in missing) else []


def trained_weights(src: Path, base: Weights, work: Path, log: Callable[[str], None]) -> Weights:
    """The fine-tuned weights of ERNIEKit or PaddleFormers output, completed from BASE where needed.

    A LoRA run is merged with PaddleFormers' own exporter and the merge verified
    (:mod:`paddle_ocrvl_sft.backends.lora`; an adapter of another trainer is refused); PaddleFormers'
    saved weights lack the SigLIP pooling head, which is taken from BASE, exactly those tensors and
    only them (CPU_TRAINING.md A.5, A.6).
    """
    from paddle_ocrvl_sft.backends import lora

    if lora.is_adapter_dir(src) and not (src / INDEX).is_file() and not (src / WEIGHTS).is_file():
        merged = lora.merge(src, base.files, work, log)
        weights = Weights([merged], [f"merged the LoRA adapter ({lora.ADAPTER_CONFIG}) into BASE with PaddleFormers' exporter, "
                                     "and verified the merge"])
    else:
        weights = find_weights(src)
    base_specs = base.specs
    missing = missing_head(set(weights.specs), set(base_specs))
    if missing:
        weights.take = {name: base.file_of(name) for name in missing}
        weights.notes.append(f"added the {len(missing)} {HEAD_PREFIX}* tensors from BASE (PaddleFormers does not save "
                             "the SigLIP pooling head; PaddleX's loader requires it)")
    return weights


def check_same_architecture(weights: Weights, base: Weights, src: Path, base_dir: Path) -> None:
    """The fine-tuned tensors must be the base model's, name for name and shape for shape."""
    mine, theirs = weights.specs, base.specs
    if not any(k.startswith("visual.") for k in mine) or "lm_head.weight" not in mine:
        first = ", ".join(sorted(mine)[:3])
        raise UserError(f"{src}: weights are not in the original PaddleOCR-VL naming (visual.*, mlp_AR.*, "
                        f"model.*, lm_head.weight; found {first}, ...): train with save_to_hf left on")
    missing, extra = sorted(theirs.keys() - mine.keys()), sorted(mine.keys() - theirs.keys())
    shapes = sorted(k for k in mine.keys() & theirs.keys() if mine[k][1] != theirs[k][1])
    problems = [f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                for label, keys in (("missing", missing), ("unexpected", extra), ("shape differs", shapes)) if keys]
    if problems:
        raise UserError(f"{src}: weights do not match --base {base_dir} ({'; '.join(problems)}); "
                        "pass the base model the run was fine-tuned from")


# --- sources ------------------------------------------------------------------------------------


def checkpoint_layouts() -> tuple:
    """Every trainer's complete-checkpoint layouts: export reads a run dir of either trainer."""
    from paddle_ocrvl_sft import backends

    return tuple(layout for name in backends.NAMES for layout in backends.get(name).checkpoint_layouts)


def select_sources(run_dir: Path, checkpoint: str | None, log: Callable[[str], None] = lambda line: None
                   ) -> list[tuple[Path, str]]:
    """(source dir, sub-path in OUT) pairs: the run's final weights, one checkpoint, or all of them.

    Only COMPLETE checkpoints are exported (``backends.checkpoints``, the definition resume uses):
    ``last`` is the newest complete one, ``all`` every complete one, and ``N`` is refused with the
    reason when checkpoint-N was cut short.
    """
    from paddle_ocrvl_sft.backends import checkpoints

    if checkpoint is None:
        return [(run_dir, "")]
    found, incomplete = checkpoints.checkpoint_states(run_dir, checkpoint_layouts())
    every = {**found, **incomplete}
    if not every:
        raise UserError(f"{run_dir}: no checkpoint-N dirs (drop --checkpoint to export the final weights)")
    if checkpoint in ("all", "last"):
        for n, why in incomplete.items():
            log(f"skipped checkpoint-{n}: incomplete ({why})")
        if not found:
            raise UserError(f"{run_dir}: no complete checkpoint (" + "; ".join(f"checkpoint-{n}: {why}" for n, why in
                                                                             incomplete.items()) + ")")
        if checkpoint == "all":
            return [(found[n], f"checkpoint-{n}") for n in sorted(found)]
        return [(found[max(found)], "")]
    if not checkpoint.isdigit() or int(checkpoint) not in every:
        have = ", ".join(str(n) for n in sorted(found))
        raise UserError(f"--checkpoint {checkpoint}: not found in {run_dir} (complete: {have or 'none'}; or last, all)")
    step = int(checkpoint)
    if step in incomplete:
        raise UserError(f"--checkpoint {checkpoint}: {run_dir / f'checkpoint-{step}'} is incomplete ({incomplete[step]}): "
                        "its save was cut short; export another checkpoint (complete: "
                        + (", ".join(str(n) for n in sorted(found)) or "none") + ")")
    return [(found[step], "")]


def default_out(run_dir: Path, checkpoint: str | None, fmt: str) -> Path:
    """``<run>-export-<fmt>`` (or ``<run>-checkpoint-N-export-<fmt>``) beside the run dir."""
    tag = "" if checkpoint in (None, "all") else f"-checkpoint-{checkpoint}"
    return run_dir.parent / f"{run_dir.name}{tag}-export-{fmt}"


# --- assembling ---------------------------------------------------------------------------------


@dataclass
class ExportReport:
    out: Path
    fmt: str
    changes: list[str] = field(default_factory=list)  # one line per file added/derived
    verified: list[str] = field(default_factory=list)
    release: str = "v1"  # releases.py name of BASE's release
    model_name: str = DEFAULT_MODEL_NAME  # inference.yml Global.model_name = --vl_rec_model_name


def export(run_dir: str | os.PathLike, base_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
           checkpoint: str | None = None, fmt: str = "paddle", model_name: str | None = None,
           release: str | None = None, force: bool = False, verify: bool = True,
           log: Callable[[str], None] = lambda line: None, plan_dir: str | os.PathLike | None = None) -> ExportReport:
    """Build the ``fmt`` bundle of RUN_DIR (or its checkpoint(s)) in OUT; return what was done.

    ``release`` (``--release``) overrides what BASE's files say; ``model_name`` defaults to the
    release's PaddleX name and may not name another release. ``plan_dir``: the plan RUN_DIR was
    trained from (default: found beside RUN_DIR); its recorded training prompt is what the bundle's
    inference prompt is checked against.
    """
    run_dir, base_dir = Path(run_dir).resolve(), Path(base_dir).resolve()
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: must be one of {', '.join(FORMATS)}")
    for label, d in (("RUN_DIR", run_dir), ("--base", base_dir)):
        if not d.is_dir():
            raise UserError(f"{label} {d}: not a directory")
    out = Path(out).resolve() if out else default_out(run_dir, checkpoint, fmt)
    _refuse_overlap(out, {"RUN_DIR": run_dir, "--base": base_dir})
    detection = releases.detect(base_dir, release)
    model_name = release_model_name(model_name, detection)
    log(f"release {detection.describe()}")
    for note in detection.notes:
        log(f"note: {note}")
    base_weights = find_weights(base_dir)
    sources = select_sources(run_dir, checkpoint, log)
    report = ExportReport(out, fmt, release=detection.release.name, model_name=model_name)
    from paddle_ocrvl_sft import agreement

    trained_prompt = agreement.plan_reference(run_dir, plan_dir) if verify else None
    with tempfile.TemporaryDirectory(prefix="paddle-ocrvl-sft-export-") as work, staged_dir(out, force=force) as stage:
        plans = []
        for i, (src, sub) in enumerate(sources):
            weights = trained_weights(src, base_weights, Path(work) / str(i), log)
            check_same_architecture(weights, base_weights, src, base_dir)
            plans.append((src, sub, weights))
        for src, sub, weights in plans:
            dest = stage / sub
            dest.mkdir(parents=True, exist_ok=True)
            prefix = f"{sub}/" if sub else ""
            build = _build_paddle if fmt == "paddle" else _build_hf
            lines = build(src, run_dir, base_dir, weights, dest, model_name)
            report.changes += [prefix + line for line in lines]
            for line in lines:
                log(prefix + line)
            if verify:
                result = (verify_paddle(dest, model_name) if fmt == "paddle" else verify_hf(dest, weights.files))
                report.verified.append(prefix + result)
                log(f"{prefix}verified: {result}")
                agreed = agreement.check_bundle(dest, fmt, base_dir, model_name, trained_prompt, probe_image)
                report.verified.append(prefix + agreed)
                log(f"{prefix}verified: {agreed}")
    return report


def release_model_name(model_name: str | None, detection: releases.Detection) -> str:
    """The inference.yml model name: the release's PaddleX name; ``--model-name`` may only repeat it."""
    expected = detection.release.paddlex_model_name
    if model_name is None or model_name == expected:
        return expected
    named = releases.by_model_name(model_name)
    if named is None:
        known = ", ".join(r.paddlex_model_name for r in releases.RELEASES.values())
        raise UserError(f"--model-name {model_name}: not a PaddleOCR-VL model name PaddleX knows ({known})")
    raise UserError(f"--model-name {model_name} is release {named.name}'s name, but BASE is release "
                    f"{detection.describe()}; drop --model-name (the release names the model) or pass --release {named.name}")


def _refuse_overlap(out: Path, inputs: dict[str, Path]) -> None:
    """OUT is replaced wholesale (``--force``): it may not be, lie inside, or contain an input dir."""
    for label, d in inputs.items():
        where = "is" if out == d else "inside" if d in out.parents else "contains" if out in d.parents else None
        if where:
            raise UserError(f"-o {out}: {where} {label} {d}, which export never modifies; choose another OUT")


def _pick(name: str, dirs: list[Path]) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def _describe(path: Path, roots: dict[Path, str]) -> str:
    for root, label in roots.items():
        if path.parent == root or root in path.parents:
            return f"{label}/{path.relative_to(root)}"
    return str(path)


def _build_paddle(src: Path, run_dir: Path, base_dir: Path, weights: Weights, dest: Path, model_name: str) -> list[str]:
    roots = {base_dir: "BASE", run_dir: "RUN"}
    lines = list(weights.notes)
    for name in PADDLE_RUN_FILES + PADDLE_BASE_FILES:
        order = [base_dir] if name in PADDLE_BASE_FILES else [src, run_dir, base_dir]
        found = _pick(name, order)
        if found is None:
            if name in VL_REC_REQUIRED:
                raise UserError(f"{name}: not in {' or '.join(str(d) for d in dict.fromkeys(order))}")
            continue
        shutil.copy2(found, dest / name)
        if found.parent == base_dir and not (src / name).is_file():
            lines.append(f"added {name} (from {_describe(found, roots)})")
        elif found.parent == base_dir and name in TOKENIZER_FILES and (src / name).read_bytes() != found.read_bytes():
            lines.append(f"{name} from BASE, not RUN's: training tokenized with BASE's"
                         + (" (RUN's has lost add_bos_token: false; PaddleX would prompt with <s>)"
                            if name == "tokenizer_config.json" and _adds_bos(src / name) else ""))
    lines.append(_write_inference_yml(base_dir, dest, model_name))
    lines.append(_place_weights(weights, dest / WEIGHTS, roots))
    if (src / INDEX).is_file():
        lines.append(f"left out {INDEX} ({WEIGHTS} is a single complete file)")
    return lines


def _adds_bos(tokenizer_config: Path) -> bool:
    """A tokenizer_config.json that does not say ``add_bos_token: false`` (LlamaTokenizer then adds ``<s>``)."""
    try:
        return json.loads(tokenizer_config.read_text(encoding="utf-8")).get("add_bos_token", True) is not False
    except (OSError, ValueError, AttributeError):
        return False


def _write_inference_yml(base_dir: Path, dest: Path, model_name: str) -> str:
    """``Global: model_name`` must match ``--vl_rec_model_name`` (FACTS, PaddleX inference)."""
    text = f"Global:\n  model_name: {model_name}\n"
    (dest / "inference.yml").write_text(text, encoding="utf-8")
    base = base_dir / "inference.yml"
    if base.is_file() and yml_model_name(base.read_text(encoding="utf-8")) == model_name:
        return f"added inference.yml (model_name: {model_name}, as in BASE/inference.yml)"
    return f"added inference.yml (model_name: {model_name})"


def _place_weights(weights: Weights, target: Path, roots: dict[Path, str]) -> str:
    """One shard: hard link (copy across file systems); several, or tensors taken from BASE:
    merged byte for byte. The source is never moved."""
    if weights.take:
        merge_safetensors(weights.files, target, take=weights.take)
        return f"added {WEIGHTS} ({_describe(weights.files[0], roots)} + {len(weights.take)} tensors of BASE)"
    if len(weights.files) == 1:
        (source,) = weights.files
        how = "hard link to" if link_or_copy(source, target) else "copy of"
        return f"added {WEIGHTS} ({how} {_describe(source, roots)})"
    merge_safetensors(weights.files, target)
    return f"added {WEIGHTS} (merged {len(weights.files)} shards of {_describe(weights.files[0].parent, roots)})"


def _build_hf(src: Path, run_dir: Path, base_dir: Path, weights: Weights, dest: Path, model_name: str) -> list[str]:
    roots = {base_dir: "BASE", run_dir: "RUN"}
    lines = list(weights.notes)
    for name in HF_BASE_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, dest / name)
            lines.append(f"copied {name} from BASE")
        elif name in VL_REC_REQUIRED:
            raise UserError(f"{base_dir / name}: not found (--format hf takes the base model's HF files)")
    remote_code = sorted(base_dir.glob("*.py"))
    for path in remote_code:
        shutil.copy2(path, dest / path.name)
    if remote_code:
        lines.append(f"copied {len(remote_code)} remote-code .py files from BASE")
    lines.append(_write_hf_config(base_dir, dest, bool(remote_code)))
    lines.append(_add_image_token(dest / "tokenizer_config.json"))
    if not remote_code:
        lines.append(_hf_image_processor(dest / "preprocessor_config.json"))
    lines.append(pin_image_block(dest / "chat_template.jinja"))
    lines.append(_write_inference_yml(base_dir, dest, model_name))
    lines.append(_place_weights(weights, dest / WEIGHTS, roots))
    return [line for line in lines if line]


def _write_hf_config(base_dir: Path, dest: Path, has_remote_code: bool) -> str:
    """BASE config.json + an explicit untied ``text_config`` for transformers >= 5.

    transformers 5 builds ``text_config`` from the flat released keys but not its
    ``tie_word_embeddings``, then copies the text default (True) to the top level, so the flat file
    loads with ``lm_head`` tied to the embeddings. Flat keys are kept for other readers (vLLM).
    """
    from transformers import PaddleOCRVLConfig

    path = base_dir / "config.json"
    try:
        flat = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    text_config = flat.get("text_config") or PaddleOCRVLConfig.from_dict(flat).text_config.to_dict()
    text_config = {k: v for k, v in text_config.items() if k not in ("transformers_version", "architectures")}
    text_config["tie_word_embeddings"] = False
    config = {**flat, "text_config": text_config, "tie_word_embeddings": False}
    if not has_remote_code:
        config.pop("auto_map", None)  # it names .py files this bundle does not have
        config.get("vision_config", {}).pop("auto_map", None)
    write_json(dest / "config.json", config)
    return "config.json from BASE: tie_word_embeddings false (top level and text_config)" + (
        "" if has_remote_code else ", auto_map dropped (no remote code in BASE)")


def _hf_image_processor(path: Path) -> str:
    """transformers' own PaddleOCR-VL image processor, with the same pixel bounds.

    The first release's file names ``SiglipImageProcessor`` (with an ``auto_map`` to remote code
    the release does not ship): transformers' ``AutoProcessor`` then builds its SigLIP processor,
    which rejects the ``min_pixels``/``max_pixels`` size ("Size must contain 'height' and 'width'
    keys ..."), so PaddleX's transformers engine cannot run the bundle. ``PaddleOCRVLImageProcessor``
    reads ``min_pixels``/``max_pixels`` as its shortest/longest edge: the same smart resize.
    """
    cfg = json.loads(path.read_text(encoding="utf-8"))
    if cfg.get("image_processor_type") == HF_IMAGE_PROCESSOR and "auto_map" not in cfg:
        return ""
    was = cfg.get("image_processor_type")
    cfg.pop("auto_map", None)  # remote code this bundle does not have
    cfg["image_processor_type"] = HF_IMAGE_PROCESSOR
    size = cfg.get("size") if isinstance(cfg.get("size"), dict) else {}
    for key in ("min_pixels", "max_pixels"):
        if key not in cfg and key in size:
            cfg[key] = size[key]
    cfg.pop("size", None)  # min_pixels/max_pixels are the processor's size (shortest/longest edge)
    write_json(path, cfg)
    return (f"preprocessor_config.json: image_processor_type {HF_IMAGE_PROCESSOR} (was {was}), auto_map dropped, "
            f"min/max pixels {cfg.get('min_pixels')}/{cfg.get('max_pixels')} kept")


def pin_image_block(path: Path) -> str:
    """Make the chat template render the image start/end markers under a plain ``apply_chat_template``.

    The first release's template takes the image block from an ``image_token`` variable that
    defaults to ``<|IMAGE_START|><|IMAGE_PLACEHOLDER|><|IMAGE_END|>``; transformers passes the
    tokenizer's special tokens into the template, and the ``image_token`` the processor needs
    (``<|IMAGE_PLACEHOLDER|>``) then replaces the whole block: the markers training saw are gone.
    The variable is renamed so nothing overrides it; the prompt the template renders without
    arguments (what PaddleX sends) stays byte for byte the same, which is checked here.
    """
    from paddle_ocrvl_sft.releases import render_generation_prompt

    text = path.read_text(encoding="utf-8")
    if not re.search(r"\bimage_token\b", text):
        return ""
    pinned = re.sub(r"\bimage_token\b", PINNED_IMAGE_VARIABLE, text)
    if render_generation_prompt(pinned) != render_generation_prompt(text):
        raise UserError(f"{path}: renaming its image_token variable changes the prompt it renders: not a template "
                        "this export knows how to keep")
    path.write_text(pinned, encoding="utf-8")
    return (f"chat_template.jinja: image_token renamed {PINNED_IMAGE_VARIABLE} (transformers would replace the "
            "<|IMAGE_START|>...<|IMAGE_END|> block with the tokenizer's image_token; the rendered prompt is unchanged)")


def _add_image_token(path: Path) -> str:
    """transformers' PaddleOCRVLProcessor reads ``tokenizer.image_token``; the released file has none."""
    cfg = json.loads(path.read_text(encoding="utf-8"))
    extra = dict(cfg.get("extra_special_tokens") or {})
    if extra.get("image_token"):
        return ""
    extra.setdefault("image_token", IMAGE_TOKEN)
    extra.setdefault("video_token", VIDEO_TOKEN)
    cfg["extra_special_tokens"] = extra
    write_json(path, cfg)
    return f"tokenizer_config.json: extra_special_tokens image_token {IMAGE_TOKEN}, video_token {VIDEO_TOKEN}"


# --- verification -------------------------------------------------------------------------------


def probe_image():
    """A small white page with one line of text: enough to run the vision tower once."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (224, 64), "white")
    ImageDraw.Draw(image).text((8, 24), "export check 12.34", fill="black")
    return image


def verify_paddle(model_dir: Path, model_name: str = DEFAULT_MODEL_NAME, max_new_tokens: int = 2) -> str:
    """Load ``model_dir`` with PaddleX's VL-rec predictor on CPU and generate a couple of tokens."""
    import numpy as np

    from paddle_ocrvl_sft.predict import paddle_predictor

    try:
        predictor = paddle_predictor(model_dir, model_name)
        image = np.asarray(probe_image())[:, :, ::-1].copy()  # PaddleX takes BGR arrays
        (result,) = list(predictor.predict([{"image": image, "query": "OCR:"}], max_new_tokens=max_new_tokens))
    except UserError:
        raise
    except Exception as exc:  # the loader's own message is the useful part
        raise UserError(f"verification failed: PaddleX could not load/run the bundle: {type(exc).__name__}: {exc}") from None
    return f"PaddleX {model_name} predictor loaded it on CPU and generated {result['result']!r}"


def verify_hf(model_dir: Path, fine_tuned: list[Path], max_new_tokens: int = 2) -> str:
    """Load with transformers (model + processor), check ``lm_head`` is the fine-tuned one, generate."""
    try:
        import torch
        from safetensors import safe_open

        from paddle_ocrvl_sft.predict import hf_generate, load_hf

        model, processor = load_hf(model_dir)
        lm_head = None
        for path in fine_tuned:
            with safe_open(str(path), framework="pt") as fh:
                if "lm_head.weight" in fh.keys():
                    lm_head = fh.get_tensor("lm_head.weight").to(model.lm_head.weight.dtype)
        if lm_head is None or not torch.equal(model.lm_head.weight.detach(), lm_head):
            raise UserError("verification failed: transformers did not load the fine-tuned lm_head.weight "
                            "(tied to the embeddings?)")
        text = hf_generate(model, processor, probe_image(), "OCR:", max_new_tokens)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"verification failed: transformers could not load/run the bundle: {type(exc).__name__}: {exc}") from None
    return f"transformers loaded it (lm_head untied, fine-tuned) and generated {text!r}"
