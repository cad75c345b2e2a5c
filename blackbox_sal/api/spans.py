"""Answer spans: explain an extractive question-answering model's answer.

A ``...ForQuestionAnswering`` export scores every token of a (question, context) pair twice:
``start_logits`` s_i and ``end_logits`` e_j, [batch, seq]. The loader joins them into one
output [batch, 2 seq] (:mod:`blackbox_sal.surgery.span_logits`), so a target is a weight
vector over it. The answer is a span (i, j) of context tokens with i <= j and j - i + 1 <=
``max_answer_tokens``: the one of largest s_i + e_j (found by trying every valid span), or a
given one (``config.answer``: its text in the context, or token indices ``START:END``).

Three scalars are explained, over the same tokens and baseline:

=======  ==============  ===================================
target   scalar          seed over [s, e] (2 seq)
=======  ==============  ===================================
start    s_i             one-hot at i
end      e_j             one-hot at seq + j
span     s_i + e_j       both (the default, the span's score)
=======  ==============  ===================================

The three are driven together (:func:`together`): their requests go out in the same rounds,
so the engine packs them into shared runs; a gradient run holds the three as three rows of one
vector-Jacobian product, each with its own seed (finite differences, when the gradient graph
cannot be built, pack the same way). Every method applies, each target with its own
completeness gap; the span's scores equal the start's plus the end's wherever the method and its
reduction are linear in the target (grad x input, integrated gradients, occlusion; not a norm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np

from blackbox_sal.api.explaining import ProjectionQuestion, explanation, runner
from blackbox_sal.engine.drive import drive_one
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.text.tokenization import PAIR_SEPARATOR, Tokens, tokenize_pair
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.result import AnswerSpan, Explanation, Label, Prediction, SpanCandidate
from blackbox_sal.vocabulary.runs import All, ArrayPoints, Forward, Request, Seq, Work, ask, ask_all

T = TypeVar("T")

#: the targets, in the order of AnswerSpan.explanations
TARGETS = ("start", "end", "span")
#: candidate spans kept in the result
CANDIDATES = 5


def explain_answer(model: TextModel, question: str, context: str,
                   config: ExplainConfig | None = None) -> AnswerSpan:
    """Find the answer span of ``question`` in ``context`` (or take ``config.answer``) and
    explain its start score, end score and their sum over the tokens of both texts.

    Needs an extractive question-answering model (``model.task == "answer-span"``); UsageError
    (exit 2) otherwise, for an answer not in the context, or for a target or score that does not
    apply (the explained scalars are logits)."""
    cfg = (config or ExplainConfig()).validated()
    return drive_one(answer_span(model, question, context, cfg), runner(model, cfg))


def answer_span(model: TextModel, question: str, context: str, cfg: ExplainConfig) -> Work[AnswerSpan]:
    """The work of :func:`explain_answer` (the engine packs its runs with other texts')."""
    if model.task != "answer-span":
        raise UsageError(f"--context explains an answer span: it needs a question-answering model (start and end "
                         f"logits per token); {model.name} is a {model.task} model")
    if cfg.target is not None:
        raise UsageError("an answer span's targets are its start, end and their sum: choose the span with --answer, "
                         "not --target")
    if cfg.score != "logit":
        raise UsageError("an answer span's start and end scores are logits: --score does not apply")
    if cfg.direction is not None:
        raise UsageError("--direction applies to embedding models, not to answer spans")
    tokens = tokenize_pair(model.tokenizer, question, context, model.max_length, cfg.max_chars)
    parts = token_parts(tokens, len(question) + len(PAIR_SEPARATOR))
    ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)
    outputs = (yield from ask(Forward(Seq(ids, type_ids, mask), ArrayPoints(model.embed(ids)[None]))))[0]
    length = len(ids)
    start_logits, end_logits = outputs[:length], outputs[length:]
    in_context = np.array([p == "context" for p in parts])
    ranked = best_spans(start_logits[:len(tokens)], end_logits[:len(tokens)], in_context, cfg.max_answer_tokens,
                        CANDIDATES)
    if cfg.answer is not None:
        start, end = given_span(tokens, parts, context, len(question) + len(PAIR_SEPARATOR), cfg.answer)
        chosen = "given"
    elif ranked:
        start, end = ranked[0]
        chosen = "best"
    else:
        raise UsageError("the context has no tokens to answer from")
    weights = span_weights(start, end, length)
    explained = yield from together([explanation(model, tokens, cfg, ProjectionQuestion(w)) for w in weights])
    shift = len(question) + len(PAIR_SEPARATOR)
    answer_start, answer_end = tokens.offsets[start][0] - shift, tokens.offsets[end][1] - shift
    values = (float(start_logits[start]), float(end_logits[end]))
    prediction = _prediction(ranked[0], start_logits, end_logits, tokens, shift, context) if ranked else None
    return AnswerSpan(
        question=question, context=context, parts=parts, start=start, end=end,
        answer=context[answer_start:answer_end], answer_start=answer_start, answer_end=answer_end,
        start_logit=values[0], end_logit=values[1], chosen=chosen, max_answer_tokens=cfg.max_answer_tokens,
        candidates=tuple(SpanCandidate(i, j, context[tokens.offsets[i][0] - shift:tokens.offsets[j][1] - shift],
                                       float(start_logits[i] + end_logits[j])) for i, j in ranked),
        explanations=_named(explained, prediction))


