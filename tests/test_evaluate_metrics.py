"""Scoring functions against values computed by hand (docs/eval.md repeats these examples)."""

from __future__ import annotations

import json

import pytest

from paddle_ocrvl_sft.evaluate import metrics as M
from paddle_ocrvl_sft.evaluate.score import EvalSample, aggregate, score_samples
from paddle_ocrvl_sft.predict import Job
from paddle_ocrvl_sft.prompts import kie_prompt, render_json

# --- text -------------------------------------------------------------------------------------


def text_rows(pairs, prompt="OCR:"):
    samples = [EvalSample(Job(f"{i}.png", prompt, f"val.jsonl:{i + 1}", ref), "ocr") for i, (_, ref) in enumerate(pairs)]
    return score_samples(samples, [{"text": pred} for pred, _ in pairs])


def test_cer_ned_exact_by_hand():
    s = M.text_score("kitten", "sitting")  # k->s, e->i, +g
    assert (s.edits, s.ref_chars, s.cer, s.ned, s.exact) == (3, 7, 3 / 7, 3 / 7, False)
    # A longer prediction: CER divides by the reference (3/3), NED by the longer string (3/6).
    s = M.text_score("abcdef", "abc")
    assert (s.cer, s.ned) == (1.0, 0.5)
    assert M.text_score("", "").ned == 0.0 and M.text_score("", "").cer == 0.0
    assert M.text_score("x", "").cer == 1.0  # empty reference, non-empty answer

    metrics = aggregate(text_rows([("abc", "abcd"), ("abcdef", "abc"), ("same", "same")]))["ocr"]
    assert metrics["cer"] == pytest.approx((1 + 3 + 0) / (4 + 3 + 4))  # micro: edits / reference chars
    assert metrics["cer_macro"] == pytest.approx((1 / 4 + 3 / 3 + 0) / 3)
    assert metrics["ned"] == pytest.approx((1 / 4 + 3 / 6 + 0) / 3)  # PaddleFormers: mean of dist / max len
    assert metrics["exact"] == pytest.approx(1 / 3)
    assert metrics["n"] == 3


def test_normalization_switches():
    everything = M.normalizer(["width", "numbers", "whitespace"])
    assert everything("ＴＯＴＡＬ\u3000 CHF  1,234.50\n") == "TOTAL CHF 1234.5"
    assert everything("１２．００") == "12"  # full-width digits become a number, then canonical
    assert everything("007 -3.10 +2") == "7 -3.1 +2"
    assert everything("2024-01-02 01.02.2024 A1,5") == "2024-01-02 01.02.2024 A1,5"  # not numbers: untouched
    assert M.normalizer(["numbers"])("1,234.50  x") == "1234.5  x"  # each switch alone
    assert M.normalizer(["whitespace"])(" a \t b ") == "a b"
    assert M.normalizer()("ＴＯＴＡＬ 1,234.50") == "ＴＯＴＡＬ 1,234.50"  # off by default
    with pytest.raises(ValueError, match="unknown normalization case"):
        M.normalizer(["case"])
    rows = text_rows([("TOTAL 1234.5", "TOTAL 1,234.50")])
    assert rows[0]["exact"] is False
    samples = [EvalSample(Job("a.png", "OCR:", "v:1", "TOTAL 1,234.50"), "ocr")]
    assert score_samples(samples, [{"text": "TOTAL 1234.5"}], ["numbers"])[0]["exact"] is True


# --- KIE ----------------------------------------------------------------------------------------------

REFERENCE = {"STORE": "CAFE", "ITEMS": [{"NAME": "TEA", "PRICE": "1.50"}, {"NAME": "PIE", "PRICE": "3.00"}],
             "TOTAL": "4.50", "META": {"NO": "17"}}


