"""The finite-difference backend against closed-form gradients."""

from __future__ import annotations

import numpy as np
import pytest
from work import sync

from blackbox_sal.gradients.finite_differences import FiniteDifferences
from blackbox_sal.vocabulary.differences import mean_row_norm, step_scale
from blackbox_sal.vocabulary.runs import Cost
from blackbox_sal.vocabulary.scores import ClassScore

RNG = np.random.default_rng(0)
S, D = 5, 6
W1 = RNG.normal(0, 0.7, (D, 8))
B1 = RNG.normal(0, 0.3, 8)
W2 = RNG.normal(0, 0.7, 8)
X = RNG.normal(0, 1.0, (S, D)).astype(np.float32)


def mlp(points: np.ndarray) -> np.ndarray:
    """f(x) = sum_s tanh(x_s W1 + b1) . W2 in float64 (no float32 round-off in f)."""
    return np.tanh(points.astype(np.float64) @ W1 + B1).sum(axis=1) @ W2


def mlp_grad(x: np.ndarray) -> np.ndarray:
    h = np.tanh(x.astype(np.float64) @ W1 + B1)
    return ((1 - h**2) * W2) @ W1.T


def backend(rel_step: float = 1e-2, richardson: bool = False) -> FiniteDifferences:
    return FiniteDifferences(ClassScore(0), None, step_scale(X, 1.0), rel_step=rel_step, richardson=richardson)


def test_gradient_matches_closed_form() -> None:
    got = sync(backend().gradient(X[None]), mlp)[0]
    np.testing.assert_allclose(got, mlp_grad(X), rtol=1e-3, atol=1e-4)
    rich = sync(backend(richardson=True).gradient(X[None]), mlp)[0]
    np.testing.assert_allclose(rich, mlp_grad(X), rtol=1e-5, atol=1e-6)


def along(fd: FiniteDifferences, points: np.ndarray, blocks: np.ndarray, batch: int = 1000) -> np.ndarray:
    """[P, S]: entry (p, i) is the derivative at points[p] along blocks[p, i] placed in row i
    (each point a path of one node, at alpha 0)."""
    return np.concatenate([sync(fd.path_jvp(p, b, np.zeros(1)), mlp, batch=batch)
                           for p, b in zip(points, blocks, strict=True)])


def test_path_jvp_is_gradient_dot_block() -> None:
    blocks = RNG.normal(size=(2, S, D)).astype(np.float32)
    pts = np.stack([X, X + 0.1]).astype(np.float32)
    want = np.stack([(mlp_grad(p) * b).sum(-1) for p, b in zip(pts, blocks, strict=True)])
    np.testing.assert_allclose(along(backend(), pts, blocks), want, rtol=0, atol=5e-4)


def test_sum_of_token_derivatives_is_whole_direction_derivative() -> None:
    """Per-token directional derivatives add up to the derivative along the whole direction."""
    direction = RNG.normal(size=(1, S, D)).astype(np.float32)
    per_token = along(backend(), X[None], direction).sum()
    assert per_token == pytest.approx(float((mlp_grad(X) * direction[0]).sum()), rel=1e-3)


def test_error_shrinks_as_h_squared() -> None:
    """Central differences: halving the step divides the truncation error by about 4."""
    exact = mlp_grad(X)
    errors = [np.abs(sync(backend(rel_step=h).gradient(X[None]), mlp)[0] - exact).max() for h in (0.2, 0.1, 0.05)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(3.3 < r < 4.7 for r in ratios), (errors, ratios)


def test_richardson_is_more_accurate() -> None:
    exact = mlp_grad(X)
    central = np.abs(sync(backend(rel_step=0.1).gradient(X[None]), mlp)[0] - exact).max()
    rich = np.abs(sync(backend(rel_step=0.1, richardson=True).gradient(X[None]), mlp)[0] - exact).max()
    assert rich < central / 20


def test_batched_equals_one_by_one() -> None:
    alphas = np.array([0.2, 0.6, 1.0])
    a = sync(backend().path_jvp(np.zeros_like(X), X, alphas), mlp, batch=1)
    b = sync(backend().path_jvp(np.zeros_like(X), X, alphas), mlp, batch=1000)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def test_zero_directions_cost_nothing() -> None:
    fd = backend()
    blocks = np.zeros((1, S, D), np.float32)
    blocks[0, 2] = X[2]
    out = along(fd, X[None], blocks)
    assert fd.cost.forward == 2  # one pair of runs, for the one non-zero block
    assert out[0, [0, 1, 3, 4]].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert out[0, 2] == pytest.approx(float((mlp_grad(X)[2] * X[2]).sum()), abs=5e-4)


def test_forward_pass_counts_match_the_cost_table() -> None:
    fd = backend()
    sync(fd.gradient(X[None]), mlp)
    assert fd.cost.forward == 2 * S * D
    fd = backend(richardson=True)
    along(fd, X[None], X[None])
    assert fd.cost.forward == 4 * S


def test_step_scale_falls_back_for_zero_rows() -> None:
    emb = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    table = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
    assert mean_row_norm(table) == 1.5
    np.testing.assert_allclose(step_scale(emb, mean_row_norm(table)), [5.0, 1.5])


def test_forward_scheme_shares_each_point_and_is_first_order() -> None:
    """One-sided differences: one run per derivative plus f(point) once per point, error O(t)."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 3))

    calls = [0]

    def f(points: np.ndarray) -> np.ndarray:  # f(x) = sum (a * x)^2 / 2: gradient a^2 x
        calls[0] += len(points)
        return 0.5 * ((a * points.astype(np.float64)) ** 2).sum(axis=(1, 2))

    points = rng.normal(size=(5, 4, 3)).astype(np.float32)
    blocks = rng.normal(size=points.shape).astype(np.float32)
    exact = ((a**2) * points * blocks).sum(-1)
    errors = []
    for step in (1e-2, 5e-3):
        calls[0] = 0
        fd = FiniteDifferences(ClassScore(0), None, np.ones(4), rel_step=step, scheme="forward", cost=Cost())
        got = np.concatenate([sync(fd.path_jvp(p, b, np.zeros(1)), f) for p, b in zip(points, blocks, strict=True)])
        assert calls[0] == 5 * 4 + 5  # a run per (point, token), f(point) once per point
        errors.append(np.abs(got - exact).max())
    assert errors[0] < 0.05 * np.abs(exact).max()
    assert 1.6 < errors[0] / errors[1] < 2.4  # halving the step halves the error: first order
