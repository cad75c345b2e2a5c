"""Views of an answer span (:class:`~blackbox_sal.vocabulary.result.AnswerSpan`): terminal,
JSON and HTML, registered with the three renderers' dispatch.

Every view keeps the question's tokens and the context's apart (two blocks, or a ``part`` per
token) and shows the three explained scores side by side: the start score's attribution, the
end score's and their sum's (the span's). Special tokens ([CLS], [SEP]) belong to neither
text: JSON lists them with ``part`` null; the terminal and the page leave them out, as their
scores are those of the baseline (kept as they are).

JSON (``{"schema_version", "answer_span": {...}}``)::

    question, context        the texts
    answer                   {text, start_char, end_char (into the context), start_token,
                              end_token (into tokens, inclusive), start_logit, end_logit,
                              score (their sum), chosen ("best" or "given"), max_answer_tokens}
    candidates               [{start_token, end_token, text, score}], best first
    tokens                   [{token, part ("question", "context" or null), start, end (into
                              that part's text; 0, 0 for special tokens), special, in_answer,
                              start_score, end_score, span_score}]
    explanations             {start, end, span}: each an explanation object (its target_value,
                              baseline_value, convergence_delta, settings, notes; its tokens'
                              offsets point into question + "\\n" + context)
"""

from __future__ import annotations

import html
from typing import Any

from blackbox_sal.render import numbers, palette
from blackbox_sal.render.html import page, render_html
from blackbox_sal.render.json import document, to_dict
from blackbox_sal.render.terminal import render_terminal
from blackbox_sal.text.printable import printable as safe
from blackbox_sal.vocabulary.result import SCHEMA_VERSION, AnswerSpan

_RESET = "\033[0m"


def _fg(rgb: palette.RGB) -> str:
    return "\033[38;2;{};{};{}m".format(*rgb)


#: the targets' names, in the order of AnswerSpan.explanations
TARGETS = ("start", "end", "span")
_NAME_WIDTH = 16


def _num(v: float | None) -> float | None:
    return None if v is None or v != v or v in (float("inf"), float("-inf")) else float(v)


def _shift(a: AnswerSpan) -> int:
    return len(a.question) + 1  # the pair's text is question + "\n" + context


