"""``report.html``: one self-contained page (inline CSS, images and plots as data URLs, no script).

Summary table (baseline, model, change), metrics per document type, plots (headline metrics side
by side, per-field accuracy for KIE), and the worst samples of the model with a thumbnail, the
reference, the prediction, a character diff and, for KIE, the fields it got wrong.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
from pathlib import Path

from paddle_ocrvl_sft.data.sample import is_remote
from paddle_ocrvl_sft.evaluate.score import (HARMFUL_RUNAWAYS, RUNAWAYS, drift_limit, format_change, format_value,
                                             headlines, kinds_of, runaway_words)
from paddle_ocrvl_sft.io import atomic_write_bytes, atomic_write_text

WORST = 12  # samples shown
THUMBNAIL = (360, 360)
DIFF_CHARS = 3000  # longer texts are diffed on their first characters (difflib is quadratic)
MODEL_COLOR, BASE_COLOR = "#2f6fde", "#b9b9b9"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1180px;color:#1d1d1f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;margin:0 0 12px}table{border-collapse:collapse;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 9px;text-align:left;vertical-align:top}th{background:#f5f5f7}
td.num{text-align:right;font-variant-numeric:tabular-nums}.better{color:#137a2a;font-weight:600}.worse{color:#b3261e;font-weight:600}
.plots img{max-width:100%;border:1px solid #eee;margin:4px 0}
.sample{display:flex;gap:16px;border:1px solid #ddd;border-radius:6px;padding:12px;margin:12px 0}
.sample img{max-width:360px;max-height:360px;border:1px solid #ccc;align-self:flex-start}
.sample .body{flex:1;min-width:0}.label{color:#555;font-size:12px;margin-top:6px}
pre{white-space:pre-wrap;word-break:break-word;background:#f8f8f8;padding:6px;margin:2px 0;font-size:13px}
del{background:#ffd7d5;text-decoration:line-through}ins{background:#d3f5d9;text-decoration:none}
.bad{color:#b3261e}
"""


def write_report(out: Path, metrics: dict, rows: list[dict], base_rows: list[dict] | None) -> Path:
    """Write ``out/plots/*.png`` and ``out/report.html``; returns the report's path."""
    plots = make_plots(metrics)
    for name, png in plots.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", png)
    page = render_html(metrics, rows, base_rows, plots)
    atomic_write_text(out / "report.html", page)
    return out / "report.html"


# --- plots ----------------------------------------------------------------------------------------


def make_plots(metrics: dict) -> dict[str, bytes]:
    """PNG plots: ``summary`` (headline rates, baseline vs model) and ``kie_fields`` (per field)."""
    import matplotlib

    matplotlib.use("Agg")
    plots = {}
    base = metrics.get("baseline") or {}
    bars = [(f"{kind}\n{label}", metrics[kind][key], base.get(kind, {}).get(key))
            for kind in kinds_of(metrics) for key, label, higher in headlines(kind)
            if higher and key not in ("json_valid", "json_valid_repaired")]
    bars += [(f"{kind}\n1 - {label}", 1 - metrics[kind][key], 1 - base[kind][key] if kind in base else None)
             for kind in kinds_of(metrics) for key, label, higher in headlines(kind) if key == "ned"]
    if bars:
        plots["summary"] = _bar_plot(bars, "higher is better", vertical=True)
    fields = metrics.get("kie", {}).get("per_field", {})
    if fields:
        base_fields = base.get("kie", {}).get("per_field", {})
        plots["kie_fields"] = _bar_plot(
            [(f"{name} (n={v['n']})", v["accuracy"], base_fields.get(name, {}).get("accuracy") if base else None)
             for name, v in fields.items()], "KIE field accuracy", vertical=False)
    return plots


