"""Views of an encoder/decoder explanation (:class:`GenerationExplanation`): a terminal table,
a JSON document, an HTML page with the two matrices as heatmaps. Pure functions.

Terminal: one row per output step (its token and log-probability), then its scores over the
source tokens and over the decoder's input tokens (blank above the diagonal: not read).

JSON (``kind`` "generation", ``schema_version`` 1)::

    {"schema_version": 1, "kind": "generation", "model", "method", "source_text", "output_text",
     "teacher_forced": bool, "source_tokens": [S], "prefix_tokens": [T], "output_tokens": [T],
     "log_probs": [T], "source_scores": [T][S], "prefix_scores": [T][T],
     "backend": "graph" | "fd", "steps": int | null, "deltas": [T] | null}
"""

from __future__ import annotations

import html
from typing import Any

from blackbox_sal.render import palette
from blackbox_sal.vocabulary.result import GenerationExplanation

SCHEMA_VERSION = 1
_RESET = "\033[0m"


def _cell(score: float, peak: float, width: int, color: bool) -> str:
    text = f"{score:+.2f}".ljust(width)
    if not color:
        return text
    rgb = palette.mix(score, peak)
    fg = "30" if palette.ink(rgb) == palette.BLACK else "97"
    return "\033[{};48;2;{};{};{}m{}{}".format(fg, *rgb, text, _RESET)


def generation_terminal(e: GenerationExplanation, color: bool = False) -> str:
    """The explanation as a table; ANSI background colours (the palette) only when ``color``."""
    how = "teacher forced" if e.teacher_forced else "greedy"
    how += "; finite differences" if e.backend == "fd" else ""
    lines = [f"{e.model} ({e.method}; {how}): {e.source_text!r} -> {e.output_text!r}"]
    width = max(6, *(len(t) + 1 for t in (*e.source_tokens, *e.prefix_tokens)))
    tok_w = max(6, *(len(t) + 2 for t in e.output_tokens))
    peak_s = max((abs(v) for row in e.source_scores for v in row), default=0.0)
    peak_p = max((abs(v) for row in e.prefix_scores for v in row), default=0.0)
    head = (f"{'step':>4}  {'token':<{tok_w}} {'log p':<9} | source: "
            + " ".join(t.ljust(width) for t in e.source_tokens) + " | output: "
            + " ".join(t.ljust(width) for t in e.prefix_tokens))
    lines.append(head)
    for t, tok in enumerate(e.output_tokens):
        src = " ".join(_cell(v, peak_s, width, color) for v in e.source_scores[t])
        pre = " ".join(_cell(v, peak_p, width, color) if j <= t else " " * width
                       for j, v in enumerate(e.prefix_scores[t]))
        lines.append(f"{t:>4}  {tok:<{tok_w}} {e.log_probs[t]:<9.3f} |         {src} |         {pre}")
    if e.deltas is not None:
        lines.append("completeness gap per step: " + " ".join(f"{d:+.2e}" for d in e.deltas))
    return "\n".join(lines) + "\n"


def generation_json(e: GenerationExplanation) -> dict[str, Any]:
    """The JSON document (module docstring), as a dict ready for ``json.dumps``."""
    return {"schema_version": SCHEMA_VERSION, "kind": "generation", "model": e.model, "method": e.method,
            "source_text": e.source_text, "output_text": e.output_text, "teacher_forced": e.teacher_forced,
            "source_tokens": list(e.source_tokens), "prefix_tokens": list(e.prefix_tokens),
            "output_tokens": list(e.output_tokens), "log_probs": list(e.log_probs),
            "source_scores": [list(r) for r in e.source_scores], "prefix_scores": [list(r) for r in e.prefix_scores],
            "backend": e.backend, "steps": e.steps, "deltas": None if e.deltas is None else list(e.deltas)}


def _matrix(caption: str, columns: tuple[str, ...], e: GenerationExplanation,
            rows: tuple[tuple[float, ...], ...], causal: bool) -> str:
    peak = max((abs(v) for row in rows for v in row), default=0.0)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for t, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            if causal and j > t:
                cells.append("<td></td>")
                continue
            rgb = palette.mix(v, peak)
            cells.append(f'<td class="num" style="background:{palette.hex_of(rgb)};'
                         f'color:{palette.hex_of(palette.ink(rgb))}" title="{v:+.4g}">{v:+.2f}</td>')
        body.append(f"<tr><th>{html.escape(e.output_tokens[t])}</th>{''.join(cells)}</tr>")
    return f"<table><caption>{html.escape(caption)}</caption><tr><th></th>{head}</tr>{''.join(body)}</table>"


def generation_html(e: GenerationExplanation) -> str:
    """A standalone page (no scripts, every text escaped): the output, then the two heatmaps."""
    how = "teacher forced" if e.teacher_forced else "generated greedily"
    body = (f"<p class=\"meta\">{html.escape(e.model)} · {html.escape(e.method)} · {how}</p>"
            f"<p><b>source</b>: {html.escape(e.source_text)}<br><b>output</b>: {html.escape(e.output_text)}</p>"
            f"<p class=\"meta\">{html.escape(palette.LEGEND)}</p>"
            + _matrix("each output token (rows) by the source tokens", e.source_tokens, e, e.source_scores, False)
            + _matrix("each output token (rows) by the decoder's input tokens", e.prefix_tokens, e,
                      e.prefix_scores, True))
    style = ("body{font:15px/1.5 system-ui,sans-serif;margin:2rem}table{border-collapse:collapse;margin:1rem 0}"
             "td,th{padding:.2rem .5rem}td.num{text-align:right;font-variant-numeric:tabular-nums}"
             "caption{text-align:left;color:#555}.meta{color:#555}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>generation explained</title>"
            f"<style>{style}</style></head><body><h1>generation explained</h1>{body}</body></html>\n")
