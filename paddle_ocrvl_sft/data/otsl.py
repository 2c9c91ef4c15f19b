"""Structured recognition targets: tables as OTSL, formulas as display LaTeX, charts as a text table.

The formats are the ones the ERNIEKit PaddleOCR-VL SFT guide trains with (seed 000 §8.1):

* table (``Table Recognition:``): OTSL, one token per grid cell, ``<nl>`` after each row, cell text
  right after ``<fcel>``: ``<fcel>分组<fcel>频数<nl><fcel>[41,51)<fcel>2<nl>``.
  ``<fcel>`` filled cell, ``<ecel>`` empty cell, ``<lcel>`` continues the cell to its left (colspan),
  ``<ucel>`` continues the cell above (rowspan), ``<xcel>`` both (inside a 2-D span).
* formula (``Formula Recognition:``): ``\\[ LaTeX \\]`` (the guide: ``\\[t_{n}\\in[0,\\infty]\\]``).
* chart (``Chart Recognition:``): rows joined by newlines, cells by `` | ``, the header row starting
  with the corner cell (the guide: ``"  | 22Q3 | 22Q3yoy\\n电商 | 85 | 100%"``).

HTML parsing choices (docs/convert.md): whitespace inside a cell collapses to single spaces as
HTML renders it; tags nested in a cell (``<b>``, ``<sup>``, a nested ``<table>``) keep only their
text; ``<br>`` becomes a space; ``<th>`` is a cell like ``<td>``; ``thead``/``tbody``/``tfoot``
are flattened in document order; ``<caption>`` and text outside cells are not part of the grid;
rows shorter than the widest row are padded with ``<ecel>``; a rowspan past the last row is
clipped (as browsers do); a missing, zero or invalid span counts as 1.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser

FCEL, ECEL, LCEL, UCEL, XCEL, NL = "<fcel>", "<ecel>", "<lcel>", "<ucel>", "<xcel>", "<nl>"
_TOKEN_RE = re.compile(r"(<fcel>|<ecel>|<lcel>|<ucel>|<xcel>|<nl>)")


@dataclass
class Cell:
    """A table cell: its text and how many grid rows/columns it covers."""

    text: str
    rowspan: int = 1
    colspan: int = 1


# --- HTML -> cells -----------------------------------------------------------------------------


def _span(value: str | None, limit: int) -> int:
    """HTML span attribute: leading digits; missing, zero or garbage mean 1; capped at ``limit``
    (the HTML standard caps colspan at 1000 and rowspan at 65534)."""
    digits = re.match(r"\s*(\d+)", value or "")
    return min(limit, max(1, int(digits.group(1)))) if digits else 1


class _TableParser(HTMLParser):
    """Collects the rows of the outermost ``<table>`` as lists of :class:`Cell`."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.rows: list[list[Cell]] = []
        self.depth = 0  # <table> nesting; only depth-1 rows and cells are structure
        self.tables = 0
        self.cell: Cell | None = None
        self.parts: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.depth += 1
            self.tables += self.depth == 1
            if self.depth > 1:
                self.parts.append(" ")
        elif self.depth != 1:  # inside a nested table: its cells are only text of ours
            if tag in ("br", "tr", "td", "th") and self.cell is not None:
                self.parts.append(" ")
        elif tag == "tr":
            self._close_cell()
            self.rows.append([])
        elif tag in ("td", "th"):
            self._close_cell()
            if not self.rows:  # a cell before any <tr>: browsers open a row for it
                self.rows.append([])
            attrs = dict(attrs)
            self.cell = Cell("", _span(attrs.get("rowspan"), 65534), _span(attrs.get("colspan"), 1000))
        elif tag == "br" and self.cell is not None:
            self.parts.append(" ")

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag == "table":  # <table/> opens nothing
            self.depth -= 1

    def handle_endtag(self, tag):
        if tag == "table":
            if self.depth == 1:
                self._close_cell()
            self.depth = max(0, self.depth - 1)
            if self.depth >= 1:
                self.parts.append(" ")
        elif self.depth == 1 and tag in ("td", "th", "tr"):
            self._close_cell()

    def handle_data(self, data):
        if self.cell is not None:
            self.parts.append(data)

    def _close_cell(self):
        if self.cell is not None:
            self.cell.text = " ".join("".join(self.parts).split())
            self.rows[-1].append(self.cell)
            self.cell, self.parts = None, []


