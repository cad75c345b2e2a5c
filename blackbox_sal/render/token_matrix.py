"""The views of a per-token model's targets (:class:`~blackbox_sal.vocabulary.result.TokenTargets`):
the matrix of targets x input tokens, registered with the terminal, JSON and HTML renderers.

- terminal: the predicted tag of every token, then each target (its text, label, f(x), the
  completeness gap where there is one) with its strongest evidence (the ``STRONGEST`` tokens
  of largest |score|), with colour a heatmap of the text per target;
- JSON (schema ``SCHEMA_VERSION``): ``{"schema_version", "per_token": {"text", "model",
  "method", "backend", "reduce", "tokens": [{text, start, end, special, predicted}], "targets": [{text, start, end,
  positions, label, contrast, target_value, baseline_value, convergence_delta, scores: [one per
  token]}], "settings", "notes"}}``; non-finite numbers are null;
- HTML: the matrix as a table, one row per target, each cell coloured by its score over the
  row's largest |score|, its value, token and target in a hover title.
"""

from __future__ import annotations

import html
import math
from typing import Any

from blackbox_sal.render import numbers, palette
from blackbox_sal.render.html import render_html
from blackbox_sal.render.json import document
from blackbox_sal.render.terminal import render_terminal
from blackbox_sal.text.printable import printable as safe
from blackbox_sal.vocabulary.result import SCHEMA_VERSION, TokenTarget, TokenTargets

#: tokens named as a target's strongest evidence in the terminal
STRONGEST = 3
_RESET = "\033[0m"


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


def _what(t: TokenTarget) -> str:
    return safe(t.label if t.contrast is None else f"{t.label} rather than {t.contrast}")


@render_terminal.register
def _terminal(r: TokenTargets, color: bool = False) -> str:
    first = r.targets[0].explanation if r.targets else None
    how = "" if first is None else f" ({first.reduce})" if first.reduce else ""
    backend = "" if first is None else f" | backend {first.backend}"
    lines = [f"model {safe(r.model)} | method {r.method}{how}{backend} | {len(r.targets)} target(s)"]
    tokens = first.tokens if first is not None else ()
    if tokens:
        lines.append("tags: " + " ".join(f"{safe(s.text)}/{safe(p)}" for s, p in zip(tokens, r.predicted, strict=False)
                                         if not s.special))
    for k, t in enumerate(r.targets):
        e = t.explanation
        gap = "" if e.convergence_delta is None else f"   completeness delta {numbers.value(e.convergence_delta, True)}"
        lines.append(f"{k + 1}. {_what(t)} {safe(repr(t.text))} (tokens {', '.join(map(str, t.positions))}): "
                     f"f(x) = {e.target_value:.4g} ({e.settings.get('score', 'logit')}){gap}")
        ranked = sorted((s for s in e.tokens if not s.special), key=lambda s: -abs(s.score))[:STRONGEST]
        scores = numbers.column([s.score for s in ranked], numbers.is_signed(e.reduce))
        lines.append("   strongest: " + ", ".join(f"{safe(s.text)} {v}" for s, v in zip(ranked, scores, strict=True)))
        if color:
            peak = max((abs(s.score) for s in e.tokens), default=0.0)
            lines.append("   " + _heatmap(r.text, e.tokens, peak))
    for note in r.notes:
        lines.append(f"note: {safe(note)}")
    return "\n".join(lines) + "\n"


def _heatmap(text: str, spans: Any, peak: float) -> str:
    out, pos = [], 0
    for s in sorted((s for s in spans if not s.special and s.end > s.start), key=lambda s: s.start):
        if s.start < pos:
            continue
        rgb = palette.mix(s.score, peak)
        fg = "30" if palette.ink(rgb) == palette.BLACK else "97"
        out.append(safe(text[pos:s.start]))
        out.append("\033[{};48;2;{};{};{}m".format(fg, *rgb) + safe(text[s.start:s.end]) + _RESET)
        pos = s.end
    return "".join(out) + safe(text[pos:])


@document.register
def _json(r: TokenTargets) -> dict[str, Any]:
    first = r.targets[0].explanation if r.targets else None
    tokens = first.tokens if first is not None else ()
    return {"schema_version": SCHEMA_VERSION, "per_token": {
        "text": r.text, "model": r.model, "method": r.method,
        "backend": first.backend if first is not None else None, "reduce": first.reduce if first is not None else None,
        "tokens": [{"text": s.text, "start": s.start, "end": s.end, "special": s.special, "predicted": p}
                   for s, p in zip(tokens, r.predicted, strict=False)],
        "targets": [{"text": t.text, "start": t.start, "end": t.end, "positions": list(t.positions),
                     "label": t.label, "contrast": t.contrast, "target_value": _num(t.explanation.target_value),
                     "baseline_value": _num(t.explanation.baseline_value),
                     "convergence_delta": _num(t.explanation.convergence_delta),
                     "scores": [_num(s.score) for s in t.explanation.tokens]} for t in r.targets],
        "settings": dict(first.settings) if first is not None else {},
        "notes": list(r.notes)}}


_STYLE = ("body{font:15px/1.5 system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse}"
          "th,td{padding:.25rem .4rem;border:1px solid #eee;text-align:center}th.target{text-align:left}"
          ".meta{color:#555}.note{color:#a40}")


@render_html.register
def _html(r: TokenTargets) -> str:
    esc = html.escape
    first = r.targets[0].explanation if r.targets else None
    tokens = first.tokens if first is not None else ()
    head = "".join(f"<th>{esc(s.text)}<br><small>{esc(p)}</small></th>"
                   for s, p in zip(tokens, r.predicted, strict=False))
    rows = []
    for t in r.targets:
        e = t.explanation
        peak = max((abs(s.score) for s in e.tokens), default=0.0)
        signed = numbers.is_signed(e.reduce)
        cells = "".join(
            f'<td style="background:{palette.hex_of(palette.mix(s.score, peak))};'
            f'color:{palette.hex_of(palette.ink(palette.mix(s.score, peak)))}" '
            f'title="{esc(_what(t))} {esc(repr(t.text))} &lt;- {esc(s.text)}: {numbers.value(s.score, signed)}">'
            f"{numbers.value(s.score, signed)}</td>" for s in e.tokens)
        gap = "" if e.convergence_delta is None else \
            f"<br><small>delta {numbers.value(e.convergence_delta, True)}</small>"
        rows.append(f'<tr><th class=target>{esc(_what(t))} {esc(repr(t.text))}<br><small>f(x) '
                    f"{numbers.value(e.target_value)}</small>{gap}</th>{cells}</tr>")
    notes = "".join(f"<p class=note>{esc(n)}</p>" for n in r.notes)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>blackbox-sal: {esc(r.model)} per-token targets</title><style>{_STYLE}</style></head><body>"
            f"<h1>Per-token attributions</h1><p class=meta>{esc(r.text)} · {esc(r.model)} · {esc(r.method)} · "
            f"rows: targets, columns: input tokens (predicted tag below); blue for the target, red against it, "
            f"each row against its own largest |score|</p>"
            f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>{notes}</body></html>\n")
