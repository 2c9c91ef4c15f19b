"""``plan``: from validated datasets and a GPU count to a checked trainer config (ERNIEKit or PaddleFormers).

Every number comes from a small pure function that cites where its formula comes from; the
plan record (``plan.json``) keeps each number with its formula and inputs. Sources:

- ERNIEKit PaddleOCR-VL SFT guide (seeds 000/002) §4: ``max_steps ≈ D·E/(G·B·A)``,
  ``warmup_steps ≈ 1% of max_steps``, ``packing_size`` acts like the batch size,
  ``max_seq_len`` as large as memory allows; §5: the two ways to go from 1 to N GPUs, and
  "≈ 2 hours on one A800-80G" for the reference run (926 steps).
- shared/reference/FACTS.md: how ERNIEKit reads the config, mixes files, drops samples, launches.

The formulas do not depend on the trainer; the backend (``paddle_ocrvl_sft.backends``) says where
their values go (B is ERNIEKit's ``packing_size`` or PaddleFormers' ``per_device_train_batch_size``),
writes the data and model in its own format, and how it is launched.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from paddle_ocrvl_sft import backends, data_dir, releases
from paddle_ocrvl_sft.backends.base import CPU_NOTE, DEVICES, Backend, PlanValues
from paddle_ocrvl_sft.backends.schema import apply_overrides, load_yaml_config, number_or_int
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import atomic_write_text, staged_dir, write_json
from paddle_ocrvl_sft.tokens import PixelBounds

CONFIGS_DIR = data_dir("configs")
KEEP_SAMPLES, SCALE_LR = "keep-samples", "scale-lr"
WARMUP_FRACTION = 0.01
# what a plan dir holds (data/model: prepared inputs; the PaddleFormers template module; the ERNIEKit marker fix)
PLAN_FILES = ("config.yaml", "plan.json", "data", "model", "paddleocr_vl_template.py", "trainer_hooks")

# Keys the plan computes: an override would silently break the formulas, so point at the flag.
PLAN_OWNED_KEYS = {
    "train_dataset_path": "--data",
    "train_dataset_prob": "--prob",
    "train_dataset_type": "--data",
    "eval_dataset_path": "--eval",
    "eval_dataset_prob": "--eval",
    "model_name_or_path": "--model",
    "num_train_epochs": "--epochs",
    "max_steps": "--epochs/--gpus/--packing-size/--grad-accum (it is computed)",
    "warmup_steps": "--epochs/--gpus (it is computed as 1% of max_steps)",
    "learning_rate": "--lr",
    "packing_size": "--packing-size",
    "per_device_train_batch_size": "--batch-size",
    "gradient_accumulation_steps": "--grad-accum",
    "fine_tuning": "--lora",
    "lora": "--lora",
    "lora_rank": "--lora-rank",
    "max_seq_len": "--max-seq-len",
    "min_pixels": "--min-pixels",
    "max_pixels": "--max-pixels",
    "output_dir": "--output-dir",
}


def num(value: Any, formula: str, **inputs: Any) -> dict:
    """One plan number with the formula and the inputs that produced it (for plan.json)."""
    return {"value": value, "formula": formula, "inputs": inputs}


# --- datasets -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSummary:
    """What plan needs from ``data validate`` for one file."""

    path: str
    samples: int  # records read
    valid: int  # samples without errors: what ERNIEKit trains on
    errors: int = 0
    token_lengths: tuple[int, ...] = ()  # one per valid sample: image + text tokens
    tokens_exact: bool = False
    problems: tuple[str, ...] = ()  # the first few, "FILE:LINE: message"
    untrained_tasks: tuple[str, ...] = ()  # "N sample(s): prompt ...": tasks the model's release was never trained on

    @property
    def max_tokens(self) -> int:
        return max(self.token_lengths, default=0)


def summarize_files(paths: Sequence[str | os.PathLike], bounds: PixelBounds, tokenizer_dir=None,
                    release: releases.Release | None = None) -> list[FileSummary]:
    """Validate each file with the data stage (no ``max_seq_len`` cut: plan decides that), counting
    tokens with ``release``'s template markers and noting task prompts it was never trained on."""
    from paddle_ocrvl_sft.data.validate import ValidateOptions, validate_paths

    options = ValidateOptions(max_seq_len=None, bounds=bounds, tokenizer_dir=tokenizer_dir, decode=False, release=release)
    stats = []
    for path in paths:
        untrained: dict[str, int] = {}

        def on_problem(problem, untrained=untrained) -> None:
            if problem.rule == "untrained-task":
                untrained[problem.message] = untrained.get(problem.message, 0) + 1

        report = validate_paths([path], options, on_problem=on_problem)
        stats.append(
            FileSummary(
                path=str(Path(path).resolve()),
                samples=report.samples,
                valid=report.valid,
                errors=report.errors,
                token_lengths=tuple(report.token_lengths),
                tokens_exact=report.tokens_exact,
                problems=tuple(f"{p.path}:{p.line}: {p.message}" for p in report.problems if p.severity == "error")[:5],
                untrained_tasks=tuple(f"{n} sample(s): {message}" for message, n in untrained.items()),
            )
        )
    return stats