def parse_html_table(markup: str) -> list[list[Cell]]:
    """The rows of the one table in ``markup`` (ValueError when there is none or several)."""
    parser = _TableParser()
    parser.feed(markup)
    parser.close()
    parser._close_cell()
    if parser.tables == 0 and not parser.rows:
        raise ValueError("no <table> found")
    if parser.tables > 1:
        raise ValueError(f"{parser.tables} tables found; one table per sample")
    if not any(parser.rows):
        raise ValueError("the table has no cells")
    return parser.rows


# --- cells <-> grid of OTSL tokens -------------------------------------------------------------


def cells_to_grid(rows: list[list[Cell]]) -> list[list[tuple[str, str]]]:
    """Lay HTML rows out on a grid (the HTML table model) as ``(token, text)`` per grid slot."""
    n_rows = len(rows)
    grid: list[list[tuple[str, str] | None]] = [[] for _ in range(n_rows)]

    def put(r: int, c: int, slot: tuple[str, str]) -> None:
        row = grid[r]
        row.extend([None] * (c + 1 - len(row)))
        if row[c] is not None:
            raise ValueError(f"row {r + 1}: a cell overlaps a spanning cell at column {c + 1}")
        row[c] = slot

    for r, cells in enumerate(rows):
        c = 0
        for cell in cells:
            while c < len(grid[r]) and grid[r][c] is not None:
                c += 1
            height = min(cell.rowspan, n_rows - r)
            for dr in range(height):
                for dc in range(cell.colspan):
                    if dr == 0 and dc == 0:
                        slot = (FCEL if cell.text else ECEL, cell.text)
                    else:
                        slot = ({(False, True): LCEL, (True, False): UCEL}.get((dr > 0, dc > 0), XCEL), "")
                    put(r + dr, c + dc, slot)
            c += cell.colspan
    width = max(len(row) for row in grid)
    return [[slot or (ECEL, "") for slot in row] + [(ECEL, "")] * (width - len(row)) for row in grid]


def grid_to_otsl(grid: list[list[tuple[str, str]]]) -> str:
    """Serialise a token grid: tokens in row order, cell text after ``<fcel>``, ``<nl>`` per row."""
    out = []
    for row in grid:
        for token, text in row:
            if _TOKEN_RE.search(text):
                raise ValueError(f"cell text {text!r} contains an OTSL token")
            out.append(token + text)
        out.append(NL)
    return "".join(out)


def html_to_otsl(markup: str) -> str:
    """HTML ``<table>`` → OTSL target string (spans become ``<lcel>/<ucel>/<xcel>``)."""
    return grid_to_otsl(cells_to_grid(parse_html_table(markup)))


def parse_otsl(otsl: str) -> list[list[tuple[str, str]]]:
    """OTSL string → rectangular token grid (short rows padded with ``<ecel>``).

    Lenient, because eval feeds model output here: text before a row's first token is a filled
    cell, text after ``<ecel>`` makes the cell filled, a final row without ``<nl>`` still counts.
    Text after a merge token (``<lcel>``...) has no cell of its own and is ignored by
    :func:`grid_to_cells`.
    """
    rows: list[list[list[str]]] = [[]]
    for piece in _TOKEN_RE.split(otsl):
        if piece == NL:
            rows.append([])
        elif _TOKEN_RE.fullmatch(piece):
            rows[-1].append([piece, ""])
        elif piece:
            if not rows[-1]:
                rows[-1].append([FCEL, ""])
            rows[-1][-1][1] += piece
    if not rows[-1]:
        rows.pop()
    grid = [[(FCEL if tok == ECEL and text.strip() else tok, text) for tok, text in row] for row in rows]
    width = max((len(row) for row in grid), default=0)
    return [row + [(ECEL, "")] * (width - len(row)) for row in grid]


