"""``data stats``: what a dataset costs in tokens, and the max_seq_len / packing_size it needs.

One validation pass (constant memory: sizes and lengths go into typed arrays) gives sample count D,
the prompt-kind breakdown, image-size and token-length percentiles and the longest samples.
"""

from __future__ import annotations

import heapq
import math
import os
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from paddle_ocrvl_sft.data.validate import SampleInfo, ValidateOptions, ValidationReport, validate_paths

PERCENTILES = (50, 90, 95, 99, 100)
GUIDE_MAX_SEQ_LEN = 16384  # seed 000 §4: "the largest value your GPU memory allows"
GUIDE_PACKING_SIZE = 8
SEQ_LEN_STEP = 1024


@dataclass
class DatasetStats:
    report: ValidationReport | None
    kinds: dict[str, int] = field(default_factory=dict)
    widths: array = field(default_factory=lambda: array("I"))
    heights: array = field(default_factory=lambda: array("I"))
    longest: list[tuple[int, str, int]] = field(default_factory=list)  # (tokens, path, line)

    @property
    def samples(self) -> int:
        """D: the samples ERNIEKit will train on (valid ones)."""
        return self.report.valid

    def percentiles(self) -> dict[str, dict[str, int]]:
        import numpy as np

        out = {}
        for name, values in (
            ("image_width", self.widths),
            ("image_height", self.heights),
            ("sample_tokens", self.report.token_lengths),
        ):
            arr = np.frombuffer(values, dtype=np.uint32) if len(values) else np.zeros(0)
            out[name] = {f"p{q}": int(np.percentile(arr, q, method="higher")) if arr.size else 0 for q in PERCENTILES}
        return out

    def to_dict(self) -> dict:
        return {
            "samples": self.samples,
            "validation": self.report.to_dict(),
            "kinds": dict(sorted(self.kinds.items())),
            "percentiles": self.percentiles(),
            "longest": [{"tokens": t, "where": f"{p}:{line}"} for t, p, line in self.longest],
            "recommended": recommend(self.report.token_lengths).to_dict(),
        }


@dataclass(frozen=True)
class Recommendation:
    max_seq_len: int
    packing_size: int
    why: str

    def to_dict(self) -> dict:
        return {"max_seq_len": self.max_seq_len, "packing_size": self.packing_size, "why": self.why}


def recommend(token_lengths: Iterable[int]) -> Recommendation:
    """max_seq_len and packing_size for these sample lengths.

    ERNIEKit drops every sample longer than ``max_seq_len`` and packs up to ``packing_size``
    samples or ``max_seq_len`` tokens per sequence, whichever comes first.
    So: keep the guide's packing_size 8 while 8 median samples fit in the guide's 16384 tokens,
    fewer otherwise; and make max_seq_len hold the longest sample and ``packing_size`` median
    samples, rounded up to a multiple of 1024.
    """
    lengths = sorted(token_lengths)
    if not lengths:
        return Recommendation(GUIDE_MAX_SEQ_LEN, GUIDE_PACKING_SIZE, "no valid sample: the guide's defaults")
    median, longest = lengths[(len(lengths) - 1) // 2], lengths[-1]
    packing = max(1, min(GUIDE_PACKING_SIZE, GUIDE_MAX_SEQ_LEN // median))
    need = max(longest, packing * median)
    seq = math.ceil(need / SEQ_LEN_STEP) * SEQ_LEN_STEP
    why = (
        f"longest sample {longest} tokens, median {median}: packing_size {packing} "
        f"({'the guide value' if packing == GUIDE_PACKING_SIZE else f'{GUIDE_MAX_SEQ_LEN} // median'}), "
        f"max_seq_len = max(longest, packing_size x median) rounded up to {SEQ_LEN_STEP}: no sample dropped"
    )
    return Recommendation(seq, packing, why)


def dataset_stats(
    paths: Iterable[str | os.PathLike],
    options: ValidateOptions = ValidateOptions(max_seq_len=None),
    *,
    top: int = 5,
    on_problem=None,
) -> DatasetStats:
    """Validate and measure in one pass; ``options.max_seq_len=None`` measures without dropping."""
    stats = DatasetStats(report=None)
    heap: list[tuple[int, str, int]] = []

    def on_sample(info: SampleInfo) -> None:
        stats.kinds[info.kind] = stats.kinds.get(info.kind, 0) + 1
        for w, h in info.image_sizes:
            stats.widths.append(w)
            stats.heights.append(h)
        item = (info.tokens, info.path, info.line)
        if len(heap) < top:
            heapq.heappush(heap, item)
        elif item > heap[0]:
            heapq.heapreplace(heap, item)

    stats.report = validate_paths(paths, options, on_sample=on_sample, on_problem=on_problem)
    stats.longest = sorted(heap, reverse=True)
    return stats


def plot_histogram(stats: DatasetStats, out: str | os.PathLike, *, max_seq_len: int | None = None, force: bool = False) -> Path:
    """PNG: sample token lengths (with the recommended max_seq_len) and image sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from paddle_ocrvl_sft.io import atomic_open, refuse_existing

    out = Path(out)
    refuse_existing(out, force=force)  # before any drawing
    tokens = np.frombuffer(stats.report.token_lengths, dtype=np.uint32)
    fig, (ax_tokens, ax_pixels) = plt.subplots(1, 2, figsize=(11, 4))
    ax_tokens.hist(tokens, bins=50, color="#3b6ea5")
    limit = max_seq_len or recommend(stats.report.token_lengths).max_seq_len
    ax_tokens.axvline(limit, color="#c0392b", linestyle="--", label=f"max_seq_len {limit}")
    ax_tokens.set(title=f"Sample length, D={stats.samples}", xlabel="tokens (image + text)", ylabel="samples")
    ax_tokens.legend()
    pixels = np.frombuffer(stats.widths, dtype=np.uint32).astype(np.float64) * np.frombuffer(stats.heights, dtype=np.uint32)
    ax_pixels.hist(np.sqrt(pixels), bins=50, color="#5a9e6f")
    ax_pixels.set(title="Image size", xlabel="sqrt(width x height) px", ylabel="images")
    fig.tight_layout()
    with atomic_open(out, "wb") as fh:
        fig.savefig(fh, format="png", dpi=90)
    plt.close(fig)
    return out


def format_stats(stats: DatasetStats) -> str:
    """The human-readable report."""
    lines = [f"D = {stats.samples} valid samples ({stats.report.samples} read, {stats.report.rejected} rejected)"]
    lines.append("by prompt kind: " + (", ".join(f"{k} {n}" for k, n in sorted(stats.kinds.items(), key=lambda kv: -kv[1])) or "-"))
    pct = stats.percentiles()
    header = "".join(f"{('p' + str(q)) if q < 100 else 'max':>9}" for q in PERCENTILES)
    lines.append(f"{'':15}{header}")
    for name, row in pct.items():
        lines.append(f"{name:15}" + "".join(f"{v:>9}" for v in row.values()))
    how = "exact" if stats.report.tokens_exact else "estimated text tokens (pass --tokenizer MODEL_DIR for exact)"
    lines.append(f"token lengths: {how}")
    if stats.longest:
        lines.append("longest samples:")
        lines += [f"  {tokens:>7} tokens  {path}:{line}" for tokens, path, line in stats.longest]
    rec = recommend(stats.report.token_lengths)
    lines.append(f"recommended: max_seq_len {rec.max_seq_len}, packing_size {rec.packing_size}")
    lines.append(f"  because {rec.why}")
    return "\n".join(lines)