def normalize_probs(probs: Sequence[float] | None, n_files: int) -> list[float]:
    """ERNIEKit divides each ``train_dataset_prob`` weight by their sum (vl_sft_dataset_json.py)."""
    weights = [1.0] * n_files if not probs else [float(p) for p in probs]
    if len(weights) != n_files:
        raise UserError(f"--prob: {len(weights)} weight(s) for {n_files} --data file(s); give one per file")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"--prob: weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def dataset_size(loaded: Sequence[int], kept: Sequence[int], probs: Sequence[float]) -> tuple[int, dict]:
    """D, the samples one "epoch" trains when ERNIEKit mixes several files.

    ERNIEKit's reader (``SFTMultimodalDatasetJson.gen_sample_list``/``__iter__``) builds each
    cycle from ``int(p_i · N)`` draws of file i, where N = Σ n_i is the number of records loaded
    from all files, and takes the next record of file i at each draw (restarting the file when
    it runs out). A drawn record that is invalid or too long is skipped by the dataloader, so
    file i trains ``p_i · N · kept_i / n_i`` samples per cycle and D is their sum. With one
    file D is just its number of kept samples; file i is read ``p_i · N / n_i`` times per cycle.
    """
    if not (len(loaded) == len(kept) == len(probs)):
        raise ValueError("one count and one probability per file")
    total = sum(loaded)
    trained = [p * total * k / n if n else 0.0 for p, n, k in zip(probs, loaded, kept)]
    d = round(sum(trained))
    if d <= 0:
        raise UserError(
            "D = 0 trainable samples: every sample is invalid or too long (ERNIEKit's loader would loop forever); "
            "run `paddle-ocrvl-sft data validate` on the --data files"
        )
    return d, num(d, "D = round(sum_i p_i * N * kept_i / n_i), N = sum_i n_i", n_i=list(loaded), kept_i=list(kept),
                  p_i=[round(p, 6) for p in probs])


def passes_per_epoch(loaded: Sequence[int], probs: Sequence[float]) -> list[float]:
    """How many times each file is read per cycle: p_i · N / n_i (see :func:`dataset_size`)."""
    total = sum(loaded)
    return [p * total / n if n else 0.0 for p, n in zip(probs, loaded)]


# --- mixing in replay (or any dataset) at a fixed share ---------------------------------------

SMALL_TASK_DATA = 2000  # below this many task samples and no replay, plan warns (ERNIE #1396, #1440)
REPLAY_WARNING = (
    "{n} task samples and no replay data: fine-tunes this small tend to forget what the base model did well "
    "(general OCR, tables) while they learn the task — the most reported PaddleOCR-VL fine-tune complaint "
    "(ERNIE issues #1396, #1440, where the maintainers advise mixing tasks and far more data). Write the base "
    "model's own answers on your pages with `data replay --model BASE --images DIR -o replay.jsonl` and mix them "
    "in with --replay replay.jsonl --replay-ratio 0.2; check with `eval --general PAGES` (docs/eval.md)")


def parse_data_spec(text: str) -> tuple[str, float | None]:
    """``--data FILE`` or ``--data FILE:RATIO`` (RATIO in (0, 1): FILE's share of the samples trained).
    An existing file named with a colon is taken as it is."""
    path, sep, ratio = text.rpartition(":")
    if not sep or Path(text).is_file():
        return text, None
    try:
        value = float(ratio)
    except ValueError:
        return text, None
    if not (math.isfinite(value) and 0 < value < 1):
        raise UserError(f"--data {text}: the share after ':' must be between 0 and 1 (e.g. replay.jsonl:0.2), got {ratio}")
    return path, value


def _absolute(location: str) -> str:
    from paddle_ocrvl_sft.data.sample import is_remote

    return location if is_remote(location) else os.path.abspath(location)


@dataclass(frozen=True)
class Mix:
    """How the training files are mixed: D, ERNIEKit's weights, or the samples a concatenating
    trainer takes from each share file, and each file's expected passes over E epochs."""

    d: int
    d_record: dict
    probs: list[float]  # normalized weights (ERNIEKit train_dataset_prob)
    take: list[int | None]  # concatenating trainers: samples taken from each share file per epoch
    shares: list[float]  # each file's expected share of the samples trained
    passes: list[float]  # expected reads of each file per epoch (times E: over the run)


def mix_datasets(loaded: Sequence[int], kept: Sequence[int], probs: Sequence[float] | None,
                 ratios: Sequence[float | None], *, weighted: bool) -> Mix:
    """D and the weights when some files carry a fixed share (``--data FILE:R``, ``--replay``).

    The files without a share are the task data: D_task and their weights are what
    :func:`dataset_size` gives for them alone, and ``--epochs`` counts passes over them. Share
    files add R = Σ r_i of the samples trained: D = D_task / (1 − R), file i trains r_i·D per epoch.
    ``weighted`` (ERNIEKit): a file's weight p_i ∝ s_i · n_i / kept_i gives it the share s_i of
    the samples trained (a draw of an invalid record is skipped; :func:`dataset_size`); otherwise
    (PaddleFormers concatenates files) a share file contributes k_i = round(r_i · D) samples per
    epoch, resampled from it by ``write_plan``, and D = D_task + Σ k_i.
    """
    if not any(r is not None for r in ratios):
        weights = normalize_probs(probs, len(loaded))
        d, record = dataset_size(loaded, kept, weights)
        total = sum(loaded)
        shares = [w * total * k / n / d if n and d else 0.0 for w, n, k in zip(weights, loaded, kept)]
        return Mix(d, record, weights, [None] * len(loaded), shares, passes_per_epoch(loaded, weights))
    if probs:
        raise UserError("--prob with FILE:RATIO/--replay: give the mix one way (a share per replay file, or --prob weights)")
    task = [i for i, r in enumerate(ratios) if r is None]
    if not task:
        raise UserError("every --data file has a share (FILE:RATIO): at least one is the task data, without a share")
    r_total = sum(r for r in ratios if r is not None)
    if r_total >= 1:
        raise UserError(f"the shares of the replay/mixed files add up to {r_total:g}: they must leave room for the task data (< 1)")
    task_weights = normalize_probs(None, len(task))
    if weighted:
        d_task, _ = dataset_size([loaded[i] for i in task], [kept[i] for i in task], task_weights)
    else:
        d_task = sum(kept[i] for i in task)
        if d_task <= 0:
            dataset_size([loaded[i] for i in task], [kept[i] for i in task], task_weights)  # raises the D = 0 error
    for i, r in enumerate(ratios):
        if r is not None and kept[i] == 0:
            raise UserError(f"file {i + 1} of --data (share {r:g}): no valid sample to mix in")
    n_task = sum(loaded[i] for i in task)
    trained_task = {i: w * n_task * kept[i] / loaded[i] if loaded[i] else 0.0 for i, w in zip(task, task_weights)}
    task_sum = sum(trained_task.values())
    shares = [(1 - r_total) * trained_task[i] / task_sum if r is None else r for i, r in enumerate(ratios)]
    if weighted:
        d = round(d_task / (1 - r_total))
        raw = [s * n / k if k else 0.0 for s, n, k in zip(shares, loaded, kept)]
        weights = [w / sum(raw) for w in raw]
        take = [None] * len(loaded)
        passes = [s * d / k if k else 0.0 for s, k in zip(shares, kept)]
        formula = "D = round(D_task / (1 - R)), R = sum of the shares; p_i ∝ s_i * n_i / kept_i"
    else:
        take = [None if r is None else max(1, round(r * d_task / (1 - r_total))) for r in ratios]
        contributed = [kept[i] if t is None else t for i, t in enumerate(take)]
        d = sum(contributed)
        weights = normalize_probs(None, len(loaded))
        shares = [c / d for c in contributed]
        passes = [1.0 if t is None else t / kept[i] for i, t in enumerate(take)]
        formula = "D = D_task + sum_i k_i, D_task = sum of the task files' kept samples, k_i = round(r_i * D_task / (1 - R))"
    record = num(d, formula, D_task=d_task, R=round(r_total, 6), shares=[None if r is None else r for r in ratios],
                 n_i=list(loaded), kept_i=list(kept), **({"p_i": [round(w, 6) for w in weights]} if weighted else
                                                          {"k_i": take}))
    return Mix(d, record, weights, take, shares, passes)


