"""Drift on general pages: how far a fine-tune's answers moved from its base model's (no labels needed).

A fine-tune on a few hundred task samples can forget what the base model did well — general OCR,
tables — while scoring better on the task (ERNIE #1396, #1440). The task data cannot show that, so
both models answer the same general pages with the base model's own task prompts, and each pair of
answers is compared with the task's metric:

* ``agreement``: 1 − NED of the texts (OCR and any other text prompt, charts, KIE), TEDS of the two
  tables (tables, read as ``eval`` reads them: OTSL or HTML, text that is neither is a one-cell table;
  the base answer is the reference), 1 − NED of the LaTeX tokens (formulas); identical answers
  agree fully (1);
* ``drift`` = 1 − agreement: 0 when the fine-tune answers exactly as the base did, 1 when nothing is
  left in common. It is a change, not an error: a fine-tune that fixes the base's mistakes drifts
  too; pages where the base is good and the drift is large are the forgetting.

Pages are a folder of images (each asked every ``--tasks`` prompt) or a ``.jsonl``: ERNIEKit samples
(their own prompts; their answers are labels, which adds real CER/TEDS before and after) or
``{"image": PATH}`` lines (asked every task prompt). ``--max-drift`` turns the mean drift per task
into a gate (:func:`gate`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import paddle_ocrvl_sft.evaluate.metrics as M
from paddle_ocrvl_sft.data.sample import image_location, is_remote
from paddle_ocrvl_sft.data.validate import DATASET_SUFFIXES
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.evaluate.score import (ALL_TASKS, HARMFUL_RUNAWAYS, EvalSample, aggregate, drift_limit,
                                             join_predictions, load_samples, runaway_flags, runaway_metrics,
                                             score_samples, task_of)
from paddle_ocrvl_sft.io import iter_records, write_json
from paddle_ocrvl_sft.predict import IMAGE_SUFFIXES, Job
from paddle_ocrvl_sft.prompts import BUILTIN_PROMPTS, PROMPT_KINDS, prompt_kind

DEFAULT_TASKS = ("ocr", "table", "formula", "chart")
DRIFT_FILE, ROWS_FILE = "drift.json", "drift.jsonl"
GATE_EXIT = 3  # `eval` exits with this when a task drifts past --max-drift (1: errors, 2: usage)


# --- options ----------------------------------------------------------------------------------------


def parse_tasks(text: str | Iterable[str]) -> tuple[str, ...]:
    """``ocr,table`` -> the built-in task names, checked (``--tasks``)."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in BUILTIN_PROMPTS]
    if unknown or not names:
        raise UsageError(f"--tasks {','.join(names) or repr(text)}: expected a comma-separated list of "
                         f"{', '.join(BUILTIN_PROMPTS)}")
    return tuple(dict.fromkeys(names))


def parse_max_drift(text: str) -> dict[str, float]:
    """``--max-drift``: ``0.1`` (every task), ``table=0.05,ocr=0.1`` or both (``0.1,table=0.05``).
    Limits are drifts in [0, 1]; keys are prompt kinds (ocr, table, formula, chart, kie, ...)."""
    limits: dict[str, float] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        kind, _, value = item.rpartition("=")
        kind = kind.strip() or ALL_TASKS
        if kind != ALL_TASKS and kind not in PROMPT_KINDS:
            raise UsageError(f"--max-drift {text}: unknown task {kind!r} (known: {', '.join(PROMPT_KINDS)})")
        try:
            limit = float(value)
        except ValueError:
            raise UsageError(f"--max-drift {text}: {value!r} is not a number") from None
        if not 0 <= limit <= 1:
            raise UsageError(f"--max-drift {text}: a drift limit is in [0, 1], got {limit}")
        limits[kind] = limit
    if not limits:
        raise UsageError(f"--max-drift {text!r}: expected e.g. 0.1 or table=0.05,ocr=0.1")
    return limits


# --- pages ------------------------------------------------------------------------------------------


