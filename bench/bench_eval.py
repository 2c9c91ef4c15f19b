"""Benchmark: scoring 10,000 KIE predictions (nested receipts with item lists).

    python bench/bench_eval.py --rows 10000 --out docs/benchmarks.md

Generates N receipt samples (paddle_ocrvl_sft.receipts.receipt_fields: store, number, date, 1-3
items of 4 fields, total) over 50 rendered images, and N predictions of mixed quality: items
shuffled, a wrong total, a missing key plus an extra one, JSON cut short (json_repair mends it),
fenced in ```json, or no JSON at all. Then times, each in a fresh process:

- `parse only`: json_repair of every prediction (the floor any KIE scorer pays)
- `score`: paddle_ocrvl_sft.evaluate.score.score_samples + aggregate (what `eval` computes)
- `eval --predictions`: the whole command: read and join, score, write metrics, scores and report.html

`--out` replaces this benchmark's section of the file (or appends it) and leaves the rest alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from docs_section import publish  # bench/ is sys.path[0] when a bench runs

TITLE = "## `eval`: scoring KIE predictions"
QUERY = {"STORE": "", "RECEIPT NUMBER": "", "DATE": "", "ITEMS": [], "TOTAL": ""}
IMAGES = 50

WORKERS = {
    "parse only": (
        "import json\nfrom paddle_ocrvl_sft.predict import parse_kie\n"
        "n = 0\nfor line in open(PRED, encoding='utf-8'):\n    parse_kie(json.loads(line)['text'])\n    n += 1"
    ),
    "score": (
        "from paddle_ocrvl_sft.evaluate.score import load_samples, join_predictions, score_samples, aggregate\n"
        "samples = load_samples(DATA); records = join_predictions(samples, PRED)\n"
        "t0 = time.perf_counter()\n"  # loading and joining are timed by the whole command below
        "m = aggregate(score_samples(samples, records)); n = m['n']"
    ),
    "eval --predictions": (
        "from paddle_ocrvl_sft.cli import main\n"
        "assert main(['eval', '--data', DATA, '--predictions', PRED, '-o', OUT, '--force']) == 0\nn = ROWS"
    ),
}


def predicted(fields: dict, i: int, rng: random.Random) -> str:
    from paddle_ocrvl_sft.prompts import render_json

    answer = json.loads(json.dumps(fields))
    kind = i % 10
    rng.shuffle(answer["ITEMS"])
    if kind == 5:
        answer["TOTAL"] = "0.00"
    elif kind == 6:
        del answer["DATE"]
        answer["CASHIER"] = "ANNA"
    text = render_json(answer)
    if kind == 7:
        return text[: len(text) * 2 // 3]
    if kind == 8:
        return f"```json\n{text}\n```"
    if kind == 9:
        return f"{fields['STORE']} TOTAL {fields['TOTAL']}"
    return text


def generate(root: Path, rows: int) -> tuple[Path, Path]:
    from paddle_ocrvl_sft.data.sample import make_sample
    from paddle_ocrvl_sft.prompts import kie_prompt, render_json
    from paddle_ocrvl_sft.receipts import receipt_fields, render_receipt

    root.mkdir(parents=True, exist_ok=True)
    data, pred = root / f"val{rows}.jsonl", root / f"pred{rows}.jsonl"
    if data.exists() and pred.exists():
        return data, pred
    rng = random.Random(0)
    prompt = kie_prompt(QUERY)
    with open(data, "w", encoding="utf-8") as fd, open(pred, "w", encoding="utf-8") as fp:
        for i in range(rows):
            fields = receipt_fields(rng)
            image = root / "imgs" / f"{i % IMAGES:03d}.png"
            if not image.exists():
                render_receipt(fields, image)
            fd.write(json.dumps(make_sample([f"imgs/{image.name}"], [(prompt, render_json(fields))]), ensure_ascii=False) + "\n")
            fp.write(json.dumps({"image": str(image), "prompt": prompt, "text": predicted(fields, i, rng)},
                                ensure_ascii=False) + "\n")
    return data, pred


def run_worker(kind: str, data: Path, pred: Path, out: Path, rows: int) -> dict:
    code = (
        f"import time, resource\nDATA, PRED, OUT, ROWS = {str(data)!r}, {str(pred)!r}, {str(out)!r}, {rows}\n"
        "t0 = time.perf_counter()\n" + WORKERS[kind]
        + "\nimport json\nprint(json.dumps({'seconds': time.perf_counter() - t0, 'rows': n,"
        " 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--work", default="bench/_work_eval", help="where the generated files go (git-ignored)")
    parser.add_argument("--out", help="put the markdown results into this file (its own section)")
    args = parser.parse_args()
    root = Path(args.work)
    data, pred = generate(root, args.rows)
    results = {kind: run_worker(kind, data, pred, root / "out", args.rows) for kind in WORKERS}
    metrics = json.loads((root / "out" / "metrics.json").read_text(encoding="utf-8"))["kie"]

    floor = results["parse only"]["seconds"]
    lines = [
        TITLE,
        "",
        f"Generated by `python bench/bench_eval.py --rows {args.rows} --out docs/benchmarks.md` (each contender in a "
        f"fresh process, one run). Machine: this project's CPU box, {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        "no GPU is involved in scoring.",
        "",
        f"{args.rows} receipt predictions, {metrics['fields']} reference fields (items in lists, shuffled in the "
        f"predictions); field accuracy {100 * metrics['field_accuracy']:.1f}%, document accuracy "
        f"{100 * metrics['document_accuracy']:.1f}%, valid JSON {100 * metrics['json_valid']:.0f}% "
        f"({100 * metrics['json_valid_repaired']:.0f}% after repair).",
        "",
        "| contender | seconds | predictions/s | vs parse only | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, r in results.items():
        lines.append(f"| {kind} | {r['seconds']:.2f} | {args.rows / r['seconds']:.0f} | {r['seconds'] / floor:.1f}x "
                     f"| {r['peak_rss_mib']:.0f} |")
    lines += [
        "",
        "`score` is the scoring alone (samples loaded and joined first); `eval --predictions` is the whole command "
        "including Python and library start-up, reading and joining both files, writing scores.jsonl, metrics.json, "
        "the plots and report.html (with thumbnails of the worst samples).",
    ]
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
