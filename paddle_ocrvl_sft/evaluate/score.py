"""From a validation set and predictions to per-sample scores and the metrics of each task.

The task of a sample is its prompt's kind (:func:`paddle_ocrvl_sft.prompts.prompt_kind`):
``kie`` for ``OCR:{...}``, ``table``/``formula``/``chart`` for the built-in queries, and every
other prompt (``OCR:``, seals, spotting, custom text) is scored as text. A sample may name its
document type in an optional top-level ``"doc_type"`` string (ERNIEKit ignores unknown keys);
metrics are then also given per document type.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import paddle_ocrvl_sft.evaluate.metrics as M
from paddle_ocrvl_sft.data.sample import is_remote
from paddle_ocrvl_sft.data.validate import DATASET_SUFFIXES
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import iter_records
from paddle_ocrvl_sft.loop_guard import ends_in_loop
from paddle_ocrvl_sft.predict import Job, collect_jobs
from paddle_ocrvl_sft.prompts import PROMPT_KINDS, prompt_kind

DOC_TYPE_KEY = "doc_type"
STRUCTURED_KINDS = ("kie", "table", "formula", "chart")

# The headline metrics of each task, for summaries and the report: (key, label, higher is better);
# the first two are the ones shown per document type.
HEADLINES = {
    "text": (("cer", "CER", False), ("ned", "NED", False), ("cer_macro", "CER (macro)", False),
             ("exact", "exact match", True)),
    "kie": (("field_accuracy", "field accuracy", True), ("document_accuracy", "document accuracy", True),
            ("json_valid", "valid JSON", True), ("json_valid_repaired", "valid JSON after repair", True),
            ("missing_keys", "missing keys", False), ("extra_keys", "extra keys", False)),
    "table": (("teds", "TEDS", True), ("teds_struct", "TEDS (structure)", True)),
    "formula": (("exact", "exact match", True), ("ned", "token NED", False)),
    "chart": (("cell_accuracy", "cell accuracy", True),),
}


def task_of(kind: str) -> str:
    """Which scorer a prompt kind gets: its own for structured kinds, ``text`` for the rest."""
    return kind if kind in STRUCTURED_KINDS else "text"


def headlines(kind: str):
    return HEADLINES[task_of(kind)]


def kinds_of(metrics: dict) -> list[str]:
    """The prompt kinds a metrics dict has numbers for, in the order prompts.PROMPT_KINDS lists them."""
    return [kind for kind in PROMPT_KINDS if kind in metrics]


COUNTS = ("missing_keys", "extra_keys", "n", "at_cap", "loops", "guard_cut")

# Runaway answers (metrics["runaways"], one per model), fewer is better: (key, label of the count,
# what one answer's card says, the test on one answer's runaway_flags). Every list of them derives from here.
RUNAWAY_KINDS = (
    ("at_cap", "answers at the token cap", "hit the token cap", lambda flags: flags.get("finish") == "length"),
    ("loops", "answers ending in a loop", "ends in a loop", lambda flags: bool(flags.get("loop"))),
    ("guard_cut", "answers cut by --stop-repeats", "cut by --stop-repeats",
     lambda flags: flags.get("finish") == "repeats"),
)
RUNAWAYS = tuple((key, label) for key, label, _words, _test in RUNAWAY_KINDS)
# The runaways that count against a model (the verdict, the drift report): the guard's cuts are its fix.
HARMFUL_RUNAWAYS = RUNAWAYS[:2]


def runaway_words(flags: dict, runaways=RUNAWAYS) -> list[str]:
    """What one answer's :func:`runaway_flags` say, e.g. ``["hit the token cap", "ends in a loop"]``
    (of ``runaways``: :data:`RUNAWAYS` or :data:`HARMFUL_RUNAWAYS`)."""
    keys = {key for key, _label in runaways}
    return [words for key, _label, words, test in RUNAWAY_KINDS if key in keys and test(flags)]


ALL_TASKS = "*"  # --max-drift's key for every task


def drift_limit(limits: dict | None, kind: str) -> float | None:
    """A prompt kind's ``--max-drift`` limit: its own, else the one for every task (``*``), else None."""
    limits = limits or {}
    return limits.get(kind, limits.get(ALL_TASKS))


def format_value(key: str, value) -> str:
    """Counts as integers, NED as a fraction (as PaddleFormers prints it), rates in percent."""
    if key in COUNTS:
        return str(value)
    if key == "ned":
        return f"{value:.4f}"
    return f"{100 * value:.1f}%"


def format_change(key: str, before, now, higher_is_better: bool) -> str:
    """``+12.5 pts (better)``: the difference in the metric's own unit and whether it is an improvement."""
    diff = now - before
    if diff == 0:
        return "same"
    amount = f"{diff:+d}" if key in COUNTS else f"{diff:+.4f}" if key == "ned" else f"{100 * diff:+.1f} pts"
    return f"{amount} ({'better' if (diff > 0) == higher_is_better else 'worse'})"