def resample(path: str | os.PathLike, count: int, dest: Path, seed: int = 0) -> int:
    """``count`` valid samples of an ERNIEKit file written to ``dest`` (all of them, then a seeded draw
    of the rest, repeated when the file has fewer), image paths made absolute: what a concatenating
    trainer reads to give the file its share."""
    import json
    import random

    from paddle_ocrvl_sft.data.sample import image_location
    from paddle_ocrvl_sft.data.validate import ValidateOptions, validate_paths
    from paddle_ocrvl_sft.io import iter_records

    report = validate_paths([path], ValidateOptions(max_seq_len=None, decode=False))
    bad = {p.line for p in report.problems if p.severity == "error"}
    rows = [r.value for r in iter_records(path) if r.error is None and r.line not in bad]
    rng = random.Random(seed)
    order = []
    while len(order) < count:
        batch = list(range(len(rows)))
        rng.shuffle(batch)
        order += batch
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest, "w", encoding="utf-8") as fh:
        for i in order[:count]:
            sample = dict(rows[i])
            sample["image_info"] = [{**info, "image_url": _absolute(image_location(info["image_url"], path))}
                                    for info in sample["image_info"]]
            fh.write(json.dumps(sample, ensure_ascii=False) + "\n")
    return count


# --- the guide's formulas -------------------------------------------------------------------


def max_steps(d: int, epochs: float, gpus: int, packing_size: int, grad_accum: int) -> int:
    """Guide §4: ``max_steps ≈ D·E/(G·B·A)``, rounded up (29605·2/(1·8·8) = 925.2 -> 926)."""
    for name, value in (("D", d), ("E (--epochs)", epochs), ("G (--gpus)", gpus), ("B (packing_size)", packing_size), ("A (gradient_accumulation_steps)", grad_accum)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise UserError(f"{name} must be > 0, got {value}")
    return math.ceil(d * epochs / (gpus * packing_size * grad_accum))


def warmup_steps(steps: int) -> int:
    """Guide §4: warmup ≈ 1% of max_steps; rounded UP, which reproduces the guide's 10 for 926
    steps (0.01·926 = 9.26) and seed 001's 1 for 80 steps. At least one step."""
    return max(1, math.ceil(WARMUP_FRACTION * steps - 1e-9))


def keep_samples_split(n: int, packing_size: int, grad_accum: int) -> tuple[int, int]:
    """Guide §5, going from 1 to N GPUs keeping G·B·A: divide packing_size by x and
    gradient_accumulation_steps by y with x·y = N. Both must divide exactly; y is taken as
    large as possible (fewer accumulation steps shorten each step; packs stay the same size)."""
    for y in sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True):
        x = n // y
        if grad_accum % y == 0 and packing_size % x == 0:
            return x, y
    raise UserError(
        f"keep-samples: cannot split N = {n} into x·y with x dividing packing_size={packing_size} and "
        f"y dividing gradient_accumulation_steps={grad_accum}; use --scale scale-lr or other --packing-size/--grad-accum"
    )


@dataclass(frozen=True)
class Batch:
    packing_size: int
    grad_accum: int
    learning_rate: float


