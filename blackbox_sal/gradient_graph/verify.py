"""Checking a gradient graph against finite differences before it is trusted.

Every graph (built, cached or shipped) is checked on random token sequences of two lengths,
at the embeddings and at half of them (a point off the embedding manifold, like the middle of
an integrated-gradients path), with the sessions and device that will be used: its
directional derivatives must match Richardson finite differences of the model itself.

Finite differences can judge a direction only where the model is smooth across the step.
A piecewise-linear model (Conv + ReLU + ReduceMax: attacut-c) has kinks, and a kink inside
the step bends the difference quotient away from the derivative at the point, whatever the
graph says. So each direction is differenced on a ladder of steps (h, h/2, h/4) three ways:
central (the derivative of a smooth model), forward and backward (the one-sided slopes of a
piecewise-linear one, exact on a side with no kink within the step). A way is *stable* where
its three quotients agree within the tolerance, and then its estimate (Richardson over the
two smaller steps) is a derivative the graph must match: the direction is *conclusive*, and
the graph agrees there when it matches a stable way. A direction with no stable way (kinks at
every scale) is *inconclusive*: finite differences cannot judge the graph there, and it is
not counted either way.

The verdict:

- conclusive directions that disagree fail the graph (at most one in six may: a kink can sit
  so close to the point that every step straddles it alike);
- fewer than half the directions conclusive leaves the check itself inconclusive, and the
  graph is refused (an unchecked graph is not trusted), the refusal saying so;
- else the graph passes.

A smooth model's central quotients agree to O(h^2), so each of its directions is conclusive
and judged by Richardson central differences, as before; a graph off by 10 % matches no
stable way anywhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.differences import combine
from blackbox_sal.vocabulary.errors import ModelError

#: relative error allowed per direction, and how many conclusive directions may exceed it
#: (a direction whose kink sits so close to the point that both steps straddle it alike)
VERIFY_RTOL = 1e-2
VERIFY_LENGTHS = (3, 8)
VERIFY_DIRECTIONS = 3
#: the Richardson step, relative to each token's norm
VERIFY_STEP = 2e-3
#: the share of directions that must be conclusive for the check to judge the graph
MIN_CONCLUSIVE = 0.5
#: the suffix of a cached refusal (store.py): a new rule does not read the old rule's verdicts
FAILED_SUFFIX = ".failed-kinks"


#: the steps of the ladder, relative to VERIFY_STEP
LADDER = np.array([1.0, 0.5, 0.25])


@dataclass(frozen=True)
class Direction:
    """One direction of the check: ``error`` of the graph against the closest stable way's
    estimate (against central Richardson where no way is stable), and whether any way was
    stable (``conclusive``); errors relative to the same scale."""

    error: float
    conclusive: bool
    #: the error against Richardson on h and h/2 alone (what the check compared before it knew kinks)
    central: float = 0.0

    @property
    def agrees(self) -> bool:
        return bool(self.error <= VERIFY_RTOL)


def verify(model: TextModel, graph: GradientSession, seed: int = 0) -> tuple[Direction, ...]:
    """ModelError when the graph fails (see the module docstring); else the directions checked.

    Each direction v is scaled so that every token row has that token's own norm; the steps
    are 2e-3, 1e-3 and 5e-4 of that, the perturbed points run 12 at a time. A model
    whose outputs overflow fails the check quietly (its non-finite errors count as
    disagreements).
    """
    with np.errstate(all="ignore"):
        directions = tuple(_directions(model, graph, seed))
    judge(directions, model.device)
    return directions


def judge(directions: tuple[Direction, ...], device: str) -> None:
    """The verdict on ``directions`` (module docstring): ModelError for a graph that fails or
    a check that cannot judge it."""
    conclusive = [d for d in directions if d.conclusive]
    bad = sum(not d.agrees for d in conclusive)
    said = ", ".join(f"{d.error:.2g}" + ("" if d.conclusive else "?") for d in directions)
    if bad > len(directions) // 6:
        raise ModelError(
            f"the gradient graph disagrees with finite differences on {device} in {bad} of {len(conclusive)} "
            f"directions they can judge (relative errors {said}; ? where they cannot judge: no step size "
            f"agrees with the others); refusing it")
    if len(conclusive) < MIN_CONCLUSIVE * len(directions):
        raise ModelError(
            f"the gradient graph cannot be checked on {device}: finite differences at three step sizes disagree "
            f"in {len(directions) - len(conclusive)} of {len(directions)} directions (a model with kinks, ReLU "
            f"or max, near every probe point), so they cannot judge it; refusing the unchecked graph (relative "
            f"errors {said})")


def ways(f0: np.ndarray, plus: np.ndarray, minus: np.ndarray, steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For K directions, f at the point (``f0`` [K]) and at +/- ``steps`` (``plus``, ``minus``
    [K, 3], the LADDER): the central, forward and backward quotients' estimates [K, 3]
    (Richardson over the two smaller steps) and spreads [K, 3] (max - min over the ladder)."""
    central = (plus - minus) / (2 * steps)
    forward = (plus - f0[:, None]) / steps
    backward = (f0[:, None] - minus) / steps
    estimates = np.stack([(4 * central[:, -1] - central[:, -2]) / 3, 2 * forward[:, -1] - forward[:, -2],
                          2 * backward[:, -1] - backward[:, -2]], axis=1)
    spreads = np.stack([q.max(axis=1) - q.min(axis=1) for q in (central, forward, backward)], axis=1)
    return estimates, spreads


