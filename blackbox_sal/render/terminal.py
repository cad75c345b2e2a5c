"""Terminal rendering: a heatmap of the text and a bar per token.

Colours follow :mod:`~blackbox_sal.render.palette`: blue backgrounds and bars push the target
up, red ones push it down; the strength is the score over the largest absolute score, and a
legend line says so. Numbers follow :mod:`~blackbox_sal.render.numbers` (one shared format per
column of scores, no ``+`` on norms). Without colour (NO_COLOR, a pipe, a file) the same content
comes as plain text, the bars drawn with ``+`` and ``-``. Pure: the caller decides ``color``.
Every string that came from a model folder or the user (names, labels, tokens, the text) goes
through :func:`~blackbox_sal.text.printable.printable` first, so only the renderer's own colour
codes reach the terminal.
"""

from __future__ import annotations

from functools import singledispatch

from blackbox_sal.render import numbers, palette
from blackbox_sal.text.printable import printable as safe
from blackbox_sal.text.words import Span
from blackbox_sal.vocabulary.result import Choices, Explanation, Generation, Similarity

_RESET = "\033[0m"
_BAR_WIDTH = 24


def _fg(rgb: palette.RGB) -> str:
    return "\033[38;2;{};{};{}m".format(*rgb)


def _background(score: float, peak: float) -> str:
    rgb = palette.mix(score, peak)
    fg = "30" if palette.ink(rgb) == palette.BLACK else "97"
    return "\033[{};48;2;{};{};{}m".format(fg, *rgb)


def _heatmap(text: str, spans: tuple[Span, ...], peak: float) -> str:
    out, pos = [], 0
    ordinary = sorted((s for s in spans if not s.special and s.end > s.start), key=lambda s: s.start)
    for s in ordinary:
        if s.start < pos:  # overlapping offsets (rare tokenizers): skip the overlap
            continue
        out.append(safe(text[pos : s.start]))
        out.append(f"{_background(s.score, peak)}{safe(text[s.start : s.end])}{_RESET}")
        pos = s.end
    out.append(safe(text[pos:]))
    return "".join(out)


def _legend(target: str, signed: bool) -> str:
    """One line under the heatmap: what the colours mean."""
    if not signed:
        return f"colour: {_fg(palette.FOR)}█ blue{_RESET}: how much each token matters to {target} " \
               f"(a norm: no direction); the strongest is full"
    return (f"colour: {_fg(palette.FOR)}█ blue{_RESET} for {target}, {_fg(palette.AGAINST)}█ red{_RESET} "
            f"against it; the strongest is full")


@singledispatch
def render_terminal(result: object, color: bool = False) -> str:
    """Any result (Explanation, Generation, Similarity, Choices) as terminal text; ANSI
    colours only when ``color``."""
    raise TypeError(f"no terminal rendering for {type(result).__name__}")


@render_terminal.register
def _explanation(e: Explanation, color: bool = False) -> str:
    spans = e.words if e.words is not None else e.tokens
    peak = max((abs(s.score) for s in spans), default=0.0)
    def class_name(label: str | None, index: int) -> str:
        if label is None:
            return f"class {index}"
        return repr(label) if e.task == "next-token" else safe(label)  # tokens: show their spaces

    target, pred = class_name(e.target.label, e.target.index), class_name(e.prediction.label, e.prediction.index)
    reduce = f" ({e.reduce})" if e.reduce else ""
    lines = [
        f"model {safe(e.model)} | method {e.method}{reduce} | backend {e.backend}",
        f"cosine similarity to the other text, its embedding held fixed: f(x) = {e.target_value:.4g}"
        if e.task == "similarity" else
        f"prediction: {pred}   target: {target}   f(x) = {e.target_value:.4g} ({e.settings.get('score', 'logit')})",
    ]
    if e.task == "next-token" and len(e.prediction.top) > 1:
        lines.append("next-token candidates: " + ", ".join(
            f"{class_name(t.label, t.index)} {t.value:.4g}" for t in e.prediction.top if t.value is not None))
    if e.baseline_value is not None:
        delta = "" if e.convergence_delta is None else \
            f"   completeness delta = {numbers.value(e.convergence_delta, signed=True)}"
        if e.settings.get("steps_auto"):
            delta += f"   ({e.settings['steps']} nodes, steps auto)"
        lines.append(f"baseline {e.settings.get('baseline', '')}: f(x') = {e.baseline_value:.4g}{delta}")
    elif e.convergence_delta is not None:  # LRP: relevances against f(x)
        lines.append(f"conservation gap = {numbers.value(e.convergence_delta, signed=True)} (sum of relevances - f(x))")
    lines.append("")
    signed = numbers.is_signed(e.reduce)
    if color:
        lines += [_heatmap(e.text, spans, peak), _legend(target, signed), ""]
    names = [safe(s.text) for s in spans]
    scores = numbers.column([s.score for s in spans], signed)
    score_width = max((len(v) for v in scores), default=0)
    width = max((len(t) for t in names), default=0)
    width = min(max(width, 5), 24)
    for s, text, score in zip(spans, names, scores, strict=True):
        n = round(_BAR_WIDTH * abs(s.score) / peak) if peak > 0 else 0
        name = (text if len(text) <= width else text[: width - 1] + "~").ljust(width)
        if color:
            bar = _fg(palette.end_of(s.score)) + "█" * n + _RESET if n else ""
            name = f"\033[2m{name}{_RESET}" if s.special else name
        else:
            bar = ("+" if s.score >= 0 else "-") * n if signed else "#" * n
        lines.append(f"  {name}  {score.rjust(score_width)}  {bar}".rstrip())
    for note in e.notes:
        lines.append(f"note: {safe(note)}")
    return "\n".join(lines) + "\n"


