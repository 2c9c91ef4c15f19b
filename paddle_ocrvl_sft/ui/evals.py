"""The Eval page: what ``eval`` wrote, read back — the summary, the report and each sample worst first.

An eval dir (docs/eval.md) holds ``metrics.json``, ``scores.jsonl`` (one row per sample, in the
data's order), ``baseline/scores.jsonl`` (the same samples, the baseline's answers) and the
self-contained ``report.html``. The per-sample view pairs the two rows of each sample and sorts
by the fine-tuned model's score (lowest first, as the report does), with the baseline's answer, the
character diff (the report's own ``char_diff``) and, for KIE, every field with both answers.
"""

from __future__ import annotations

import json
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError

PAGE = 10


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def metrics(eval_dir: Path) -> dict:
    try:
        return json.loads((eval_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise UserError(f"{eval_dir}: no readable metrics.json (not an eval dir)") from None


def summary(eval_dir: Path, roots) -> dict:
    """The headline numbers per task, baseline beside the model, as ``eval`` prints them."""
    from paddle_ocrvl_sft.evaluate.score import format_change, format_value, headlines, kinds_of

    m = metrics(eval_dir)
    base = m.get("baseline")
    table = []
    for kind in kinds_of(m):
        for key, label, higher in headlines(kind):
            now = m[kind][key]
            before = (base or {}).get(kind, {}).get(key)
            table.append({"task": kind, "n": m[kind]["n"], "metric": label,
                          "baseline": None if before is None else format_value(key, before),
                          "model": format_value(key, now),
                          "change": None if before is None else format_change(key, before, now, higher)})
    return {"dir": roots.shown(eval_dir), "abs_dir": str(eval_dir), "data": m.get("data"), "model": m.get("model"),
            "baseline": (base or {}).get("model"), "n": m.get("n"), "errors": m.get("errors"), "table": table,
            "report": (eval_dir / "report.html").is_file()}


def samples(eval_dir: Path, *, offset: int = 0, limit: int = PAGE, kind: str | None = None) -> dict:
    """Samples worst first: the fine-tuned answer, the baseline's, the reference, the diff, the fields."""
    from paddle_ocrvl_sft.evaluate.report import char_diff

    rows = _rows(eval_dir / "scores.jsonl")
    base_rows = _rows(eval_dir / "baseline" / "scores.jsonl")
    if base_rows and len(base_rows) != len(rows):
        base_rows = []  # not the same samples: show the model alone rather than pair the wrong rows
    order = [i for i in sorted(range(len(rows)), key=lambda i: (rows[i].get("score", 0.0), i))
             if kind is None or rows[i].get("kind") == kind]
    page = []
    for i in order[offset:offset + limit]:
        row, base = rows[i], base_rows[i] if base_rows else None
        item = {"index": i, "source": row.get("source"), "kind": row.get("kind"), "prompt": row.get("prompt"),
                "image_name": Path(str(row.get("image", ""))).name,
                "reference": row.get("reference", ""), "prediction": row.get("prediction", ""),
                "score": row.get("score"), "error": row.get("error"),
                "diff_html": char_diff(row.get("reference", ""), row.get("prediction", "")),
                "baseline": None if base is None else {"prediction": base.get("prediction", ""), "score": base.get("score"),
                                                       "error": base.get("error")},
                "fields": field_diff(row, base)}
        page.append(item)
    return {"total": len(order), "offset": offset, "samples": page, "has_baseline": bool(base_rows)}


def field_diff(row: dict, base: dict | None) -> list[dict] | None:
    """KIE rows: each reference field with the fine-tuned and the baseline value and whether each is right."""
    if "fields" not in row:
        return None
    base_fields = {f[0]: f for f in (base or {}).get("fields", [])}
    out = []
    for path, reference, prediction, correct in row["fields"]:
        b = base_fields.get(path)
        out.append({"field": path, "reference": reference, "model": prediction, "model_ok": bool(correct),
                    "baseline": b[2] if b else None, "baseline_ok": bool(b[3]) if b else None})
    for path in row.get("extra", []):
        out.append({"field": path, "reference": None, "model": "(extra key)", "model_ok": False,
                    "baseline": None, "baseline_ok": None})
    return out


def sample_image(eval_dir: Path, index: int) -> str:
    rows = _rows(eval_dir / "scores.jsonl")
    if not 0 <= index < len(rows):
        raise UserError(f"{eval_dir}: no sample {index}")
    return str(rows[index].get("image", ""))
