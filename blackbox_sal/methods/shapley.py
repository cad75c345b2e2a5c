"""Exact Shapley values over the words (or tokens) of a short text.

With n players N (:mod:`blackbox_sal.methods.coalitions`: words by default, removed by
replacing their tokens' embeddings with the baseline, as ``eval --removal`` does) and
v(S) = f(x with only the players of S present), player i's Shapley value (Shapley 1953) is

    phi_i = sum over S subset of N \\ {i} of  |S|! (n - |S| - 1)! / n!  (v(S + i) - v(S))

the mean of i's marginal contribution over every order in which the players could arrive.
It is the unique attribution with efficiency (sum_i phi_i = v(N) - v(empty) = f(x) - f(x')),
symmetry (players that change v alike get the same value), the null player (a player that
never changes v gets 0) and additivity. A linear model's values are its contributions
w_i . (x_i - x'_i) exactly.

Cost: every coalition, 2^n - 2 forward rows (v(N) = f(x) and v(empty) = f(x') come with the
prediction's run), packed into shared runs by the engine and built lazily a run at a time.
Above MAX_PLAYERS (14 players: 16,382 rows) the method refuses (UsageError) and points to the
sampling methods (``kernel-shap``, ``permutation``), whose cost is linear in n.
"""

from __future__ import annotations

from math import factorial
from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.methods.coalitions import Players, empty_value, exact_report, no_players, players, spread, values
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.runs import Work

if TYPE_CHECKING:
    pass

#: the most players exact Shapley values enumerate (2^14 = 16,384 coalitions)
MAX_PLAYERS = 14


def all_masks(n: int) -> np.ndarray:
    """Every coalition of n players, bool [2^n, n]: row c holds the bits of c (player j
    present when bit j is set)."""
    codes = np.arange(2**n, dtype=np.int64)
    return np.asarray((codes[:, None] >> np.arange(n)) & 1, bool)


def shapley_from_table(v: np.ndarray, n: int) -> np.ndarray:
    """Exact Shapley values [n] from v [2^n], v[c] the value of the coalition with bits c."""
    weights = np.array([factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)])
    codes = np.arange(2**n, dtype=np.int64)
    size = all_masks(n).sum(axis=1)
    phi = np.zeros(n)
    for i in range(n):
        without = codes[(codes >> i) & 1 == 0]
        phi[i] = float(np.sum(weights[size[without]] * (v[without | (1 << i)] - v[without])))
    return phi


def coalition_table(problem: Problem, who: Players, v_empty: float) -> Work[np.ndarray]:
    """v over every coalition [2^n]: the 2^n - 2 proper non-empty ones in one request."""
    masks = all_masks(who.n)
    table = np.empty(2**who.n)
    table[0], table[-1] = v_empty, problem.target_value
    table[1:-1] = yield from values(problem, who, masks[1:-1])
    return table


def exact_shapley(problem: Problem) -> Work[Attribution]:
    """Exact Shapley values of the players, each split equally over its tokens."""
    who = players(problem)
    if who.n == 0:
        return no_players(problem)
    if who.n > MAX_PLAYERS:
        raise UsageError(
            f"exact Shapley values over {who.n} {problem.config.players} need 2^{who.n} = {2**who.n:,} model rows; "
            f"at most {MAX_PLAYERS} {problem.config.players} ({2**MAX_PLAYERS:,} rows): use --method kernel-shap "
            f"or permutation (sampled, about --samples x {who.n} rows)")
    v0 = yield from empty_value(problem, who)  # comes with the prediction's run
    table = yield from coalition_table(problem, who, v0)
    phi = shapley_from_table(table, who.n)
    delta = float(phi.sum() - (problem.target_value - v0))
    return spread(problem, who, phi, None, baseline_value=v0, delta=delta)


SHAPLEY = MethodSpec(
    exact_shapley, f"exact Shapley values of the words, every coalition (up to {MAX_PLAYERS} words)", None,
    needs_derivatives=False, uses_baseline=True, baseline_value=True,
    report=exact_report)
