"""When is a ``checkpoint-N`` complete? One definition, used by `train` (resume, messages) and `export`.

A trainer writes a checkpoint file by file (both PaddleFormers versions' ``Trainer._save_checkpoint``:
the weights, ``trainer_state``, the RNG state, the optimizer, and ``scheduler.pdparams`` last); a run
stopped mid-save leaves a directory that looks like a checkpoint and is not one. A checkpoint is
complete when, in one of its backend's :class:`Layout` s:

- every required file exists and is not empty;
- every safetensors index lists shards that exist and are as long as their headers say (a shard
  cut short by a kill is caught here, even when its index was already written);
- every flex-checkpoint state dir (``*.distcp`` shards, PaddleFormers' GPU default) holds a
  ``*.metadata`` and shards, none empty, and every rank that wrote optimizer shards also wrote its
  ``saved_signal_<rank>``: the trainer's own marker, written after that rank's optimizer state.

Pure functions over the file system (stdlib + ``safetensors_file``): nothing is imported from a trainer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
SIGNAL_RE = re.compile(r"^saved_signal_(\d+)$")
SHARD_RANK_RE = re.compile(r"^(\d+)_\d+\.distcp$")


@dataclass(frozen=True)
class Layout:
    """What one trainer writes into a complete ``checkpoint-N`` (one save format)."""

    name: str
    files: tuple[str, ...]  # exist, not empty (the last one the trainer writes comes last here)
    indexes: tuple[str, ...] = ()  # safetensors index JSONs whose shards must be complete
    state_dirs: tuple[str, ...] = ()  # flex-checkpoint dirs (*.metadata + *.distcp)
    signal_dirs: tuple[str, ...] = ()  # of the state_dirs: each rank with shards here wrote saved_signal_<rank>


def all_checkpoints(output_dir: Path) -> dict[int, Path]:
    """``{step: dir}`` of every ``checkpoint-N`` dir, complete or not, by step."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return {}
    found = {int(m.group(1)): p for p in output_dir.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))}
    return dict(sorted(found.items()))


def layout_problem(path: Path, layout: Layout) -> str | None:
    """Why ``path`` is not a complete checkpoint in ``layout`` (None: it is)."""
    for name in layout.files:
        problem = _file_problem(path / name)
        if problem:
            return problem
    for name in layout.indexes:
        problem = index_problem(path / name)
        if problem:
            return problem
    for name in layout.state_dirs:
        problem = _state_dir_problem(path / name)
        if problem:
            return problem
    if layout.signal_dirs:
        signalled = {int(m.group(1)) for p in path.iterdir() if (m := SIGNAL_RE.match(p.name)) and p.stat().st_size > 0}
        for name in layout.signal_dirs:
            ranks = {int(m.group(1)) for p in (path / name).iterdir() if (m := SHARD_RANK_RE.match(p.name))}
            unsignalled = sorted(ranks - signalled)
            if unsignalled:
                return f"saved_signal_{unsignalled[0]} missing: rank {unsignalled[0]} did not finish saving {name}/"
    return None


def checkpoint_problem(path: Path, layouts: tuple[Layout, ...]) -> str | None:
    """Why ``path`` is not complete in any of ``layouts`` (None: it is complete in one).

    The reason given is the one of the layout the dir got furthest in (most of its files there).
    """
    path = Path(path)
    if not path.is_dir():
        return f"{path}: not a directory"
    problems = []
    for layout in layouts:
        problem = layout_problem(path, layout)
        if problem is None:
            return None
        present = sum((path / name).exists() for name in (*layout.files, *layout.indexes, *layout.state_dirs))
        problems.append((present, problem))
    return max(problems, key=lambda item: item[0])[1] if problems else "no known checkpoint layout"


def checkpoint_states(output_dir: Path, layouts: tuple[Layout, ...]) -> tuple[dict[int, Path], dict[int, str]]:
    """``({step: dir}, {step: why})``: the complete checkpoints in ``output_dir`` and the others (a
    save that was cut short), by step; each dir is checked once (a check reads every shard's header)."""
    complete, incomplete = {}, {}
    for step, path in all_checkpoints(output_dir).items():
        problem = checkpoint_problem(path, layouts)
        if problem:
            incomplete[step] = problem
        else:
            complete[step] = path
    return complete, incomplete


def complete_checkpoints(output_dir: Path, layouts: tuple[Layout, ...]) -> dict[int, Path]:
    """``{step: dir}`` of the complete checkpoints in ``output_dir``, by step."""
    return checkpoint_states(output_dir, layouts)[0]


def index_problem(index: Path) -> str | None:
    """A safetensors index whose shards are all there and complete (None), else why not."""
    from paddle_ocrvl_sft.safetensors_file import truncation

    problem = _file_problem(index)
    if problem:
        return problem
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"{index.name}: not a safetensors index ({exc})"
    if not shards:
        return f"{index.name}: lists no shard"
    for name in shards:
        shard = index.parent / name
        problem = _file_problem(shard)
        if problem:
            return f"{problem} (listed in {index.name})"
        try:
            cut = truncation(shard)
        except UserError as exc:
            return str(exc)
        if cut:
            return f"{name}: {cut}"
    return None


def _file_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
    except OSError:
        return f"{path.name} missing"
    if path.is_file() and size == 0:
        return f"{path.name} is empty"
    return None


def _state_dir_problem(path: Path) -> str | None:
    if not path.is_dir():
        return f"{path.name}/ missing"
    files = list(path.iterdir())
    if not any(p.suffix == ".metadata" for p in files):
        return f"{path.name}/ has no *.metadata"
    shards = [p for p in files if p.suffix == ".distcp"]
    if not shards:
        return f"{path.name}/ has no *.distcp shard"
    empty = [p.name for p in files if p.is_file() and p.stat().st_size == 0]
    if empty:
        return f"{path.name}/{empty[0]} is empty"
    return None