def scale_to_gpus(base: Batch, base_gpus: int, gpus: int, strategy: str | None) -> tuple[Batch, dict]:
    """Adapt a batch set for ``base_gpus`` GPUs to ``gpus`` GPUs (guide §5).

    keep-samples keeps G·B·A (and the learning rate): B/x, A/y with x·y = N = gpus/base_gpus; going
    DOWN by M = base_gpus/gpus multiplies A by M. scale-lr keeps B and A and multiplies the
    learning rate by gpus/base_gpus (samples per step grow by the same factor).
    """
    strategy = strategy or KEEP_SAMPLES
    if strategy not in (KEEP_SAMPLES, SCALE_LR):
        raise UserError(f"--scale: expected {KEEP_SAMPLES} or {SCALE_LR}, got {strategy!r}")
    record = {"strategy": strategy, "from_gpus": base_gpus, "to_gpus": gpus}
    same = {"B": "B = B_base", "A": "A = A_base", "lr": "lr = lr_base"}
    if gpus == base_gpus:
        return base, {**record, "formulas": same, "note": "no scaling: G equals the base GPU count"}
    if strategy == SCALE_LR:
        factor = gpus / base_gpus
        return (Batch(base.packing_size, base.grad_accum, base.learning_rate * factor),
                {**record, "factor": factor, "formulas": {**same, "lr": "lr = lr_base * G/G_base"}})
    if gpus > base_gpus:
        if gpus % base_gpus:
            raise UserError(f"keep-samples: G={gpus} is not a multiple of the base {base_gpus} GPU(s); use --scale scale-lr or --base-gpus")
        x, y = keep_samples_split(gpus // base_gpus, base.packing_size, base.grad_accum)
        formulas = {**same, "B": "B = B_base / x  (x*y = G/G_base)", "A": "A = A_base / y  (x*y = G/G_base)"}
        return Batch(base.packing_size // x, base.grad_accum // y, base.learning_rate), {**record, "x": x, "y": y, "formulas": formulas}
    if base_gpus % gpus:
        raise UserError(f"keep-samples: the base {base_gpus} GPU(s) is not a multiple of G={gpus}; use --scale scale-lr or --base-gpus")
    m = base_gpus // gpus
    return (Batch(base.packing_size, base.grad_accum * m, base.learning_rate),
            {**record, "factor": m, "formulas": {**same, "A": "A = A_base * G_base/G"}})


# --- token-aware choices --------------------------------------------------------------------


def too_long(lengths: Sequence[int], max_seq_len: int) -> int:
    """Samples ERNIEKit drops at this ``max_seq_len`` (FACTS "Dataset reader": longer than it)."""
    return sum(1 for n in lengths if n > max_seq_len)


def check_max_seq_len(lengths: Sequence[int], max_seq_len: int, allow_drop: bool) -> int:
    """Refuse a ``max_seq_len`` below the longest sample unless dropping was asked for."""
    if max_seq_len <= 0:
        raise UserError(f"--max-seq-len must be > 0, got {max_seq_len}")
    dropped = too_long(lengths, max_seq_len)
    if dropped and not allow_drop:
        longest = max(lengths)
        suggest = math.ceil(longest / 1024) * 1024
        raise UserError(
            f"max_seq_len={max_seq_len} is below the longest sample ({longest} tokens): ERNIEKit would drop "
            f"{dropped} of {len(lengths)} sample(s); use --max-seq-len {suggest} or --allow-drop"
        )
    return dropped


@dataclass(frozen=True)
class Packing:
    packs: int
    mean_samples: float  # samples per packed sequence
    mean_tokens: float  # tokens per packed sequence
    max_tokens: int


def simulate_packing(lengths: Sequence[int], packing_size: int, max_seq_len: int) -> Packing:
    """Greedy packing in stream order: a pack closes at ``packing_size`` samples or before
    ``max_seq_len`` tokens would be exceeded (FACTS "batch_size ..."). An estimate of ERNIEKit's
    packer, which sees a shuffled stream; too-long samples are skipped as ERNIEKit drops them."""
    packs, count, tokens, total_samples, total_tokens, biggest = 0, 0, 0, 0, 0, 0
    for n in lengths:
        if n > max_seq_len:
            continue
        if count == packing_size or tokens + n > max_seq_len:
            packs, biggest = packs + 1, max(biggest, tokens)
            count, tokens = 0, 0
        count, tokens = count + 1, tokens + n
        total_samples, total_tokens = total_samples + 1, total_tokens + n
    if count:
        packs, biggest = packs + 1, max(biggest, tokens)
    if not packs:
        return Packing(0, 0.0, 0.0, 0)
    return Packing(packs, total_samples / packs, total_tokens / packs, biggest)


# --- estimates (clearly labelled; ERNIEKit cannot run here) -----------------------------------

PARAMS = 0.96e9  # PaddleOCR-VL 0.9B (all releases): ~0.47B ERNIE-4.5-0.3B LM (untied 103424-word head) + ~0.43B SigLIP + projector
BYTES_PER_PARAM_REPLICATED = 4  # bf16 weights + bf16 grads
BYTES_PER_PARAM_SHARDABLE = 12  # fp32 master weights + Adam m and v (split by sharding_parallel_degree)
OVERHEAD_GB = 4.0  # CUDA context, kernel workspaces, allocator slack
MB_PER_TOKEN = 1.5  # logits fp32+bf16 and their grad over 103424 words (~1.0 MB) + recompute checkpoints
REF_STEPS, REF_HOURS = 926, 2.0  # guide §5: "≈ 2 hours on a single A800-80G"
REF_SAMPLES_PER_STEP = 64  # guide reference: G·B·A = 1·8·8
REF_TOKENS_PER_SAMPLE = 300  # ASSUMED: Bengali line crops, >= 188 image tokens (min_pixels) + ~100 text tokens
REF_TOKENS_PER_SECOND = REF_STEPS * REF_SAMPLES_PER_STEP * REF_TOKENS_PER_SAMPLE / (REF_HOURS * 3600)

ESTIMATE_ASSUMPTIONS = (
    "ESTIMATE, not a measurement: ERNIEKit training was not run to produce these numbers.",
    f"parameters ≈ {PARAMS / 1e9:.2f}B; full fine-tuning keeps bf16 weights+grads ({BYTES_PER_PARAM_REPLICATED} B/param) on every GPU "
    f"and fp32 master weights + Adam moments ({BYTES_PER_PARAM_SHARDABLE} B/param) split over sharding_parallel_degree",
    f"+ {OVERHEAD_GB:g} GB CUDA context/workspace + {MB_PER_TOKEN:g} MB per token of the largest packed sequence "
    "(logits over the 103424-word vocabulary dominate; recompute on)",
    f"speed calibrated on the guide's ≈ {REF_HOURS:g} h for {REF_STEPS} steps of {REF_SAMPLES_PER_STEP} samples on 1×A800-80G, "
    f"assuming ≈ {REF_TOKENS_PER_SAMPLE} tokens per Bengali sample -> ≈ {REF_TOKENS_PER_SECOND:.0f} tokens/s per A800/A100-class GPU",
    "time per step ∝ tokens per GPU per step (A packed sequences × mean tokens per pack); data parallel GPUs work in "
    "parallel; gradient all-reduce, data loading stalls and checkpoint saves are not counted (multi-node adds more)",
    "cross-check: PaddleFormers reports 30 GB for full fine-tuning on the same Bengali task (FACTS, published numbers)",
)


def estimate_memory_gb(peak_pack_tokens: int, sharding_degree: int = 1) -> dict:
    """Per-GPU memory estimate for one packed sequence of ``peak_pack_tokens`` tokens."""
    shards = max(1, sharding_degree)
    static = PARAMS * (BYTES_PER_PARAM_REPLICATED + BYTES_PER_PARAM_SHARDABLE / shards) / 1e9
    activations = peak_pack_tokens * MB_PER_TOKEN / 1e3
    total = static + OVERHEAD_GB + activations
    return num(
        round(total, 1),
        "P*(4 + 12/shards)/1e9 + overhead + tokens*MB_per_token/1e3",
        P=PARAMS, shards=shards, overhead_gb=OVERHEAD_GB, tokens=peak_pack_tokens, MB_per_token=MB_PER_TOKEN,
    )


def estimate_step_seconds(grad_accum: int, mean_pack_tokens: float) -> dict:
    """Seconds per optimizer step on an A800/A100-class GPU, calibrated on the guide."""
    seconds = grad_accum * mean_pack_tokens / REF_TOKENS_PER_SECOND
    return num(round(seconds, 2), "A * mean_pack_tokens / ref_tokens_per_s", A=grad_accum,
               mean_pack_tokens=round(mean_pack_tokens, 1), ref_tokens_per_s=round(REF_TOKENS_PER_SECOND, 1))


# --- model dir and presets -------------------------------------------------------------------


def model_bounds(model_dir: str | os.PathLike, min_pixels: int | None = None, max_pixels: int | None = None) -> PixelBounds:
    """Check the base model dir (ERNIEKit reads its preprocessor_config.json directly) and return
    the pixel bounds images are resized into, with --min-pixels/--max-pixels applied."""
    path = Path(model_dir)
    if not path.is_dir():
        raise UserError(f"--model {path}: no such directory (model_name_or_path must be a LOCAL model dir)")
    bounds = PixelBounds.from_model_dir(path)
    lo = bounds.min_pixels if min_pixels is None else min_pixels
    hi = bounds.max_pixels if max_pixels is None else max_pixels
    if lo < 28 * 28 or hi < lo:
        raise UserError(f"--min-pixels/--max-pixels: need 784 <= min_pixels <= max_pixels, got {lo} and {hi}")
    return PixelBounds(lo, hi)


def preset_path(name: str) -> Path:
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        return Path(name)
    path = CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))
        raise UserError(f"--preset {name}: unknown preset (known: {', '.join(known) or 'none'}; or give a .yaml path)")
    return path


