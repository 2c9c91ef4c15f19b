"""Pure scoring functions: one prediction against one reference (docs/eval.md has worked examples).

* text (``OCR:`` and other free-text prompts): character edits (Levenshtein, rapidfuzz) for CER,
  normalized edit distance as PaddleFormers' PaddleOCR-VL eval computes it, exact match;
* KIE (``OCR:{...}``): flattened fields with list items aligned by best assignment (scipy);
* tables: TEDS and structure-only TEDS (Zhong et al., PubTabNet) with APTED tree edit distance;
* formulas: exact match of LaTeX tokens; charts: cell accuracy.

Text normalization (:func:`normalizer`) is opt-in and the same for every kind.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterable

from apted import APTED, Config
from rapidfuzz.distance import Levenshtein

from paddle_ocrvl_sft.data.otsl import Cell, grid_to_cells, parse_html_table, parse_otsl
from paddle_ocrvl_sft.predict import parse_kie

# --- normalization -----------------------------------------------------------------------------

NORMALIZATIONS = ("width", "numbers", "whitespace")  # applied in this order

# Full-width ASCII variants (U+FF01..U+FF5E) and the ideographic space -> half-width.
_HALF_WIDTH = {0x3000: " ", **{code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}}
# A whitespace-delimited number: digits with optional thousands commas and decimals.
_NUMBER = re.compile(r"(?<!\S)([+-]?)((?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?!\S)")


def _canonical_number(match: re.Match) -> str:
    try:
        value = Decimal(match.group(2).replace(",", "")).normalize()
    except InvalidOperation:  # pragma: no cover - the pattern only matches valid decimals
        return match.group(0)
    return match.group(1) + format(value, "f")


def normalizer(switches: Iterable[str] = ()) -> Callable[[str], str]:
    """The text normalization applied to both sides before comparing (identity when none).

    ``width``: full-width forms -> half-width (``１２３ＡＢ`` -> ``123AB``, U+3000 -> space);
    ``numbers``: every whitespace-delimited number in canonical form (``1,234.50`` -> ``1234.5``,
    ``007`` -> ``7``; commas are thousands separators); ``whitespace``: runs of whitespace become
    one space, ends stripped.
    """
    switches = set(switches)
    unknown = switches - set(NORMALIZATIONS)
    if unknown:
        raise ValueError(f"unknown normalization {', '.join(sorted(unknown))}; known: {', '.join(NORMALIZATIONS)}")

    def normalize(text: str) -> str:
        if "width" in switches:
            text = text.translate(_HALF_WIDTH)
        if "numbers" in switches:
            text = _NUMBER.sub(_canonical_number, text)
        if "whitespace" in switches:
            text = " ".join(text.split())
        return text

    return normalize


def identity(text: str) -> str:
    return text


# --- text: CER, NED, exact -----------------------------------------------------------------------


@dataclass(frozen=True)
class TextScore:
    edits: int  # Levenshtein distance prediction -> reference (characters)
    ref_chars: int
    ned: float
    exact: bool

    @property
    def cer(self) -> float:
        """Per-sample CER; an empty reference scores 0 if the prediction is empty too, else 1."""
        if self.ref_chars == 0:
            return float(self.edits > 0)
        return self.edits / self.ref_chars


def text_score(prediction: str, reference: str) -> TextScore:
    """Character edits for CER, and NED as PaddleFormers' PaddleOCR-VL eval defines it
    (examples/best_practices/PaddleOCR-VL/README.md, "测试集评估"): Levenshtein distance divided
    by the longer string's length, 0 when both are empty; the corpus NED is the mean over samples."""
    edits = Levenshtein.distance(prediction, reference)
    longest = max(len(prediction), len(reference))
    return TextScore(edits, len(reference), edits / longest if longest else 0.0, prediction == reference)


def ned(a, b) -> float:
    """Normalized edit distance of two strings (or token lists): distance / longer length, 0 if both empty."""
    return Levenshtein.normalized_distance(a, b)


# --- KIE: fields ------------------------------------------------------------------------------------

MISSING = object()  # a path the prediction does not have


@dataclass(frozen=True)
class Field:
    """One reference leaf and what the prediction has at the same (aligned) path."""

    path: str  # "ITEMS[1].NAME" (list indices in the reference's order)
    reference: str
    prediction: str | None  # None: the prediction has no value at this path
    correct: bool

    @property
    def name(self) -> str:
        return field_name(self.path)