def _bar_plot(bars: list[tuple[str, float, float | None]], title: str, *, vertical: bool) -> bytes:
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [b[0] for b in bars]
    model = np.array([b[1] for b in bars])
    has_base = any(b[2] is not None for b in bars)
    base = np.array([b[2] if b[2] is not None else 0.0 for b in bars])
    pos = np.arange(len(bars))
    width = 0.38 if has_base else 0.6
    size = (max(6.0, 1.3 * len(bars)), 3.6) if vertical else (8.0, max(2.4, 0.34 * len(bars) + 1.2))
    fig, ax = plt.subplots(figsize=size, dpi=100)
    draw = ax.bar if vertical else ax.barh
    groups = []
    if has_base:
        groups.append(draw(pos - width / 2, base, width, color=BASE_COLOR, label="baseline"))
    groups.append(draw(pos + (width / 2 if has_base else 0), model, width, color=MODEL_COLOR, label="model"))
    for bars_drawn in groups:  # the value on each bar, so a zero is visible as "0.00"
        ax.bar_label(bars_drawn, fmt="%.2f", fontsize=7, padding=2)
    if vertical:
        ax.set_xticks(pos, labels, fontsize=8)
        ax.set_ylim(0, 1.05)
    else:
        ax.set_yticks(pos, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.05)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


# --- HTML -----------------------------------------------------------------------------------------------


def _e(text) -> str:
    return html.escape(str(text))


def _format(key: str, value) -> str:
    return "–" if value is None else format_value(key, value)


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(image: str) -> str | None:
    """A JPEG thumbnail of a local image as a data URL (None for URLs and unreadable files)."""
    if is_remote(image):
        return None
    from PIL import Image

    try:
        with Image.open(image) as img:
            img.thumbnail(THUMBNAIL)  # before convert: JPEGs are decoded at a reduced scale
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="JPEG", quality=85)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return data_url(buf.getvalue(), "image/jpeg")


def char_diff(reference: str, prediction: str) -> str:
    """HTML of a character diff: what the prediction lacks in <del>, what it adds in <ins>."""
    ref, pred = reference[:DIFF_CHARS], prediction[:DIFF_CHARS]
    out = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(None, ref, pred, autojunk=False).get_opcodes():
        if op == "equal":
            out.append(_e(ref[a0:a1]))
            continue
        if a1 > a0:
            out.append(f"<del>{_e(ref[a0:a1])}</del>")
        if b1 > b0:
            out.append(f"<ins>{_e(pred[b0:b1])}</ins>")
    cut = " …" if max(len(reference), len(prediction)) > DIFF_CHARS else ""
    return "".join(out) + cut


def _metric_cells(key: str, before, now, higher: bool, compare: bool) -> str:
    """``<td>`` cells: baseline, model and the change (the baseline's two only when comparing)."""
    if not compare:
        return f'<td class="num">{_format(key, now)}</td>'
    change = "" if before is None else format_change(key, before, now, higher)
    cls = "better" if change.endswith("(better)") else "worse" if change.endswith("(worse)") else ""
    return (f'<td class="num">{_format(key, before)}</td><td class="num">{_format(key, now)}</td>'
            f'<td class="num {cls}">{_e(change)}</td>')


def _table(columns: list[str], compare: bool, rows: list[str]) -> str:
    head = "".join(f"<th>{c}</th>" for c in [*columns, *(["baseline", "model", "change"] if compare else ["model"])])
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def summary_table(metrics: dict) -> str:
    base = metrics.get("baseline")
    rows = [f"<tr><td>{_e(kind)} (n={metrics[kind]['n']})</td><td>{_e(label)}</td>"
            f"{_metric_cells(key, (base or {}).get(kind, {}).get(key), metrics[kind][key], higher, bool(base))}</tr>"
            for kind in kinds_of(metrics) for key, label, higher in headlines(kind)]
    runaways, base_runaways = metrics.get("runaways"), (base or {}).get("runaways")
    if runaways:
        rows += [f"<tr><td>runaways (n={runaways['n']})</td><td>{_e(label)}</td>"
                 f"{_metric_cells(key, (base_runaways or {}).get(key), runaways[key], False, bool(base))}</tr>"
                 for key, label in RUNAWAYS]
    return _table(["task", "metric"], bool(base), rows)


def doc_type_table(metrics: dict) -> str:
    types = metrics.get("by_doc_type")
    if not types:
        return ""
    base_types = (metrics.get("baseline") or {}).get("by_doc_type", {})
    rows = [f"<tr><td>{_e(name)}</td><td class='num'>{m[kind]['n']}</td><td>{_e(kind)} {_e(label)}</td>"
            f"{_metric_cells(key, base_types.get(name, {}).get(kind, {}).get(key), m[kind][key], higher, bool(base_types))}"
            "</tr>"
            for name, m in types.items() for kind in kinds_of(m) for key, label, higher in headlines(kind)[:2]]
    return f"<h2>By document type</h2>{_table(['document type', 'n', 'metric'], bool(base_types), rows)}"