def test_kie_nested_lists_in_another_order_missing_and_extra_keys_broken_json():
    # Items reversed, PIE's price wrong, a third item and a TAX key extra, META.NO missing, and the
    # JSON cut off before its closing braces (json_repair mends it).
    text = '{"STORE": "CAFE", "ITEMS": [{"NAME": "PIE", "PRICE": "3.10"}, {"NAME": "TEA", "PRICE": "1.50"}, ' \
           '{"NAME": "GUM"}], "TOTAL": "4.50", "TAX": "0.30", "META": {'
    s = M.kie_score(text, REFERENCE)
    got = {f.path: (f.prediction, f.correct) for f in s.fields}
    assert got == {"STORE": ("CAFE", True),
                   "ITEMS[0].NAME": ("TEA", True), "ITEMS[0].PRICE": ("1.50", True),  # aligned to item 2
                   "ITEMS[1].NAME": ("PIE", True), "ITEMS[1].PRICE": ("3.10", False),
                   "TOTAL": ("4.50", True), "META.NO": (None, False)}
    assert (s.correct, len(s.fields), s.missing) == (5, 7, 1)
    assert sorted(s.extra) == ["ITEMS[2].NAME", "TAX"]
    assert (s.json_valid, s.json_valid_repaired) == (False, True)

    # Matching by order alone would have scored the items 0 of 4: the assignment finds 3.
    by_order = sum(f.correct for f in M.compare_fields(REFERENCE["ITEMS"][0], {"NAME": "PIE", "PRICE": "3.10"})[0])
    assert by_order == 0


