"""The explained scalars on outputs far from zero: softmax scores and their seeds stay finite
and exact where exp() of the raw outputs overflows float64 (logits of a few hundred and more
are what an unnormalised head or a temperature of 0.01 gives)."""

from __future__ import annotations

import math

import numpy as np

from blackbox_sal.vocabulary.scores import SCORE_SEEDS, SCORES


def test_log_softmax_and_probability_of_huge_logits_are_exact() -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [800.0, 799.0, 0.0]])
    log_p = SCORES["log-probability"](z)
    np.testing.assert_allclose(log_p[0], [0.0, -1000.0, -2000.0], rtol=0, atol=1e-12)
    # two logits one apart: p = 1 / (1 + e^-1), 1 / (1 + e); the third e^-800 below them
    p = SCORES["probability"](z)
    np.testing.assert_allclose(p[1], [1 / (1 + math.exp(-1)), 1 / (1 + math.e), 0.0], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(log_p[1, :2], [-math.log1p(math.exp(-1)), -1 - math.log1p(math.exp(-1))], rtol=1e-12)


def test_softmax_seeds_of_huge_logits_are_finite_and_exact() -> None:
    z = np.array([[800.0, 799.0, 0.0]])
    p1, p2 = 1 / (1 + math.exp(-1)), 1 / (1 + math.e)
    # d log p_0 / dz = onehot(0) - p; d p_0 / dz = p_0 (onehot(0) - p)
    np.testing.assert_allclose(SCORE_SEEDS["log-probability"](z, 0), [[1 - p1, -p2, 0.0]], rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(SCORE_SEEDS["probability"](z, 0), [[p1 * (1 - p1), -p1 * p2, 0.0]], rtol=1e-12,
                               atol=1e-300)
