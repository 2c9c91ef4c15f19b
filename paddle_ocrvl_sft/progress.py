"""Following a training run: a progress bar, ``metrics.jsonl`` and a loss-curve PNG that updates.

Fed one parsed log point at a time (``Backend.parse_log_line``); nothing here knows which trainer
runs. The PNG is redrawn at most every few seconds (and at the end), written atomically.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

PLOT_EVERY_SECONDS = 10.0


class Progress:
    def __init__(self, run_dir: Path, max_steps: int, *, start_step: int = 0, bar: bool = True, echo=print):
        from tqdm import tqdm

        self.run_dir = run_dir
        self.metrics = run_dir / "metrics.jsonl"
        self.plot = run_dir / "loss.png"
        self.max_steps = max_steps
        self.points: list[dict] = []
        self.echo = echo
        self.started = time.monotonic()
        self.first_step: int | None = None
        self.last_plot = 0.0
        self.bar = tqdm(total=max_steps, initial=start_step, unit="step", file=sys.stderr, disable=not bar,
                        dynamic_ncols=True, desc="train")

    @property
    def last_step(self) -> int | None:
        return self.points[-1]["step"] if self.points else None

    def update(self, point: dict) -> None:
        point = {**point, "time": round(time.time(), 3)}
        self.points.append(point)
        with open(self.metrics, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(point) + "\n")
        if self.first_step is None:
            self.first_step, self.started = point["step"], time.monotonic()
        self.bar.n = point["step"]
        self.bar.set_postfix_str(self.postfix(point), refresh=False)
        self.bar.refresh()
        if self.bar.disable:
            self.echo(f"step {point['step']:>6}/{self.max_steps}  {self.postfix(point)}")
        if time.monotonic() - self.last_plot > PLOT_EVERY_SECONDS:
            self.draw()

    def postfix(self, point: dict) -> str:
        parts = [f"loss {point['loss']:.4f}"]
        if "lr" in point:
            parts.append(f"lr {point['lr']:.2e}")
        if "tokens_per_second" in point:
            parts.append(f"{point['tokens_per_second']:.0f} tok/s")
        elif "nominal_tokens_per_second" in point:  # max_seq_len per sequence, not the tokens trained
            parts.append(f"{point['nominal_tokens_per_second']:.0f} tok/s nominal")
        eta = self.eta(point["step"])
        if eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        return "  ".join(parts)

    def eta(self, step: int) -> float | None:
        """Seconds left at the rate since the first step this run logged (resumes start mid-way)."""
        done = step - (self.first_step or step)
        if done <= 0:
            return None
        return (time.monotonic() - self.started) / done * max(0, self.max_steps - step)

    def draw(self) -> None:
        if self.points:
            plot_loss(self.points, self.plot, self.max_steps)
            self.last_plot = time.monotonic()

    def close(self) -> None:
        self.bar.close()
        self.draw()


def format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    h, m, s = seconds // 3600, seconds // 60 % 60, seconds % 60
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def read_metrics(path: Path) -> list[dict]:
    """The points of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    points = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                points.append(json.loads(line))
            except ValueError:
                continue
    return points


def lr_changes(points: list[dict]) -> bool:
    """Whether the learning rate the points logged changes (warmup, decay) rather than staying put."""
    lrs = {p["lr"] for p in points if "lr" in p}
    return len(lrs) > 1


def loss_figure(points: list[dict], max_steps: int | None = None):
    """The figure :func:`plot_loss` saves: loss against step, non-finite losses marked on the x axis,
    and the learning rate on a second, labelled axis in the same legend, only when it changes (a
    constant rate is named in the title instead of drawn as a flat line on a meaningless scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    losses = [p["loss"] for p in points]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    finite = [(s, v) for s, v in zip(steps, losses) if math.isfinite(v)]
    if finite:
        ax.plot(*zip(*finite), color="#1f77b4", lw=1.5, label="loss")
    bad = [s for s, v in zip(steps, losses) if not math.isfinite(v)]
    if bad:
        ax.scatter(bad, [ax.get_ylim()[0]] * len(bad), color="red", marker="x", label="NaN/inf loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if max_steps:
        ax.set_xlim(0, max_steps)
    handles, labels = ax.get_legend_handles_labels()
    lrs = [(p["step"], p["lr"]) for p in points if "lr" in p]
    title = f"training loss, steps {steps[0]}-{steps[-1]}"
    if lr_changes(points):
        lr_ax = ax.twinx()
        (line,) = lr_ax.plot(*zip(*lrs), color="#ff7f0e", lw=1, alpha=0.7, label="learning rate")
        lr_ax.set_ylabel("learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        handles.append(line)
        labels.append(line.get_label())
    elif lrs:
        title += f" (learning rate {lrs[0][1]:.3g}, constant)"
    ax.set_title(title)
    if handles:
        ax.legend(handles, labels, loc="upper right")
    fig.tight_layout()
    return fig


def plot_loss(points: list[dict], out: Path, max_steps: int | None = None) -> Path:
    """Loss (and a changing learning rate) against step, as a PNG written atomically."""
    import matplotlib.pyplot as plt

    from paddle_ocrvl_sft.io import atomic_open

    fig = loss_figure(points, max_steps)
    steps = [p["step"] for p in points]
    bad = [p["step"] for p in points if not math.isfinite(p["loss"])]
    lrs = sorted({p["lr"] for p in points if "lr" in p})
    # what the PNG shows, in its own text chunk: a reader (or a test) can tell what the picture holds
    described = {"steps": len(steps), "first_step": steps[0], "last_step": steps[-1], "non_finite": len(bad),
                 "lr": "drawn" if len(lrs) > 1 else ("constant" if lrs else "not logged")}
    with atomic_open(out, "wb", force=True, encoding=None) as fh:
        fig.savefig(fh, format="png", metadata={"Title": "training loss", "Description": json.dumps(described)})
    plt.close(fig)
    return out