def load_pages(pages: str | os.PathLike, tasks: Iterable[str] = DEFAULT_TASKS) -> list[EvalSample]:
    """The (image, prompt) pairs both models answer, labelled when the pages file has answers."""
    tasks = parse_tasks(tasks)
    path = Path(pages)
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"--general {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [_page(str(image), task) for image in images for task in tasks]
    if path.suffix.lower() in DATASET_SUFFIXES and path.is_file():
        first = next(iter(iter_records(path)), None)
        if first is None:
            raise UserError(f"--general {path}: no pages in this file")
        if isinstance(first.value, dict) and "image_info" in first.value:
            return load_samples(path)  # ERNIEKit samples: their own prompts, their answers are labels
        return _listed_pages(path, tasks)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        return [_page(str(path), task) for task in tasks]
    raise UserError(f"--general {path}: expected a folder of images, an image, or a .jsonl of pages")


def _page(image: str, task: str, where: str | None = None) -> EvalSample:
    prompt = BUILTIN_PROMPTS[task]
    return EvalSample(Job(image, prompt, where=where), prompt_kind(prompt))


def _listed_pages(path: Path, tasks: tuple[str, ...]) -> list[EvalSample]:
    samples = []
    for record in iter_records(path):
        if record.error:
            raise UserError(f"{record.where}: {record.error}")
        value = record.value
        if not (isinstance(value, dict) and isinstance(value.get("image"), str) and value["image"]):
            raise UserError(f"{record.where}: field image: a page line is {{\"image\": \"PATH\"}} (or an ERNIEKit sample)")
        image = image_location(value["image"], path)
        if not is_remote(value["image"]) and not Path(image).is_file():
            raise UserError(f"{record.where}: field image: {image} not found")
        samples += [_page(image, task, record.where) for task in tasks]
    return samples


# --- comparing two answers ----------------------------------------------------------------------------


def agreement(kind: str, base: str, tuned: str) -> float:
    """How much of the base answer the fine-tuned one kept, in [0, 1] (the module docstring)."""
    if base == tuned:
        return 1.0
    task = task_of(kind)
    if task == "table":
        base_rows, tuned_rows = M.table_rows(base), M.table_rows(tuned)
        if any(base_rows) or any(tuned_rows):
            return M.teds(tuned_rows, base_rows)
    if task == "formula":
        return 1.0 - M.ned(M.latex_tokens(tuned), M.latex_tokens(base))
    return 1.0 - M.ned(tuned, base)


def drift_rows(samples: list[EvalSample], base_records: list[dict], records: list[dict]) -> list[dict]:
    """One row per (page, prompt): both answers, their agreement and drift, how each ended."""
    rows = []
    for sample, base, tuned in zip(samples, base_records, records, strict=True):
        base_text, tuned_text = base.get("text") or "", tuned.get("text") or ""
        value = agreement(sample.kind, base_text, tuned_text)
        row = {"source": sample.job.where, "image": sample.job.image, "prompt": sample.job.prompt, "kind": sample.kind,
               "base": base_text, "model": tuned_text, "agreement": value, "drift": 1.0 - value,
               "base_runaway": runaway_flags(base), "model_runaway": runaway_flags(tuned)}
        errors = [f"{who}: {rec['error']}" for who, rec in (("baseline", base), ("model", tuned)) if "error" in rec]
        if errors:
            row["error"] = "; ".join(errors)
        rows.append(row)
    return rows


def drift_metrics(rows: list[dict]) -> dict:
    """Mean and worst drift per prompt kind and overall, and each model's runaways.

    A pair with a failed prediction is left out of the drift (``n`` per kind counts the pairs
    compared): its missing answer says nothing about forgetting, and counted as an empty one
    (drift 1) a transient failure would fail the gate. ``errors`` says how many were left out.
    """
    kinds: dict[str, list[float]] = {}
    for row in rows:
        if "error" not in row:
            kinds.setdefault(row["kind"], []).append(row["drift"])
    per_kind = {kind: {"drift": sum(v) / len(v), "max": max(v), "n": len(v)}
                for kind in PROMPT_KINDS if (v := kinds.get(kind))}
    drifts = [drift for values in kinds.values() for drift in values]
    return {
        "kinds": per_kind,
        "drift": sum(drifts) / len(drifts) if drifts else 0.0,
        "n": len(rows),
        "pages": len({row["image"] for row in rows}),
        "errors": sum("error" in row for row in rows),  # pairs left out of the drift
        "runaways": {"baseline": runaway_metrics([row["base_runaway"] for row in rows]),
                     "model": runaway_metrics([row["model_runaway"] for row in rows])},
    }


