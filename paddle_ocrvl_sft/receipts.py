"""A tiny synthetic receipt dataset for the demo and tests: rendered images with known fields.

Deterministic for a given seed; written as per-image annotations in seed 001's shape
(``{"image": ..., "data": {...}}``) so ``data kie`` turns them into KIE samples.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

STORES = ["BERGHOTEL GROSSE SCHEIDEGG", "CAFE LUMEN", "MARKT 24", "NOODLE HOUSE", "PAPER & INK"]
ITEMS = ["LATTE MACCHIATO", "GLOKI", "SCHNITZEL", "NOTEBOOK", "PEN", "RAMEN", "GREEN TEA", "CROISSANT"]


def receipt_fields(rng: random.Random) -> dict:
    items = []
    for name in rng.sample(ITEMS, rng.randint(1, 3)):
        qty = rng.randint(1, 3)
        price = rng.randint(150, 2500) / 100
        items.append({"NAME": name, "QUANTITY": str(qty), "UNIT PRICE": f"{price:.2f}", "TOTAL PRICE": f"{qty * price:.2f}"})
    total = sum(float(i["TOTAL PRICE"]) for i in items)
    return {
        "STORE": rng.choice(STORES),
        "RECEIPT NUMBER": str(rng.randint(1000, 99999)),
        "DATE": f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.20{rng.randint(10, 26)}",
        "ITEMS": items,
        "TOTAL": f"{total:.2f}",
    }


def draw_lines(lines: list[str], width: int = 320):
    """A receipt-like PIL image: one text line per entry, PIL's built-in font (no font files)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, 24 + 18 * len(lines)), "white")
    draw = ImageDraw.Draw(image)
    for row, text in enumerate(lines):
        draw.text((14, 12 + 18 * row), text, fill="black")
    return image


def render_receipt(fields: dict, path: Path) -> None:
    """Draw a receipt's fields (``receipt_fields`` shape) into ``path``."""
    lines = [fields["STORE"], f"NO. {fields['RECEIPT NUMBER']}   {fields['DATE']}", ""]
    for item in fields["ITEMS"]:
        lines.append(f"{item['QUANTITY']}x {item['NAME']}")
        lines.append(f"   {item['UNIT PRICE']}   {item['TOTAL PRICE']}")
    lines += ["", f"TOTAL CHF {fields['TOTAL']}"]
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_lines(lines).save(path)


def make_receipts(root: str | Path, count: int = 24, seed: int = 0) -> Path:
    """Render ``count`` receipts under ``root/imgs`` and return ``root/annotations.jsonl``."""
    root = Path(root)
    rng = random.Random(seed)
    annotations = root / "annotations.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    with open(annotations, "w", encoding="utf-8") as fh:
        for i in range(count):
            fields = receipt_fields(rng)
            name = f"imgs/receipt_{i:03d}.png"
            render_receipt(fields, root / name)
            fh.write(json.dumps({"image": name, "data": fields}, ensure_ascii=False) + "\n")
    return annotations
