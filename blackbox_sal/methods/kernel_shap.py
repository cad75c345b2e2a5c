"""KernelSHAP: Shapley values estimated by a weighted linear regression on sampled coalitions.

Lundberg & Lee (2017), "A Unified Approach to Interpreting Model Predictions": the Shapley
values are the solution of

    minimize  sum_z  k(z) (v(z) - v(0) - z . phi)^2    subject to  sum_i phi_i = v(1) - v(0)

over the coalitions z in {0, 1}^n (players as in :mod:`blackbox_sal.methods.coalitions`),
with the Shapley kernel k(z) = (n - 1) / (C(n, |z|) |z| (n - |z|)). The efficiency
constraint is enforced exactly (the KKT system of the constrained least squares, not a
large-weight pseudo-row), so the estimate always sums to f(x) - f(x').

Sampling: a budget of m = ``samples`` x n coalitions (``samples`` per player; default 10).
Coalition sizes are drawn from the kernel's distribution over sizes, p(k) proportional to
(n - 1) / (k (n - k)), a uniformly random coalition of that size is taken with its
complement (paired, or antithetic, sampling: Covert & Lee 2021, "Improving KernelSHAP"),
and the regression is then unweighted. When m >= 2^n - 2 every coalition is enumerated with
its exact kernel weight instead, and the solution *is* the exact Shapley value (error 0).

Standard error: the bootstrap over the sampled pairs (BOOTSTRAP resamples; the solve is
n + 1 unknowns, cheap beside the model rows). Cost: m forward rows (f(x) and f(x') come
with the prediction's run); no derivatives.
"""

from __future__ import annotations

from math import comb
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
    sample_sizes,
    sampled_report,
    spread,
    values,
)
from blackbox_sal.methods.shapley import all_masks
from blackbox_sal.vocabulary.runs import Work

if TYPE_CHECKING:
    pass


def constrained_wls(z: np.ndarray, y: np.ndarray, w: np.ndarray, total: float) -> np.ndarray:
    """argmin_phi sum_j w_j (y_j - z_j . phi)^2 subject to sum(phi) = total: z [m, n], y [m],
    w [m] or [B, m] (B weightings at once: the bootstrap) -> phi [n] or [B, n]. Solved from
    the KKT system [[2 Z'WZ, 1], [1', 0]] [phi; lambda] = [2 Z'Wy; total] (by least squares
    where it is singular, so a player that never varied still gets a finite value)."""
    weights = np.atleast_2d(w)
    n = z.shape[1]
    out = np.empty((len(weights), n))
    chunk = max(1, 4_000_000 // max(1, z.size))  # bounds the [chunk, n, m] product
    for start in range(0, len(weights), chunk):
        wb = weights[start:start + chunk]
        zw = z.T[None] * wb[:, None, :]  # [b, n, m]
        kkt = np.zeros((len(wb), n + 1, n + 1))
        kkt[:, :n, :n] = 2 * zw @ z
        kkt[:, :n, n] = kkt[:, n, :n] = 1.0
        rhs = np.concatenate([2 * zw @ y, np.full((len(wb), 1), total)], axis=1)
        try:
            out[start:start + len(wb)] = np.linalg.solve(kkt, rhs[..., None])[..., :n, 0]
        except np.linalg.LinAlgError:
            out[start:start + len(wb)] = [np.linalg.lstsq(k, r, rcond=None)[0][:n] for k, r in zip(kkt, rhs,
                                                                                                 strict=True)]
    return out if np.ndim(w) == 2 else out[0]


def kernel_weights(masks: np.ndarray) -> np.ndarray:
    """The Shapley kernel k(z) of each proper coalition (bool [m, n])."""
    n = masks.shape[1]
    s = masks.sum(axis=1)
    return np.array([(n - 1) / (comb(n, int(k)) * k * (n - k)) for k in s])


def kernel_shap(problem: Problem) -> Work[Attribution]:
    """KernelSHAP estimates per player (see the module docstring), split over its tokens."""
    cfg = problem.config
    who = players(problem)
    if who.n == 0:
        return no_players(problem)
    v0 = yield from empty_value(problem, who)  # comes with the prediction's run
    total = problem.target_value - v0
    n, m = who.n, budget(problem, who, cfg.samples)
    if n == 1:
        return spread(problem, who, np.array([total]), np.zeros(1), baseline_value=v0, delta=0.0)
    if m >= 2**n - 2:  # every coalition, exact weights: the exact Shapley values
        masks = all_masks(n)[1:-1]
        y = (yield from values(problem, who, masks)) - v0
        phi = constrained_wls(masks.astype(np.float64), y, kernel_weights(masks), total)
        note = (f"kernel-shap: the budget ({m:,} rows) covers all {2**n - 2:,} coalitions: the values are exact",)
        return spread(problem, who, phi, np.zeros(n), note, baseline_value=v0,
                      delta=float(phi.sum() - total))
    rng = np.random.default_rng(cfg.seed)
    pairs = max(1, m // 2)
    sizes = rng.choice(np.arange(1, n), size=pairs, p=sample_sizes(n))
    half = random_masks(rng, n, sizes)
    masks = np.concatenate([half, ~half])  # row k and row pairs + k are complements
    y = (yield from values(problem, who, masks)) - v0
    z = masks.astype(np.float64)
    ones = np.ones(len(masks))
    phi = constrained_wls(z, y, ones, total)
    counts = np.stack([np.bincount(rng.integers(0, pairs, pairs), minlength=pairs) for _ in range(BOOTSTRAP)])
    boot = constrained_wls(z, y, np.concatenate([counts, counts], axis=1).astype(np.float64), total)
    errors = boot.std(axis=0, ddof=1)
    return spread(problem, who, phi, errors, baseline_value=v0, delta=float(phi.sum() - total))


KERNEL_SHAP = MethodSpec(
    kernel_shap, "Shapley values estimated by KernelSHAP's weighted regression (samples x words rows)", None,
    needs_derivatives=False, uses_baseline=True, baseline_value=True,
    report=sampled_report)
