"""Scores per token to scored spans, and tokens merged to words (subword scores summed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blackbox_sal.text.tokenization import Tokens


@dataclass(frozen=True)
class Span:
    """A scored piece of the text: a token or a word. ``start``/``end`` are character offsets
    into the explained text; ``text`` is that slice (the token string for special tokens)."""

    text: str
    start: int
    end: int
    score: float
    special: bool


def token_spans(tokens: Tokens, scores: np.ndarray) -> tuple[Span, ...]:
    """One span per token. For special tokens ``text`` is the token string itself."""
    spans = []
    for k, (a, b) in enumerate(tokens.offsets):
        special = bool(tokens.special[k])
        text = tokens.strings[k] if special or a == b else tokens.text[a:b]
        spans.append(Span(text, a, b, float(scores[k]), special))
    return tuple(spans)


def merge_words(tokens: Tokens, scores: np.ndarray) -> tuple[Span, ...]:
    """Merge consecutive tokens of one word: scores summed, offsets joined.

    Summing keeps additive attributions (grad x input, IG) additive over words. Special
    tokens stay spans of their own.
    """
    spans: list[Span] = []
    last_word: int | None = None
    for k, span in enumerate(token_spans(tokens, scores)):
        word = tokens.word_ids[k]
        if word is not None and word == last_word and spans:
            prev = spans[-1]
            start, end = min(prev.start, span.start), max(prev.end, span.end)
            spans[-1] = Span(tokens.text[start:end], start, end, prev.score + span.score, False)
        else:
            spans.append(span)
        last_word = word
    return tuple(spans)
