"""``data replay``: the base model's own answers on pages, written as training samples.

Mixed into a fine-tune (``plan --replay replay.jsonl --replay-ratio 0.2``), they keep rehearsing
what the base model already does on general pages — OCR, tables, formulas — while it learns the
task: the usual cure for forgetting when the task data is small (ERNIE #1396 and #1440, where the
maintainers advise mixing tasks and far more data). The answers come from any ``predict`` backend
(``paddle``, ``transformers``, or a ``genai-server`` for large sets) and are appended to
``OUT.progress/predictions.jsonl`` as they come, so an interrupted run resumes where it stopped.

Only answers worth learning are written: an empty answer, one that hit the token cap, or one
that ends in a repeated loop (:mod:`paddle_ocrvl_sft.loop_guard`) is left out and counted. Image
paths are written relative to OUT's folder (where ERNIEKit resolves them), and OUT is validated
like any dataset before the command reports success.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from paddle_ocrvl_sft.data.sample import is_remote, make_sample
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.io import atomic_open, refuse_existing, write_json_line
from paddle_ocrvl_sft.loop_guard import ends_in_loop
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS

DEFAULT_TASKS = ("ocr",)
SKIP_REASONS = ("empty", "at the token cap", "ends in a loop")


@dataclass
class ReplayReport:
    out: Path
    pages: int = 0  # distinct images
    asked: int = 0  # image x task pairs
    written: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> "image (prompt)"
    failed: list[str] = field(default_factory=list)  # "image (prompt): why"

    def summary(self) -> str:
        lines = [f"wrote {self.written} replay samples ({self.pages} page(s) x tasks = {self.asked} answers) to {self.out}"]
        for reason, items in self.skipped.items():
            lines.append(f"  left out {len(items)} answer(s): {reason} (not a sample worth learning), e.g. "
                         + "; ".join(items[:3]))
        if self.failed:
            lines.append(f"  {len(self.failed)} prediction(s) failed, e.g. " + "; ".join(self.failed[:3]))
        return "\n".join(lines)


def replay_jobs(inputs: Iterable[str | os.PathLike], tasks: Iterable[str]) -> list:
    """Every distinct image of ``inputs`` (images, folders, datasets) asked every task prompt."""
    from paddle_ocrvl_sft.predict import Job, collect_jobs

    tasks = list(tasks)
    unknown = [t for t in tasks if t not in BUILTIN_PROMPTS]
    if unknown or not tasks:
        raise UsageError(f"--tasks {','.join(tasks)}: expected a comma-separated list of {', '.join(BUILTIN_PROMPTS)}")
    images = list(dict.fromkeys(job.image for job in collect_jobs(inputs)))
    remote = [image for image in images if is_remote(image)]
    if remote:
        raise UserError(f"{remote[0]}: replay samples need local images (their paths are written into the dataset)")
    return [Job(os.path.realpath(image), BUILTIN_PROMPTS[task]) for image in images for task in tasks]


def skip_reason(record: dict) -> str | None:
    """Why a predict record is not a good training target (None: it is)."""
    text = record.get("text") or ""
    if not text.strip():
        return "empty"
    if record.get("finish") == "length":
        return "at the token cap"
    if ends_in_loop(text) is not None:
        return "ends in a loop"
    return None


def progress_dir(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".progress")


def write_replay(model_dir, inputs: Iterable[str | os.PathLike], out: str | os.PathLike, *,
                 tasks: Iterable[str] = DEFAULT_TASKS, backend: str = "paddle", device: str | None = None,
                 batch_size: int = 1, max_new_tokens: int | None = None, force: bool = False, progress: bool = True,
                 log: Callable[[str], None] = lambda line: None, **backend_options) -> ReplayReport:
    """Ask ``model_dir`` (the BASE model) every task on every page and write the answers to ``out``
    as ERNIEKit samples; resumable through ``OUT.progress/``, which is removed once OUT is complete."""
    from paddle_ocrvl_sft.data.validate import ValidateOptions, validate_paths
    from paddle_ocrvl_sft.evaluate.runner import PREDICTIONS, _model_id
    from paddle_ocrvl_sft.predict import BACKENDS, make_backend, run_resumable

    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend}: must be one of {', '.join(BACKENDS)}")
    if backend != "genai-server" and model_dir is None:
        raise UsageError(f"--backend {backend} needs --model BASE_DIR (the base model whose answers are replayed)")
    out = Path(out)
    if out.suffix.lower() != ".jsonl":
        raise UsageError(f"-o {out}: replay samples are written as a .jsonl dataset")
    refuse_existing(out, force=force)
    tasks = list(tasks)
    jobs = replay_jobs(inputs, tasks)
    work = progress_dir(out)
    info = {"model": _model_id(model_dir) or str(backend_options.get("server_url")), "backend": backend,
            "tasks": tasks, "max_new_tokens": max_new_tokens, "pages": _digest(jobs)}
    _prepare_progress(work, info, force=force)
    options = {"device": device, "max_new_tokens": max_new_tokens, **backend_options}
    records = run_resumable(jobs, work / PREDICTIONS, lambda: make_backend(backend, model_dir=model_dir, **options),
                            batch_size=batch_size, progress=progress,
                            other="this folder holds another replay (use another -o or --force)")
    report = ReplayReport(out, pages=len({job.image for job in jobs}), asked=len(jobs))
    root = out.resolve().parent
    with atomic_open(out, "w", force=force) as fh:
        for job, record in zip(jobs, records):
            label = f"{Path(job.image).name} ({job.prompt})"
            if "error" in record:
                report.failed.append(f"{label}: {record['error']}")
                continue
            reason = skip_reason(record)
            if reason:
                report.skipped.setdefault(reason, []).append(label)
                continue
            write_json_line(fh, make_sample([_relative(job.image, root)], [(job.prompt, record["text"])]))
            report.written += 1
        if not report.written:  # an empty dataset trains nothing: say why instead of writing one (OUT untouched)
            why = "\n".join(report.summary().splitlines()[1:])
            retry = "\nrerun the same command to retry the failed ones (the other answers are kept)" if report.failed else ""
            raise UserError(f"{out}: not written: none of the {report.asked} answer(s) is a sample worth learning\n"
                            f"{why}{retry}")
    checked = validate_paths([out], ValidateOptions(max_seq_len=None, decode=False))
    errors = [p for p in checked.problems if p.severity == "error"]
    if errors:
        first = errors[0]
        raise UserError(f"{first.path}:{first.line}: {first.message} (the replay file does not validate; "
                        f"{len(errors)} error(s))")
    if not report.failed:
        shutil.rmtree(work)  # complete: nothing left to resume
    log(report.summary())
    return report


def _digest(jobs: list) -> str:
    """The pages x prompts asked, in one string: a progress dir of other --images is not resumed."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps([[job.image, job.prompt] for job in jobs]).encode()).hexdigest()[:16]


def _prepare_progress(work: Path, info: dict, *, force: bool) -> None:
    """A new progress dir, or the one this same replay left (resumed); one made from other inputs
    (model, tasks, pages...) is started over under --force, else refused."""
    import json

    from paddle_ocrvl_sft.evaluate.runner import RUN_INFO
    from paddle_ocrvl_sft.io import write_json

    if work.exists():
        try:
            before = json.loads((work / RUN_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = {}
        changed = [k for k in info if not isinstance(before, dict) or before.get(k) != info[k]]
        if changed and not force:
            raise UserError(f"{work}: holds a replay made with other inputs ({', '.join(changed)} changed); "
                            "use another -o or --force to start over")
        if changed:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(work / RUN_INFO, info)


def _relative(image: str, root: Path) -> str:
    """The image path as the dataset will hold it: relative to the dataset's folder when possible."""
    try:
        return os.path.relpath(image, root)
    except ValueError:  # another drive (Windows)
        return image