def _text_block(label: str, text: str) -> str:
    return f'<div class="label">{_e(label)}</div><pre>{_e(text)}</pre>'


def sample_card(row: dict, base_row: dict | None) -> str:
    thumb = thumbnail(row["image"])
    image = f'<img src="{thumb}" alt="{_e(Path(row["image"]).name)}">' if thumb else \
        f'<div class="label">(no thumbnail: {_e(row["image"])})</div>'
    score = f"score {row['score']:.3f}" + (f" (baseline {base_row['score']:.3f})" if base_row else "")
    parts = [f"<b>{_e(row['source'])}</b> · {_e(row['kind'])}"
             + (f" · {_e(row['doc_type'])}" if row.get("doc_type") else "") + f" · {score}",
             _text_block("prompt", row["prompt"])]
    if "error" in row:
        parts.append(f'<div class="bad">prediction failed: {_e(row["error"])}</div>')
    runaway = runaway_words(row)
    if runaway:
        parts.append(f'<div class="bad">runaway: {_e(", ".join(runaway))}</div>')
    parts += [_text_block("reference", row["reference"]), _text_block("prediction", row["prediction"]),
              f'<div class="label">character diff (reference → prediction)</div>'
              f'<pre>{char_diff(row["reference"], row["prediction"])}</pre>']
    if base_row is not None:
        parts.append(_text_block("baseline prediction", base_row["prediction"]))
    wrong = [f for f in row.get("fields", []) if not f[3]]
    if wrong:
        cells = "".join(f"<tr><td>{_e(path)}</td><td>{_e(ref)}</td>"
                        f"<td class='bad'>{'(missing)' if pred is None else _e(pred)}</td></tr>"
                        for path, ref, pred, _ok in wrong)
        parts.append(f"<div class='label'>wrong fields ({len(wrong)} of {row['total']})</div>"
                     f"<table><tr><th>field</th><th>reference</th><th>prediction</th></tr>{cells}</table>")
    if row.get("extra"):
        parts.append(f"<div class='label'>extra keys: {_e(', '.join(row['extra']))}</div>")
    return f'<div class="sample">{image}<div class="body">{"".join(parts)}</div></div>'


def render_html(metrics: dict, rows: list[dict], base_rows: list[dict] | None, plots: dict[str, bytes]) -> str:
    base = metrics.get("baseline")
    meta = [f"data: {_e(metrics['data'])} · {metrics['n']} samples", f"model: {_e(metrics['model'])}"]
    if base:
        meta.append(f"baseline: {_e(base['model'])}")
    meta.append("normalization: " + (_e(", ".join(metrics["normalize"])) if metrics["normalize"] else "none"))
    if metrics["errors"]:
        meta.append(f"<span class='bad'>{metrics['errors']} failed predictions (scored as empty answers)</span>")
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["score"], i))[:WORST]
    cards = "".join(sample_card(rows[i], base_rows[i] if base_rows else None) for i in order)
    images = "".join(f'<img src="{data_url(png, "image/png")}" alt="{_e(name)}">' for name, png in plots.items())
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>eval report</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>Evaluation report</h1><p class='meta'>{'<br>'.join(meta)}</p>"
        f"<h2>Summary</h2>{summary_table(metrics)}{doc_type_table(metrics)}"
        f"<h2>Plots</h2><div class='plots'>{images}</div>"
        f"<h2>Worst samples ({len(order)} of {len(rows)}, lowest score first)</h2>{cards}"
        "</body></html>"
    )


# --- drift on general pages -------------------------------------------------------------------------------


