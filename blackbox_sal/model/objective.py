"""The explained scalar f(embeddings): one output of the model, turned into a score.

For one tokenized text, an :class:`Objective` maps embedding points [N, S, D] to the target
scalar [N]. Scores (``SCORES``): ``logit`` is the raw output value; ``probability`` and
``log-probability`` apply a softmax over the output's classes first.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from blackbox_sal.errors import UsageError
from blackbox_sal.model.text_model import TextModel


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
    out = np.zeros_like(z, dtype=np.float64)
    out[:, target] = 1.0
    return out


def _probability_seed(z: np.ndarray, target: int) -> np.ndarray:
    p = np.exp(_log_softmax(z))
    return p[:, target : target + 1] * (_one_hot(z, target) - p)


#: score name -> d score / d outputs for outputs [N, C] and the target class: the weights a
#: gradient graph is seeded with (chain rule through the softmax)
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


@dataclass(frozen=True)
class Objective:
    """f(points) = SCORES[score](model outputs)[:, target] for one tokenized text, or with a
    ``reference`` vector [C] the cosine similarity of the outputs to it (sentence embeddings).

    ids, type_ids: int64 [S], shared by every point. batch_size bounds each session run.
    n_classes: the width C of the explained output.
    ``calls`` counts the rows evaluated (forward passes), for cost reports.
    """

    model: TextModel
    ids: np.ndarray
    type_ids: np.ndarray
    target: int
    score: str
    batch_size: int
    n_classes: int = 0
    calls: list[int] = field(default_factory=lambda: [0], repr=False, compare=False)
    reference: np.ndarray | None = field(default=None, repr=False, compare=False)

    def outputs(self, points: np.ndarray) -> np.ndarray:
        """Raw model outputs for points [N, S, D]: float64 [N, C]."""
        self.calls[0] += points.shape[0]
        return self.model.run(points, self.ids, self.type_ids, self.batch_size)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """The target scalar for points [N, S, D]: float64 [N]."""
        if self.reference is not None:
            return cosine(self.outputs(points), self.reference)
        return SCORES[self.score](self.outputs(points))[:, self.target]

    @property
    def seed_reads_outputs(self) -> bool:
        """Whether :meth:`seed` needs the outputs (a forward pass) rather than the target alone."""
        return self.reference is not None or self.score != "logit"

    def seed(self, outputs: np.ndarray) -> np.ndarray:
        """d scalar / d outputs [N, C]: the weights a gradient graph is seeded with."""
        if self.reference is not None:
            return cosine_seed(outputs, self.reference)
        return SCORE_SEEDS[self.score](outputs, self.target)


def resolve_target(target: str | int | None, labels: tuple[str, ...] | None,
                   n_classes: int, predicted: int, lookup: Callable[[str], int | None] | None = None) -> int:
    """The output index to explain: a label name, an index (int or digits), the prediction,
    or (``lookup``, for a causal LM) a token of the vocabulary."""
    if target is None:
        return predicted
    names = list(labels or ())
    if isinstance(target, str) and target in names:
        return names.index(target)
    if isinstance(target, str) and lookup is not None and not target.strip().lstrip("-").isdigit():
        found = lookup(target)
        if found is None:
            raise UsageError(f"target {target!r} is not a single token of the vocabulary; "
                             f"give one token, or its index")
        return found
    text = str(target).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if 0 <= index < n_classes:
            return index
        raise UsageError(f"target index {index} is out of range: the output has {n_classes} classes "
                         f"(0..{n_classes - 1})")
    close = difflib.get_close_matches(text, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = f"labels: {', '.join(names)}" if names else f"the model has no labels; use an index 0..{n_classes - 1}"
    raise UsageError(f"unknown target label {text!r}{hint} ({known})")
