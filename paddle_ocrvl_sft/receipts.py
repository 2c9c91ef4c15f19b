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
    return _render_set(root, count, seed, "receipt", receipt_fields, render_receipt)


def _render_set(root: str | Path, count: int, seed: int, stem: str, fields_of, render) -> Path:
    """``count`` images ``root/imgs/<stem>_NNN.png`` of seeded fields, and ``root/annotations.jsonl``."""
    root = Path(root)
    rng = random.Random(seed)
    annotations = root / "annotations.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    with open(annotations, "w", encoding="utf-8") as fh:
        for i in range(count):
            fields = fields_of(rng)
            name = f"imgs/{stem}_{i:03d}.png"
            render(fields, root / name)
            fh.write(json.dumps({"image": name, "data": fields}, ensure_ascii=False) + "\n")
    return annotations


# --- the demo's learnable task: one field in one large digit ------------------------------------------

TICKET_SIZE = (56, 56)  # 2 x 2 image tokens of 28 x 28 pixels, every one of them part of the digit
TICKET_FIELD = "TABLE"


def render_ticket(table: str, path: Path) -> None:
    """A restaurant table ticket: the table number in one large digit filling the ticket (PIL's
    bundled FreeType font, no font files). Nothing else is printed on it: every image token the
    tiny model sees carries part of the digit, which is what lets it learn to read in minutes."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", TICKET_SIZE, "white")
    draw = ImageDraw.Draw(image)
    draw.text((TICKET_SIZE[0] // 2, TICKET_SIZE[1] // 2), table, fill="black",
              font=ImageFont.load_default(size=60), anchor="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def make_tickets(root: str | Path, count: int = 16, seed: int = 0) -> Path:
    """Render ``count`` table tickets under ``root/imgs`` (table numbers 0-9, seeded) and return
    ``root/annotations.jsonl`` (``{"image": ..., "data": {"TABLE": "7"}}`` per ticket)."""
    return _render_set(root, count, seed, "ticket", lambda rng: {TICKET_FIELD: str(rng.randint(0, 9))},
                       lambda fields, path: render_ticket(fields[TICKET_FIELD], path))


def make_general_pages(root: str | Path) -> Path:
    """A few general pages (a text receipt, a small table) for the demo's drift check: the kind of
    page the base model should still read after a fine-tune on tickets."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    draw_lines(["CAFE LUMEN", "NO. 4821   03.04.2024", "2x LATTE   9.00", "TOTAL CHF 9.00"], width=224).save(
        root / "receipt.png")
    draw_lines(["ITEM   QTY   PRICE", "TEA    2     3.00", "CAKE   1     4.50"], width=224).save(root / "table.png")
    return root
