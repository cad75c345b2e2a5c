"""Renderers are pure functions of a result: their text, colours and escaping."""

from __future__ import annotations

import json
import re

import pytest

from blackbox_sal.render import render_html, render_json, render_terminal, to_dict
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


def test_html_colours_push_up_green_and_down_red() -> None:
    """'good' (+2.0, the peak) is full green; the bold token (-0.5) a quarter-strength red."""
    page = render_html(example())
    assert re.search(r'background:rgba\(40,160,60,1\.000\)" title="\+2">good<', page)
    assert re.search(r'background:rgba\(200,50,50,0\.250\)" title="-0\.5">&lt;b&gt;', page)


def test_terminal_plain_and_coloured() -> None:
    plain = render_terminal(example(), color=False)
    assert "\033[" not in plain
    assert "good" in plain and "+2.0000" in plain and "-0.5000" in plain and "note: careful" in plain
    assert "completeness delta = -0.01" in plain
    bars = {line.split()[0]: line.split()[-1] for line in plain.splitlines() if line.startswith("  ")}
    assert bars["good"] == "+" * 24 and bars['<b>"bold"</b>'] == "-" * 6  # the peak fills 24 columns
    colour = render_terminal(example(), color=True)
    assert "\033[" in colour
    # the heatmap line reproduces the text exactly once the colour codes are removed
    lines = [ANSI.sub("", line) for line in colour.splitlines()]
    assert example().text in lines


def test_terminal_colours_push_up_green_and_down_red() -> None:
    colour = render_terminal(example(), color=True)
    heat = next(line for line in colour.splitlines() if "good" in line and "bold" in line)
    good = re.search(r"\033\[(\d+);48;2;(\d+);(\d+);(\d+)mgood", heat)
    bold = re.search(r'\033\[(\d+);48;2;(\d+);(\d+);(\d+)m<b>"bold"</b>', heat)
    assert good and bold
    assert good.groups() == ("97", "40", "160", "60")  # the peak: the full green, white text
    r, g, b = (int(v) for v in bold.groups()[1:])
    assert bold.group(1) == "30" and r > g and r > b  # a pale red, dark text
    bar_good = next(line for line in colour.splitlines() if line.lstrip().startswith("good"))
    assert "\033[32m" in bar_good  # a positive bar is green


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
