"""Turning a text (or a row of numbers) into a feature model's input vector, with the spans of
the text each feature came from.

Three kinds, by what the model folder holds:

- ``bag-of-words``: a float [batch, F] input and a ``tokenizer.json`` whose token ids are the
  feature columns (config.json ``"input_kind": "bag-of-words"``): feature j is 1 when token j
  occurs (``"binary": false`` in config.json: its count);
- ``pipeline``: a scikit-learn pipeline that takes the string itself; its own front part
  (StringNormalizer, Tokenizer, TfIdfVectorizer) makes the vector, and the words are found
  with its Tokenizer's pattern in its vocabulary;
- ``numbers``: a float [batch, F] input with no text (``"input_kind": "features"``: tabular
  data, images): the input is F numbers separated by commas or spaces.

A word that occurs several times shares its feature's score equally among its occurrences, so
the scores of the words still add up to the attribution of the features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from blackbox_sal.model.session import first_line, run
from blackbox_sal.text.tokenization import MAX_CHARS, check_text, encode
from blackbox_sal.vocabulary.errors import InputError, ModelError

#: the most features a model may take: its names (and vectors) are built before anything runs,
#: and a crafted input dimension of 10^9 would make a tuple of 10^9 strings
MAX_FEATURES = 1_000_000

#: the kinds of feature input
KINDS = ("bag-of-words", "pipeline", "numbers")
_NUMBER = re.compile(r"[^\s,;]+")


@dataclass(frozen=True)
class Piece:
    """A span of the input text [start, end) and the feature it feeds (None: no feature)."""

    start: int
    end: int
    feature: int | None


@dataclass(frozen=True)
class Featurizer:
    """Text -> (feature vector [F] float32, the pieces of the text that fed it).

    kind: see the module docstring. size: F. names: a name per feature (vocabulary words,
    or the config's feature names). tokenizer: bag-of-words only. binary: bag-of-words: 1 for
    presence, else counts. front/front_output: pipeline only, the session computing the
    vector from the string. pattern, lowercase, vocabulary: pipeline only, how its words are
    found (its Tokenizer's expression, its StringNormalizer's case) and their columns.
    """

    kind: str
    size: int
    names: tuple[str, ...]
    tokenizer: Tokenizer | None = field(default=None, repr=False)
    binary: bool = True
    front: ort.InferenceSession | None = field(default=None, repr=False)
    front_output: str = ""
    pattern: re.Pattern[str] | None = field(default=None, repr=False)
    lowercase: bool = True
    vocabulary: dict[str, int] = field(default_factory=dict, repr=False)

    def featurize(self, text: str) -> tuple[np.ndarray, tuple[Piece, ...]]:
        """InputError for what is not a text (not a string, empty, a lone surrogate: callers
        check the length against their own cap first)."""
        check_text(text, len(text) if isinstance(text, str) else 0)
        if self.kind == "numbers":
            return self._numbers(text)
        if self.kind == "bag-of-words":
            assert self.tokenizer is not None
            enc = encode(self.tokenizer, text, add_special_tokens=False, max_chars=max(len(text), MAX_CHARS))
            vector = np.zeros(self.size, np.float32)
            for i in enc.ids:
                if not 0 <= i < self.size:
                    raise ModelError(f"the tokenizer gave token id {i}, but the model has {self.size} features")
                vector[i] = 1.0 if self.binary else vector[i] + 1.0
            return vector, tuple(Piece(a, b, int(i)) for i, (a, b) in zip(enc.ids, enc.offsets, strict=True))
        assert self.front is not None and self.pattern is not None
        vector = np.asarray(run(self.front, [self.front_output], {self.front.get_inputs()[0].name:
                                                                   np.array([[text]], dtype=object)},
                                "the pipeline's vectorizer")[0], dtype=np.float32).reshape(-1)
        if vector.size != self.size:
            raise ModelError(f"the pipeline's vectorizer gave {vector.size} features, not {self.size}")
        seen = text.lower() if self.lowercase else text
        if len(seen) != len(text):  # a lowercase that changes lengths: find words in the text as written
            seen = text
        pieces = tuple(Piece(m.start(), m.end(), self.vocabulary.get(m.group())) for m in self.pattern.finditer(seen))
        return vector, pieces

    def _numbers(self, text: str) -> tuple[np.ndarray, tuple[Piece, ...]]:
        found = list(_NUMBER.finditer(text))
        if len(found) != self.size:
            raise InputError(f"the model takes {self.size} numbers; the input has {len(found)} "
                             f"(separate them with commas or spaces)")
        try:
            vector = np.array([float(m.group()) for m in found], np.float32)
        except ValueError as exc:
            raise InputError(f"the input is not {self.size} numbers: {first_line(exc)}") from exc
        if not np.isfinite(vector).all():
            raise InputError("the input numbers must be finite")
        return vector, tuple(Piece(m.start(), m.end(), k) for k, m in enumerate(found))


def feature_count(size: int, what: str) -> int:
    """``size`` when it is a usable number of features (1 to MAX_FEATURES), else ModelError."""
    if not 0 < size <= MAX_FEATURES:
        raise ModelError(f"{what} has {size:,} features; blackbox-sal takes 1 to {MAX_FEATURES:,}")
    return size


def tokenizer_pattern(expression: str) -> re.Pattern[str]:
    """The Python form of a com.microsoft Tokenizer's ``tokenexp`` (an ECMAScript expression of
    the simple kind skl2onnx writes); ModelError when it is not one."""
    try:
        return re.compile(expression)
    except re.error as exc:
        raise ModelError(f"the pipeline's Tokenizer pattern {expression!r} cannot be read: {exc}") from exc