def gate(metrics: dict, limits: dict[str, float] | None) -> list[dict]:
    """The tasks whose mean drift is above their limit (``limits[kind]``, else ``limits["*"]``)."""
    failed = []
    for kind, value in metrics["kinds"].items():
        limit = drift_limit(limits, kind)
        if limit is not None and value["drift"] > limit:
            failed.append({"kind": kind, "drift": value["drift"], "limit": limit})
    return failed


# --- running -------------------------------------------------------------------------------------------


def evaluate_drift(model_dir, baseline, pages, *, out_dir, tasks: Iterable[str] = DEFAULT_TASKS,
                   max_drift: dict[str, float] | None = None, backend: str = "paddle", device: str | None = None,
                   batch_size: int | None = None, max_new_tokens: int | None = None, normalize: Iterable[str] = (),
                   force: bool = False, progress: bool = True, **backend_options) -> dict:
    """Run ``model_dir`` and ``baseline`` on the general ``pages`` (resumable, like ``evaluate``),
    compare their answers, write ``out_dir`` (drift.json, drift.jsonl, report.html, predictions)
    and return the drift metrics (``gate``: the tasks past ``max_drift``)."""
    from paddle_ocrvl_sft.evaluate.runner import (BASELINE, _model_id, _prepare_out_dir, checked_normalizations,
                                                  model_predictions)
    from paddle_ocrvl_sft.predict import BACKENDS

    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend}: must be one of {', '.join(BACKENDS)}")
    if baseline is None or model_dir is None:
        raise UsageError("--general compares two models: give --model DIR and --baseline BASE_DIR "
                         "(or both models' saved predictions: --predictions and --baseline-predictions)")
    if backend == "genai-server":
        raise UsageError("--general with a genai-server: it serves one model; save each model's predictions with "
                         "`predict` and compare them with --predictions and --baseline-predictions")
    normalize = checked_normalizations(normalize)
    samples = load_pages(pages, tasks)
    out = Path(out_dir)
    _prepare_out_dir(out, {"general": os.path.realpath(pages), "tasks": list(parse_tasks(tasks)), "backend": backend,
                           "model": _model_id(model_dir), "baseline": _model_id(baseline),
                           "stop_repeats": backend_options.get("stop_repeats")}, force)
    predictions_of = model_predictions(samples, backend, device=device, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=progress, **backend_options)
    records = predictions_of(model_dir, out)
    base_records = predictions_of(baseline, out / BASELINE)
    return compare_and_report(samples, base_records, records, out, max_drift=max_drift, normalize=normalize,
                              labels={"general": str(pages), "model": str(model_dir), "baseline": str(baseline)})


def evaluate_drift_predictions(predictions, baseline_predictions, pages, *, out_dir,
                               tasks: Iterable[str] = DEFAULT_TASKS, max_drift: dict[str, float] | None = None,
                               normalize: Iterable[str] = (), force: bool = False) -> dict:
    """The same from both models' saved ``predict`` output (joined to the pages by image and prompt)."""
    from paddle_ocrvl_sft.evaluate.runner import BASELINE, PREDICTIONS, checked_normalizations, write_jsonl
    from paddle_ocrvl_sft.io import refuse_existing

    if not baseline_predictions:
        raise UsageError("--general with --predictions needs the base model's too: --baseline-predictions BASE.jsonl")
    normalize = checked_normalizations(normalize)
    samples = load_pages(pages, tasks)
    out = Path(out_dir)
    refuse_existing(out, force=force)
    records = join_predictions(samples, predictions)
    base_records = join_predictions(samples, baseline_predictions)
    write_jsonl(out / PREDICTIONS, records)
    write_jsonl(out / BASELINE / PREDICTIONS, base_records)
    return compare_and_report(samples, base_records, records, out, max_drift=max_drift, normalize=normalize,
                              labels={"general": str(pages), "model": str(predictions),
                                      "baseline": str(baseline_predictions)})


