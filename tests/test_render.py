"""Renderers are pure functions of an Explanation."""

from __future__ import annotations

import json
import math
from types import MappingProxyType

from blackbox_sal.render import render_html, render_json, render_terminal, to_dict
from blackbox_sal.result import Explanation, Label, Prediction
from blackbox_sal.text.words import Span


def example(words: bool = False) -> Explanation:
    text = 'a <b>"bold"</b> & good'
    tokens = (Span("[CLS]", 0, 0, 0.0, True), Span("a", 0, 1, 0.1, False),
              Span('<b>"bold"</b>', 2, 15, -0.5, False), Span("&", 16, 17, 0.0, False),
              Span("good", 18, 22, 2.0, False))
    return Explanation(
        text=text, model="m", method="ig", backend="fd", reduce="sum", target=Label(1, "pos"),
        prediction=Prediction(1, "pos", (0.1, float("nan"))), target_value=1.6, tokens=tokens,
        words=tokens[1:] if words else None, baseline_value=0.0, convergence_delta=-0.01,
        settings=MappingProxyType({"score": "logit", "baseline": "pad"}), notes=("careful",))


def test_json_schema_fields() -> None:
    doc = json.loads(render_json(example()))
    assert doc["schema_version"] == 2
    assert {"model", "method", "backend", "target", "prediction", "target_value", "tokens",
            "baseline_value", "convergence_delta"} <= doc.keys()
    assert "words" not in doc
    assert doc["prediction"]["scores"] == [0.1, None]  # NaN is not JSON
    assert doc["tokens"][2] == {"text": '<b>"bold"</b>', "start": 2, "end": 15, "score": -0.5, "special": False}
    assert "words" in to_dict(example(words=True))


def test_html_escapes_every_token_and_loads_nothing() -> None:
    page = render_html(example())
    assert "<b>" not in page and "&lt;b&gt;&quot;bold&quot;&lt;/b&gt;" in page
    assert "&amp;" in page and "careful" in page
    assert "http" not in page and "<script" not in page


def test_terminal_plain_and_coloured() -> None:
    plain = render_terminal(example(), color=False)
    assert "\033[" not in plain
    assert "good" in plain and "+2.0000" in plain and "-0.5000" in plain and "note: careful" in plain
    assert "completeness delta = -0.01" in plain
    colour = render_terminal(example(), color=True)
    assert "\033[" in colour
    # the heatmap line reproduces the text exactly once the colour codes are removed
    import re

    lines = [re.sub(r"\033\[[0-9;]*m", "", line) for line in colour.splitlines()]
    assert example().text in lines


def test_scores_are_finite_in_example() -> None:
    assert all(math.isfinite(s.score) for s in example().tokens)
