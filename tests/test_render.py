"""Renderers are pure functions of a result: their text, colours and escaping."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import blackbox_sal.server
from blackbox_sal.render import numbers, palette, render_html, render_json, render_terminal, to_dict
from blackbox_sal.text.words import Span
from blackbox_sal.vocabulary.result import Explanation, Label, Prediction, Provenance

ANSI = re.compile(r"\033\[[0-9;]*m")


def example(words: bool = False, label: str = "pos", model: str = "m") -> Explanation:
    text = 'a <b>"bold"</b> & good'
    tokens = (Span("[CLS]", 0, 0, 0.0, True), Span("a", 0, 1, 0.1, False),
              Span('<b>"bold"</b>', 2, 15, -0.5, False), Span("&", 16, 17, 0.0, False),
              Span("good", 18, 22, 2.0, False))
    return Explanation(
        text=text, model=model, method="ig", backend="fd", reduce="sum", target=Label(1, label),
        prediction=Prediction(1, label, (0.1, float("nan"))), target_value=1.6, tokens=tokens,
        words=tokens[1:] if words else None, baseline_value=0.0, convergence_delta=-0.01,
        provenance=Provenance(score="logit", batch_size=64, forward_passes=3, device="cpu", baseline="pad"),
        notes=("careful",))


def test_json_schema_fields() -> None:
    doc = json.loads(render_json(example()))
    assert doc["schema_version"] == 2
    assert {"model", "method", "backend", "target", "prediction", "target_value", "tokens",
            "baseline_value", "convergence_delta"} <= doc.keys()
    assert "words" not in doc
    assert doc["prediction"]["scores"] == [0.1, None]  # NaN is not JSON
    assert doc["tokens"][2] == {"text": '<b>"bold"</b>', "start": 2, "end": 15, "score": -0.5, "special": False}
    assert doc["settings"] == {"score": "logit", "batch_size": 64, "forward_passes": 3, "device": "cpu",
                               "baseline": "pad"}
    assert "words" in to_dict(example(words=True))


def test_html_escapes_every_token_and_loads_nothing() -> None:
    page = render_html(example())
    assert "<b>" not in page and "&lt;b&gt;&quot;bold&quot;&lt;/b&gt;" in page
    assert "&amp;" in page and "careful" in page
    assert "http" not in page and "<script" not in page


# Golden strings (rich's habit): a colour, a digit or a word that changes fails here, on purpose.
# The colours are palette.mix by hand: 'good' (+2.0) is the peak, the full blue #2166ac (white
# text); the bold token (-0.5) is a quarter of the way from white to #b2182b:
# 255 + (178 - 255) / 4 = 235.75 -> 236, 255 + (24 - 255) / 4 = 197.25 -> 197, 255 + (43 - 255) / 4 = 202.
# 'a' (+0.1) is a twentieth of the way to blue: (244, 247, 251).
TERMINAL_PLAIN = """\
model m | method ig (sum) | backend fd
prediction: pos   target: pos   f(x) = 1.6 (logit)
baseline pad: f(x') = 0   completeness delta = -0.01

  [CLS]          +0.000
  a              +0.100  +
  <b>"bold"</b>  -0.500  ------
  &              +0.000
  good           +2.000  ++++++++++++++++++++++++
note: careful
"""

BLUE, RED, END = "\033[38;2;33;102;172m", "\033[38;2;178;24;43m", "\033[0m"
TERMINAL_COLOUR = f"""\
model m | method ig (sum) | backend fd
prediction: pos   target: pos   f(x) = 1.6 (logit)
baseline pad: f(x') = 0   completeness delta = -0.01

\033[30;48;2;244;247;251ma{END} \033[30;48;2;236;197;202m<b>"bold"</b>{END} \033[30;48;2;255;255;255m&{END} \
\033[97;48;2;33;102;172mgood{END}
colour: {BLUE}█ blue{END} for pos, {RED}█ red{END} against it; the strongest is full

  \033[2m[CLS]        {END}  +0.000
  a              +0.100  {BLUE}█{END}
  <b>"bold"</b>  -0.500  {RED}██████{END}
  &              +0.000
  good           +2.000  {BLUE}{"█" * 24}{END}
note: careful
"""

HTML_BODY = (
    '<body><h1>Token attributions</h1><p class=meta>model m · method ig (reduce sum) · backend fd</p>'
    '<dl class=summary><div><dt>prediction</dt><dd>pos</dd></div><div><dt>target</dt><dd>pos</dd></div>'
    '<div><dt>f(x) (logit)</dt><dd>1.6</dd></div><div><dt>f(x&#x27;) (baseline pad)</dt><dd>0</dd></div>'
    '<div><dt>completeness delta</dt><dd>-0.01 (0.62% of f(x) - f(x&#x27;))</dd></div></dl>'
    '<p class=legend><span>against pos</span><span class=bar></span><span>for pos</span>'
    '<span>(the strongest score is the full colour)</span></p>'
    '<div class=text><span class="tok special" style="background:#ffffff;color:#000000" title="+0">[CLS]</span> '
    '<span class="tok" style="background:#f4f7fb;color:#000000" title="+0.1">a</span> '
    '<span class="tok" style="background:#ecc5ca;color:#000000" title="-0.5">'
    '&lt;b&gt;&quot;bold&quot;&lt;/b&gt;</span> '
    '<span class="tok" style="background:#ffffff;color:#000000" title="+0">&amp;</span> '
    '<span class="tok" style="background:#2166ac;color:#ffffff" title="+2">good</span></div>'
    '<p class="note">note: careful</p>'
    '<table><tr><th>token</th><th>score</th></tr><tr><td>[CLS]</td><td class=num>+0.000</td></tr>'
    '<tr><td>a</td><td class=num>+0.100</td></tr>'
    '<tr><td>&lt;b&gt;&quot;bold&quot;&lt;/b&gt;</td><td class=num>-0.500</td></tr>'
    '<tr><td>&amp;</td><td class=num>+0.000</td></tr><tr><td>good</td><td class=num>+2.000</td></tr></table>'
    '<table><caption>settings</caption><tr><th>score</th><td>logit</td></tr><tr><th>batch_size</th><td>64</td></tr>'
    '<tr><th>forward_passes</th><td>3</td></tr><tr><th>device</th><td>cpu</td></tr><tr><th>baseline</th><td>pad</td></tr>'
    '</table></body></html>\n')


def test_terminal_plain_golden() -> None:
    assert render_terminal(example(), color=False) == TERMINAL_PLAIN


def test_terminal_colour_golden() -> None:
    colour = render_terminal(example(), color=True)
    assert colour == TERMINAL_COLOUR
    # the heatmap line reproduces the text exactly once the colour codes are removed
    assert example().text in [ANSI.sub("", line) for line in colour.splitlines()]


def test_html_golden() -> None:
    page = render_html(example())
    assert page.startswith('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                           '<title>blackbox-sal: m ig</title>')
    assert page[page.index("<body>"):] == HTML_BODY
    # the legend's gradient runs red, white, blue: the palette's ends
    assert "linear-gradient(90deg,#b2182b,#fff 50%,#2166ac)" in page


def test_json_golden() -> None:
    e = example(words=True)
    tokens = [{"text": s.text, "start": s.start, "end": s.end, "score": s.score, "special": s.special}
              for s in e.tokens]
    assert json.loads(render_json(e)) == {
        "schema_version": 2, "text": 'a <b>"bold"</b> & good', "model": "m", "method": "ig", "backend": "fd",
        "reduce": "sum", "task": "classification", "target": {"index": 1, "label": "pos"},
        "prediction": {"index": 1, "label": "pos", "scores": [0.1, None], "top": []},
        "target_value": 1.6, "tokens": tokens, "words": tokens[1:], "baseline_value": 0.0, "convergence_delta": -0.01,
        "settings": {"score": "logit", "batch_size": 64, "forward_passes": 3, "device": "cpu", "baseline": "pad"},
        "notes": ["careful"]}
    # full precision, two-space indent, keys in this order, one trailing newline
    text = render_json(example())
    assert text.startswith('{\n  "schema_version": 2,\n  "text": "a <b>\\"bold\\"</b> & good",\n  "model": "m",')
    assert text.endswith('  "notes": [\n    "careful"\n  ]\n}\n')


def small(reduce: str, scores: tuple[float, ...]) -> Explanation:
    """A tiny model's explanation: scores of order 1e-5 (a fixed four decimals printed +0.0000)."""
    tokens = tuple(Span(w, 2 * k, 2 * k + 1, v, False) for k, (w, v) in enumerate(zip("abc", scores, strict=True)))
    return Explanation(
        text="a b c", model="tiny", method="saliency", backend="graph", reduce=reduce, target=Label(0, None),
        prediction=Prediction(0, None, (3.2e-05,)), target_value=3.2e-05, tokens=tokens, words=None,
        baseline_value=None, convergence_delta=None,
        provenance=Provenance(score="logit", batch_size=1, forward_passes=1, device="cpu"), notes=())


def test_small_scores_keep_their_digits_and_norms_carry_no_sign() -> None:
    assert render_terminal(small("l2", (2.5e-05, 1.25e-05, 0.0))) == (
        "model tiny | method saliency (l2) | backend graph\n"
        "prediction: class 0   target: class 0   f(x) = 3.2e-05 (logit)\n\n"
        "  a      2.500e-05  ########################\n"
        "  b      1.250e-05  ############\n"
        "  c      0.000e+00\n")
    signed = render_terminal(small("sum", (0.0125, -0.003, 0.0)))
    assert signed.splitlines()[3:] == ["  a      +0.01250  ++++++++++++++++++++++++", "  b      -0.00300  ------",
                                       "  c      +0.00000"]
    page = render_html(small("l2", (2.5e-05, 1.25e-05, 0.0)))
    assert "<td class=num>2.500e-05</td>" in page and "+2.5" not in page
    assert '<span class="bar norm"></span><span>most important to class 0 (a norm: no direction)</span>' in page


@pytest.mark.parametrize(("values", "signed", "expected"), [
    ((5.197, 0.4545, -0.3826), True, ["+5.197", "+0.455", "-0.383"]),  # the peak: four significant digits
    ((9.99996, 1.0), True, ["+10.00", "+1.00"]),  # a peak that rounds up to 10 keeps four digits
    ((1234.5, -2.0), True, ["+1234", "-2"]),
    ((2.0e-5, -1.0e-6), True, ["+2.000e-05", "-1.000e-06"]),  # below 1e-3: scientific
    ((2.0e5, 1.0), False, ["2.000e+05", "1.000e+00"]),
    ((0.0, 0.0), True, ["+0.0", "+0.0"]),
    ((1.0, float("nan")), False, ["1.000", "nan"]),
])
def test_a_column_of_scores_shares_one_format(values: tuple[float, ...], signed: bool, expected: list[str]) -> None:
    assert numbers.column(values, signed) == expected


def test_the_servers_page_draws_the_palettes_colours() -> None:
    """page.html holds the same two ends in its script and its legend's words."""
    page = (Path(blackbox_sal.server.__file__).parent / "page.html").read_text("utf-8")
    for name, rgb in (("POS", palette.FOR), ("NEG", palette.AGAINST)):
        assert f"{name} = [{', '.join(f'0x{c:02x}' for c in rgb)}]" in page
        assert f"{palette.hex_of(rgb)}" in page
    # and the same norms without a sign
    norms = ", ".join(f'"{r}"' for r in ("l2", "l1", "max"))
    assert set(numbers.NONNEGATIVE) == {"l2", "l1", "max"} and f"[{norms}].includes(e.reduce) ? fmt : signed" in page
    assert palette.mix(-0.5, 2.0) == (236, 197, 202) and palette.mix(float("nan"), 1.0) == (255, 255, 255)
    assert palette.ink(palette.FOR) == palette.WHITE and palette.ink(palette.mix(0.1, 2.0)) == palette.BLACK


def test_strings_from_a_model_folder_cannot_reach_the_terminal_raw() -> None:
    """A label and a model name carrying escape sequences and a bidi override print escaped."""
    e = example(label="pos\033]0;owned\007", model="m\033[2J\u202e")
    for color in (False, True):
        out = render_terminal(e, color=color)
        assert "\033]0;" not in out and "\033[2J" not in out and "\u202e" not in out
        assert "\\x1b]0;owned\\x07" in out and "\\u202e" in out
    doc = render_json(e)
    assert "\u202e" not in doc and "\\u202e" in doc and json.loads(doc)["model"] == e.model


def test_every_result_type_renders_in_every_format() -> None:
    with pytest.raises(TypeError, match="no terminal rendering for int"):
        render_terminal(3)
    with pytest.raises(TypeError, match="no JSON rendering"):
        render_json("text")