def compare_and_report(samples: list[EvalSample], base_records: list[dict], records: list[dict], out: Path, *,
                       max_drift: dict[str, float] | None, normalize: list[str], labels: dict) -> dict:
    """Drift rows (worst first) and metrics, real scores where pages have labels, the gate, the report."""
    from paddle_ocrvl_sft.evaluate.report import write_drift_report
    from paddle_ocrvl_sft.evaluate.runner import write_jsonl

    rows = drift_rows(samples, base_records, records)
    metrics = {**drift_metrics(rows), **labels, "tasks": sorted({row["kind"] for row in rows}),
               "max_drift": max_drift, "normalize": normalize}
    labelled = [i for i, s in enumerate(samples) if s.job.reference is not None]
    if labelled:
        picked = [samples[i] for i in labelled]
        metrics["labels"] = {
            "model": aggregate(score_samples(picked, [records[i] for i in labelled], normalize), by_doc_type=False),
            "baseline": aggregate(score_samples(picked, [base_records[i] for i in labelled], normalize), by_doc_type=False),
        }
    metrics["gate"] = gate(metrics, max_drift)
    order = sorted(range(len(rows)), key=lambda i: ("error" in rows[i], -rows[i]["drift"], i))  # failed ones last
    write_jsonl(out / ROWS_FILE, [rows[i] for i in order])
    write_json(out / DRIFT_FILE, metrics)
    write_drift_report(out, metrics, [rows[i] for i in order])
    return metrics


# --- terminal ----------------------------------------------------------------------------------------------


def drift_summary(metrics: dict) -> str:
    """The drift table for a terminal: per task the mean and worst drift (and the limit), runaways."""
    table = [["task", "n", "drift (mean)", "worst page", "limit"]]
    for kind, value in metrics["kinds"].items():
        limit = drift_limit(metrics.get("max_drift"), kind)
        mark = "" if limit is None else f"{limit:.2f}" + (" EXCEEDED" if value["drift"] > limit else " ok")
        table.append([kind, str(value["n"]), f"{value['drift']:.3f}", f"{value['max']:.3f}", mark or "-"])
    table.append(["all", str(metrics["n"]), f"{metrics['drift']:.3f}", "", ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = [f"drift of {metrics['model']} from {metrics['baseline']} on {metrics['pages']} general page(s) "
             "(0 = same answers as the base, 1 = nothing in common)"]
    lines += ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
              for row in table]
    base, now = metrics["runaways"]["baseline"], metrics["runaways"]["model"]
    lines.append("  runaways (base -> fine-tuned): " + ", ".join(
        f"{label.removeprefix('answers ')} {base[key]} -> {now[key]}" for key, label in HARMFUL_RUNAWAYS))
    labelled = metrics.get("labels")
    if labelled:
        from paddle_ocrvl_sft.evaluate.runner import summary

        lines.append("  with labels:\n    " + summary({**labelled["model"], "baseline": labelled["baseline"],
                                                       "model": metrics["model"], "data": metrics["general"],
                                                       "normalize": metrics["normalize"]}).replace("\n", "\n    "))
    if metrics.get("errors"):
        lines.append(f"  {metrics['errors']} answer pair(s) with a failed prediction left out of the drift "
                     "(rerun to retry them)")
    return "\n".join(lines)


def gate_message(failed: list[dict]) -> str:
    return "drift gate: " + "; ".join(f"{f['kind']} drifted {f['drift']:.3f} > --max-drift {f['limit']:.2f}"
                                      for f in failed) + " (the fine-tune moved too far from the base on general pages)"


def read_drift(out_dir) -> dict:
    return json.loads((Path(out_dir) / DRIFT_FILE).read_text(encoding="utf-8"))
