"""Text to tokens (ids, character offsets, special marks) and tokens back to words."""

from blackbox_sal.text.tokenization import MAX_CHARS, Tokens, tokenize
from blackbox_sal.text.words import Span, merge_words, token_spans

__all__ = ["MAX_CHARS", "Span", "Tokens", "merge_words", "token_spans", "tokenize"]
