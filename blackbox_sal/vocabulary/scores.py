"""The explained scalar: a model's raw outputs [N, C] turned into one number per row.

Scores (``SCORES``): ``logit`` is the raw output value; ``probability`` and
``log-probability`` apply a softmax over the output's classes first. An :class:`Objective`
names one scalar: a class's score (:class:`ClassScore`) or the cosine similarity of the output
to a reference vector (:class:`Cosine`, sentence embeddings). Each also gives the seed a
gradient graph is started from, d scalar / d outputs, by the chain rule.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from blackbox_sal.vocabulary.errors import UsageError


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


#: score name -> function of the outputs [N, C] giving the per-class score [N, C]
SCORES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "logit": lambda z: z,
    "probability": lambda z: np.exp(_log_softmax(z)),
    "log-probability": _log_softmax,
}


def _one_hot(z: np.ndarray, target: int) -> np.ndarray:
    out = np.zeros(z.shape, dtype=np.float64)
    out[:, target] = 1.0
    return out


def _probability_seed(z: np.ndarray, target: int) -> np.ndarray:
    p = np.exp(_log_softmax(z))
    return p[:, target : target + 1] * (_one_hot(z, target) - p)


#: score name -> d score / d outputs for outputs [N, C] and the target class
SCORE_SEEDS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "logit": _one_hot,
    "probability": _probability_seed,
    "log-probability": lambda z, t: _one_hot(z, t) - np.exp(_log_softmax(z)),
}


def cosine(z: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of z [N, C] with reference [C]: [N]."""
    norms = np.linalg.norm(z, axis=1) * np.linalg.norm(reference)
    return (z @ reference) / np.maximum(norms, 1e-30)


def cosine_seed(z: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """d cosine(z, r) / d z = r / (|z| |r|) - cosine * z / |z|^2, per row: [N, C]."""
    nz = np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-30)
    nr = max(float(np.linalg.norm(reference)), 1e-30)
    return reference[None] / (nz * nr) - cosine(z, reference)[:, None] * z / nz**2


class Objective(Protocol):
    """One explained scalar of the model's outputs."""

    @property
    def score(self) -> str:
        """The name results report as the score (logit, probability, log-probability, cosine)."""
        ...

    def scalar(self, outputs: np.ndarray) -> np.ndarray:
        """The scalar for outputs [N, C]: float64 [N]."""
        ...

    @property
    def seed_reads_outputs(self) -> bool:
        """Whether :meth:`seed` needs the outputs (one forward pass) rather than the target alone."""
        ...

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        """d scalar / d outputs [N, C]: the weights a gradient graph is seeded with."""
        ...


@dataclass(frozen=True)
class ClassScore:
    """SCORES[score](outputs)[:, target]: a class's logit, probability or log-probability."""

    target: int
    score: str = "logit"
    n_classes: int = 1

    def scalar(self, outputs: np.ndarray) -> np.ndarray:
        return SCORES[self.score](np.asarray(outputs, np.float64))[:, self.target]

    @property
    def seed_reads_outputs(self) -> bool:
        return self.score != "logit"

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        return SCORE_SEEDS[self.score](np.asarray(outputs, np.float64), self.target)


@dataclass(frozen=True)
class Margin:
    """A margin between two classes: logit[positive] - logit[negative] (a binary classifier's
    decision function), one gradient run whatever the classes."""

    positive: int
    negative: int
    score: str = "margin"

    def scalar(self, outputs: np.ndarray) -> np.ndarray:
        z = np.asarray(outputs, np.float64)
        return z[:, self.positive] - z[:, self.negative]

    @property
    def seed_reads_outputs(self) -> bool:
        return False

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(outputs), np.float64)
        out[:, self.positive], out[:, self.negative] = 1.0, -1.0
        return out


@dataclass(frozen=True)
class Cosine:
    """The cosine similarity of the output (an embedding [C]) to a fixed ``reference`` [C]."""

    reference: np.ndarray = field(repr=False)
    score: str = "cosine"

    def scalar(self, outputs: np.ndarray) -> np.ndarray:
        return cosine(np.asarray(outputs, np.float64), self.reference)

    @property
    def seed_reads_outputs(self) -> bool:
        return True

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        return cosine_seed(np.asarray(outputs, np.float64), self.reference)


@dataclass(frozen=True)
class Projection:
    """The output (an embedding [C]) projected on a fixed ``direction`` [C]: output . direction."""

    direction: np.ndarray = field(repr=False)
    score: str = "projection"

    def scalar(self, outputs: np.ndarray) -> np.ndarray:
        return np.asarray(outputs, np.float64) @ self.direction

    @property
    def seed_reads_outputs(self) -> bool:
        return False

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.direction, np.shape(outputs)).astype(np.float64)


