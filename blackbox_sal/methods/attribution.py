"""What every attribution method receives and returns.

A method is a plain function ``(Problem) -> Attribution``. It composes the pieces it is given
(a gradient backend, a baseline, the config) and asks the backend only for what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from blackbox_sal.config import ExplainConfig
from blackbox_sal.gradients.backend import GradientBackend


@dataclass(frozen=True)
class Problem:
    """x, baseline: float32 [S, D] (special tokens equal in both). special: bool [S].
    target_value: f(x). scale: the finite-difference/noise scale per token [S]."""

    backend: GradientBackend
    x: np.ndarray
    baseline: np.ndarray
    special: np.ndarray
    target_value: float
    scale: np.ndarray
    config: ExplainConfig


@dataclass(frozen=True)
class Attribution:
    """scores: float64 [S], one per token. reduce: the reduction used (None for occlusion).
    baseline_value: f(baseline) where a baseline was used. delta: IG's completeness delta
    sum(attributions) - (f(x) - f(baseline)). notes: things the user should know. nodes: the
    path points IG used (its steps, or what steps="auto" settled on)."""

    scores: np.ndarray
    reduce: str | None
    baseline_value: float | None = None
    delta: float | None = None
    notes: tuple[str, ...] = ()
    nodes: int | None = None
