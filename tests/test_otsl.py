import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paddle_ocrvl_sft.data.otsl import (
    chart_target,
    formula_target,
    html_to_otsl,
    otsl_to_html,
    parse_otsl,
    rows_to_otsl,
)

# Seed 000 §8.1, the table sample's target, verbatim.
GUIDE_TABLE = (
    "<fcel>分组<fcel>频数<fcel>频率<nl><fcel>[41,51)<fcel>2<fcel>\\( \\frac{2}{30} \\)<nl>"
    "<fcel>[51,61)<fcel>1<fcel>\\( \\frac{1}{30} \\)<nl><fcel>[61,71)<fcel>4<fcel>\\( \\frac{4}{30} \\)<nl>"
    "<fcel>[71,81)<fcel>6<fcel>\\( \\frac{6}{30} \\)<nl><fcel>[81,91)<fcel>10<fcel>\\( \\frac{10}{30} \\)<nl>"
    "<fcel>[91,101)<fcel>5<fcel>\\( \\frac{5}{30} \\)<nl><fcel>[101,111)<fcel>2<fcel>\\( \\frac{2}{30} \\)<nl>"
)
GUIDE_CHART = "  | 22Q3 | 22Q3yoy\n电商 | 85 | 100%\n川渝 | 140 | 8%\n云贵陕 | 95 | 12%\n外围地区 | 45 | 20%"
OTSL_TOKEN = re.compile(r"<(fcel|ecel|lcel|ucel|xcel|nl)>")


def test_guide_table_example_round_trips_exactly():
    markup = otsl_to_html(GUIDE_TABLE)
    assert markup.startswith("<table><tr><td>分组</td><td>频数</td><td>频率</td></tr><tr><td>[41,51)</td>")
    assert markup.count("<tr>") == 8 and markup.count("<td>") == 24
    assert html_to_otsl(markup) == GUIDE_TABLE


def test_spans_become_merge_tokens_and_come_back():
    # A | B B        (B: colspan 2)
    # A | 1 | 2      (A: rowspan 2)
    # C C | z        (C: rowspan 2, colspan 2)
    # C C | q
    markup = (
        '<table><tr><td rowspan="2">A</td><td colspan="2">B</td></tr><tr><td>1</td><td>2</td></tr>'
        '<tr><td rowspan="2" colspan="2">C</td><td>z</td></tr><tr><td>q</td></tr></table>'
    )
    otsl = html_to_otsl(markup)
    assert otsl == "<fcel>A<fcel>B<lcel><nl><ucel><fcel>1<fcel>2<nl><fcel>C<lcel><fcel>z<nl><ucel><xcel><fcel>q<nl>"
    assert otsl_to_html(otsl) == markup


def test_rows_fully_covered_by_rowspans_keep_their_empty_tr():
    markup = '<table><tr><td rowspan="2">a</td><td rowspan="2">b</td></tr><tr></tr><tr><td>c</td><td></td></tr></table>'
    assert html_to_otsl(markup) == "<fcel>a<fcel>b<nl><ucel><ucel><nl><fcel>c<ecel><nl>"
    assert otsl_to_html(html_to_otsl(markup)) == markup


def test_real_world_html_is_normalised():
    markup = """
    <table border=1><caption>ignored caption</caption>
      <thead><tr><th colspan=2>Name &amp; <b>role</b></th><th>Note</th></tr></thead>
      <tbody>
        <tr><td>Ann</td><td>dev<br/>lead</td><td>&lt;x&gt;  &#20013;
        文</td></tr>
        <tr><td>Bob</td></tr>
        <tr><td>in<table><tr><td>ner</td><td>t</td></tr></table></td><td>  </td><td>ok</td><td>extra</td></tr>
      </tbody>
    </table>"""
    assert html_to_otsl(markup) == (
        "<fcel>Name & role<lcel><fcel>Note<ecel><nl>"
        "<fcel>Ann<fcel>dev lead<fcel><x> 中 文<ecel><nl>"
        "<fcel>Bob<ecel><ecel><ecel><nl>"  # ragged rows are padded to the widest row
        "<fcel>in ner t<ecel><fcel>ok<fcel>extra<nl>"
    )
    assert otsl_to_html(html_to_otsl(markup)).startswith('<table><tr><td colspan="2">Name &amp; role</td>')


def test_rowspan_past_the_last_row_is_clipped_and_bad_spans_count_as_one():
    assert html_to_otsl('<table><tr><td rowspan="9">a</td><td colspan="x">b</td></tr><tr><td>c</td></tr></table>') == (
        "<fcel>a<fcel>b<nl><ucel><fcel>c<nl>"
    )
    assert html_to_otsl('<table><tr><td rowspan="0" colspan="0">a</td></tr></table>') == "<fcel>a<nl>"


@pytest.mark.parametrize(
    "markup, message",
    [
        ("<p>no table</p>", "no <table>"),
        ("<table></table>", "no cells"),
        ("<table><tr><td>a</td></tr></table><table><tr><td>b</td></tr></table>", "2 tables"),
        ('<table><tr><td>a</td><td rowspan="2">b</td></tr><tr><td colspan="2">c</td></tr></table>', "overlaps"),
        ("<table><tr><td>a&lt;nl&gt;b</td></tr></table>", "OTSL token"),
    ],
)
def test_unusable_html_raises_value_error(markup, message):
    with pytest.raises(ValueError, match=message):
        html_to_otsl(markup)


