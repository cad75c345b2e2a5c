"""Permutation sampling of Shapley values, with antithetic pairs.

The Shapley value is player i's marginal contribution v(P_i + i) - v(P_i), averaged over all
n! orders of arrival (P_i: the players before i). Permutation sampling (Castro, Gomez &
Tejada 2009) averages it over sampled orders; each order costs n - 1 forward rows (the
coalitions of its first 1..n-1 players; v(empty) = f(x') and v(N) = f(x) come with the
prediction's run). Orders are drawn in antithetic pairs, an order and its reverse (Mitchell
et al. 2022, "Sampling Permutations for Shapley Value Estimation"): a player that arrives
early in one arrives late in the other, which cancels much of the variance.

Every order's contributions add up to v(N) - v(empty) (they telescope), so the estimate is
efficient exactly, whatever the sample. ``samples`` is the number of orders (rounded up to
an even number; default 10, i.e. about 10 x n rows, the budget of ``kernel-shap``).
Standard error: the pairs' means are independent, so it is their standard deviation over
sqrt(pairs) (nan with a single pair).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.methods.coalitions import budget, empty_value, no_players, players, sampled_report, spread, values
from blackbox_sal.vocabulary.runs import Work

if TYPE_CHECKING:
    pass


def antithetic_orders(rng: np.random.Generator, n: int, pairs: int) -> np.ndarray:
    """int [2 pairs, n]: ``pairs`` random orders, each followed by its reverse."""
    orders = np.argsort(rng.random((pairs, n)), axis=1)
    return np.stack([orders, orders[:, ::-1]], axis=1).reshape(2 * pairs, n)


def prefix_masks(orders: np.ndarray) -> np.ndarray:
    """The coalitions of each order's first 1..n-1 players: bool [P (n - 1), n], order by order."""
    p, n = orders.shape
    rank = np.argsort(orders, axis=1)  # rank[o, j]: when player j arrives in order o
    k = np.arange(1, n)
    return np.asarray(rank[:, None, :] < k[None, :, None]).reshape(p * (n - 1), n)


def contributions(orders: np.ndarray, prefix_values: np.ndarray, v_empty: float, v_full: float) -> np.ndarray:
    """Each order's marginal contributions per player [P, n] from its prefixes' values
    [P (n - 1)] (the chain v(empty), v(first 1), ..., v(N))."""
    p, n = orders.shape
    chain = np.concatenate([np.full((p, 1), v_empty), prefix_values.reshape(p, n - 1), np.full((p, 1), v_full)],
                           axis=1)
    gains = np.diff(chain, axis=1)  # gains[o, k]: what the k-th arrival added
    out = np.empty((p, n))
    np.put_along_axis(out, orders, gains, axis=1)
    return out


def permutation(problem: Problem) -> Work[Attribution]:
    """Antithetic permutation-sampling estimates per player, split over its tokens."""
    cfg = problem.config
    who = players(problem)
    if who.n == 0:
        return no_players(problem)
    v0 = yield from empty_value(problem, who)  # comes with the prediction's run
    n = who.n
    total = problem.target_value - v0
    budget(problem, who, cfg.samples)
    if n == 1:
        return spread(problem, who, np.array([total]), np.zeros(1), baseline_value=v0, delta=0.0)
    pairs = (cfg.samples + 1) // 2
    orders = antithetic_orders(np.random.default_rng(cfg.seed), n, pairs)
    v = yield from values(problem, who, prefix_masks(orders))
    per_order = contributions(orders, v, v0, problem.target_value)
    pair_means = per_order.reshape(pairs, 2, n).mean(axis=1)
    phi = pair_means.mean(axis=0)
    errors = pair_means.std(axis=0, ddof=1) / np.sqrt(pairs) if pairs > 1 else np.full(n, np.nan)
    notes = (f"permutation: {2 * pairs} orders ({pairs} antithetic pairs), samples={cfg.samples} rounded up to "
             f"an even number",) if cfg.samples % 2 else ()
    return spread(problem, who, phi, errors, notes, baseline_value=v0, delta=float(phi.sum() - total))


PERMUTATION = MethodSpec(
    permutation, "Shapley values estimated over sampled orders of the words and their reverses", None,
    needs_derivatives=False, uses_baseline=True, baseline_value=True,
    report=sampled_report)