def load_preset(name: str, backend: Backend) -> tuple[dict, Path]:
    """A preset (or any YAML of that trainer) checked against the backend's schema."""
    path = preset_path(name)
    return backend.schema.validate(load_yaml_config(path), where=str(path)), path


def preset_base_gpus(preset_file: Path, backend: Backend) -> int:
    """The GPU count a bundled preset's batch values were set for (1 for a user's YAML)."""
    return backend.presets.get(preset_file.stem, 1) if preset_file.parent == CONFIGS_DIR else 1


# --- the plan --------------------------------------------------------------------------------


@dataclass
class Plan:
    config: dict
    record: dict
    warnings: list[str] = field(default_factory=list)
    backend: str = backends.DEFAULT
    values: PlanValues | None = None  # what the backend's prepare() turns into trainer inputs
    device: str = "gpu"
    take: tuple[int | None, ...] = ()  # concatenating trainers: samples resampled from each share file


def check_overrides(overrides: dict) -> None:
    """Keys the plan computes are refused as key=value overrides (each names the flag to use)."""
    owned = [f"{k} (use {PLAN_OWNED_KEYS[k]})" for k in overrides if k in PLAN_OWNED_KEYS]
    if owned:
        raise UserError("these keys are computed by plan, not overridable with key=value: " + "; ".join(owned))