def test_otsl_reader_is_lenient_with_model_output():
    # no final <nl>, a short row, and an <lcel> that continues nothing
    assert parse_otsl("<fcel>a<fcel>b<nl><lcel>") == [
        [("<fcel>", "a"), ("<fcel>", "b")],
        [("<lcel>", ""), ("<ecel>", "")],
    ]
    assert otsl_to_html("<fcel>a<fcel>b<nl><lcel>") == "<table><tr><td>a</td><td>b</td></tr><tr><td></td><td></td></tr></table>"
    # a <ucel> under a column whose neighbour starts a new cell does not swallow that cell
    assert otsl_to_html("<fcel>a<lcel><nl><ucel><fcel>b<nl>") == (
        '<table><tr><td colspan="2">a</td></tr><tr><td></td><td>b</td></tr></table>'
    )
    assert otsl_to_html("") == "<table></table>"


def test_csv_rows_to_otsl():
    assert rows_to_otsl([["h1", "h2"], ["a"], ["", " b  c "]]) == "<fcel>h1<fcel>h2<nl><fcel>a<ecel><nl><ecel><fcel>b c<nl>"
    with pytest.raises(ValueError):
        rows_to_otsl([[]])


def test_formula_target_follows_the_guide():
    assert formula_target("t_{n}\\in[0,\\infty]") == "\\[t_{n}\\in[0,\\infty]\\]"  # seed 000 §8.1
    assert formula_target("  \\[ x^2 \\] ") == "\\[ x^2 \\]"  # already wrapped: unchanged
    assert formula_target("\\( y \\)") == "\\( y \\)"
    assert formula_target("$$ a+b $$") == "\\[a+b\\]"
    with pytest.raises(ValueError):
        formula_target("   ")


def test_chart_target_reproduces_the_guide_example():
    rows = [["", "22Q3", "22Q3yoy"], ["电商", "85", "100%"], ["川渝", "140", "8%"], ["云贵陕", "95", "12%"], ["外围地区", "45", "20%"]]
    assert chart_target(rows) == GUIDE_CHART
    assert chart_target([["x", "a\nb"]]) == "x | a b"
    with pytest.raises(ValueError):
        chart_target([["", " "]])


# --- property: any rectangle partition of a grid survives HTML -> OTSL -> HTML -----------------

cell_text = st.text(alphabet="ab中 &<>\"'/12", max_size=6).map(lambda t: " ".join(t.split()))


@st.composite
def span_layouts(draw):
    """A random grid partitioned into rectangles (row-major greedy), each with its text."""
    n_rows, n_cols = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    owner = [[None] * n_cols for _ in range(n_rows)]
    rects = []
    for r in range(n_rows):
        for c in range(n_cols):
            if owner[r][c] is not None:
                continue
            max_w = next((k for k in range(n_cols - c) if owner[r][c + k] is not None), n_cols - c)
            w = draw(st.integers(1, max_w))
            max_h = next(
                (k for k in range(n_rows - r) if any(owner[r + k][c + j] is not None for j in range(w))), n_rows - r
            )
            h = draw(st.integers(1, max_h))
            text = draw(cell_text.filter(lambda t: not OTSL_TOKEN.search(t)))
            for dr in range(h):
                for dc in range(w):
                    owner[r + dr][c + dc] = len(rects)
            rects.append((r, c, h, w, text, draw(st.sampled_from(["td", "th"]))))
    return n_rows, n_cols, owner, rects


def expected_otsl(n_rows, n_cols, owner, rects):
    out = []
    for r in range(n_rows):
        for c in range(n_cols):
            r0, c0, _, _, text, _ = rects[owner[r][c]]
            if (r, c) == (r0, c0):
                out.append("<fcel>" + text if text else "<ecel>")
            else:
                out.append({(True, False): "<lcel>", (False, True): "<ucel>"}.get((r == r0, c == c0), "<xcel>"))
        out.append("<nl>")
    return "".join(out)


def layout_html(n_rows, rects, canonical):
    rows = []
    for r in range(n_rows):
        cells = []
        for r0, c0, h, w, text, tag in sorted(x for x in rects if x[0] == r):
            tag = "td" if canonical else tag
            attrs = (f' rowspan="{h}"' if h > 1 else "") + (f' colspan="{w}"' if w > 1 else "")
            if not canonical:
                attrs = attrs.replace('"', "")  # unquoted attributes parse the same
            cells.append(f"<{tag}{attrs}>{html.escape(text, quote=False)}</{tag}>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if canonical:
        return "<table>" + "".join(rows) + "</table>"
    return "<table><thead>" + rows[0] + "</thead><tbody>\n" + "\n".join(rows[1:]) + "</tbody></table>"


@settings(max_examples=300, deadline=None)
@given(span_layouts())
def test_random_span_layouts_round_trip(layout):
    n_rows, n_cols, owner, rects = layout
    want_otsl = expected_otsl(n_rows, n_cols, owner, rects)
    canonical = layout_html(n_rows, rects, canonical=True)
    assert html_to_otsl(layout_html(n_rows, rects, canonical=False)) == want_otsl
    assert html_to_otsl(canonical) == want_otsl
    assert otsl_to_html(want_otsl) == canonical