def drift_card(row: dict) -> str:
    thumb = thumbnail(row["image"])
    image = f'<img src="{thumb}" alt="{_e(Path(row["image"]).name)}">' if thumb else \
        f'<div class="label">(no thumbnail: {_e(row["image"])})</div>'
    parts = [f"<b>{_e(row['source'] or Path(row['image']).name)}</b> · {_e(row['kind'])} · "
             f"drift {row['drift']:.3f} (agreement {row['agreement']:.3f})", _text_block("prompt", row["prompt"])]
    if "error" in row:
        parts.append(f'<div class="bad">prediction failed: {_e(row["error"])}</div>')
    for who, key in (("base model", "base"), ("fine-tuned model", "model")):
        flags = row[f"{key}_runaway"]
        runaway = runaway_words(flags, HARMFUL_RUNAWAYS)
        parts.append(_text_block(f"{who} answer" + (f" ({', '.join(runaway)})" if runaway else ""), row[key]))
    parts.append(f'<div class="label">character diff (base → fine-tuned)</div><pre>{char_diff(row["base"], row["model"])}</pre>')
    return f'<div class="sample">{image}<div class="body">{"".join(parts)}</div></div>'


def drift_table(metrics: dict) -> str:
    rows = []
    for kind, value in metrics["kinds"].items():
        limit = drift_limit(metrics.get("max_drift"), kind)
        verdict = "" if limit is None else ("<span class='bad'>exceeded</span>" if value["drift"] > limit else "within")
        rows.append(f"<tr><td>{_e(kind)}</td><td class='num'>{value['n']}</td><td class='num'>{value['drift']:.3f}</td>"
                    f"<td class='num'>{value['max']:.3f}</td><td class='num'>{'–' if limit is None else f'{limit:.2f}'}</td>"
                    f"<td>{verdict}</td></tr>")
    rows.append(f"<tr><td>all</td><td class='num'>{metrics['n']}</td><td class='num'>{metrics['drift']:.3f}</td>"
                "<td></td><td></td><td></td></tr>")
    head = "".join(f"<th>{c}</th>" for c in ("task", "n", "drift (mean)", "worst page", "--max-drift", ""))
    base, now = metrics["runaways"]["baseline"], metrics["runaways"]["model"]
    runaways = "".join(f"<tr><td>{_e(label)}</td><td class='num'>{base[key]}</td><td class='num'>{now[key]}</td></tr>"
                       for key, label in HARMFUL_RUNAWAYS)
    return (f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            f"<h2>Runaways</h2><table><tr><th></th><th>base</th><th>fine-tuned</th></tr>{runaways}</table>")


def render_drift_html(metrics: dict, rows: list[dict]) -> str:
    meta = [f"general pages: {_e(metrics['general'])} · {metrics['pages']} page(s), {metrics['n']} answers per model",
            f"model: {_e(metrics['model'])}", f"base: {_e(metrics['baseline'])}",
            "drift = 1 − agreement: 1 − NED of the texts, 1 − TEDS of the tables, 1 − NED of the LaTeX tokens "
            "(0: the same answer as the base)"]
    if metrics.get("errors"):
        meta.append(f"<span class='bad'>{metrics['errors']} answer pair(s) with a failed prediction, left out of "
                    "the drift (rerun to retry them)</span>")
    if metrics.get("gate"):
        meta.append("<span class='bad'>past --max-drift: " + _e(", ".join(f["kind"] for f in metrics["gate"])) + "</span>")
    labelled = ""
    if metrics.get("labels"):
        labelled = ("<h2>Pages with labels: base vs fine-tuned</h2>"
                    + summary_table({**metrics["labels"]["model"], "baseline": metrics["labels"]["baseline"]}))
    cards = "".join(drift_card(row) for row in rows[:WORST])
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>drift report</title>"
        f"<style>{CSS}</style></head><body>"
        f"<h1>Drift on general pages</h1><p class='meta'>{'<br>'.join(meta)}</p>"
        f"<h2>Drift per task</h2>{drift_table(metrics)}{labelled}"
        f"<h2>Most changed answers ({min(WORST, len(rows))} of {len(rows)}, largest drift first)</h2>{cards}"
        "</body></html>"
    )


def write_drift_report(out: Path, metrics: dict, rows: list[dict]) -> Path:
    """``out/report.html`` of a drift evaluation (rows already sorted, largest drift first)."""
    atomic_write_text(out / "report.html", render_drift_html(metrics, rows))
    return out / "report.html"