@render_terminal.register
def terminal(a: AnswerSpan, color: bool = False) -> str:
    """The answer, its score, the other candidate spans, and one table per text (question,
    then context) with the three attributions of each token; ``>`` marks the answer's tokens.
    With ``color``, each token on the colour of its span score (a legend line says so)."""
    first = a.explanations[0]
    reduce = f" ({first.reduce})" if first.reduce else ""
    how = "the best span" if a.chosen == "best" else "the given span"
    lines = [f"model {safe(first.model)} | method {first.method}{reduce} | backend {first.backend} | answer span",
             f"question: {safe(repr(a.question))}",
             f"answer: {safe(repr(a.answer))}   tokens {a.start}..{a.end}, {how} (at most {a.max_answer_tokens} "
             f"tokens)",
             f"score: start {a.start_logit:.4g} + end {a.end_logit:.4g} = {a.score:.4g} (logits)"]
    others = [c for c in a.candidates if (c.start, c.end) != (a.start, a.end)]
    if others:
        lines.append("other spans: " + ", ".join(f"{safe(repr(c.text))} {c.score:.4g}" for c in others))
    deltas = [e.convergence_delta for e in a.explanations]
    if all(d is not None for d in deltas):
        lines.append("completeness delta: " + ", ".join(f"{name} {numbers.value(d, signed=True)}"
                                                        for name, d in zip(TARGETS, deltas, strict=True)))
    signed = numbers.is_signed(first.reduce)
    spec = numbers.column_format([s.score for e in a.explanations for s in e.tokens], signed)  # one for all three
    columns = [[format(s.score, spec) for s in e.tokens] for e in a.explanations]
    widths = [max(len(name), *(len(v) for v in col)) for name, col in zip(TARGETS, columns, strict=True)]
    peak = max((abs(s.score) for s in a.explanations[2].tokens), default=0.0)
    if color:
        lines.append(f"colour: the span score's attribution, {_fg(palette.FOR)}█ blue{_RESET} for the answer, "
                     f"{_fg(palette.AGAINST)}█ red{_RESET} against it; the strongest is full")
    for part in ("question", "context"):
        lines += ["", f"  {part.ljust(_NAME_WIDTH)}" + "".join(f"  {n.rjust(w)}" for n, w in
                                                            zip(TARGETS, widths, strict=True))]
        for k, (span, p) in enumerate(zip(first.tokens, a.parts, strict=True)):
            if p != part:
                continue
            text = safe(span.text)
            name = (text if len(text) <= _NAME_WIDTH else text[:_NAME_WIDTH - 1] + "~").ljust(_NAME_WIDTH)
            if color:  # the token on the colour of its span score
                rgb = palette.mix(a.explanations[2].tokens[k].score, peak)
                ink = "30" if palette.ink(rgb) == palette.BLACK else "97"
                name = "\033[{};48;2;{};{};{}m".format(ink, *rgb) + name + _RESET
            mark = ">" if a.start <= k <= a.end else " "
            cells = "".join(f"  {col[k].rjust(w)}" for col, w in zip(columns, widths, strict=True))
            lines.append(f"{mark} {name}{cells}")
    notes = [n for e in a.explanations for n in e.notes]
    lines += [f"note: {safe(n)}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


@document.register
def json_document(a: AnswerSpan) -> dict[str, Any]:
    """The JSON document of an answer span (the schema is in the module's docstring)."""
    shift = _shift(a)

    def offsets(k: int) -> tuple[int, int]:
        start, end = a.explanations[0].tokens[k].start, a.explanations[0].tokens[k].end
        if a.parts[k] == "context":
            return start - shift, end - shift
        return (start, end) if a.parts[k] == "question" else (0, 0)

    tokens = []
    for k, part in enumerate(a.parts):
        start, end = offsets(k)
        spans = [e.tokens[k] for e in a.explanations]
        tokens.append({"token": spans[0].text, "part": part, "start": start, "end": end,
                       "special": spans[0].special, "in_answer": a.start <= k <= a.end,
                       **{f"{name}_score": _num(s.score) for name, s in zip(TARGETS, spans, strict=True)}})
    return {"schema_version": SCHEMA_VERSION, "answer_span": {
        "question": a.question, "context": a.context,
        "answer": {"text": a.answer, "start_char": a.answer_start, "end_char": a.answer_end,
                   "start_token": a.start, "end_token": a.end, "start_logit": _num(a.start_logit),
                   "end_logit": _num(a.end_logit), "score": _num(a.score), "chosen": a.chosen,
                   "max_answer_tokens": a.max_answer_tokens},
        "candidates": [{"start_token": c.start, "end_token": c.end, "text": c.text, "score": _num(c.score)}
                       for c in a.candidates],
        "tokens": tokens,
        "explanations": {name: to_dict(e) for name, e in zip(TARGETS, a.explanations, strict=True)}}}


@render_html.register
def html_page(a: AnswerSpan) -> str:
    """A page: the answer and its score, then the question and the context as two heatmaps of
    the span's attribution (the answer underlined), each token's three scores on hover, and a
    table of the three explanations' values."""
    esc = html.escape
    first, span = a.explanations[0], a.explanations[2]
    peak = max((abs(s.score) for s in span.tokens), default=0.0)
    blocks = []
    for part in ("question", "context"):
        cells = []
        for k, (s, p) in enumerate(zip(span.tokens, a.parts, strict=True)):
            if p != part:
                continue
            rgb = palette.mix(s.score, peak)
            scores = ", ".join(f"{name} {numbers.value(e.tokens[k].score, signed=True)}"
                               for name, e in zip(TARGETS, a.explanations, strict=True))
            style = f"background:{palette.hex_of(rgb)};color:{palette.hex_of(palette.ink(rgb))}"
            under = ";text-decoration:underline" if a.start <= k <= a.end else ""
            cells.append(f"<span class=tok style=\"{style}{under}\" title=\"{esc(scores)}\">{esc(s.text)}</span>")
        blocks.append(f"<h2>{part}</h2><p class=text>{' '.join(cells)}</p>")
    rows = "".join(f"<tr><td>{name}</td><td class=num>{numbers.value(e.target_value)}</td>"
                   f"<td class=num>{numbers.value(e.baseline_value)}</td>"
                   f"<td class=num>{numbers.value(e.convergence_delta, signed=True)}</td></tr>"
                   for name, e in zip(TARGETS, a.explanations, strict=True))
    how = "the best span" if a.chosen == "best" else "the given span"
    body = (f"<p class=meta>model {esc(first.model)} · method {esc(first.method)} · backend {esc(first.backend)}</p>"
            f"<p>answer <b>{esc(a.answer)}</b> (tokens {a.start}..{a.end}, {how}): start "
            f"{numbers.value(a.start_logit)} + end {numbers.value(a.end_logit)} = {numbers.value(a.score)}; "
            f"the colours show the span score's attribution, hover a token for all three</p>"
            + "".join(blocks)
            + f"<table><tr><th>target</th><th>f(x)</th><th>f(x')</th><th>completeness delta</th></tr>{rows}</table>"
            + "".join(f"<p class=note>{esc(n)}</p>" for n in dict.fromkeys(n for e in a.explanations
                                                                            for n in e.notes)))
    return page(f"blackbox-sal: {first.model} answer span", "Answer span attributions", body)
