"""Per-dimension attributions [..., S, D] to one score per token [..., S].

Tools disagree on this step, so every common choice is offered under a plain name:
``sum`` (Captum, ferret, LIT's IG), ``l2`` (Inseq, ecco; the usual saliency norm), ``l1``,
``mean`` (of the signed values) and ``max`` (largest absolute value).

``sum`` and ``mean`` are linear: for grad x input and integrated gradients they follow from
one directional derivative per token, so the methods never need the full gradient for them
(see ``LINEAR``). The others need every dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

REDUCTIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "l2": lambda a: np.sqrt(np.sum(np.square(a), axis=-1)),
    "l1": lambda a: np.sum(np.abs(a), axis=-1),
    "sum": lambda a: np.sum(a, axis=-1),
    "mean": lambda a: np.mean(a, axis=-1),
    "max": lambda a: np.max(np.abs(a), axis=-1),
}

#: reductions that are linear in the attributions: reduce(a) = scale * sum(a)
LINEAR: dict[str, Callable[[int], float]] = {"sum": lambda dim: 1.0, "mean": lambda dim: 1.0 / dim}
