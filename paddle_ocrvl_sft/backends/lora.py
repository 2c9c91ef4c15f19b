"""LoRA adapters of PaddleFormers runs, for `export`: recognise one, merge it with PaddleFormers' own
exporter (in its environment), and VERIFY the merge before anything is called done.

PaddleFormers 1.2 saves a LoRA run as ``lora_config.json`` (its ``LoRAConfig``, with the ``scaling``
its layers used) + ``peft_model-*.safetensors`` holding ``<target>.lora_A`` [in, r] and
``<target>.lora_B`` [r, out] for each adapted ``<target>.weight`` of the base model. Its exporter
merges ``W + scaling·(A·B)ᵀ`` into every target. With safetensors 0.8 that exporter writes
transposed garbage without an error (CPU_TRAINING.md A.6): the environment pins 0.7 and
:func:`verify_merge` checks every target anyway, counting the tensors it actually compared.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError

ADAPTER_CONFIG = "lora_config.json"
ADAPTER_WEIGHTS = "peft_model*.safetensors"
# LoRAConfig fields PaddleFormers' save_pretrained writes (paddleformers/peft/lora/lora_config.py)
PADDLEFORMERS_FIELDS = ("r", "lora_alpha", "target_modules", "rslora", "scaling")
# Adapter files of trainers export cannot merge (Hugging Face PEFT: adapter_config.json + adapter_model.*)
OTHER_ADAPTERS = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
EXPORT_MODULE = "paddle_ocrvl_sft.backends.cpu.paddleformers_export"
BF16_RELATIVE = 2.0 ** -8  # the merged file is rounded to bfloat16


def adapter_files(src: Path) -> list[Path]:
    return sorted(src.glob(ADAPTER_WEIGHTS))


def is_adapter_dir(src: Path) -> bool:
    """Whether ``src`` holds a LoRA adapter of any kind (export must merge it, or refuse)."""
    return (src / ADAPTER_CONFIG).is_file() or bool(adapter_files(src)) or any((src / n).exists() for n in OTHER_ADAPTERS)


def read_adapter_config(src: Path) -> dict:
    """The adapter's config, refused unless PaddleFormers wrote it (the only trainer export merges for)."""
    other = [n for n in OTHER_ADAPTERS if (src / n).exists()]
    if other:
        raise UserError(f"{src}: a LoRA adapter of an unknown trainer ({', '.join(other)}: Hugging Face PEFT's files); export "
                        f"merges only PaddleFormers LoRA runs ({ADAPTER_CONFIG} + peft_model-*.safetensors): merge it with "
                        "its own trainer and export the merged weights")
    path = src / ADAPTER_CONFIG
    if not path.is_file():
        raise UserError(f"{src}: LoRA weights ({', '.join(p.name for p in adapter_files(src))}) without {ADAPTER_CONFIG}: "
                        "the trainer and scaling are unknown; export the run dir PaddleFormers wrote, unchanged")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None
    missing = [k for k in PADDLEFORMERS_FIELDS if not isinstance(config, dict) or k not in config]
    if missing:
        raise UserError(f"{path}: not written by PaddleFormers (no {', '.join(missing)}): export merges only PaddleFormers "
                        "LoRA runs; merge this adapter with the trainer that wrote it")
    if not adapter_files(src):
        raise UserError(f"{src}: {ADAPTER_CONFIG} without peft_model-*.safetensors: the adapter weights are missing")
    return config


