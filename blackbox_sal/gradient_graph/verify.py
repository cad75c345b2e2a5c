"""Checking a gradient graph against finite differences before it is trusted.

Every graph (built, cached or shipped) is checked on random token sequences of two lengths,
at the embeddings and at half of them (a point off the embedding manifold, like the middle of
an integrated-gradients path), with the sessions and device that will be used: its
directional derivatives must match Richardson finite differences of the model itself.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.differences import RICHARDSON, combine
from blackbox_sal.vocabulary.errors import ModelError

#: relative error allowed per direction, and how many directions may exceed it (a direction
#: whose finite difference straddles a ReLU or max-pool kink can miss)
VERIFY_RTOL = 1e-2
VERIFY_LENGTHS = (3, 8)
VERIFY_DIRECTIONS = 3
#: the Richardson step, relative to each token's norm
VERIFY_STEP = 2e-3


def verify(model: TextModel, graph: GradientSession, seed: int = 0) -> None:
    """ModelError when more than one direction in six disagrees (see the module docstring).

    Each direction v is scaled so that every token row has that token's own norm; the steps
    are 2e-3 and 1e-3 of that, all perturbed points of one length in one run. A model whose
    outputs overflow fails the check quietly (its non-finite errors count as disagreements).
    """
    with np.errstate(all="ignore"):
        _verify(model, graph, seed)


def _verify(model: TextModel, graph: GradientSession, seed: int) -> None:
    rng = np.random.default_rng(seed)
    errors: list[float] = []
    offsets = RICHARDSON * VERIFY_STEP
    for ids, embeds in _points(model, rng):
        types = np.zeros(len(ids), np.int64)
        n_classes = model.forward(embeds[None], ids, types).shape[1]
        w = rng.normal(size=(n_classes,))
        for x in (embeds, (0.5 * embeds).astype(np.float32)):
            grad = graph.gradient(model, x[None], ids, types, w[None]).astype(np.float64)[0]
            v = rng.normal(size=(VERIFY_DIRECTIONS, *x.shape))
            v *= np.linalg.norm(embeds, axis=-1, keepdims=True) / np.linalg.norm(v, axis=-1, keepdims=True)
            points = (x[None, None] + offsets[None, :, None, None] * v[:, None]).astype(np.float32)
            g = model.run(points.reshape(-1, *x.shape), ids, types, 64).reshape(len(v), len(offsets), -1) @ w
            fd = combine(g, np.full(len(v), VERIFY_STEP))
            exact = np.einsum("sd,ksd->k", grad, v)
            scale = np.linalg.norm(grad) * np.linalg.norm(v.reshape(len(v), -1), axis=1)
            errors += (np.abs(exact - fd) / (np.abs(fd) + 1e-3 * scale + 1e-12)).tolist()
    bad = sum(not e <= VERIFY_RTOL for e in errors)
    if bad > len(errors) // 6:
        raise ModelError(
            f"the gradient graph disagrees with finite differences on {model.device} in {bad} of "
            f"{len(errors)} directions (relative errors {', '.join(f'{e:.2g}' for e in errors)}); refusing it")


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
