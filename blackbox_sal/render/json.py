"""JSON rendering of an Explanation; ``schema_version`` tells readers what to expect.

Schema 2: schema_version, text, model, method, backend, reduce, task, target {index, label},
prediction {index, label, scores (every class's output; empty beyond 1,000 classes), top
[{index, label, value}] (the 5 best)}, target_value, tokens [{text, start, end, score, special,
std_error}] (std_error only from the sampling methods kernel-shap, permutation and lime: the
score's standard error, null where it cannot be estimated), words (with --words; the same
fields), baseline_value and convergence_delta (where a baseline applies), windows [{start,
end, target_value, baseline_value, convergence_delta}] (a long text explained with --long
window; the stitched result then has no single baseline or delta), settings, notes.
Non-finite numbers become null.
"""

from __future__ import annotations

import json
import math
from functools import singledispatch
from typing import Any

from blackbox_sal.text.printable import json_safe
from blackbox_sal.text.words import Span
from blackbox_sal.vocabulary.result import SCHEMA_VERSION, Choices, Explanation, Generation, Similarity


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _spans(spans: tuple[Span, ...], errors: tuple[float, ...] | None = None) -> list[dict[str, Any]]:
    out = [{"text": s.text, "start": s.start, "end": s.end, "score": _num(s.score),
            "special": s.special} for s in spans]
    if errors is not None:
        for span, error in zip(out, errors, strict=True):
            span["std_error"] = _num(error)
    return out


def to_dict(e: Explanation) -> dict[str, Any]:
    """The JSON object of schema ``SCHEMA_VERSION`` as Python data."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "text": e.text,
        "model": e.model,
        "method": e.method,
        "backend": e.backend,
        "reduce": e.reduce,
        "task": e.task,
        "target": {"index": e.target.index, "label": e.target.label},
        "prediction": {"index": e.prediction.index, "label": e.prediction.label,
                       "scores": [_num(v) for v in e.prediction.scores],
                       "top": [{"index": t.index, "label": t.label, "value": _num(t.value)} for t in e.prediction.top]},
        "target_value": _num(e.target_value),
        "tokens": _spans(e.tokens, e.token_errors),
    }
    if e.words is not None:
        out["words"] = _spans(e.words, e.word_errors)
    if e.baseline_value is not None:
        out["baseline_value"] = _num(e.baseline_value)
    if e.convergence_delta is not None:
        out["convergence_delta"] = _num(e.convergence_delta)
    if e.channels is not None:
        out["channels"] = [{"name": c.name, "input": c.input, "scores": [_num(v) for v in c.scores]}
                           for c in e.channels]
    if e.windows is not None:
        out["windows"] = [{"start": w.start, "end": w.end, "target_value": _num(w.target_value),
                           "baseline_value": _num(w.baseline_value), "convergence_delta": _num(w.convergence_delta)}
                          for w in e.windows]
    out["settings"] = dict(e.settings)
    out["notes"] = list(e.notes)
    return out


def render_json(result: object) -> str:
    """Any result (Explanation, Generation, Similarity, Choices) as one JSON document."""
    return json_safe(json.dumps(document(result), indent=2, ensure_ascii=False, allow_nan=False)) + "\n"


@singledispatch
def document(result: object) -> dict[str, Any]:
    """The JSON document of a result, as Python data."""
    raise TypeError(f"no JSON rendering for {type(result).__name__}")


@document.register
def _explanation(e: Explanation) -> dict[str, Any]:
    return to_dict(e)


@document.register
def _generation(g: Generation) -> dict[str, Any]:
    """{"schema_version", "generation": {"prompt", "text", "generated": [{index, label, value}],
    "steps": [one explanation object per generated token]}}."""
    return {"schema_version": SCHEMA_VERSION, "generation": {
        "prompt": g.prompt, "text": g.text,
        "generated": [{"index": t.index, "label": t.label, "value": _num(t.value)} for t in g.generated],
        "steps": [to_dict(step) for step in g.steps]}}


@document.register
def _similarity(sim: Similarity) -> dict[str, Any]:
    """{"schema_version", "similarity": {"cosine", "texts": [two explanation objects]}}."""
    return {"schema_version": SCHEMA_VERSION,
            "similarity": {"cosine": _num(sim.cosine), "texts": [to_dict(e) for e in sim.texts]}}


@document.register
def _choices(c: Choices) -> dict[str, Any]:
    """{"schema_version", "choices": {"text", "score", "choices": [{index, label, value}],
    "predicted", "explanation": the explanation object of the best choice's (text, choice)
    pair}}; ``score`` is what the choices are ranked by."""
    return {"schema_version": SCHEMA_VERSION, "choices": {
        "text": c.text, "score": c.score,
        "choices": [{"index": t.index, "label": t.label, "value": _num(t.value)} for t in c.choices],
        "predicted": c.predicted, "explanation": to_dict(c.explanation)}}
