"""Tokenizing one text with a Hugging Face ``tokenizers`` tokenizer, with input checks.

Characters are capped *before* tokenizing: ``tokenizers`` encodes the whole text before any
truncation, and some pre-tokenizer regexes are slow on adversarial input. They are capped again
*after* the tokenizer's normalizer, estimated before it runs (:mod:`.normalization`): a
normalizer may expand each character into many. Tokens are counted after tokenizing.

Every call into the tokenizer goes through :func:`encode`: the Rust library's failures (a
vocabulary with no unknown token meeting an unknown character) and its panics (a regex that
hits its backtracking limit raises ``pyo3_runtime.PanicException``, a ``BaseException``) become
one InputError.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import tokenizers
from tokenizers import Encoding, Tokenizer

from blackbox_sal.text.normalization import NOT_PANICS, check_normalized, first_line
from blackbox_sal.vocabulary.errors import InputError, TooLongError, UnavailableError

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


def check_text(text: str, max_chars: int) -> None:
    """InputError (exit 2) for what is not a text to explain: not a string, empty, over
    ``max_chars`` characters, or holding a lone surrogate."""
    if text is not None and not isinstance(text, str):
        raise InputError(f"the text must be a string, not {type(text).__name__}")
    if not text or not text.strip():
        raise InputError("the text is empty")
    if len(text) > max_chars:
        raise TooLongError(f"the text has {len(text):,} characters; at most {max_chars:,} are accepted")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate ("\udc00"): not text, and the tokenizer refuses it
        raise InputError(f"the text is not valid Unicode (a lone surrogate at character {exc.start})") from None


#: what a panic of the Rust library is (pyo3_runtime.PanicException derives from BaseException
#: only, and is not importable by name)
def encode(tokenizer: Tokenizer, text: str, pair: str | None = None, add_special_tokens: bool = True,
           max_chars: int = MAX_CHARS) -> Encoding:
    """``tokenizer.encode(text, pair)`` after the check of the normalized length
    (:func:`~blackbox_sal.text.normalization.check_normalized`), with the library's errors and
    panics as one InputError (exit 2)."""
    for part in (text, pair):
        if part is not None:
            check_normalized(tokenizer, part, max_chars)
    try:
        return tokenizer.encode(text, pair, add_special_tokens=add_special_tokens)
    except Exception as exc:  # tokenizers raises a bare Exception ("Missing [UNK] token from the vocabulary")
        raise InputError(f"the tokenizer cannot encode the text: {first_line(exc)}") from None
    except BaseException as exc:
        if isinstance(exc, NOT_PANICS):
            raise
        raise InputError(f"the tokenizer failed on the text (a panic in the tokenizers library: "
                         f"{first_line(exc)})") from None


def tokenize(tokenizer: Tokenizer, text: str, max_length: int | None,
             max_chars: int = MAX_CHARS) -> Tokens:
    """Tokenize ``text`` with the model's special tokens; InputError (exit 2) when it is empty,
    over ``max_chars`` characters (as written or once normalized), over ``max_length`` tokens,
    or when the tokenizer fails on it."""
    check_text(text, max_chars)
    return _tokens(text, encode(tokenizer, text, max_chars=max_chars), max_length)


#: what separates the two texts of a pair in the combined text tokens point into
PAIR_SEPARATOR = "\n"


def tokenize_pair(tokenizer: Tokenizer, first: str, second: str, max_length: int | None,
                  max_chars: int = MAX_CHARS) -> Tokens:
    """Tokenize a pair (a context and one answer choice) with the model's pair template
    (e.g. [CLS] first [SEP] second [SEP], type ids 0 then 1); offsets point into
    ``first + PAIR_SEPARATOR + second``."""
    check_text(first, max_chars)
    check_text(second, max_chars)
    enc = encode(tokenizer, first, second, max_chars=max_chars)
    shift = len(first) + len(PAIR_SEPARATOR)
    offsets = [(a + shift, b + shift) if seq == 1 else (a, b)
               for (a, b), seq in zip(enc.offsets, enc.sequence_ids, strict=True)]
    tokens = _tokens(first + PAIR_SEPARATOR + second, enc, max_length)
    words = tokens.word_ids
    n_first = 1 + max((w for w, seq in zip(words, enc.sequence_ids, strict=True) if w is not None and seq == 0),
                      default=-1)
    return replace(tokens, offsets=tuple(offsets), word_ids=tuple(
        None if w is None else (w + n_first if seq == 1 else w) for w, seq in zip(words, enc.sequence_ids,
                                                                                    strict=True)))


def tokenize_windows(tokenizer: Tokenizer, text: str, max_length: int, overlap: int,
                     max_chars: int = MAX_CHARS) -> list[Tokens]:
    """``text`` as consecutive windows of at most ``max_length`` tokens (special tokens
    included, added to each window), each sharing ``overlap`` ordinary tokens with the next."""
    check_text(text, max_chars)
    windowed = Tokenizer.from_str(tokenizer.to_str())  # truncation settings stay off the model's tokenizer
    added = windowed.num_special_tokens_to_add(is_pair=False)
    if max_length - added <= overlap:
        raise InputError(f"a window of {max_length} tokens cannot overlap by {overlap}")
    windowed.enable_truncation(max_length, stride=overlap)
    first = encode(windowed, text, max_chars=max_chars)
    windows = [_tokens(text, enc, None) for enc in [first, *first.overflowing]]
    whole = tokenize(tokenizer, text, None, max_chars)
    covered = {o for w in windows for o, sp in zip(w.offsets, w.special, strict=True) if not sp}
    if any(o not in covered for o, sp in zip(whole.offsets, whole.special, strict=True) if not sp):
        raise UnavailableError(f"tokenizers {tokenizers.__version__} returned windows that leave out part of the "
                               f"text (tokenizers 0.23.1 and 0.23.2 return one overflowing window only): "
                               f"install another version (pip install 'tokenizers>=0.23.3')")
    return windows


def stitch(windows: list[Tokens]) -> Tokens:
    """The tokens of the whole text from its windows: the first window's leading special
    tokens, every ordinary token once (by character offsets, in text order), the last
    window's trailing special tokens."""
    rows: dict[tuple[int, int], int] = {}
    picked: list[tuple[Tokens, int]] = []
    first_ordinary = int(np.flatnonzero(~windows[0].special)[0])
    picked += [(windows[0], k) for k in range(first_ordinary)]
    for w in windows:
        for k in np.flatnonzero(~w.special):
            if w.offsets[k] not in rows:
                rows[w.offsets[k]] = len(picked)
                picked.append((w, int(k)))
    last = windows[-1]
    picked += [(last, k) for k in range(int(np.flatnonzero(~last.special)[-1]) + 1, len(last))]
    return Tokens(
        text=windows[0].text,
        ids=np.array([w.ids[k] for w, k in picked], dtype=np.int64),
        type_ids=np.array([w.type_ids[k] for w, k in picked], dtype=np.int64),
        strings=tuple(w.strings[k] for w, k in picked),
        offsets=tuple(w.offsets[k] for w, k in picked),
        special=np.array([bool(w.special[k]) for w, k in picked]),
        word_ids=tuple(w.word_ids[k] for w, k in picked),
    )


def _tokens(text: str, enc: Encoding, max_length: int | None) -> Tokens:
    n = len(enc.ids)
    special = np.array(enc.special_tokens_mask, dtype=bool)
    if n == 0 or special.all():
        raise InputError("the text has no tokens the model knows")
    if max_length is not None and n > max_length:
        raise TooLongError(f"the text has {n} tokens; the model takes at most {max_length}")
    return Tokens(
        text=text,
        ids=np.array(enc.ids, dtype=np.int64),
        type_ids=np.array(enc.type_ids, dtype=np.int64),
        strings=tuple(enc.tokens),
        offsets=tuple((int(a), int(b)) for a, b in enc.offsets),
        special=special,
        word_ids=tuple(None if s else w for w, s in zip(enc.word_ids, special, strict=True)),
    )
