"""The gradient-graph backend: exact gradients from an exported ONNX gradient graph.

One run of the graph gives the outputs and d(target)/d(inputs_embeds) for a whole batch, at
a few times the cost of a forward pass, whatever the embedding width. Per-token derivatives
along a path (integrated gradients, grad x input) are asked for as such
(:class:`~blackbox_sal.vocabulary.runs.PathJvp`), so the engine can reduce them where the gradient is.

Scores other than the logit need the chain rule through the softmax: their seed over the
classes depends on the outputs, so those cost one extra forward pass per point.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from blackbox_sal.vocabulary.runs import (
    ArrayPoints,
    Cost,
    Forward,
    Gradient,
    PathJvp,
    Points,
    Seq,
    Work,
    as_points,
    ask,
)
from blackbox_sal.vocabulary.scores import Objective, seed_without_outputs


class GraphBackend:
    """The gradient-graph :class:`~blackbox_sal.gradients.backend.GradientBackend` for one
    objective over one token sequence; ``cost`` counts forward passes (values, softmax seeds)
    and gradient runs (one forward+backward each)."""

    name = "graph"

    def __init__(self, f: Objective, seq: Seq | None, n_classes: int, cost: Cost | None = None,
                 rules: str = "gradient") -> None:
        self.f, self.seq, self.n_classes, self.rules = f, seq, n_classes, rules
        self.cost = cost if cost is not None else Cost()

    def provenance(self) -> dict[str, Any]:
        return {"gradient_passes": self.cost.gradient}

    def values(self, points: np.ndarray | Points) -> Work[np.ndarray]:
        rows = as_points(points)
        outputs = yield from ask(Forward(self.seq, rows))
        self.cost.forward += rows.n
        return self.f.scalar(outputs)

    def _seed(self, points: Points) -> Work[np.ndarray]:
        """The seed weights [n, C] at the points; a logit's is the one-hot target (no run)."""
        if not self.f.seed_reads_outputs:
            return seed_without_outputs(self.f, points.n, self.n_classes)
        outputs = yield from ask(Forward(self.seq, points, "forward passes (softmax seeds)"))
        self.cost.forward += points.n
        return self.f.seed(outputs)

    def gradient(self, points: np.ndarray) -> Work[np.ndarray]:
        weights = yield from self._seed(ArrayPoints(points))
        grad = yield from ask(Gradient(self.seq, ArrayPoints(points), weights, rules=self.rules))
        self.cost.gradient += len(points)
        return grad

    def path_jvp(self, anchor: np.ndarray, delta: np.ndarray, alphas: np.ndarray) -> Work[np.ndarray]:
        request = PathJvp(self.seq, anchor, delta, np.asarray(alphas, np.float64), np.zeros((0, 0)))
        weights = yield from self._seed(request.points)
        jvp = yield from ask(PathJvp(self.seq, anchor, delta, request.alphas, weights, rules=self.rules))
        self.cost.gradient += len(alphas)
        return jvp
