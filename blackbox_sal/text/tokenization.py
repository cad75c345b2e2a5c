"""Tokenizing one text with a Hugging Face ``tokenizers`` tokenizer, with input checks.

Characters are capped *before* tokenizing: ``tokenizers`` encodes the whole text before any
truncation, and some pre-tokenizer regexes are slow on adversarial input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.errors import InputError

#: the longest text accepted, in characters, whatever the model's token limit
MAX_CHARS = 100_000


@dataclass(frozen=True)
class Tokens:
    """One tokenized text. ids/type_ids: int64 [S]; special: bool [S]; offsets: character
    (start, end) per token into ``text`` ((0, 0) for added special tokens); word_ids: the
    word index of each token, None for special tokens."""

    text: str
    ids: np.ndarray
    type_ids: np.ndarray
    strings: tuple[str, ...]
    offsets: tuple[tuple[int, int], ...]
    special: np.ndarray
    word_ids: tuple[int | None, ...]

    def __len__(self) -> int:
        return len(self.strings)


def tokenize(tokenizer: Tokenizer, text: str, max_length: int | None,
             max_chars: int = MAX_CHARS) -> Tokens:
    """Tokenize ``text`` with the model's special tokens; InputError (exit 2) when it is empty,
    over ``max_chars`` characters, or over ``max_length`` tokens."""
    if not text or not text.strip():
        raise InputError("the text is empty")
    if len(text) > max_chars:
        raise InputError(f"the text has {len(text):,} characters; at most {max_chars:,} are accepted")
    enc = tokenizer.encode(text)
    n = len(enc.ids)
    special = np.array(enc.special_tokens_mask, dtype=bool)
    if n == 0 or special.all():
        raise InputError("the text has no tokens the model knows")
    if max_length is not None and n > max_length:
        raise InputError(f"the text has {n} tokens; the model takes at most {max_length}")
    return Tokens(
        text=text,
        ids=np.array(enc.ids, dtype=np.int64),
        type_ids=np.array(enc.type_ids, dtype=np.int64),
        strings=tuple(enc.tokens),
        offsets=tuple((int(a), int(b)) for a, b in enc.offsets),
        special=special,
        word_ids=tuple(None if s else w for w, s in zip(enc.word_ids, special, strict=True)),
    )