def token_parts(tokens: Tokens, shift: int) -> tuple[str | None, ...]:
    """Per token of a (question, context) pair: "question", "context", or None for a special
    token (the context's tokens are those whose offsets start at or after ``shift``)."""
    return tuple(None if special else ("context" if a >= shift else "question")
                 for special, (a, _) in zip(tokens.special, tokens.offsets, strict=True))


def best_spans(start: np.ndarray, end: np.ndarray, allowed: np.ndarray, longest: int,
               keep: int = 1) -> list[tuple[int, int]]:
    """The ``keep`` best valid spans (i, j), best first: i <= j, both tokens ``allowed`` and
    every token between them too, j - i + 1 <= ``longest``; ranked by start[i] + end[j] (ties:
    the earlier start, then the shorter span). Every valid span is tried: n x longest sums."""
    found: list[tuple[float, int, int]] = []
    n = len(start)
    for i in range(n):
        if not allowed[i]:
            continue
        for j in range(i, min(n, i + longest)):
            if not allowed[j]:
                break
            found.append((float(start[i] + end[j]), i, j))
    found.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [(i, j) for _, i, j in found[:keep]]


def given_span(tokens: Tokens, parts: Sequence[str | None], context: str, shift: int,
               answer: str) -> tuple[int, int]:
    """The tokens (first, last) of a given answer: token indices ``START:END`` (inclusive, into
    the pair's tokens, both in the context), or a text of the context (its first occurrence;
    case-insensitive when no exact one), as the context tokens that overlap it."""
    text = answer.strip()
    head, colon, tail = text.partition(":")
    if colon and head.strip().isdigit() and tail.strip().isdigit():
        start, end = int(head), int(tail)
        if not start <= end < len(tokens) or parts[start] != "context" or parts[end] != "context":
            raise UsageError(f"answer tokens {start}:{end} are not a span of context tokens (the context's tokens "
                             f"are {_context_range(parts)})")
        return start, end
    at = context.find(text)
    if at < 0:
        at = context.lower().find(text.lower())
    if at < 0 or not text:
        raise UsageError(f"the answer {answer!r} is not in the context")
    lo, hi = at + shift, at + shift + len(text)
    inside = [k for k, ((a, b), p) in enumerate(zip(tokens.offsets, parts, strict=True))
              if p == "context" and a < hi and b > lo]
    if not inside:
        raise UsageError(f"the answer {answer!r} covers no token of the context")
    return inside[0], inside[-1]


def _context_range(parts: Sequence[str | None]) -> str:
    context = [k for k, p in enumerate(parts) if p == "context"]
    return f"{context[0]} to {context[-1]}" if context else "none"


def span_weights(start: int, end: int, length: int) -> list[np.ndarray]:
    """The seeds of the three targets over the joined output [2 length]: start, end, span."""
    w_start, w_end = np.zeros(2 * length), np.zeros(2 * length)
    w_start[start], w_end[length + end] = 1.0, 1.0
    return [w_start, w_end, w_start + w_end]


def _prediction(best: tuple[int, int], start: np.ndarray, end: np.ndarray, tokens: Tokens, shift: int,
                context: str) -> Prediction:
    i, j = best
    text = context[tokens.offsets[i][0] - shift:tokens.offsets[j][1] - shift]
    return Prediction(i, text, (), (Label(i, text, float(start[i] + end[j])),))


def _named(explained: Sequence[Explanation], prediction: Prediction | None
           ) -> tuple[Explanation, Explanation, Explanation]:
    """The three explanations with their targets named (start, end, span) and their scalar
    reported as a logit (the objective is a weighted sum of the start and end logits)."""
    out = [replace(e, target=Label(k, name, e.target_value), task="answer-span",
                   prediction=prediction or Prediction(0, None, ()),
                   provenance=replace(e.provenance, score="logit"))
           for k, (name, e) in enumerate(zip(TARGETS, explained, strict=True))]
    return out[0], out[1], out[2]


def together(works: Sequence[Work[T]]) -> Work[list[T]]:
    """Drive several pieces of work side by side: each round gathers every unfinished work's
    request(s) into one :class:`All`, so the engine packs their rows into shared runs (three
    targets of one text: their gradient rows share a run). Results in the order of ``works``."""
    results: dict[int, T] = {}
    pending: dict[int, Request | All] = {}
    for k, work in enumerate(works):
        try:
            pending[k] = next(work)
        except StopIteration as stop:
            results[k] = stop.value
    while pending:
        order = list(pending)
        asked = [_requests(pending[k]) for k in order]
        answers = yield from ask_all([r for group in asked for r in group])
        at = 0
        for k, group in zip(order, asked, strict=True):
            got, at = answers[at:at + len(group)], at + len(group)
            was = pending.pop(k)
            try:
                pending[k] = works[k].send(got if isinstance(was, All) else got[0])
            except StopIteration as stop:
                results[k] = stop.value
    return [results[k] for k in range(len(works))]


def _requests(asked: Request | All) -> tuple[Request, ...]:
    return asked.requests if isinstance(asked, All) else (asked,)
