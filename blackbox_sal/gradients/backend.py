"""The gradient backend protocol: what methods may ask of a target scalar f.

f maps token embeddings [S, D] to a number (an :class:`~blackbox_sal.model.Objective`). Most
attributions need less than the full gradient: gradient x input and integrated gradients
with a sum reduction need, per token i, only the directional derivative of f along a vector
placed in row i (``token_jvp``); that is L derivatives, where the full gradient is L x D.
A finite-difference backend pays per derivative, a gradient graph pays per point, so methods
ask for exactly what they need and each backend answers in its cheapest way.

Shapes: points [P, S, D] float32; blocks/directions [P, S, D]; results float64.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class GradientBackend(Protocol):
    """Derivatives of one target scalar f; see the module docstring for shapes."""

    name: str

    def values(self, points: np.ndarray) -> np.ndarray:
        """f at each point: [P]."""
        ...

    def token_jvp(self, points: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        """[P, S]: entry (p, i) is the derivative of f at points[p] along the direction that
        is blocks[p, i] in row i and zero elsewhere (= grad_i f(points[p]) . blocks[p, i])."""
        ...

    def jvp(self, points: np.ndarray, directions: np.ndarray) -> np.ndarray:
        """[P]: the derivative of f at points[p] along the whole of directions[p]."""
        ...

    def gradient(self, points: np.ndarray) -> np.ndarray:
        """[P, S, D]: the full gradient of f at each point."""
        ...