def scaling(config: dict, where: str = ADAPTER_CONFIG) -> float:
    """The scale PaddleFormers 1.2 merges with: ``LoRAConfig.scaling`` = lora_alpha / r, or
    lora_alpha / sqrt(r) with rslora (the layers compute the same in ``LoRALinear.__init__``).

    PaddleFormers' trainer replaces ``lora_alpha: -1`` (the command-line default) by 2·r (4 with
    rslora) before it builds and saves the config, so a saved alpha <= 0 was not written by it; a
    stored ``scaling`` that disagrees with alpha and r is refused too (which of the two the adapter
    was trained with is unknown).
    """
    r, alpha, rslora = config.get("r"), config.get("lora_alpha"), bool(config.get("rslora"))
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise UserError(f"{where}: r must be a positive integer, got {r!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise UserError(f"{where}: lora_alpha {alpha!r}: PaddleFormers saves the alpha it trained with (it turns -1 into "
                        "2·r, or 4 with rslora, before saving); this adapter's scale is unknown")
    computed = alpha / math.sqrt(r) if rslora else alpha / r
    stored = config.get("scaling")
    if stored is not None and not math.isclose(float(stored), computed, rel_tol=1e-6):
        formula = "lora_alpha / sqrt(r)" if rslora else "lora_alpha / r"
        raise UserError(f"{where}: scaling {stored} disagrees with {formula} = {computed:g} (lora_alpha {alpha}, r {r}, "
                        f"rslora {rslora}): which scale the adapter was trained with is unknown")
    return computed


def trained_on(config: dict, base_dir: Path) -> tuple[Path, str | None]:
    """The model dir PaddleFormers' exporter loads: the dir the run was trained on when the config names
    an existing absolute dir (the plan's prepared copy, which PaddleFormers can read), else ``base_dir``."""
    named = str(config.get("base_model_name_or_path") or "").strip()
    if named and Path(named).is_absolute() and Path(named).is_dir():
        return Path(named), None
    if not named:
        return base_dir, f"{ADAPTER_CONFIG} names no base model: merging into --base {base_dir}"
    return base_dir, f"{ADAPTER_CONFIG} names base {named!r}, not a directory here: merging into --base {base_dir}"


def merge(src: Path, base_files: list[Path], work: Path, log=print) -> Path:
    """Merge the LoRA run ``src`` with PaddleFormers' own exporter (in its environment), then verify it.

    ``base_files``: the base model's safetensors file(s) as export found them. The adapter is
    copied into ``work`` (the exporter writes next to it: ``src`` stays untouched); returns the
    merged safetensors file.
    """
    from paddle_ocrvl_sft.backends import envs

    config = read_adapter_config(src)
    scale = scaling(config, str(src / ADAPTER_CONFIG))
    adapter = work / "adapter"
    adapter.mkdir(parents=True)
    for path in [src / ADAPTER_CONFIG, *src.glob("peft_model*")]:
        shutil.copy2(path, adapter / path.name)
    model, note = trained_on(config, base_files[0].parent)
    if note:
        log(note)
    (work / "export.yaml").write_text(
        f"fine_tuning: LoRA\nmodel_name_or_path: {json.dumps(str(model))}\noutput_dir: {json.dumps(str(adapter))}\ndevice: cpu\n",
        encoding="utf-8")
    trainer = envs.require("paddleformers")
    cmd = [str(trainer.python), "-m", EXPORT_MODULE, str(work / "export.yaml")]
    log(f"merging LoRA with PaddleFormers' exporter: {' '.join(cmd)}")
    proc = subprocess.run(cmd, env=trainer.env({**os.environ, "PYTHONPATH": str(envs.project_path()), "NO_COLOR": "1"}),
                          capture_output=True, text=True, cwd=work)
    merged = sorted((adapter / "export").glob("model-*.safetensors")) or sorted((adapter / "export").glob("model.safetensors"))
    if proc.returncode or len(merged) != 1:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-12:])
        raise UserError(f"{src}: PaddleFormers' LoRA export failed (exit {proc.returncode}):\n{tail}")
    log(verify_merge(src, base_files, merged[0], scale))
    return merged[0]


def adapter_pairs(src: Path) -> dict[str, tuple[str, str]]:
    """``{base tensor name: (lora_A name, lora_B name)}`` of the adapter; a lora_A without its lora_B
    (or the reverse) is refused by name."""
    from paddle_ocrvl_sft.safetensors_file import read_header

    names = {n for path in adapter_files(src) for n in read_header(path) if n != "__metadata__"}
    a = {n[: -len(".lora_A")] for n in names if n.endswith(".lora_A")}
    b = {n[: -len(".lora_B")] for n in names if n.endswith(".lora_B")}
    unpaired = sorted(a ^ b)
    if unpaired:
        which = [f"{t}.lora_{'B' if t in a else 'A'}" for t in unpaired]
        raise UserError(f"{src}: the adapter lacks {len(which)} tensor(s) of its LoRA pairs: {', '.join(which[:3])}"
                        + (" ..." if len(which) > 3 else ""))
    if not a:
        raise UserError(f"{src}: no lora_A/lora_B tensors in {', '.join(p.name for p in adapter_files(src))}: nothing to merge")
    return {f"{t}.weight": (f"{t}.lora_A", f"{t}.lora_B") for t in sorted(a)}


