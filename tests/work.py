"""Driving attribution work in tests: with a numpy function standing in for a model, or on a
loaded model through the engine's runner."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from blackbox_sal.engine.drive import drive_one
from blackbox_sal.engine.runner import Runner
from blackbox_sal.gradients.finite_differences import FiniteDifferences
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.differences import step_scale
from blackbox_sal.vocabulary.runs import Forward, Request, T, Work, drive
from blackbox_sal.vocabulary.scores import ClassScore

Scalar = Callable[[np.ndarray], np.ndarray]  # points [N, S, D] -> values [N]


def answer_with(f: Scalar, batch: int = 64, calls: list[int] | None = None) -> Callable[[Request], np.ndarray]:
    """Answer Forward requests with f (as the only output column), ``batch`` rows at a time
    (lazy rows are built a batch at a time, as the engine does); ``calls`` counts rows."""
    def answer(request: Request) -> np.ndarray:
        if not isinstance(request, Forward):
            raise TypeError(f"a numpy function answers forward requests only, not {type(request).__name__}")
        out = []
        for start in range(0, request.n, batch):
            rows = request.points.take(start, min(start + batch, request.n))
            if calls is not None:
                calls[0] += len(rows)
            out.append(f(rows))
        return np.concatenate(out)[:, None] if out else np.zeros((0, 1))
    return answer


def sync(work: Work[T], f: Scalar, batch: int = 64, calls: list[int] | None = None) -> T:
    """Run work whose model is the numpy function f."""
    return drive(work, answer_with(f, batch, calls))


def fd_of(f: Scalar, x: np.ndarray, **options: object) -> FiniteDifferences:
    """A finite-difference backend for numpy f around points shaped like x [S, D]."""
    return FiniteDifferences(ClassScore(0), None, step_scale(x, 1.0), **options)  # type: ignore[arg-type]


def on_model(model: TextModel, work: Work[T], batch: int = 64) -> T:
    """Run work on a loaded model through the engine."""
    return drive_one(work, Runner(model, batch))
