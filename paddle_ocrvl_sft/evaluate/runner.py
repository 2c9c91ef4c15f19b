"""``eval``: predict on a validation set (resumable), score it, compare with a baseline, report.

Output directory (docs/eval.md)::

    OUT/run.json                   what these predictions were made with (checked on a rerun)
    OUT/predictions.jsonl          predict's records for the evaluated model, appended as they come
    OUT/baseline/predictions.jsonl the same for the baseline model
    OUT/scores.jsonl               one scored row per sample (baseline/scores.jsonl for the baseline)
    OUT/metrics.json               metrics per task and per document type, the baseline's under "baseline"
    OUT/plots/*.png, OUT/report.html
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterable

from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.evaluate.metrics import normalizer
from paddle_ocrvl_sft.evaluate.score import (RUNAWAYS, EvalSample, aggregate, format_change, format_value, headlines,
                                             join_predictions, kinds_of, load_samples, score_samples)
from paddle_ocrvl_sft.io import atomic_open, refuse_existing, write_json
from paddle_ocrvl_sft.predict import BACKENDS, default_batch_size, jobs_per_call, make_backend, run_resumable

PREDICTIONS = "predictions.jsonl"
BASELINE = "baseline"
RUN_INFO = "run.json"


def evaluate(model_dir, data, *, out_dir, baseline=None, backend: str = "paddle", device: str | None = None,
             batch_size: int | None = None, max_new_tokens: int | None = None, normalize: Iterable[str] = (),
             force: bool = False, progress: bool = True, **backend_options) -> dict:
    """Run ``model_dir`` (and ``baseline``, a second model dir) on ``data``, score, write ``out_dir``.

    Predictions go through :func:`paddle_ocrvl_sft.predict.make_backend` (``backend`` and
    ``device``/``max_new_tokens``/``backend_options`` as predict takes them) and are appended
    to ``OUT/predictions.jsonl`` line by line: a rerun with the same arguments skips every sample
    already predicted and redoes failed ones and a torn last line. Returns the metrics dict
    (also in ``OUT/metrics.json``): per task, ``n``, ``errors``, ``by_doc_type`` where samples name
    one, and the baseline's metrics under ``"baseline"``.

    Batching is predict's: ``batch_size`` (default 16 for transformers, else 1) images per model
    call, the transformers backend handed several batches at a time (sorted by length, the next one
    prepared while one decodes, ``kv_cache`` as predict takes it); the genai-server backend keeps
    ``concurrency`` requests in flight and retries transient failures.
    """
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend}: must be one of {', '.join(BACKENDS)}")
    if baseline is not None and backend == "genai-server":
        raise UsageError("--baseline: a genai-server serves one model; save each model's predictions with "
                         "`predict` and score them with --predictions and --baseline-predictions")
    normalize = checked_normalizations(normalize)
    samples = load_samples(data)
    out = Path(out_dir)
    model_label = str(model_dir) if model_dir is not None else str(backend_options.get("server_url"))
    info = {"data": os.path.realpath(data), "backend": backend,
            "model": _model_id(model_dir) or model_label, "baseline": _model_id(baseline),
            "stop_repeats": backend_options.get("stop_repeats")}
    _prepare_out_dir(out, info, force)
    predictions_of = model_predictions(samples, backend, device=device, batch_size=batch_size,
                                       max_new_tokens=max_new_tokens, progress=progress, **backend_options)
    records = predictions_of(model_dir, out)
    base_records = predictions_of(baseline, out / BASELINE) if baseline is not None else None
    return score_and_report(samples, records, base_records, out, normalize=normalize,
                            labels={"data": str(data), "model": model_label,
                                    "baseline": None if baseline is None else str(baseline)})


def evaluate_predictions(predictions, data, *, out_dir, baseline_predictions=None, normalize: Iterable[str] = (),
                         force: bool = False) -> dict:
    """Score saved ``predict`` output (joined to ``data`` by image and prompt) without a model."""
    normalize = checked_normalizations(normalize)
    samples = load_samples(data)
    out = Path(out_dir)
    refuse_existing(out, force=force)
    records = join_predictions(samples, predictions)
    base_records = join_predictions(samples, baseline_predictions) if baseline_predictions else None
    write_jsonl(out / PREDICTIONS, records)
    if base_records is not None:
        write_jsonl(out / BASELINE / PREDICTIONS, base_records)
    return score_and_report(samples, records, base_records, out, normalize=normalize,
                            labels={"data": str(data), "model": str(predictions),
                                    "baseline": None if baseline_predictions is None else str(baseline_predictions)})


def checked_normalizations(normalize: Iterable[str]) -> list[str]:
    """The normalization switches, checked before any model runs (their order of application is fixed)."""
    normalize = sorted(set(normalize))
    try:
        normalizer(normalize)
    except ValueError as exc:
        raise UsageError(f"--normalize: {exc}") from None
    return normalize


def score_and_report(samples: list[EvalSample], records: list[dict], base_records: list[dict] | None, out: Path, *,
                     normalize: list[str], labels: dict) -> dict:
    """Score predictions (and the baseline's), write scores, metrics.json, plots and report.html."""
    from paddle_ocrvl_sft.evaluate.report import write_report

    rows = score_samples(samples, records, normalize)
    base_rows = score_samples(samples, base_records, normalize) if base_records is not None else None
    metrics = {**aggregate(rows), "normalize": normalize, "data": labels["data"], "model": labels["model"]}
    write_jsonl(out / "scores.jsonl", rows)
    if base_rows is not None:
        metrics["baseline"] = {**aggregate(base_rows), "model": labels["baseline"]}
        write_jsonl(out / BASELINE / "scores.jsonl", base_rows)
    write_json(out / "metrics.json", metrics)
    write_report(out, metrics, rows, base_rows)
    return metrics


# --- resumable predictions ------------------------------------------------------------------------


def model_predictions(samples: list[EvalSample], backend: str, *, device: str | None, batch_size: int | None,
                      max_new_tokens: int | None, progress: bool, **backend_options) -> Callable[..., list[dict]]:
    """``predictions_of(model_dir, where)``: each sample's record from ``where/predictions.jsonl``
    (resumed, :func:`predict_resumable`) with ``backend`` on ``model_dir`` (loaded only if needed)."""
    batch_size = default_batch_size(backend, batch_size)
    options = {"device": device, "max_new_tokens": max_new_tokens, "batch_size": batch_size, **backend_options}

    def predictions_of(model_dir, where: Path) -> list[dict]:
        return predict_resumable(samples, where / PREDICTIONS,
                                 lambda: make_backend(backend, model_dir=model_dir, **options),
                                 batch_size=jobs_per_call(backend, batch_size), progress=progress)

    return predictions_of


def predict_resumable(samples: list[EvalSample], path: Path, make: Callable[[], object], *, batch_size: int = 1,
                      progress: bool = True) -> list[dict]:
    """Each sample's predict record, in sample order, from ``path`` or made now and appended to it.

    Lines are appended and flushed one by one, so an interrupted run keeps everything it finished;
    on the next run the complete lines are kept, a torn last line is dropped, failed predictions
    (``error`` lines) are dropped to be retried, and only the rest is predicted. The backend is
    made (the model loaded) only when something is left to predict.
    """
    return run_resumable([s.job for s in samples], path, make, batch_size=batch_size, progress=progress,
                         other="this folder holds another evaluation (use another -o or --force)")


def _model_id(model_dir) -> str | None:
    return None if model_dir is None else os.path.realpath(model_dir)


def _prepare_out_dir(out: Path, info: dict, force: bool) -> None:
    """A new dir, or one this same evaluation started (resumed); anything else needs ``force``."""
    info_path = out / RUN_INFO
    if force:
        for stale in (out / PREDICTIONS, out / BASELINE / PREDICTIONS):
            stale.unlink(missing_ok=True)
    elif info_path.is_file():
        try:
            before = json.loads(info_path.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{info_path}: not JSON; use --force to start this evaluation over") from None
        changed = [k for k in info if before.get(k) != info[k]]
        if changed:
            what = ", ".join(f"{k} was {before.get(k)}" for k in changed)
            raise UserError(f"{out}: holds an evaluation made with other inputs ({what}); "
                            "use another -o or --force to start over")
    else:
        refuse_existing(out, force=False)
    write_json(info_path, info)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


# --- terminal summary ---------------------------------------------------------------------------------


def runaway_lines(metrics: dict) -> list[list[str]]:
    """Summary rows of the runaway counts (model, and baseline and change when there is one).
    Answers whose backend did not say how they ended cannot count as at the cap: the label says so."""
    now = metrics.get("runaways")
    if not now:
        return []
    base = (metrics.get("baseline") or {}).get("runaways") if metrics.get("baseline") else None
    lines = []
    for key, label in RUNAWAYS:
        if key == "guard_cut" and not now[key] and not (base or {}).get(key):
            continue
        if key == "at_cap" and now["finish_known"] < now["n"]:
            label += f" (known for {now['finish_known']} of {now['n']})"
        line = [f"{label} (n={now['n']})"]
        if metrics.get("baseline"):
            if base is None:
                line += ["-", format_value(key, now[key]), ""]
            else:
                line += [format_value(key, base[key]), format_value(key, now[key]),
                         format_change(key, base[key], now[key], False)]
        else:
            line.append(format_value(key, now[key]))
        lines.append(line)
    return lines


def summary(metrics: dict) -> str:
    """A short before/after table of the headline metrics, for a terminal."""
    base = metrics.get("baseline")
    header = ["metric", "baseline", "model", "change"] if base else ["metric", "model"]
    table = [header]
    for kind in kinds_of(metrics):
        for key, label, higher in headlines(kind):
            now = metrics[kind][key]
            line = [f"{kind} {label} (n={metrics[kind]['n']})"]
            if base:
                before = base.get(kind, {}).get(key)
                if before is None:
                    line += ["-", format_value(key, now), ""]
                else:
                    line += [format_value(key, before), format_value(key, now), format_change(key, before, now, higher)]
            else:
                line.append(format_value(key, now))
            table.append(line)
    table += runaway_lines(metrics)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [f"eval of {metrics['model']} on {metrics['data']}: {metrics['n']} samples"
             + (f", {metrics['errors']} failed predictions" if metrics["errors"] else "")]
    lines += ["  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              for row in table]
    return "\n".join(lines)

