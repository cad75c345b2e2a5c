"""Rank correlations of token scores, defined or not (None), and their means over texts.

This is where scipy serves (the full install's evaluation; the edge install has no scipy):
Spearman with ties as average ranks is scipy.stats' job. The other numerics stay numpy where
the edge runs them (quadrature nodes) or where they are a few exact lines (Pearson in
:mod:`.common`, the surrogate's 1-D logistic fit in :mod:`.linear_surrogate`).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two score vectors (scipy.stats.spearmanr); None where
    it is undefined: fewer than two values, a constant vector, or a value that is not finite."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.size < 2 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        return None
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def mean_defined(values: Iterable[float | None]) -> tuple[float | None, int]:
    """The mean of the values that are defined, and how many there were (None when none)."""
    kept = [v for v in values if v is not None]
    return (float(np.mean(kept)) if kept else None), len(kept)
