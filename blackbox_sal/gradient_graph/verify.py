"""Checking a gradient graph against finite differences before it is trusted.

Every graph (built, cached or shipped) is checked on random token sequences of two lengths,
at the embeddings and at half of them (a point off the embedding manifold, like the middle of
an integrated-gradients path), with the sessions and device that will be used: its
directional derivatives must match Richardson finite differences of the model itself.
"""

from __future__ import annotations

import numpy as np

from blackbox_sal.differences import RICHARDSON, combine
from blackbox_sal.errors import ModelError
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.model.text_model import TextModel

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
    are 2e-3 and 1e-3 of that, all perturbed points of one length in one run.
    """
    rng = np.random.default_rng(seed)
    errors: list[float] = []
    offsets = RICHARDSON * VERIFY_STEP
    for length in VERIFY_LENGTHS:
        s = min(length, model.max_length or length)
        ids = rng.integers(0, model.table.shape[0], s)
        types = np.zeros(s, np.int64)
        embeds = model.embed(ids)
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
