"""A standalone HTML page: no scripts, no external resources, every piece of text escaped."""

from __future__ import annotations

import html
from functools import singledispatch

from blackbox_sal.text.words import Span
from blackbox_sal.vocabulary.result import Choices, Explanation, Generation, Similarity

_STYLE = """body{font:15px/1.6 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
.text{font-size:1.2rem;line-height:2.2;padding:1rem;border:1px solid #ddd;border-radius:6px}
.tok{padding:.15rem .1rem;border-radius:3px}.special{color:#888;font-size:.8em}
table{border-collapse:collapse;margin-top:1rem}td,th{padding:.2rem .6rem;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}.meta{color:#555}.note{color:#a40}"""


def _color(score: float, peak: float) -> str:
    a = min(abs(score) / peak, 1.0) if peak > 0 else 0.0
    rgb = "40,160,60" if score >= 0 else "200,50,50"
    return f"rgba({rgb},{a:.3f})"


def _span(s: Span, peak: float) -> str:
    cls = "tok special" if s.special else "tok"
    return (f'<span class="{cls}" style="background:{_color(s.score, peak)}" '
            f'title="{s.score:+.4g}">{html.escape(s.text)}</span>')


def _section(e: Explanation) -> str:
    """One explanation as HTML: its meta line, the heatmap, its notes and the score table."""
    spans = e.words if e.words is not None else e.tokens
    peak = max((abs(s.score) for s in spans), default=0.0)
    esc = html.escape
    parts, pos = [], 0
    for s in spans:
        if s.special or s.end <= s.start:
            parts.append(_span(s, peak) + " ")
            continue
        if s.start >= pos:
            parts.append(esc(e.text[pos : s.start]))
            parts.append(_span(s, peak))
            pos = s.end
    parts.append(esc(e.text[pos:]))
    rows = "".join(f"<tr><td>{esc(s.text)}</td><td class=num>{s.score:+.5f}</td></tr>" for s in spans)
    target = e.target.label if e.target.label is not None else f"class {e.target.index}"
    pred = e.prediction.label if e.prediction.label is not None else f"class {e.prediction.index}"
    meta = (f"model {esc(e.model)} · method {esc(e.method)}"
            f"{' (' + esc(e.reduce) + ')' if e.reduce else ''} · backend {esc(e.backend)} · "
            f"prediction {esc(pred)} · target {esc(target)} · f(x) = {e.target_value:.4g}")
    if e.convergence_delta is not None:
        meta += f" · completeness delta {e.convergence_delta:+.3g}"
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in e.notes)
    return (f"<p class=meta>{meta}</p><div class=text>{''.join(parts)}</div>{notes}"
            f"<table><tr><th>token</th><th>score</th></tr>{rows}</table>")


def _page(title: str, heading: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{html.escape(heading)}</h1>{body}</body></html>\n")


@singledispatch
def render_html(result: object) -> str:
    """Any result (Explanation, Generation, Similarity, Choices) as a standalone page: no
    scripts, no external resources, every piece of text escaped."""
    raise TypeError(f"no HTML rendering for {type(result).__name__}")


@render_html.register
def _explanation(e: Explanation) -> str:
    return _page(f"blackbox-sal: {e.model} {e.method}", "Token attributions", _section(e))


@render_html.register
def _similarity(sim: Similarity) -> str:
    first = sim.texts[0]
    body = f"<p class=meta>cosine similarity of the two texts' embeddings: {sim.cosine:.4f}</p>" + "".join(
        f"<h2>text {k + 1}</h2>{_section(e)}" for k, e in enumerate(sim.texts))
    return _page(f"blackbox-sal: {first.model} similarity", "Similarity attributions", body)


@render_html.register
def _choices(c: Choices) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{'*' if t.index == c.predicted else ''}</td><td>{esc(t.label or '')}</td>"
                   f"<td class=num>{(t.value or 0.0):+.4g}</td></tr>" for t in c.choices)
    body = (f"<p class=meta>{esc(c.text)} (ranked by {esc(c.score)})</p>"
            f"<table><tr><th></th><th>choice</th><th>score</th></tr>{rows}</table>"
            f"<h2>the best choice</h2>{_section(c.explanation)}")
    return _page(f"blackbox-sal: {c.explanation.model} multiple choice", "Multiple choice", body)


@render_html.register
def _generation(g: Generation) -> str:
    esc = html.escape
    body = (f"<p class=meta>prompt {esc(g.prompt)!s} · continuation {esc(g.text[len(g.prompt):])}</p>"
            + "".join(f"<h2>step {k + 1}: {esc(repr(t.label))}</h2>{_section(step)}"
                      for k, (t, step) in enumerate(zip(g.generated, g.steps, strict=True))))
    model = g.steps[0].model if g.steps else ""
    return _page(f"blackbox-sal: {model} generation", "Generation attributions", body)
