"""How far a tokenizer's normalizer can expand a text, checked before it runs.

A ``tokenizers`` normalizer rewrites the text before it is split: ``Replace`` puts a string of
any length in place of each match, and a ``Sequence`` of them multiplies (one ``Replace`` of a
character by a thousand copies of itself, three times over, makes 10^9 characters of each).
The Rust library allocates the result, and about 16 bytes of alignment per byte of it, without
a bound: a short text becomes gigabytes, then an abort. Two checks keep it bounded:

- at load, :func:`check_normalizer` refuses a normalizer whose worst case per character
  (:func:`expansion`, from its JSON) exceeds :data:`MAX_EXPANSION`: the product over a
  ``Sequence`` of each step's factor, ``len(content) / len(pattern)`` for a string
  ``Replace``, ``1 + len(content)`` for a regex one (a regex may match the empty string),
  ``1 + len(prepend)`` for ``Prepend``, 1 for the steps whose expansion Unicode bounds (NFKC
  and friends, lowercasing, BERT's, a SentencePiece charsmap: at most 18 characters each,
  which the second check counts);
- per text, :func:`check_normalized` normalizes the text in pieces of :data:`PIECE` characters,
  adding up their lengths and stopping as soon as the sum is over the character cap: at most
  one piece's expansion is ever held, and the text is refused before the tokenizer normalizes
  it whole. The sum is exact for normalizers that act character by character; a pattern cut
  at a piece's edge can change it by a few characters.
"""

from __future__ import annotations

import json
from typing import Any

from tokenizers import Tokenizer

from blackbox_sal.text.printable import printable
from blackbox_sal.vocabulary.errors import InputError, ModelError, TooLongError

#: the most characters a normalizer may make of one character, by its own data (Replace, Prepend)
MAX_EXPANSION = 100

#: characters normalized at a time by the per-text check (at most MAX_EXPANSION times 18 times
#: as many come out: a few MB)
PIECE = 1024

#: BaseExceptions that are not a library's panic: they go on up
NOT_PANICS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def expansion(spec: Any) -> float:
    """The worst-case characters out per character in of a normalizer's JSON ``spec`` (see the
    module docstring); unknown kinds count 1 (the per-text check still measures them)."""
    if not isinstance(spec, dict):
        return 1.0
    kind = spec.get("type")
    if kind == "Sequence":
        factor = 1.0
        for step in spec.get("normalizers") or []:
            factor *= expansion(step)
        return factor
    if kind == "Replace":
        pattern, content = spec.get("pattern") or {}, spec.get("content")
        width = len(content) if isinstance(content, str) else 0
        if isinstance(pattern, dict) and isinstance(pattern.get("String"), str) and pattern["String"]:
            return max(1.0, width / len(pattern["String"]))
        return 1.0 + width
    if kind == "Prepend":
        prepend = spec.get("prepend")
        return 1.0 + (len(prepend) if isinstance(prepend, str) else 0)
    return 1.0


def check_normalizer(tokenizer: Tokenizer, where: str) -> None:
    """ModelError (exit 3) when the tokenizer's normalizer can make more than MAX_EXPANSION
    characters of one (``where`` names the file in the message)."""
    normalizer = tokenizer.normalizer
    if normalizer is None:
        return
    try:
        spec = json.loads(normalizer.__getstate__())
    except ValueError:  # a normalizer the library cannot write out: the per-text check remains
        return
    factor = expansion(spec)
    if factor > MAX_EXPANSION:
        raise ModelError(f"{where}: the tokenizer's normalizer can make up to {factor:,.0f} characters of one "
                         f"(Replace or Prepend steps); at most {MAX_EXPANSION} are accepted")


def normalized_length(tokenizer: Tokenizer, text: str, stop: int | None = None) -> tuple[int, int]:
    """(length once normalized, characters of ``text`` read for it): PIECE characters at a time
    (exact for normalizers acting on single characters), up to the first sum over ``stop``.
    InputError when the normalizer fails."""
    normalizer = tokenizer.normalizer
    if normalizer is None:
        return len(text), len(text)
    total = read = 0
    try:
        while read < len(text) and (stop is None or total <= stop):
            total += len(normalizer.normalize_str(text[read:read + PIECE]))
            read = min(read + PIECE, len(text))
    except Exception as exc:
        raise InputError(f"the tokenizer's normalizer cannot read the text: {first_line(exc)}") from None
    except BaseException as exc:
        if isinstance(exc, NOT_PANICS):
            raise
        raise InputError(f"the tokenizer's normalizer failed on the text (a panic in the tokenizers library: "
                         f"{first_line(exc)})") from None
    return total, read


def first_line(exc: BaseException) -> str:
    """An exception of the tokenizers library as one printable line (a panic's message runs
    over several lines, and may carry text from the model folder)."""
    text = str(exc).strip()
    return printable((text.splitlines()[0] if text else type(exc).__name__)[:300])


def check_normalized(tokenizer: Tokenizer, text: str, max_chars: int) -> None:
    """TooLongError (exit 2; a server answers 413) when ``text`` would be over ``max_chars``
    characters once normalized."""
    n, read = normalized_length(tokenizer, text, stop=max_chars)
    if n > max_chars:
        part = "" if read == len(text) else f", {n:,} from its first {read:,}"
        raise TooLongError(f"the text would have over {max_chars:,} characters once the tokenizer normalizes it "
                           f"({len(text):,} as written{part})")
