"""What lies under the UI's roots: plans, evaluations, models and datasets, found by their files.

- a plan dir holds ``plan.json`` (``plan`` wrote it); the models and evals directly inside it (``train``'s
  ``bundle/`` and ``eval/``, an ``eval -o PLAN/eval-train``) are listed with it, and nothing deeper is
  walked (checkpoints, prepared data, the trainer's output);
- an eval dir holds ``metrics.json`` and ``scores.jsonl`` (``eval``);
- a model dir holds ``inference.yml`` and ``config.json`` (a release download, a tiny test model or
  an ``export`` bundle): what ``serve``/``predict``/``eval`` load;
- a dataset is a ``.jsonl`` file outside those.

The walk skips hidden dirs and stops at a depth and a dir count, so a huge tree costs a bounded time.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX_DEPTH = 6
MAX_DIRS = 20_000
SKIP = {"__pycache__", "node_modules", "site-packages"}
CACHE_SECONDS = 2.0


@dataclass
class Found:
    plans: list[Path] = field(default_factory=list)
    evals: list[Path] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)
    datasets: list[Path] = field(default_factory=list)
    truncated: bool = False


def is_eval(path: Path) -> bool:
    return (path / "metrics.json").is_file() and (path / "scores.jsonl").is_file()


def is_model(path: Path) -> bool:
    return (path / "inference.yml").is_file() and (path / "config.json").is_file()


def scan(roots: list[Path]) -> Found:
    found = Found()
    visited = 0
    for root in roots:
        stack = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            visited += 1
            if visited > MAX_DIRS:
                found.truncated = True
                break
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            names = {e.name for e in entries}
            if "plan.json" in names:
                found.plans.append(folder)
                for entry in entries:  # train's bundle/ and eval/, and evals run into the plan dir
                    if entry.name != "output" and entry.is_dir(follow_symlinks=False):
                        sub = Path(entry.path)
                        if is_eval(sub):
                            found.evals.append(sub)
                        elif is_model(sub):
                            found.models.append(sub)
                continue
            if {"metrics.json", "scores.jsonl"} <= names:
                found.evals.append(folder)
                continue
            if {"inference.yml", "config.json"} <= names:
                found.models.append(folder)
                continue
            for entry in entries:
                if entry.name.startswith(".") or entry.name in SKIP:
                    continue
                if entry.is_dir(follow_symlinks=False) and depth < MAX_DEPTH:
                    stack.append((Path(entry.path), depth + 1))
                elif entry.name.endswith(".jsonl") and entry.is_file():
                    found.datasets.append(Path(entry.path))
    for bucket in (found.plans, found.evals, found.models, found.datasets):
        bucket.sort()
    return found


class Workspace:
    """``scan`` of the roots, cached for a moment (the pages poll)."""

    def __init__(self, roots: list[Path]):
        self.roots = roots
        self._found: Found | None = None
        self._when = 0.0

    def found(self, fresh: bool = False) -> Found:
        if fresh or self._found is None or time.monotonic() - self._when > CACHE_SECONDS:
            self._found = scan(self.roots)
            self._when = time.monotonic()
        return self._found

    def forget(self) -> None:
        """A job wrote something: the next listing scans again."""
        self._found = None