@render_terminal.register
def _generation(g: Generation, color: bool = False) -> str:
    """A generated continuation as a matrix: one row per input token, one column per generated
    token (its attribution to that row's token; blank where the token came later)."""
    if not g.steps:
        return f"generation: nothing generated after {g.prompt!r} (the model ended it at once)\n"
    first = g.steps[0]
    reduce = f" ({first.reduce})" if first.reduce else ""
    last = g.steps[-1].tokens
    width = min(max((len(s.text) for s in last), default=5), 16)
    # a token that is part of a character (byte-level tokenizers) decodes alone to U+FFFD: its id
    cols = [f"<{t.index}>" if t.label is None or "\ufffd" in t.label else repr(t.label)[:10] for t in g.generated]
    colw = max(8, *(len(c) for c in cols))
    lines = [f"model {safe(first.model)} | method {first.method}{reduce} | backend {first.backend} | generation",
             f"prompt: {g.prompt!r}", f"continuation: {g.text[len(g.prompt):]!r}", "",
             " " * (width + 2) + "".join(c.rjust(colw + 1) for c in cols)]
    spec = numbers.column_format([t.score for step in g.steps for t in step.tokens], numbers.is_signed(first.reduce))
    for row, span in enumerate(last):
        cells = []
        for step in g.steps:
            cells.append(format(step.tokens[row].score, spec).rjust(colw + 1) if row < len(step.tokens) else
                         " " * (colw + 1))
        text = safe(span.text) or "..."  # "": its character comes later
        name = text if len(text) <= width else text[: width - 1] + "~"
        lines.append(f"  {name.ljust(width)}" + "".join(cells))
    notes = [n for step in g.steps for n in step.notes]
    lines += [f"note: {safe(n)}" for n in dict.fromkeys(notes)]
    return "\n".join(lines) + "\n"


@render_terminal.register
def _similarity(sim: Similarity, color: bool = False) -> str:
    """Both texts of a similarity, each attributed with the other held fixed."""
    head = f"cosine similarity of the two texts' embeddings: {sim.cosine:.4g}\n\n"
    return head + "\n".join(f"text {k + 1}: {e.text!r}\n" + render_terminal(e, color)
                             for k, e in enumerate(sim.texts))


@render_terminal.register
def _choices(c: Choices, color: bool = False) -> str:
    """The choices with their scores, then the explanation of the best one."""
    target = c.explanation.target
    by = c.score if c.explanation.prediction.scores and len(c.explanation.prediction.scores) == 1 else \
        f"{safe(target.label) if target.label is not None else f'class {target.index}'} {c.score}"
    lines = [f"multiple choice: {c.text!r}   (ranked by {by})"]
    for choice in c.choices:
        mark = "*" if choice.index == c.predicted else " "
        lines.append(f" {mark} {choice.index}: {choice.label!r}  score {choice.value:+.4g}")
    return "\n".join(lines) + "\n\n" + render_terminal(c.explanation, color)