def test_kie_document_accuracy_and_per_field_counts():
    prompt = kie_prompt({"STORE": "", "ITEMS": [], "TOTAL": "", "META": {}})
    texts = [
        render_json({**REFERENCE, "ITEMS": REFERENCE["ITEMS"][::-1]}),  # all right, items reordered
        '```json\n{"STORE": "CAFE", "TOTAL": "4.5"}\n```',  # fenced: valid only after repair; 2 of 7
        "no idea",  # not JSON at all: every field missing
    ]
    samples = [EvalSample(Job(f"{i}.png", prompt, f"v:{i}", render_json(REFERENCE)), "kie", fields=REFERENCE)
               for i in range(3)]
    m = aggregate(score_samples(samples, [{"text": t} for t in texts]))["kie"]
    assert m["field_accuracy"] == pytest.approx((7 + 1 + 0) / 21)  # "4.5" != "4.50" without normalization
    assert m["document_accuracy"] == pytest.approx(1 / 3)
    assert (m["json_valid"], m["json_valid_repaired"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert (m["missing_keys"], m["extra_keys"], m["fields"]) == (5 + 7, 0, 21)
    assert m["per_field"]["ITEMS[].NAME"] == {"accuracy": pytest.approx(2 / 6), "n": 6}
    assert m["per_field"]["STORE"] == {"accuracy": pytest.approx(2 / 3), "n": 3}
    assert m["per_field"]["TOTAL"] == {"accuracy": pytest.approx(1 / 3), "n": 3}
    # With the numbers switch "4.5" == "4.50": the second answer gains TOTAL.
    m = aggregate(score_samples(samples, [{"text": t} for t in texts], ["numbers"]))["kie"]
    assert m["field_accuracy"] == pytest.approx((7 + 2 + 0) / 21)


def test_kie_leaves_and_empty_containers():
    assert M.leaf_paths({"a": {"b": [1, {"c": 2}]}, "d": [], "e": {}}) == ["a.b[0]", "a.b[1].c", "d", "e"]
    ref = {"N": 12.5, "E": None, "L": []}
    s = M.kie_score('{"N": "12.5", "E": "", "L": []}', ref)  # 12.5 == "12.5", null == "", [] == []
    assert s.correct == 3 and s.json_valid
    s = M.kie_score('{"N": 12.5, "L": ["x"]}', ref)
    assert [(f.path, f.correct) for f in s.fields] == [("N", True), ("E", False), ("L", False)]
    assert s.missing == 1
    # Lists inside list items are aligned too: every leaf found, in whatever order.
    nested = {"A": [{"T": ["x", "y"]}, {"T": ["z"]}]}
    s = M.kie_score('{"A": [{"T": ["z"]}, {"T": ["y", "x"]}]}', nested)
    assert [(f.path, f.prediction, f.correct) for f in s.fields] == [
        ("A[0].T[0]", "x", True), ("A[0].T[1]", "y", True), ("A[1].T[0]", "z", True)]


# --- tables -------------------------------------------------------------------------------------------


def test_teds_with_spans_by_hand():
    colspan = M.table_rows("<fcel>A<lcel><nl><fcel>B<fcel>C<nl>")  # table, 2 tr, 3 td: 6 nodes
    assert M.teds(colspan, colspan) == 1.0
    # Same structure, one cell text "A" -> "AB": rename cost NED("AB", "A") = 1/2.
    text_off = M.table_rows("<fcel>AB<lcel><nl><fcel>B<fcel>C<nl>")
    assert M.teds(text_off, colspan) == pytest.approx(1 - 0.5 / 6)
    assert M.teds(text_off, colspan, structure_only=True) == 1.0
    # The span missed: td(colspan 2) renamed to td (cost 1) and a td inserted (1); 7 nodes vs 6.
    no_span = M.table_rows("<fcel>A<fcel>x<nl><fcel>B<fcel>C<nl>")
    assert M.teds(no_span, colspan) == pytest.approx(1 - 2 / 7)
    assert M.teds(no_span, colspan, structure_only=True) == pytest.approx(1 - 2 / 7)

    rowspan = M.table_rows("<fcel>A<fcel>B<nl><ucel><fcel>C<nl>")  # A spans 2 rows: 6 nodes
    flat = M.table_rows("<fcel>A<fcel>B<nl><fcel>D<fcel>C<nl>")
    assert M.teds(flat, rowspan) == pytest.approx(1 - 2 / 7)  # A's rowspan (1) + D inserted (1)
    # An HTML answer is read as HTML; a 2-D span (<xcel>) round-trips.
    html = '<table><tr><td colspan="2">A</td></tr><tr><td>B</td><td>C</td></tr></table>'
    assert M.teds(M.table_rows(html), colspan) == 1.0
    block = M.table_rows("<fcel>A<lcel><fcel>B<nl><ucel><xcel><fcel>C<nl>")
    assert block[0][0].rowspan == 2 and block[0][0].colspan == 2 and M.teds(block, block) == 1.0
    assert M.teds(M.table_rows(""), colspan) == 0.0  # no table at all


# --- formulas and charts ---------------------------------------------------------------------------


def test_formula_tokens():
    assert M.latex_tokens(r"\[\frac{a}{b}\]") == M.latex_tokens(r"$\frac {a} {b}$") == ["\\frac", "{", "a", "}", "{", "b", "}"]
    assert M.latex_tokens(r"\(x\,y\)") == ["x", "\\,", "y"]
    samples = [EvalSample(Job("f.png", "Formula Recognition:", "v:1", r"\[x^2\]"), "formula")] * 2
    rows = score_samples(samples, [{"text": r"\[ x ^ 2 \]"}, {"text": "x^{2}"}])
    assert [r["exact"] for r in rows] == [True, False]
    assert rows[1]["ned"] == pytest.approx(2 / 5)  # [x ^ 2] vs [x ^ { 2 }]: 2 insertions over 5 tokens
    assert aggregate(rows)["formula"] == {"exact": 0.5, "ned": pytest.approx(0.2), "n": 2}


def test_chart_cell_accuracy():
    reference = "  | 22Q3 | 22Q3yoy\n电商 | 85 | 100%\n川渝 | 140 | 8%"
    prediction = " | 22Q3 | 22Q3yoy\n电商 | 85 | 100%\n川渝 | 104 | 8%\n外围 | 45 | 20%"
    assert M.chart_counts(prediction, reference) == (8, 12)  # 140 != 104; a whole extra row counts
    assert M.chart_counts(reference, reference) == (9, 9)
    samples = [EvalSample(Job("c.png", "Chart Recognition:", "v:1", reference), "chart")]
    assert aggregate(score_samples(samples, [{"text": prediction}]))["chart"]["cell_accuracy"] == pytest.approx(8 / 12)


def test_per_doc_type_and_failed_predictions():
    ref = json.dumps({"TOTAL": "1"})
    samples = [EvalSample(Job(f"{i}.png", 'OCR:{"TOTAL": ""}', f"v:{i}", ref), "kie", doc, {"TOTAL": "1"})
               for i, doc in enumerate(["invoice", "invoice", "receipt"])]
    records = [{"text": '{"TOTAL": "1"}'}, {"image": "1.png", "error": "boom"}, {"text": '{"TOTAL": "1"}'}]
    m = aggregate(score_samples(samples, records))
    assert m["errors"] == 1 and m["n"] == 3
    assert m["by_doc_type"]["invoice"]["kie"]["document_accuracy"] == 0.5
    assert m["by_doc_type"]["receipt"]["kie"]["document_accuracy"] == 1.0
    untyped = [EvalSample(samples[0].job, "kie", None, {"TOTAL": "1"})]
    assert "by_doc_type" not in aggregate(score_samples(untyped, records[:1]))
