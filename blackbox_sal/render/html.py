"""A standalone HTML page: no scripts, no external resources, every piece of text escaped.

It shows what the terminal shows (model, method, backend, prediction, target, f(x), f(x'), the
completeness delta and its share of f(x) - f(x'), notes, every score) plus the settings, in the
colours of :mod:`~blackbox_sal.render.palette` with a legend and the numbers of
:mod:`~blackbox_sal.render.numbers`."""

from __future__ import annotations

import html
import math
from functools import singledispatch

from blackbox_sal.render import numbers, palette
from blackbox_sal.text.words import Span
from blackbox_sal.vocabulary.result import Choices, Explanation, Generation, Label, Prediction, Similarity

_STYLE = f"""body{{font:15px/1.6 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}}
.text{{font-size:1.2rem;line-height:2.2;padding:1rem;border:1px solid #ddd;border-radius:6px}}
.tok{{padding:.15rem .1rem;border-radius:3px}}.special{{font-size:.8em}}
table{{border-collapse:collapse;margin-top:1rem}}td,th{{padding:.2rem .6rem;text-align:left}}
td.num{{text-align:right;font-variant-numeric:tabular-nums}}.meta{{color:#555}}.note{{color:#a40}}
dl.summary{{display:flex;flex-wrap:wrap;gap:.2rem 1.6rem;margin:.3rem 0}}dl.summary div{{display:flex;gap:.4rem}}
dl.summary dt{{color:#555}}dl.summary dd{{margin:0;font-weight:600;font-variant-numeric:tabular-nums}}
.legend{{display:flex;gap:.6rem;align-items:center;color:#555;font-size:.9rem;margin:.4rem 0}}
.legend .bar{{display:inline-block;width:8rem;height:.9rem;border:1px solid #999;
background:linear-gradient(90deg,{palette.hex_of(palette.AGAINST)},#fff 50%,{palette.hex_of(palette.FOR)})}}
.legend .bar.norm{{background:linear-gradient(90deg,#fff,{palette.hex_of(palette.FOR)})}}"""


def _span(s: Span, peak: float, text: str, signed: bool) -> str:
    cls = "tok special" if s.special else "tok"
    rgb = palette.mix(s.score, peak)
    return (f'<span class="{cls}" style="background:{palette.hex_of(rgb)};color:{palette.hex_of(palette.ink(rgb))}" '
            f'title="{numbers.value(s.score, signed)}">{html.escape(text)}</span>')


def _label(t: Label | Prediction) -> str:
    return t.label if t.label is not None else f"class {t.index}"


def _summary(e: Explanation) -> str:
    """The numbers the terminal prints: prediction, target, f(x), f(x'), the completeness delta
    and its share of f(x) - f(x')."""
    esc = html.escape
    items = [("prediction", _label(e.prediction)), ("target", _label(e.target)),
             (f"f(x) ({e.settings.get('score', 'logit')})", numbers.value(e.target_value))]
    if e.baseline_value is not None:
        items.append((f"f(x') (baseline {e.settings.get('baseline', '')})", numbers.value(e.baseline_value)))
    if e.convergence_delta is not None:
        delta = numbers.value(e.convergence_delta, signed=True)
        gap = e.target_value - e.baseline_value if e.baseline_value is not None else 0.0
        if gap != 0.0 and math.isfinite(gap) and math.isfinite(e.convergence_delta):
            delta += f" ({abs(e.convergence_delta / gap) * 100:.2g}% of f(x) - f(x'))"
        items.append(("completeness delta", delta))
    return "<dl class=summary>" + "".join(f"<div><dt>{esc(k)}</dt><dd>{esc(v)}</dd></div>" for k, v in items) + "</dl>"


def _legend(target: str, signed: bool) -> str:
    esc = html.escape
    if not signed:
        return (f"<p class=legend><span>0</span><span class=\"bar norm\"></span><span>most important to "
                f"{esc(target)} (a norm: no direction)</span></p>")
    return (f"<p class=legend><span>against {esc(target)}</span><span class=bar></span>"
            f"<span>for {esc(target)}</span><span>(the strongest score is the full colour)</span></p>")


def _section(e: Explanation) -> str:
    """One explanation as HTML: its meta line and numbers, the heatmap with its legend, its
    notes, and the tables of scores and settings."""
    spans = e.words if e.words is not None else e.tokens
    peak = max((abs(s.score) for s in spans if math.isfinite(s.score)), default=0.0)
    esc = html.escape
    signed = numbers.is_signed(e.reduce)
    parts, pos = [], 0
    for s in spans:
        if s.special or s.end <= s.start:
            parts.append(_span(s, peak, s.text, signed) + " ")
            continue
        if s.start >= pos:
            parts.append(esc(e.text[pos : s.start]))
            parts.append(_span(s, peak, e.text[s.start : s.end], signed))
            pos = s.end
    parts.append(esc(e.text[pos:]))
    scores = numbers.column([s.score for s in spans], signed)
    unit = "word" if e.words is not None else "token"
    rows = "".join(f"<tr><td>{esc(s.text)}</td><td class=num>{v}</td></tr>" for s, v in zip(spans, scores, strict=True))
    settings = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in e.settings.items())
    meta = (f"model {esc(e.model)} · method {esc(e.method)}"
            f"{' (reduce ' + esc(e.reduce) + ')' if e.reduce else ''} · backend {esc(e.backend)}")
    notes = "".join(f'<p class="note">note: {esc(n)}</p>' for n in e.notes)
    return (f"<p class=meta>{meta}</p>{_summary(e)}{_legend(_label(e.target), signed)}"
            f"<div class=text>{''.join(parts)}</div>{notes}"
            f"<table><tr><th>{unit}</th><th>score</th></tr>{rows}</table>"
            f"<table><caption>settings</caption>{settings}</table>")


def _page(title: str, heading: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{html.escape(heading)}</h1>{body}</body></html>\n")


#: the page every view is laid out in: title, heading, escaped body (views registered elsewhere use it)
page = _page


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
    body = f"<p class=meta>cosine similarity of the two texts' embeddings: {sim.cosine:.4g}</p>" + "".join(
        f"<h2>text {k + 1}</h2>{_section(e)}" for k, e in enumerate(sim.texts))
    return _page(f"blackbox-sal: {first.model} similarity", "Similarity attributions", body)


@render_html.register
def _choices(c: Choices) -> str:
    esc = html.escape
    rows = "".join(f"<tr><td>{'*' if t.index == c.predicted else ''}</td><td>{esc(t.label or '')}</td>"
                   f"<td class=num>{numbers.value(t.value, signed=True)}</td></tr>" for t in c.choices)
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