def verify_merge(src: Path, base_files: list[Path], merged_file: Path, scale: float) -> str:
    """merged == W + scale·(A·B)ᵀ on every LoRA target and == W on every other tensor; UserError if not.

    Every adapter target must be a tensor of the base (an unmatched name would be a merge that
    changed nothing and a check that compared nothing), and a target's update must be visible at
    the file's bfloat16 precision, else merged and unmerged cannot be told apart: refused when
    that is so for EVERY target (nothing about the merge is shown), named when it is some.
    PaddleFormers stores A as [in, r] and B as [r, out] (Paddle's [in, out] layout); W is in the
    original [out, in] layout, hence the transpose.
    """
    import numpy as np

    from paddle_ocrvl_sft.safetensors_file import read_tensors

    pairs = adapter_pairs(src)
    adapter = {}
    for path in adapter_files(src):
        adapter.update(read_tensors(path))
    base = {name: w for path in base_files for name, w in read_tensors(path).items()}
    unmatched = sorted(t for t in pairs if t not in base)
    if unmatched:
        raise UserError(f"{src}: {len(unmatched)} of {len(pairs)} LoRA target(s) are not tensors of the base model: "
                        + ", ".join(unmatched[:3]) + (" ..." if len(unmatched) > 3 else "")
                        + " — pass the --base the run was trained from")
    merged = read_tensors(merged_file)
    bad, zero, invisible = [], [], []
    compared_targets = compared_others = 0
    for name, w in base.items():
        got = merged.get(name)
        if got is None or got.shape != w.shape:
            bad.append(f"{name}: {'missing' if got is None else f'shape {got.shape} != {w.shape}'}")
            continue
        expected = w.astype(np.float64)
        if name in pairs:
            a, b = (adapter[n].astype(np.float64) for n in pairs[name])
            if a.shape[0] != w.shape[1] or b.shape[1] != w.shape[0] or a.shape[1] != b.shape[0]:
                bad.append(f"{name}: lora_A {a.shape} · lora_B {b.shape} does not fit W {w.shape}")
                continue
            update = scale * (a @ b).T
            if not np.any(update):
                zero.append(name)
            elif np.all(np.abs(update) <= BF16_RELATIVE * np.abs(expected) + 1e-6):  # within W's own rounding
                invisible.append(name)
            expected = expected + update
            compared_targets += 1
        else:
            compared_others += 1
        error = np.abs(got.astype(np.float64) - expected)
        if not np.all(error <= BF16_RELATIVE * np.abs(expected) + 1e-6):  # the merged value's bf16 rounding
            bad.append(f"{name}: differs by up to {float(error.max()):.3g}")
    if bad:
        raise UserError(f"{merged_file}: the LoRA merge is WRONG ({len(bad)} tensor(s); expected W + {scale:g}·(A·B)ᵀ): "
                        + "; ".join(bad[:3]) + (" ..." if len(bad) > 3 else "")
                        + " — is safetensors 0.8 installed in the PaddleFormers environment? (CPU_TRAINING.md A.6)")
    if zero:
        raise UserError(f"{src}: {len(zero)} of {compared_targets} LoRA target(s) have a zero update (lora_A·lora_B == 0: "
                        f"the adapter was not trained there): {', '.join(zero[:3])}" + (" ..." if len(zero) > 3 else "")
                        + "; a merge of it changes nothing and cannot be verified")
    if len(invisible) == compared_targets:
        raise UserError(f"{src}: the update of every LoRA target is below bfloat16 precision ({compared_targets} targets, "
                        f"scale {scale:g}): merged and unmerged weights cannot be told apart, so the merge cannot be verified")
    faint = (f"; {len(invisible)} of the targets with an update below bfloat16 precision ({', '.join(invisible[:2])}"
             f"{' ...' if len(invisible) > 2 else ''})") if invisible else ""
    return (f"verified the LoRA merge: compared {compared_targets} LoRA target tensors == W + {scale:g}·(A·B)ᵀ and "
            f"{compared_others} other tensors == W (to bfloat16 rounding){faint}")