def field_name(path: str) -> str:
    """A path without list indices ("ITEMS[1].NAME" -> "ITEMS[].NAME"): what per-field accuracy groups by."""
    return re.sub(r"\[\d+\]", "[]", path)


@dataclass(frozen=True)
class KieScore:
    fields: tuple[Field, ...]
    extra: tuple[str, ...]  # prediction leaves with no reference leaf at their path
    json_valid: bool  # the raw text parses as a JSON object
    json_valid_repaired: bool  # ... after json_repair

    @property
    def correct(self) -> int:
        return sum(f.correct for f in self.fields)

    @property
    def missing(self) -> int:
        return sum(f.prediction is None for f in self.fields)


def leaf_text(value: Any) -> str:
    """A leaf as text: strings as they are, null as "", other JSON values as compact JSON (12.5)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def leaf_paths(value: Any, path: str = "") -> list[str]:
    """Every leaf path of a JSON value (a non-empty object or list is not a leaf itself)."""
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in leaf_paths(v, _join(path, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in leaf_paths(v, f"{path}[{i}]")]
    return [path]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def compare_fields(reference: Any, prediction: Any, normalize: Callable[[str], str] = identity,
                   path: str = "") -> tuple[list[Field], list[str]]:
    """Reference leaves scored against the prediction, and the prediction's extra leaf paths.

    Objects are compared key by key. Lists are compared item by item after aligning the
    prediction's items to the reference's by the assignment that maximizes correct leaves
    (``scipy.optimize.linear_sum_assignment``; ties keep the original order), so a model that lists
    the same items in another order loses nothing; unmatched predicted items are extra (their paths
    carry the prediction's own list index).
    """
    if isinstance(reference, dict) and reference:
        fields, extra = [], []
        pred = prediction if isinstance(prediction, dict) else {}
        for key, value in reference.items():
            f, e = compare_fields(value, pred.get(key, MISSING), normalize, _join(path, key))
            fields += f
            extra += e
        extra += [p for key in pred if key not in reference for p in leaf_paths(pred[key], _join(path, key))]
        return fields, extra
    if isinstance(reference, list) and reference:
        pred = prediction if isinstance(prediction, list) else []
        order = _align(reference, pred, normalize)
        fields, extra = [], []
        for i, value in enumerate(reference):
            j = order.get(i)
            f, e = compare_fields(value, MISSING if j is None else pred[j], normalize, f"{path}[{i}]")
            fields += f
            extra += e
        matched = set(order.values())
        extra += [p for j, item in enumerate(pred) if j not in matched for p in leaf_paths(item, f"{path}[{j}]")]
        return fields, extra
    if prediction is MISSING:
        return [Field(path, leaf_text(reference), None, False)], []
    ref, pred = leaf_text(reference), leaf_text(prediction)
    return [Field(path, ref, pred, normalize(ref) == normalize(pred))], []


def _align(reference: list, prediction: list, normalize) -> dict[int, int]:
    """Reference item index -> predicted item index, maximizing the correct leaves in total."""
    if not prediction:
        return {}
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    gain = np.zeros((len(reference), len(prediction)))
    for i, ref in enumerate(reference):
        for j, pred in enumerate(prediction):
            gain[i, j] = sum(f.correct for f in compare_fields(ref, pred, normalize)[0])
    # A tie-breaker far below one correct leaf: equal gains keep the items' order.
    gain += np.eye(len(reference), len(prediction)) * 1e-6
    rows, cols = linear_sum_assignment(gain, maximize=True)
    return dict(zip(rows.tolist(), cols.tolist()))


def kie_score(text: str, reference: dict, normalize: Callable[[str], str] = identity) -> KieScore:
    """Score a raw KIE answer against the reference object (parsed with json_repair, as predict does)."""
    try:
        valid = isinstance(json.loads(text), dict)
    except (ValueError, RecursionError):
        valid = False
    parsed = parse_kie(text)
    fields, extra = compare_fields(reference, MISSING if parsed is None else parsed, normalize)
    return KieScore(tuple(fields), tuple(extra), valid, parsed is not None)


# --- tables: TEDS ---------------------------------------------------------------------------------


class _Node:
    """A node of the HTML table tree APTED walks: table -> tr -> td (spans and text on td)."""

    __slots__ = ("tag", "rowspan", "colspan", "text", "children")

    def __init__(self, tag: str, children=(), rowspan: int = 1, colspan: int = 1, text: str = ""):
        self.tag, self.children, self.rowspan, self.colspan, self.text = tag, list(children), rowspan, colspan, text


def table_rows(text: str) -> list[list[Cell]]:
    """A table answer's rows of cells: HTML (``<table>...``) parsed as such, anything else as OTSL
    (the format the model is trained to write) through :mod:`paddle_ocrvl_sft.data.otsl`."""
    if "<table" in text.lower():
        try:
            return parse_html_table(text)
        except ValueError:
            return []
    return grid_to_cells(parse_otsl(text))


def table_tree(rows: list[list[Cell]], normalize: Callable[[str], str] = identity) -> _Node:
    return _Node("table", [_Node("tr", [_Node("td", (), c.rowspan, c.colspan, normalize(c.text)) for c in row])
                           for row in rows])


class _TableCosts(Config):
    """APTED costs of TEDS: insert/delete 1; rename 1 across tags or spans, else the cell texts' NED."""

    valuecls = float

    def __init__(self, structure_only: bool):
        self.structure_only = structure_only

    def rename(self, a: _Node, b: _Node) -> float:
        if a.tag != b.tag or a.rowspan != b.rowspan or a.colspan != b.colspan:
            return 1.0
        if a.tag == "td" and not self.structure_only:
            return ned(a.text, b.text)
        return 0.0

    def children(self, node: _Node) -> list[_Node]:
        return node.children


def _tree_size(node: _Node) -> int:
    return 1 + sum(_tree_size(child) for child in node.children)


def teds(pred_rows: list[list[Cell]], ref_rows: list[list[Cell]], *, structure_only: bool = False,
         normalize: Callable[[str], str] = identity) -> float:
    """Tree-edit-distance-based similarity (Zhong et al. 2020, PubTabNet):
    ``1 - TED(pred, ref) / max(|pred|, |ref|)`` over table/tr/td trees, |T| = number of nodes.

    Inserting or deleting a node costs 1; renaming costs 1 if the tags or the spans differ, else
    (for ``td``) the normalized edit distance of the cell texts, 0 with ``structure_only``.
    A prediction with no cells scores 0, as in PubTabNet's reference implementation.
    """
    if not any(pred_rows):
        return 0.0
    pred, ref = table_tree(pred_rows, normalize), table_tree(ref_rows, normalize)
    distance = APTED(pred, ref, _TableCosts(structure_only)).compute_edit_distance()
    return 1.0 - distance / max(_tree_size(pred), _tree_size(ref))


# --- formulas and charts -----------------------------------------------------------------------------

_DELIMITERS = (("\\[", "\\]"), ("\\(", "\\)"), ("$$", "$$"), ("$", "$"))
_LATEX_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|\S")


def latex_tokens(text: str) -> list[str]:
    """A formula as LaTeX tokens: outer ``\\[..\\]``/``\\(..\\)``/``$$..$$``/``$..$`` removed,
    whitespace dropped (it separates tokens and means nothing else in math mode), control words
    (``\\frac``) one token each."""
    text = text.strip()
    for left, right in _DELIMITERS:
        if text.startswith(left) and text.endswith(right) and len(text) >= len(left) + len(right):
            text = text[len(left) : len(text) - len(right)]
            break
    return _LATEX_TOKEN.findall(text)


def chart_cells(text: str, normalize: Callable[[str], str] = identity) -> list[list[str]]:
    """A chart answer as rows of cells (rows by newline, cells by ``|``, cell text stripped)."""
    return [[normalize(cell.strip()) for cell in line.split("|")] for line in text.strip("\n").split("\n")]


def chart_counts(prediction: str, reference: str, normalize: Callable[[str], str] = identity) -> tuple[int, int]:
    """(cells right, cells compared): cell (row i, column j) is right when both tables have it and
    the texts are equal; every position either table has is compared, so extra cells count as wrong."""
    pred, ref = chart_cells(prediction, normalize), chart_cells(reference, normalize)
    right = total = 0
    for i in range(max(len(pred), len(ref))):
        p = pred[i] if i < len(pred) else []
        r = ref[i] if i < len(ref) else []
        total += max(len(p), len(r))
        right += sum(a == b for a, b in zip(p, r))
    return right, total
