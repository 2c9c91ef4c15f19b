"""Known training failures, read from the trainer's log, each with the fix (FACTS "Launch", "Logs").

A :class:`Known` is data: what to look for in the log, what it means, what to do. ``train`` shows
the diagnoses of a failed (or NaN) run; :func:`replan_for_oom` prints the numbers to use after an
out-of-memory error, keeping G·B·A (and so max_steps and the learning rate) unchanged.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Known:
    name: str
    pattern: str  # a regex over one log line (case-insensitive)
    meaning: str
    fix: str


KNOWN: tuple[Known, ...] = (
    Known("out-of-memory", r"out of memory|ResourceExhaustedError|cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED",
          "the GPU ran out of memory",
          "lower B (packing_size / per_device_train_batch_size) and raise gradient_accumulation_steps by the same factor "
          "(G·B·A, max_steps and the learning rate stay as planned), or lower max_seq_len; see the numbers below"),
    Known("loss-nan", r"\bloss: (nan|inf|-inf)\b|LossNan|Loss contains inf or nan",
          "the loss became NaN or infinite (diverged)",
          "lower learning_rate (e.g. 10x), keep warmup_steps >= 1% of max_steps, check the data for empty answers; "
          "resume from a checkpoint before the divergence with `train --resume checkpoint-N` after re-planning"),
    Known("port-in-use", r"Address already in use|address is already in use|EADDRINUSE|failed to listen on",
          "the master port is taken (a new job on a busy port JOINS the old one)",
          "stop the other job, or give this run another port: `train PLAN --master HOST:PORT` (single node: train picks a free one)"),
    Known("unknown-stage", r"Unknown task: OCR-VL-SFT|invalid choice: 'OCR-VL-SFT'|not one of .*OCR-VL-SFT",
          "this ERNIEKit has no OCR-VL-SFT stage (it ships in ERNIEKit >= 1.4; PyPI's erniekit stops at 1.3.0)",
          "install ERNIEKit release/v1.4 from source: `python -m paddle_ocrvl_sft backend install erniekit --source ERNIE`"),
    Known("no-cuda", r"not compiled with CUDA|is not compiled with cuda|no CUDA-capable device|CUDA driver version is insufficient|"
                     r"argument --devices/--gpus.*expected one argument|ValueError: substring not found",
          "no usable GPU: the Paddle build has no CUDA, no GPU is visible, or the driver is too old",
          "train on a GPU machine with paddlepaddle-gpu (docker/, CUDA >= 12), or re-plan with --device cpu for a tiny model"),
    Known("flashmask-gpu", r"FlashAttention only supports Ampere GPUs or newer|flashmask.*(not supported|requires)",
          "flash attention / flashmask needs an Ampere or newer GPU (compute capability >= 8.0; a V100 is 7.0)",
          "use an A100/H100-class GPU, or on an older one train with PaddleFormers (`plan --backend paddleformers`) and "
          "_attn_implementation=sdpa. Not ERNIEKit with use_flash_attention=False: v1.4's causal mask is built one key too "
          "long without flash attention (only the CPU path patches it), so that run fails too"),
    Known("causal-mask", r"Broadcast dimension mismatch",
          "a shape mismatch in attention, as ERNIEKit v1.4 hits without flash attention: its causal mask is built one key "
          "longer than the sequence (Ernie4_5Model._update_causal_mask: past_seen_tokens + sequence_length + 1)",
          "on a GPU keep use_flash_attention=True (Ampere or newer); on an older GPU train with PaddleFormers "
          "(_attn_implementation=sdpa); `plan --device cpu` runs patch this for tiny models"),
    Known("bom", r"Unexpected UTF-8 BOM", "a dataset file starts with a UTF-8 byte-order mark, which ERNIEKit's reader rejects",
          "`python -m paddle_ocrvl_sft data validate FILE --write-clean OUT` writes the file without it"),
    Known("bad-json-line", r"JSONDecodeError|Expecting value|Extra data: line|Unterminated string",
          "a dataset line is not JSON (a blank line, a truncated row): ERNIEKit loads the whole file at start-up and stops",
          "`python -m paddle_ocrvl_sft data validate FILE` names the line; --write-clean drops it"),
    Known("image-open", r"cannot identify image file|UnidentifiedImageError|No such file or directory: .*\.(png|jpe?g|bmp|webp|tiff?)",
          "an image of the dataset cannot be opened",
          "`python -m paddle_ocrvl_sft data validate FILE` lists every missing or unreadable image with its line"),
)


def diagnose(lines: Iterable[str], known: tuple[Known, ...] = KNOWN) -> list[tuple[Known, str]]:
    """Each known failure found in ``lines``, once, with the first line that shows it."""
    compiled = [(k, re.compile(k.pattern, re.IGNORECASE)) for k in known]
    found: dict[str, tuple[Known, str]] = {}
    for line in lines:
        for k, rx in compiled:
            if k.name not in found and rx.search(line):
                found[k.name] = (k, line.strip()[:300])
    return list(found.values())


def replan_for_oom(batch_key: str, batch: int, grad_accum: int) -> str:
    """B halved and A doubled (as far as B allows): the same samples per step, less memory per pack."""
    if batch <= 1:
        return (f"{batch_key} is already 1: lower max_seq_len (re-plan with --max-seq-len), enable recompute, "
                "or shard the optimizer over more GPUs (sharding)")
    new_b = max(1, batch // 2)
    factor = batch / new_b
    new_a = math.ceil(grad_accum * factor)
    return (f"re-plan keeping G·B·A: {batch_key} {batch} -> {new_b}, gradient_accumulation_steps {grad_accum} -> {new_a} "
            f"(B·A {batch * grad_accum} -> {new_b * new_a}); e.g. `plan ... --packing-size {new_b} --grad-accum {new_a}`")
