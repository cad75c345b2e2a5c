"""A standalone HTML page: no scripts, no external resources, every piece of text escaped."""

from __future__ import annotations

import html

from blackbox_sal.result import Explanation
from blackbox_sal.text.words import Span

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


def render_html(e: Explanation) -> str:
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
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>blackbox-sal: {esc(e.model)} {esc(e.method)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>Token attributions</h1><p class=meta>{meta}</p>"
        f"<div class=text>{''.join(parts)}</div>{notes}"
        f"<table><tr><th>token</th><th>score</th></tr>{rows}</table></body></html>\n"
    )