@dataclass(frozen=True)
class EvalSample:
    """One validation sample: the predict job (image, prompt, file:line, reference) and its labels."""

    job: Job
    kind: str
    doc_type: str | None = None
    fields: dict | None = None  # a KIE reference, parsed

    @property
    def key(self) -> tuple[str, str]:
        return image_key(self.job.image), self.job.prompt


def image_key(image: str) -> str:
    """How predictions are joined to samples: URLs as they are, local paths resolved."""
    return image if is_remote(image) else os.path.realpath(image)


def load_samples(data: str | os.PathLike) -> list[EvalSample]:
    """The samples of an ERNIEKit .jsonl/.json validation file, checked before any model runs."""
    if Path(data).suffix.lower() not in DATASET_SUFFIXES or not Path(data).is_file():
        raise UserError(f"--data {data}: expected an ERNIEKit .jsonl/.json dataset file (its answers are the references)")
    jobs = collect_jobs([data])
    if not jobs:
        raise UserError(f"{data}: no samples to evaluate")
    doc_types = {}
    for record in iter_records(data):
        value = record.value.get(DOC_TYPE_KEY) if isinstance(record.value, dict) else None
        if value is not None and not isinstance(value, str):
            raise UserError(f"{record.where}: field {DOC_TYPE_KEY}: must be a string, got {type(value).__name__}")
        doc_types[record.where] = value
    samples = []
    for job in jobs:
        kind = prompt_kind(job.prompt)
        fields = None
        if kind == "kie":
            try:
                fields = json.loads(job.reference)
            except ValueError:
                fields = None
            if not isinstance(fields, dict):
                raise UserError(f"{job.where}: the prompt asks for JSON (OCR:{{...}}) but the reference answer "
                                f"is not a JSON object: {job.reference[:80]!r}")
        samples.append(EvalSample(job, kind, doc_types.get(job.where), fields))
    return samples


def join_predictions(samples: list[EvalSample], predictions: str | os.PathLike) -> list[dict]:
    """``predict``'s output records matched to the samples by image and prompt (in sample order).

    A sample without a prediction is an error (naming the first few); predictions for images the
    data does not have are ignored (the caller may say so: see the returned list's length).
    """
    if not Path(predictions).is_file():
        raise UserError(f"{predictions}: no such predictions file")
    by_key: dict[tuple[str, str], list[dict]] = {}
    for record in iter_records(predictions):
        value = record.value
        if record.error:
            raise UserError(f"{record.where}: {record.error}")
        if not (isinstance(value, dict) and isinstance(value.get("image"), str) and isinstance(value.get("prompt"), str)
                and (isinstance(value.get("text"), str) or "error" in value)):
            raise UserError(f"{record.where}: not a predict output line (needs image, prompt and text or error)")
        by_key.setdefault((image_key(value["image"]), value["prompt"]), []).append(value)
    joined, unmatched = [], []
    for sample in samples:
        found = by_key.get(sample.key)
        if found:
            joined.append(found.pop(0))
        else:
            unmatched.append(sample)
    if unmatched:
        first = ", ".join(f"{s.job.where} ({Path(s.job.image).name}, {s.job.prompt[:40]!r})" for s in unmatched[:3])
        raise UserError(f"{predictions}: no prediction for {len(unmatched)} of {len(samples)} samples "
                        f"(joined by image and prompt), e.g. {first}")
    return joined


# --- per-sample scores ------------------------------------------------------------------------------


def score_sample(sample: EvalSample, record: dict, normalize: Callable[[str], str] = M.identity) -> dict:
    """One sample's row: what was asked and answered, its ``score`` in [0, 1] (higher is better,
    for ranking the worst samples) and the numbers its task's metrics are aggregated from.
    A failed prediction (an ``error`` record) is scored as an empty answer."""
    job = sample.job
    text = record.get("text") or ""
    row = {"source": job.where, "image": job.image, "prompt": job.prompt, "kind": sample.kind,
           "doc_type": sample.doc_type, "reference": job.reference, "prediction": text}
    if "error" in record:
        row["error"] = record["error"]
    row.update(runaway_flags(record))
    task = task_of(sample.kind)
    if task == "kie":
        s = M.kie_score(text, sample.fields, normalize)
        row.update(fields=[[f.path, f.reference, f.prediction, f.correct] for f in s.fields], extra=list(s.extra),
                   correct=s.correct, total=len(s.fields), missing=s.missing,
                   json_valid=s.json_valid, json_valid_repaired=s.json_valid_repaired,
                   score=s.correct / len(s.fields) if s.fields else 1.0)
    elif task == "table":
        pred, ref = M.table_rows(text), M.table_rows(job.reference)
        value = M.teds(pred, ref, normalize=normalize)
        row.update(teds=value, teds_struct=M.teds(pred, ref, structure_only=True), score=value)
    elif task == "formula":
        pred, ref = M.latex_tokens(normalize(text)), M.latex_tokens(normalize(job.reference))
        distance = M.ned(pred, ref)
        row.update(exact=pred == ref, ned=distance, score=1.0 - distance)
    elif task == "chart":
        right, total = M.chart_counts(text, job.reference, normalize)
        row.update(cells_right=right, cells_total=total, score=right / total if total else 1.0)
    else:
        s = M.text_score(normalize(text), normalize(job.reference))
        row.update(edits=s.edits, ref_chars=s.ref_chars, cer=s.cer, ned=s.ned, exact=s.exact, score=1.0 - s.ned)
    return row