def grid_to_cells(grid: list[list[tuple[str, str]]]) -> list[list[Cell]]:
    """Token grid → HTML rows: a cell at each ``<fcel>``/``<ecel>``, spans from the merge tokens.

    The colspan is the run of ``<lcel>`` to its right, the rowspan the run of ``<ucel>`` below it
    (rows below may continue the extra columns with ``<xcel>``/``<lcel>``/``<ucel>``). A merge
    token that continues nothing becomes an empty cell of its own, so every slot is accounted for.
    """
    n_rows = len(grid)
    used = [[False] * len(row) for row in grid]
    rows: list[list[Cell]] = []
    for r, row in enumerate(grid):
        cells = []
        for c, (token, text) in enumerate(row):
            if used[r][c]:
                continue
            colspan = rowspan = 1
            if token in (FCEL, ECEL):
                while c + colspan < len(row) and row[c + colspan][0] == LCEL:
                    colspan += 1
                while r + rowspan < n_rows and _continues_above(grid[r + rowspan], c, colspan):
                    rowspan += 1
            else:
                text = ""
            for dr in range(rowspan):
                for dc in range(colspan):
                    used[r + dr][c + dc] = True
            cells.append(Cell(text.strip(), rowspan, colspan))
        rows.append(cells)
    return rows


def _continues_above(row, c: int, colspan: int) -> bool:
    """Whether ``row`` continues a cell spanning columns ``c..c+colspan-1`` from the row above:
    ``<ucel>`` under its first column and merge tokens (not new cells) under the others.
    (Slots claimed by an earlier cell never qualify: that cell would have claimed (r, c) too.)"""
    return row[c][0] == UCEL and all(token in (LCEL, UCEL, XCEL) for token, _ in row[c + 1 : c + colspan])


def cells_to_html(rows: list[list[Cell]]) -> str:
    """Canonical HTML: ``<table><tr><td rowspan="2" colspan="3">text</td>...</tr></table>``."""
    out = ["<table>"]
    for cells in rows:
        out.append("<tr>")
        for cell in cells:
            attrs = "".join(
                f' {name}="{value}"' for name, value in (("rowspan", cell.rowspan), ("colspan", cell.colspan)) if value > 1
            )
            out.append(f"<td{attrs}>{html.escape(cell.text, quote=False)}</td>")
        out.append("</tr>")
    out.append("</table>")
    return "".join(out)


def otsl_to_html(otsl: str) -> str:
    """OTSL target string → canonical HTML table (the inverse of :func:`html_to_otsl`)."""
    return cells_to_html(grid_to_cells(parse_otsl(otsl)))


def rows_to_otsl(rows: list[list[str]]) -> str:
    """A plain table (CSV rows) → OTSL; CSV cannot express spans, so every cell is its own.

    Cell whitespace collapses as in HTML; empty cells become ``<ecel>``; short rows are padded.
    """
    if not any(rows):
        raise ValueError("the table has no cells")
    cells = [[Cell(" ".join(value.split())) for value in row] for row in rows]
    return grid_to_otsl(cells_to_grid(cells))


# --- formulas and charts -----------------------------------------------------------------------

_WRAPPED = (("\\[", "\\]"), ("\\(", "\\)"))


def formula_target(latex: str) -> str:
    """LaTeX → the guide's display form ``\\[...\\]`` (seed 000 §8.1).

    Input already wrapped in ``\\[...\\]`` or ``\\(...\\)`` is returned unchanged (outer blanks
    trimmed); ``$$...$$`` is rewrapped as ``\\[...\\]`` (same meaning, the guide's delimiters).
    """
    text = latex.strip()
    if not text:
        raise ValueError("empty formula")
    if any(text.startswith(a) and text.endswith(b) and len(text) >= 4 for a, b in _WRAPPED):
        return text
    if text.startswith("$$") and text.endswith("$$") and len(text) > 4:
        text = text[2:-2].strip()
    return f"\\[{text}\\]"


def chart_target(rows: list[list[str]]) -> str:
    """Chart data table → the guide's chart target (seed 000 §8.1).

    The first row is the header, starting with the corner cell; cells are joined by `` | ``, rows
    by newlines. An empty cell is written as one space: that reproduces the guide's example header
    ``"  | 22Q3 | 22Q3yoy"`` (empty corner) byte for byte. Newlines inside a cell become spaces.
    """
    if not any(any(cell.strip() for cell in row) for row in rows):
        raise ValueError("the chart table has no cells")
    lines = []
    for row in rows:
        cells = [" ".join(cell.split()) or " " for cell in row]
        lines.append(" | ".join(cells))
    return "\n".join(lines)