@dataclass(frozen=True)
class Contrast:
    """"A rather than B": SCORES[score](outputs)[:, target] - SCORES[score](outputs)[:, contrast]
    (for logits, a margin), one gradient run; its seed is the difference of the two seeds."""

    target: int
    contrast: int
    score: str = "logit"

    def scalar(self, outputs: np.ndarray) -> np.ndarray:
        values = SCORES[self.score](np.asarray(outputs, np.float64))
        return values[:, self.target] - values[:, self.contrast]

    @property
    def seed_reads_outputs(self) -> bool:
        return self.score != "logit"

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        z = np.asarray(outputs, np.float64)
        return SCORE_SEEDS[self.score](z, self.target) - SCORE_SEEDS[self.score](z, self.contrast)


@dataclass(frozen=True)
class TokenWeights:
    """A weighted sum of per-token label scores: sum over (i, l) of weights[i, l] times
    SCORES[score] of position i's labels, for a per-token output flattened position-major
    ([N, S * L], see :func:`blackbox_sal.surgery.interfaces.flat_per_token`; the softmax of
    probability and log-probability is over each position's L labels). An entity is +1 on each
    of its tokens' labels; "A rather than B" is +1 / -1. ``weights`` [S, L]."""

    weights: np.ndarray = field(repr=False)
    score: str = "logit"

    def _per_position(self, outputs: np.ndarray) -> np.ndarray:
        z = np.asarray(outputs, np.float64)
        return z.reshape(z.shape[0] * self.weights.shape[0], self.weights.shape[1])

    def scalar(self, outputs: np.ndarray) -> np.ndarray:
        n = np.shape(outputs)[0]
        values = SCORES[self.score](self._per_position(outputs)).reshape(n, *self.weights.shape)
        return np.einsum("nsl,sl->n", values, self.weights)

    @property
    def seed_reads_outputs(self) -> bool:
        return self.score != "logit"

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        n = np.shape(outputs)[0]
        w = np.broadcast_to(self.weights, (n, *self.weights.shape)).reshape(-1, self.weights.shape[1])
        if self.score == "logit":
            return w.reshape(n, -1).astype(np.float64)
        p = np.exp(_log_softmax(self._per_position(outputs)))
        if self.score == "log-probability":  # d log p_l / d z_j = [l = j] - p_j
            seed = w - p * w.sum(axis=1, keepdims=True)
        else:  # d p_l / d z_j = p_l ([l = j] - p_j)
            seed = w * p - p * (w * p).sum(axis=1, keepdims=True)
        return seed.reshape(n, -1)


def seed_without_outputs(objective: Objective, n: int, n_classes: int) -> np.ndarray:
    """The seed of an objective that does not read the outputs, for n rows: [n, C]."""
    return objective.seed(np.zeros((n, n_classes)))


def _is_index(text: str) -> bool:
    digits = text.strip().removeprefix("-")
    return digits.isascii() and digits.isdigit()


def resolve_target(target: str | int | None, labels: tuple[str, ...] | None,
                   n_classes: int, predicted: int, lookup: Callable[[str], int | None] | None = None) -> int:
    """The output index to explain: a label name, an index (int or digits), the prediction,
    or (``lookup``, for a causal LM) a token of the vocabulary."""
    if target is None:
        return predicted
    names = list(labels or ())
    if isinstance(target, str) and target in names:
        return names.index(target)
    if isinstance(target, str) and lookup is not None and not _is_index(target):
        found = lookup(target)
        if found is None:
            raise UsageError(f"target {target!r} is not a single token of the vocabulary; "
                             f"give one token, or its index")
        return found
    return named_index(target, names, n_classes, "target", f"the output has {n_classes} classes")


def named_index(value: str | int, names: Sequence[str], width: int, what: str, has: str) -> int:
    """A label name or an index (int or digits) below ``width`` as an index; UsageError (exit 2)
    naming the labels, or the closest one, otherwise. ``what``: what the value is called
    ("target", "contrast"); ``has``: the width in words ("the output has 3 classes")."""
    names = list(names)
    if isinstance(value, str) and value in names:
        return names.index(value)
    text = str(value).strip()
    if _is_index(text):
        index = int(text)
        if 0 <= index < width:
            return index
        raise UsageError(f"{what} index {index} is out of range: {has} (0..{width - 1})")
    close = difflib.get_close_matches(text, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = f"labels: {', '.join(names)}" if names else f"the model has no labels; use an index 0..{width - 1}"
    raise UsageError(f"unknown {what} label {text!r}{hint} ({known})")
