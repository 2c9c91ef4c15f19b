"""Benchmark: `data validate` + `data stats` against a loop that decodes every image with PIL.

    python bench/bench_validate.py --rows 100000 --rss-rows 10000,100000 --out docs/benchmarks.md

Generates a dataset of N rows pointing at N distinct small image files (640x480 PNG/JPEG
receipt-like renders, ~16-45 KB), then times, side by side in one run, each in a fresh process:
- `validate`: paddle_ocrvl_sft.data.validate.validate_paths (header reads, no decode)
- `stats`: paddle_ocrvl_sft.data.stats.dataset_stats (validation + measurements)
- `baseline`: json.loads each line and Image.open(path).convert("RGB") every image
and records each process's peak RSS. Ratios are the meaningful numbers (same machine, same run);
absolute seconds depend on the machine and its disk cache.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from docs_section import publish  # bench/ is sys.path[0] when a bench runs

WORKERS = {
    "validate": "from paddle_ocrvl_sft.data.validate import validate_paths as f; r = f([P]); n = r.valid",
    "stats": "from paddle_ocrvl_sft.data.stats import dataset_stats as f; s = f([P]); n = s.samples; s.percentiles()",
    "baseline": (
        "import json, os\nfrom PIL import Image\nn = 0\nbase = os.path.dirname(P)\n"
        "for line in open(P, encoding='utf-8'):\n"
        "    s = json.loads(line)\n"
        "    for im in s['image_info']:\n"
        "        Image.open(os.path.join(base, im['image_url'])).convert('RGB')\n"
        "    n += 1"
    ),
}


def render_variants(count: int = 24) -> list[bytes]:
    """A few encoded receipt-like images; files are copies of these (generation stays fast)."""
    from PIL import Image, ImageDraw

    variants = []
    for i in range(count):
        im = Image.new("RGB", (640, 480), "white")
        draw = ImageDraw.Draw(im)
        for row, y in enumerate(range(12, 460, 16)):
            draw.text((16, y), f"ITEM {i:02d}-{row:02d}  QTY 1  PRICE {row * 1.25:6.2f}  TOTAL {row * 2.5:7.2f}", fill="black")
        buf = io.BytesIO()
        im.save(buf, format="PNG" if i % 2 else "JPEG", quality=90)
        variants.append(buf.getvalue())
    return variants


def generate(root: Path, rows: int) -> Path:
    data = root / f"d{rows}.jsonl"
    if data.exists():
        return data
    variants = render_variants()
    images = root / "imgs"
    images.mkdir(parents=True, exist_ok=True)
    with open(data, "w", encoding="utf-8") as fh:
        for i in range(rows):
            name = f"imgs/{i:06d}.img"
            target = root / name
            if not target.exists():
                target.write_bytes(variants[i % len(variants)])
            answer = f"ITEM {i % 24:02d} QTY 1 PRICE 1.25 TOTAL {i * 0.01:.2f}"
            fh.write(json.dumps({
                "image_info": [{"matched_text_index": 0, "image_url": name}],
                "text_info": [{"text": "OCR:", "tag": "mask"}, {"text": answer, "tag": "no_mask"}],
            }) + "\n")
    return data


def run_worker(kind: str, data: Path) -> dict:
    code = (
        "import resource, time\nP = " + repr(str(data)) + "\nt0 = time.perf_counter()\n" + WORKERS[kind]
        + "\nimport json\nprint(json.dumps({'seconds': time.perf_counter() - t0, 'rows': n,"
        " 'peak_rss_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def warm_cache(data: Path) -> None:
    """Read every file once so all three contenders see the same (warm) page cache."""
    base = data.parent
    for line in open(data, encoding="utf-8"):
        for im in json.loads(line)["image_info"]:
            (base / im["image_url"]).read_bytes()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100000)
    parser.add_argument("--rss-rows", default="10000,100000", help="row counts whose peak RSS is compared")
    parser.add_argument("--work", default="bench/_work", help="where the generated dataset goes (git-ignored)")
    parser.add_argument("--out", help="replace this benchmark's section of this markdown file")
    args = parser.parse_args()
    root = Path(args.work)
    t0 = time.perf_counter()
    data = generate(root, args.rows)
    print(f"dataset: {args.rows} rows / image files in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    warm_cache(data)
    results = {kind: run_worker(kind, data) for kind in ("validate", "stats", "baseline")}
    rss = {}
    for n in [int(x) for x in args.rss_rows.split(",")]:
        sub = generate(root, n) if n != args.rows else data
        rss[n] = {kind: run_worker(kind, sub)["peak_rss_mib"] for kind in ("validate", "stats")}

    base = results["baseline"]["seconds"]
    lines = [
        "## `data validate` / `data stats` vs. decoding every image with PIL",
        "",
        f"Generated by `python bench/bench_validate.py --rows {args.rows} --rss-rows {args.rss_rows} --out docs/benchmarks.md`"
        " (each contender in a fresh process, one run, warm page cache).",
        "",
        f"rows: {args.rows} (each its own 640x480 PNG/JPEG file), Python {sys.version.split()[0]}, {os.cpu_count()} cores",
        "",
        "| contender | seconds | rows/s | speed-up vs PIL decode loop | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, r in results.items():
        lines.append(
            f"| {kind} | {r['seconds']:.1f} | {r['rows'] / r['seconds']:.0f} | {base / r['seconds']:.1f}x | {r['peak_rss_mib']:.0f} |"
        )
    lines += ["", "| rows | validate peak RSS MiB | stats peak RSS MiB |", "|---:|---:|---:|"]
    lines += [f"| {n} | {v['validate']:.0f} | {v['stats']:.0f} |" for n, v in sorted(rss.items())]
    publish("\n".join(lines), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