def check_options(*, epochs: float, batch: int | None, grad_accum: int | None, base_gpus: int | None,
                  learning_rate: float | None, device: str, gpus: int, nodes: int) -> None:
    """Bad numbers are refused before any data is read."""
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise UserError(f"--epochs must be > 0, got {epochs}")
    for flag, value in (("--packing-size/--batch-size", batch), ("--grad-accum", grad_accum), ("--base-gpus", base_gpus)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be >= 1, got {value}")
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise UserError(f"--lr must be > 0, got {learning_rate}")
    if device not in DEVICES:
        raise UserError(f"--device {device}: choose {' or '.join(DEVICES)}")
    if device == "cpu" and (gpus != 1 or nodes != 1):
        raise UserError("--device cpu trains in one process: leave out --gpus/--nodes (or give 1)")


def choose_batch(base: dict, backend: Backend, device: str, g: int, g_base: int, scale: str | None,
                 batch: int | None, grad_accum: int | None, learning_rate: float | None) -> tuple[Batch, Batch, dict]:
    """(B, A, lr) for the preset's base GPU count, then scaled to G GPUs (guide §4-5).

    On a CPU the defaults are one sample per step (B = A = 1): tiny models, short runs.
    """
    default_b, default_a = (1, 1) if device == "cpu" else (base[backend.batch_key], base["gradient_accumulation_steps"])
    base_batch = Batch(batch or default_b, grad_accum or default_a,
                       float(learning_rate if learning_rate is not None else base["learning_rate"]))
    scaled, scaling = scale_to_gpus(base_batch, g_base, g, scale)
    return base_batch, scaled, scaling


def make_plan(
    *,
    train: Sequence[FileSummary],
    model_dir: str | os.PathLike,
    epochs: float,
    plan_dir: str | os.PathLike,
    gpus: int = 1,
    nodes: int = 1,
    backend: str = backends.DEFAULT,
    device: str = "gpu",
    lora: bool = False,
    lora_rank: int | None = None,
    probs: Sequence[float] | None = None,
    eval_sets: Sequence[FileSummary] = (),
    preset: str | None = None,
    base_gpus: int | None = None,
    scale: str | None = None,
    batch: int | None = None,
    grad_accum: int | None = None,
    learning_rate: float | None = None,
    max_seq_len: int | None = None,
    allow_drop: bool = False,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    output_dir: str | os.PathLike | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    cuda_visible_devices: str | None = None,
    overrides: dict | None = None,
    release: releases.Detection | str | None = None,
    augment: str | None = None,
    ratios: Sequence[float | None] | None = None,
    general: dict | None = None,
) -> Plan:
    """The config dict and the plan record; raises :class:`UserError` on any bad input.

    ``release``: the base model's release as detected (``releases.detect``), or ``--release``
    (a name, or None: detected here from ``model_dir``'s files). It is recorded in plan.json as
    ``"release": {"name", "evidence", "notes", "given"}``; ``train``'s token lengths should be counted
    for the same release (``summarize_files(..., release=...)``).
    ``augment``: ``plan --augment`` (None: the trainer's recommended choice, paddle_ocrvl_sft/augment.py).
    """
    from paddle_ocrvl_sft import augment as augmentation

    trainer = backends.get(backend)
    # a key the trainer does not read is moved to the one it reads (noted) or refused: never written silently
    overrides, override_notes = trainer.schema.effective_overrides(dict(overrides or {}))
    check_overrides(overrides)
    check_options(epochs=epochs, batch=batch, grad_accum=grad_accum, base_gpus=base_gpus, learning_rate=learning_rate,
                  device=device, gpus=gpus, nodes=nodes)
    trainer.check_options(probs=probs, lora=lora, lora_rank=lora_rank)
    augment, augment_record = augmentation.choose(backend, augment)
    if lora_rank is not None and lora_rank < 1:
        raise UserError(f"--lora-rank must be >= 1, got {lora_rank}")
    plan_dir = Path(plan_dir).resolve()
    bounds = model_bounds(model_dir, min_pixels, max_pixels)
    detection = release if isinstance(release, releases.Detection) else releases.detect(model_dir, release)
    config_path = plan_dir / "config.yaml"
    launch = trainer.launch(plan_dir, config_path, device, gpus_per_node=gpus, nodes=nodes, master_addr=master_addr,
                            master_port=master_port, cuda_visible_devices=cuda_visible_devices)
    launch["env"].update(trainer.release_env(plan_dir, detection.release.name))
    preset = preset or trainer.default_preset(lora)
    base, preset_file = load_preset(preset, trainer)
    if device == "cpu":
        base = apply_overrides(base, trainer.cpu_keys)
    g_base = base_gpus or preset_base_gpus(preset_file, trainer)
    warnings: list[str] = [f"release {detection.release.name}: {note}" for note in detection.notes]
    warnings += [f"{s.path}: {note}" for s in train for note in s.untrained_tasks]

    g = gpus * nodes
    base_batch, batch_set, scaling = choose_batch(base, trainer, device, g, g_base, scale, batch, grad_accum, learning_rate)

    # max_seq_len: >= the longest sample unless dropping is allowed
    seq_len = base["max_seq_len"] if max_seq_len is None else max_seq_len
    all_lengths = [n for s in train for n in s.token_lengths]
    dropped = check_max_seq_len(all_lengths, seq_len, allow_drop)
    if dropped:
        warnings.append(f"--allow-drop: {trainer.title} will drop {dropped} sample(s) longer than max_seq_len={seq_len}")

    # D (several files: ERNIEKit's weighted draws of whole files; PaddleFormers concatenates: equal weights;
    # files with a share (replay) are mixed in at that share: mix_datasets)
    kept = [s.valid - too_long(s.token_lengths, seq_len) for s in train]
    loaded = [s.samples for s in train]
    ratios = list(ratios) if ratios else [None] * len(train)
    if len(ratios) != len(train):
        raise ValueError("one ratio (or None) per training file")
    mix = mix_datasets(loaded, kept, probs, ratios, weighted=weighted_mixing(trainer))
    d, d_record, weights = mix.d, mix.d_record, mix.probs
    steps = max_steps(d, epochs, g, batch_set.packing_size, batch_set.grad_accum)
    warmup = warmup_steps(steps)

    warnings += data_warnings(train, eval_sets, trainer)
    task_samples = sum(s.valid for s, r in zip(train, ratios) if r is None)
    if task_samples < SMALL_TASK_DATA and all(r is None for r in ratios):
        warnings.append(REPLAY_WARNING.format(n=task_samples))
    packing = simulate_packing(all_lengths, batch_set.packing_size, seq_len)
    warnings += packing_warning(packing, trainer, batch_set, d, epochs, g, steps)

    values = PlanValues(
        train=tuple(s.path for s in train), eval=tuple(s.path for s in eval_sets),
        probs=tuple(probs) if probs else (tuple(weights) if any(r is not None for r in ratios) and weighted_mixing(trainer) else None),
        model_dir=str(Path(model_dir).resolve()), epochs=epochs, max_steps=steps, warmup_steps=warmup,
        learning_rate=batch_set.learning_rate, batch=batch_set.packing_size, grad_accum=batch_set.grad_accum,
        max_seq_len=seq_len, output_dir=str(Path(output_dir).resolve() if output_dir else plan_dir / "output"),
        logging_dir=str(plan_dir / "tensorboard_logs"),
        pixel_bounds=(bounds.min_pixels, bounds.max_pixels) if (min_pixels is not None or max_pixels is not None) else None,
        lora_rank=(lora_rank or base.get("lora_rank", 8)) if lora else None,
        release=detection.release.name, augment=augment,
    )
    if values.pixel_bounds:
        warnings.append(trainer.pixel_bounds_note)
    config = trainer.render_config(base, values, trainer.prepared_paths(plan_dir, values))
    config = apply_overrides(config, overrides)
    trainer.schema.validate(config, where="generated config")
    problems = trainer.device_problems(config, device)
    if problems:
        raise UserError("\n".join(problems))
    warnings += override_notes
    if config.get("save_strategy") == "steps" and config.get("save_steps", 0) > steps:
        warnings.append(f"save_steps={config['save_steps']} > max_steps={steps}: no intermediate checkpoint will be saved")
    out_dir = Path(values.output_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        warnings.append(f"output_dir {out_dir} is not empty: `train` refuses it without --resume or --force")
    if device == "cpu":
        warnings.append(CPU_NOTE)

    samples_per_step = g * batch_set.packing_size * batch_set.grad_accum
    b_name = f"{trainer.batch_key} (B)"
    numbers = {
        "D": d_record,
        "E": num(number_or_int(epochs), "--epochs"),
        "G": num(g, "G = gpus_per_node * nodes" if device == "gpu" else "one CPU process", gpus_per_node=gpus, nodes=nodes),
        b_name: num(batch_set.packing_size, scaling["formulas"]["B"], B_base=base_batch.packing_size, **_pick(scaling, "x")),
        "gradient_accumulation_steps": num(batch_set.grad_accum, scaling["formulas"]["A"], A_base=base_batch.grad_accum,
                                           **_pick(scaling, "y", "factor")),
        "learning_rate": num(batch_set.learning_rate, scaling["formulas"]["lr"], lr_base=base_batch.learning_rate, G=g, G_base=g_base),
        "samples_per_step": num(samples_per_step, "G * B * A", G=g, B=batch_set.packing_size, A=batch_set.grad_accum),
        "max_steps": num(steps, "ceil(D * E / (G * B * A))", D=d, E=epochs, G=g, B=batch_set.packing_size, A=batch_set.grad_accum),
        "warmup_steps": num(warmup, "max(1, ceil(0.01 * max_steps))", max_steps=steps),
        "max_seq_len": num(seq_len, ">= longest sample unless --allow-drop", longest_sample=max(all_lengths, default=0),
                           dropped=dropped, given=max_seq_len, preset=base["max_seq_len"]),
        "min_pixels": num(bounds.min_pixels, "--min-pixels or the model's preprocessor_config.json"),
        "max_pixels": num(bounds.max_pixels, "--max-pixels or the model's preprocessor_config.json"),
    }
    if values.lora_rank:
        numbers["lora_rank"] = num(values.lora_rank, "--lora-rank or the preset's")
    record = {
        "tool": "paddle-ocrvl-sft plan",
        "plan_version": 2,
        "backend": backend,
        "device": device,
        "model": values.model_dir,  # the base model as given (export fills from it; eval's baseline)
        "release": detection.to_record(),  # what the base model is (releases.py): other stages read ["release"]["name"]
        "preset": {"name": preset, "path": str(preset_file), "base_gpus": g_base},
        "scaling": scaling,
        "datasets": datasets_record(train, eval_sets, kept, weights, epochs, mix=mix, ratios=ratios),
        "numbers": numbers,
        "packing": {"mean_samples_per_pack": round(packing.mean_samples, 3), "mean_tokens_per_pack": round(packing.mean_tokens, 1),
                    "max_tokens_per_pack": packing.max_tokens, "note": "greedy packing of the valid samples in file order (estimate)"},
        "estimates": gpu_estimates(packing, seq_len, batch_set, steps, overrides, base) if device == "gpu" else
                     {"label": "ESTIMATE", "note": "CPU run: no GPU estimates (" + CPU_NOTE + ")"},
        "warnings": warnings,
        "overrides": overrides,
        "augment": augment_record,
        "train": launch,
        "config": str(config_path),
        "prepared": [],
    }
    if general:
        record["general"] = general  # train's verdict: drift on these pages (eval --general)
    return Plan(config, record, warnings, backend, values, device, take=tuple(mix.take))


def weighted_mixing(trainer: Backend) -> bool:
    """Whether the trainer mixes files by weight (ERNIEKit's train_dataset_prob) rather than
    concatenating them (PaddleFormers' mix_strategy concat, the only one its key table allows)."""
    return trainer.name == "erniekit"


def data_warnings(train: Sequence[FileSummary], eval_sets: Sequence[FileSummary], trainer: Backend) -> list[str]:
    out = [f"{s.path}: {s.errors} error(s) ({s.samples - s.valid} sample(s) not counted in D: {trainer.title} drops them); "
           "run `paddle-ocrvl-sft data validate`" for s in train if s.errors]
    return out + [f"{s.path}: the eval file has no valid sample" for s in eval_sets if s.valid == 0]


def packing_warning(packing: Packing, trainer: Backend, batch_set: Batch, d: int, epochs: float, g: int, steps: int) -> list[str]:
    """When max_seq_len fills packs before B samples do, max_steps covers fewer epochs than asked."""
    if not (packing.packs and packing.mean_samples < 0.95 * batch_set.packing_size):
        return []
    steps_tokens = math.ceil(d * epochs / (g * packing.mean_samples * batch_set.grad_accum))
    return [f"packs hold ≈ {packing.mean_samples:.2f} samples, not {trainer.batch_key}={batch_set.packing_size} (max_seq_len "
            f"fills first): {steps} steps cover ≈ {epochs * packing.mean_samples / batch_set.packing_size:.2f} epochs; "
            f"≈ {steps_tokens} steps would cover {epochs:g}"]


def datasets_record(train: Sequence[FileSummary], eval_sets: Sequence[FileSummary], kept: Sequence[int],
                    weights: Sequence[float], epochs: float, mix: Mix | None = None,
                    ratios: Sequence[float | None] | None = None) -> dict:
    loaded = [s.samples for s in train]
    passes = mix.passes if mix else passes_per_epoch(loaded, weights)
    ratios = ratios or [None] * len(train)
    rows = []
    for i, (s, k, w, p) in enumerate(zip(train, kept, weights, passes)):
        row = {"path": s.path, "samples": s.samples, "valid": s.valid, "errors": s.errors, "kept": k,
               "dropped_too_long": s.valid - k, "longest_tokens": s.max_tokens, "prob": round(w, 6),
               "expected_passes": round(epochs * p, 3)}
        if mix is not None and any(r is not None for r in ratios):
            row.update(share=round(mix.shares[i], 6), ratio=ratios[i])
            if mix.take[i] is not None:
                row["samples_per_epoch"] = mix.take[i]
        rows.append(row)
    return {
        "train": rows,
        "eval": [{"path": s.path, "samples": s.samples, "valid": s.valid, "errors": s.errors} for s in eval_sets],
        "tokens_exact": all(s.tokens_exact for s in train),
    }


def gpu_estimates(packing: Packing, seq_len: int, batch_set: Batch, steps: int, overrides: dict, base: dict) -> dict:
    sharding = max(1, int(overrides.get("sharding_parallel_degree", base.get("sharding_parallel_degree", 1)) or 1))
    memory = estimate_memory_gb(packing.max_tokens or seq_len, sharding)
    per_step = estimate_step_seconds(batch_set.grad_accum, packing.mean_tokens)
    hours = round(steps * per_step["value"] / 3600, 2)
    return {
        "label": "ESTIMATE",
        "gpu_memory_gb_per_gpu": memory,
        "seconds_per_step": per_step,
        "total_hours": num(hours, "max_steps * seconds_per_step / 3600", max_steps=steps, seconds_per_step=per_step["value"]),
        "assumptions": list(ESTIMATE_ASSUMPTIONS),
    }


def _pick(scaling: dict, *keys: str) -> dict:
    return {k: scaling[k] for k in keys if k in scaling}


def _resampled_shares(plan: Plan, stage: Path) -> tuple[PlanValues, list[str]]:
    """For a concatenating trainer, each share file resampled to its k_i samples in the plan dir
    (``data/share<i>/<name>``: same file name, so the trainer's prepared names do not change)."""
    import dataclasses

    if not any(plan.take):
        return plan.values, []
    train, notes = list(plan.values.train), []
    for i, count in enumerate(plan.take):
        if count:
            copy = stage / "data" / f"share{i}" / Path(train[i]).name
            resample(train[i], count, copy)
            notes.append(f"data: {train[i]} -> data/share{i}/{copy.name} ({count} samples per epoch, drawn with a "
                         "fixed seed: its share of the concatenated data)")
            train[i] = str(copy)
    return dataclasses.replace(plan.values, train=tuple(train)), notes


def write_plan(plan: Plan, out_dir: str | os.PathLike, force: bool = False, report=lambda line: None,
               check_agreement: bool = True) -> Path:
    """Write PLAN_DIR: config.yaml, plan.json and the backend's prepared inputs, together or nothing.

    An existing PLAN_DIR is refused without ``force``. Even with ``force`` a PLAN_DIR holding
    anything but a plan (a training run's output, logs) is refused: it is not ours to delete.
    Before it is moved into place, the prompt agreement check (``agreement.py``) builds the first
    sample's training input with the trainer's own code and refuses the plan when it differs from
    PaddleX's inference input (``check_agreement=False``: recorded as skipped; `train` checks).
    """
    out_dir = Path(out_dir)
    if force and out_dir.is_dir():
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in PLAN_FILES)
        if foreign:
            raise UserError(f"{out_dir}: holds {', '.join(foreign[:5])} besides a plan (training outputs?); "
                            "--force replaces only a dir with a plan in it: choose another -o")
    trainer = backends.get(plan.backend)
    header = (f"{trainer.title} config written by paddle-ocrvl-sft plan (preset {plan.record['preset']['name']}).\n"
              "Every number and where it comes from: plan.json beside this file.")
    text = trainer.schema.dump_yaml(plan.config, header=header)
    with staged_dir(out_dir, force=force) as tmp:
        # paths inside are relative to the plan dir or absolute, so they hold after the rename
        values, mixed = _resampled_shares(plan, tmp)
        notes = mixed + trainer.prepare(tmp, values, plan.device).notes
        for line in notes:
            report(line)
        atomic_write_text(tmp / "config.yaml", text)
        record = {**plan.record, "prepared": notes}
        record["agreement"] = agreement_record(tmp, out_dir.resolve(), plan.config, record, check_agreement)
        write_json(tmp / "plan.json", record)
    return out_dir


def agreement_record(stage: Path, plan_dir: Path, config: dict, record: dict, check: bool) -> dict:
    """plan.json "agreement": the prompt agreement check on the plan being written (raises on a mismatch)."""
    from paddle_ocrvl_sft import agreement

    if not check:
        return agreement.not_checked("skipped by --skip-agreement-check; `train` checks it before it starts")
    return agreement.check_new_plan(stage, plan_dir, config, record)
