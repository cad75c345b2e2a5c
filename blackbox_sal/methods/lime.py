"""LIME: a kernel-weighted ridge regression on random binary masks of the words.

Ribeiro, Singh & Guestrin (2016), "Why Should I Trust You?", as its text explainer does it:
m = ``samples`` x n masks (players as in :mod:`blackbox_sal.methods.coalitions`), the first
the input itself (all present, value f(x)), each other one removing r players chosen
uniformly at random, r uniform in 1..n. A mask z is weighted by its closeness to the input,

    d(z) = 1 - cos(z, 1) = 1 - sqrt(|z| / n)         (1 when every player is removed)
    w(z) = sqrt(exp(-(100 d)^2 / 25^2))              (LIME's kernel, width 25 on 100 d)

and the scores are the coefficients of a ridge regression (alpha = 1, intercept fitted)
of v(z) on z with those weights. LIME is a local linear surrogate: it is not constrained to
efficiency (its scores need not add up to f(x) - f(x'); the result's delta says by how
much) and it estimates no Shapley value; on a linear model with a large enough sample it
recovers the coefficients' ranking. Standard error: the bootstrap over the masks
(BOOTSTRAP resamples). Cost: m - 1 forward rows (f(x) and f(x') come with the prediction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.methods.coalitions import (
    BOOTSTRAP,
    budget,
    empty_value,
    no_players,
    players,
    random_masks,
    sampled_report,
    spread,
    values,
)
from blackbox_sal.vocabulary.runs import Work

if TYPE_CHECKING:
    pass

#: LIME's kernel width (on the cosine distance times 100) and its ridge penalty
KERNEL_WIDTH = 25.0
ALPHA = 1.0


def lime_weights(masks: np.ndarray) -> np.ndarray:
    """LIME's weight of each mask (bool [m, n]) by its cosine distance to all-present."""
    n = masks.shape[1]
    d = 1.0 - np.sqrt(masks.sum(axis=1) / n)
    return np.asarray(np.sqrt(np.exp(-((100 * d) ** 2) / KERNEL_WIDTH**2)), np.float64)


def weighted_ridge(z: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Coefficients of the ridge regression of y on z (z [m, n], y [m]; intercept fitted, not
    penalized) with sample weights w [m] -> [n], or [B, m] -> [B, n] (the bootstrap):
    (Zc' W Zc + alpha I) beta = Zc' W yc, Zc and yc centred on the weighted means."""
    weights = np.atleast_2d(w)
    n = z.shape[1]
    out = np.empty((len(weights), n))
    chunk = max(1, 4_000_000 // max(1, z.size))  # bounds the [chunk, n, m] product
    for start in range(0, len(weights), chunk):
        wb = weights[start:start + chunk]
        total = wb.sum(axis=1, keepdims=True)
        zc = z[None] - ((wb @ z) / total)[:, None, :]  # [b, m, n]
        yc = y[None] - (wb @ y)[:, None] / total  # [b, m]
        zw = np.swapaxes(zc, 1, 2) * wb[:, None, :]  # [b, n, m]
        out[start:start + len(wb)] = np.linalg.solve(zw @ zc + alpha * np.eye(n), (zw @ yc[..., None]))[..., 0]
    return out if np.ndim(w) == 2 else out[0]


def lime(problem: Problem) -> Work[Attribution]:
    """LIME's coefficients per player, split over its tokens."""
    cfg = problem.config
    who = players(problem)
    if who.n == 0:
        return no_players(problem)
    v0 = yield from empty_value(problem, who)  # comes with the prediction's run
    n, m = who.n, max(2, budget(problem, who, cfg.samples))
    rng = np.random.default_rng(cfg.seed)
    removed = rng.integers(1, n + 1, m - 1)
    masks = np.concatenate([np.ones((1, n), bool), random_masks(rng, n, n - removed)])
    y = np.concatenate([[problem.target_value], (yield from values(problem, who, masks[1:]))])
    z, w = masks.astype(np.float64), lime_weights(masks)
    phi = weighted_ridge(z, y, w)
    counts = np.stack([np.bincount(rng.integers(0, m, m), minlength=m) for _ in range(BOOTSTRAP)])
    boot = weighted_ridge(z, y, w[None] * counts)
    delta = float(phi.sum() - (problem.target_value - v0))
    return spread(problem, who, phi, boot.std(axis=0, ddof=1), baseline_value=v0, delta=delta)


LIME = MethodSpec(
    lime, "LIME: a kernel-weighted ridge regression on random masks of the words (samples x words rows)", None,
    needs_derivatives=False, uses_baseline=True, baseline_value=True,
    report=sampled_report)