def score_samples(samples: list[EvalSample], records: list[dict], normalize: Iterable[str] = ()) -> list[dict]:
    norm = M.normalizer(normalize)
    return [score_sample(s, r, norm) for s, r in zip(samples, records, strict=True)]


def runaway_flags(record: dict) -> dict:
    """How a predict record's answer ended (``finish``: stop / length / repeats, None when the
    backend could not tell) and whether its text ends in a loop (:func:`loop_guard.ends_in_loop`)."""
    return {"finish": record.get("finish"), "loop": ends_in_loop(record.get("text") or "") is not None}


# --- aggregation --------------------------------------------------------------------------------------


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def text_metrics(rows: list[dict]) -> dict:
    return {"cer": _ratio(sum(r["edits"] for r in rows), sum(r["ref_chars"] for r in rows)),
            "cer_macro": _mean(r["cer"] for r in rows), "ned": _mean(r["ned"] for r in rows),
            "exact": _mean(r["exact"] for r in rows), "n": len(rows)}


def kie_metrics(rows: list[dict]) -> dict:
    fields = sum(r["total"] for r in rows)
    per_field: dict[str, list[int]] = {}
    for r in rows:
        for path, _ref, _pred, ok in r["fields"]:
            counts = per_field.setdefault(M.field_name(path), [0, 0])
            counts[0] += ok
            counts[1] += 1
    return {
        "field_accuracy": _ratio(sum(r["correct"] for r in rows), fields),
        "document_accuracy": _mean(r["correct"] == r["total"] for r in rows),
        "json_valid": _mean(r["json_valid"] for r in rows),
        "json_valid_repaired": _mean(r["json_valid_repaired"] for r in rows),
        "missing_keys": sum(r["missing"] for r in rows),
        "extra_keys": sum(len(r["extra"]) for r in rows),
        "fields": fields,
        "per_field": {name: {"accuracy": right / n, "n": n} for name, (right, n) in sorted(per_field.items())},
        "n": len(rows),
    }


def table_metrics(rows: list[dict]) -> dict:
    return {"teds": _mean(r["teds"] for r in rows), "teds_struct": _mean(r["teds_struct"] for r in rows),
            "n": len(rows)}


def formula_metrics(rows: list[dict]) -> dict:
    return {"exact": _mean(r["exact"] for r in rows), "ned": _mean(r["ned"] for r in rows), "n": len(rows)}


def chart_metrics(rows: list[dict]) -> dict:
    return {"cell_accuracy": _ratio(sum(r["cells_right"] for r in rows), sum(r["cells_total"] for r in rows)),
            "n": len(rows)}


AGGREGATORS = {"text": text_metrics, "kie": kie_metrics, "table": table_metrics, "formula": formula_metrics,
               "chart": chart_metrics}


def runaway_metrics(rows: list[dict]) -> dict:
    """``at_cap``: answers that hit the token cap (``finish`` length); ``loops``: answers whose text
    ends in a repeated loop; ``guard_cut``: answers the loop guard cut; ``finish_known``: answers
    whose backend said how they ended (the others cannot count towards ``at_cap``)."""
    return {**{key: sum(test(r) for r in rows) for key, _label, _words, test in RUNAWAY_KINDS},
            "finish_known": sum(r.get("finish") is not None for r in rows), "n": len(rows)}


def aggregate(rows: list[dict], *, by_doc_type: bool = True) -> dict:
    """Metrics per prompt kind (``ocr``, ``kie``, ``table``, ...), ``n``, ``errors`` (failed
    predictions, scored as empty answers), ``runaways`` and, when samples name one, per document type."""
    kinds: dict[str, list[dict]] = {}
    for row in rows:
        kinds.setdefault(row["kind"], []).append(row)
    out = {kind: AGGREGATORS[task_of(kind)](group) for kind, group in kinds.items()}
    out.update(n=len(rows), errors=sum("error" in r for r in rows), runaways=runaway_metrics(rows))
    types = sorted({r["doc_type"] for r in rows if r["doc_type"] is not None})
    if by_doc_type and types:
        out["by_doc_type"] = {t: aggregate([r for r in rows if r["doc_type"] == t], by_doc_type=False) for t in types}
    return out
