"""Finite-difference formulas and the per-token scales their steps (and SmoothGrad's noise)
follow. Pure numerics, shared by the finite-difference backend and the check of every
gradient graph.

For a direction v at point x, with t > 0::

    central:     D(t) = (f(x + t v) - f(x - t v)) / (2 t)             error O(t^2), 2 runs
    Richardson:  R    = (4 D(t/2) - D(t)) / 3                          error O(t^4), 4 runs
    forward:     F(t) = (f(x + t v) - f(x)) / t                        error O(t),   1 run

A perturbation of token i has norm ``rel_step * s_i``, where s_i is the norm of that token's
embedding in the explained input, so steps follow each token's own scale; a zero embedding
(a PAD row, say) takes the table's mean row norm instead.
"""

from __future__ import annotations

import numpy as np


def step_scale(embeds: np.ndarray, fallback: float) -> np.ndarray:
    """Per-token scale s_i [S]: the norm of each token embedding, or ``fallback`` (the table's
    mean row norm, :func:`mean_row_norm`) for tokens whose embedding is zero."""
    norms = np.linalg.norm(embeds.astype(np.float64), axis=-1)
    return np.where(norms > 0, norms, fallback)


def mean_row_norm(table: np.ndarray) -> float:
    """The mean norm of the non-zero rows of an embedding table (1.0 if all are zero)."""
    rows = np.linalg.norm(table.astype(np.float64), axis=-1)
    return float(rows[rows > 0].mean()) if np.any(rows > 0) else 1.0


#: offsets (in units of t) at which each scheme evaluates f: central, Richardson, forward
CENTRAL = np.array([1.0, -1.0])
RICHARDSON = np.array([1.0, -1.0, 0.5, -0.5])
FORWARD = np.array([1.0])


def combine(values: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Derivatives [K] from f at the CENTRAL (values [K, 2]) or RICHARDSON (values [K, 4])
    offsets of steps t [K]."""
    central = (values[:, 0] - values[:, 1]) / (2.0 * t)
    if values.shape[1] == 2:
        return central
    half = (values[:, 2] - values[:, 3]) / t
    return (4.0 * half - central) / 3.0