def _directions(model: TextModel, graph: GradientSession, seed: int) -> Iterator[Direction]:
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0.0], LADDER, -LADDER]) * VERIFY_STEP
    for ids, embeds in _points(model, rng):
        types = np.zeros(len(ids), np.int64)
        n_classes = model.forward(embeds[None], ids, types).shape[1]
        w = rng.normal(size=(n_classes,))
        for x in (embeds, (0.5 * embeds).astype(np.float32)):
            grad = graph.gradient(model, x[None], ids, types, w[None]).astype(np.float64)[0]
            v = rng.normal(size=(VERIFY_DIRECTIONS, *x.shape))
            v *= np.linalg.norm(embeds, axis=-1, keepdims=True) / np.linalg.norm(v, axis=-1, keepdims=True)
            points = (x[None, None] + offsets[None, :, None, None] * v[:, None]).astype(np.float32)
            # runs of at most 12 points, as before the ladder (21 x 8 tokens would be a large one)
            g = model.run(points.reshape(-1, *x.shape), ids, types, 12).reshape(len(v), len(offsets), -1) @ w
            n = len(LADDER)
            estimates, spreads = ways(g[:, 0], g[:, 1:1 + n], g[:, 1 + n:], LADDER * VERIFY_STEP)
            exact = np.einsum("sd,ksd->k", grad, v)
            scale = np.linalg.norm(grad) * np.linalg.norm(v.reshape(len(v), -1), axis=1)
            denominator = (np.abs(estimates[:, 0]) + 1e-3 * scale + 1e-12)[:, None]
            errors, stable = np.abs(exact[:, None] - estimates) / denominator, spreads / denominator <= VERIFY_RTOL
            before = combine(g[:, [1, 1 + n, 2, 2 + n]], np.full(len(v), VERIFY_STEP))  # Richardson on h, h/2
            for k in range(len(v)):
                judged = errors[k][stable[k]]
                yield Direction(float(judged.min() if judged.size else errors[k, 0]), bool(stable[k].any()),
                                float(abs(exact[k] - before[k]) / (abs(before[k]) + 1e-3 * scale[k] + 1e-12)))


#: texts a feature model's check starts from (its vectors are what it sees in use)
_TEXTS = ("The quick brown fox jumps over the lazy dog, and the film was good.",
          "A dull, lifeless remake: the plot is thin, but the acting is wonderful and the music great.")


def _points(model: TextModel, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The token ids and embeddings [S, D] the check starts from, drawn as the check goes:
    random token sequences of VERIFY_LENGTHS (a fixed-length export's own length); for a
    feature model, the vectors of two texts (or random numbers), since an all-ones bag of
    words saturates a classifier."""
    for k, length in enumerate(VERIFY_LENGTHS):
        if model.features is None:
            s = model.fixed_length or min(length, model.max_length or length)
            ids = rng.integers(0, model.table.shape[0], s)
            yield ids, model.embed(ids)
            continue
        n = model.features.size
        vector = (model.features.featurize(_TEXTS[k])[0] if model.features.kind != "numbers" else
                  rng.uniform(0.0, 1.0, n))
        yield np.zeros(n, np.int64), np.asarray(vector, np.float32)[:, None]
