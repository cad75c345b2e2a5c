"""Integrated gradients (Sundararajan et al. 2017) along the straight embedding path.

    IG_{i,d} = (x - x')_{i,d} * integral_0^1 d f / d x_{i,d} (x' + a (x - x')) da

With the sum reduction the token score is the path integral of the directional derivative
of f along row i of (x - x'): one derivative per token per node (``token_jvp``), never the
full gradient. The integral is taken by the quadrature rule named in the config
(Gauss-Legendre, 50 nodes by default), or with ``steps="auto"`` by nested Clenshaw-Curtis
rules that grow until the estimated error meets the tolerance. Completeness says
sum_i IG_i = f(x) - f(x'); the difference, the convergence delta, is always reported: it
measures the quadrature error (and, by finite differences, the derivative error).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.methods.quadrature import QUADRATURES
from blackbox_sal.reductions import LINEAR, REDUCTIONS
from blackbox_sal.vocabulary.runs import Work
from blackbox_sal.vocabulary.settings import AUTO  # steps="auto"; the most steps is the settings spec's

if TYPE_CHECKING:
    from blackbox_sal.vocabulary.config import ExplainConfig

SAME_AS_BASELINE_NOTE = ("the input equals the baseline, so every attribution is zero; choose "
                         "another --baseline")


#: a completeness delta above this share of f(x) - f(x') is reported as not converged (fixed
#: steps; steps="auto" measures against the scores' total size and has notes of its own)
UNCONVERGED = 0.05


#: steps="auto": the nested Clenshaw-Curtis node counts tried, in order (2^k + 1)
AUTO_LEVELS = (5, 9, 17, 33, 65, 129, 257)


def integrated_gradients(problem: Problem) -> Work[Attribution]:
    cfg = problem.config
    reduce = problem.reduce
    assert reduce is not None
    diff = (problem.x - problem.baseline).astype(np.float32)
    baseline_value = (problem.baseline_value if problem.baseline_value is not None else
                      float((yield from problem.backend.values(problem.baseline[None]))[0]))
    gap = problem.target_value - baseline_value
    notes: tuple[str, ...]
    if not isinstance(cfg.steps, int):  # AUTO
        total, per_dim, nodes, notes = yield from _adaptive(problem, diff, gap, reduce)
    else:
        node_a, weights = QUADRATURES[cfg.quadrature](cfg.steps)
        if reduce in LINEAR:
            total, per_dim = weights @ (yield from problem.backend.path_jvp(problem.baseline, diff, node_a)), None
        else:  # the weighted sum of diff * gradient, a batch of nodes at a time: memory [S, D]
            per_dim = np.zeros(diff.shape)
            for start in range(0, cfg.steps, problem.rows):
                chunk = slice(start, start + problem.rows)
                _, dims = yield from _at_nodes(problem, diff, node_a[chunk], reduce)
                assert dims is not None
                per_dim += np.tensordot(weights[chunk], dims, axes=1)
            total = per_dim.sum(axis=-1)
        nodes, notes = cfg.steps, ()
    scores = total * LINEAR[reduce](problem.x.shape[1]) if per_dim is None else REDUCTIONS[reduce](per_dim)
    delta = float(total.sum() - gap)
    same = float(np.linalg.norm(diff)) <= 1e-6 * max(float(np.linalg.norm(problem.x)), 1e-30)
    if same:
        notes = (SAME_AS_BASELINE_NOTE,)
    elif isinstance(cfg.steps, int) and abs(delta) > UNCONVERGED * max(
            abs(gap), 1e-6 * (1 + abs(problem.target_value))):
        notes += (f"integrated gradients have not converged: the completeness delta ({delta:+.4g}) is "
                  f"{abs(delta) / max(abs(gap), 1e-30):.0%} of f(x) - f(x') ({gap:+.4g}); the gradient changes "
                  f"fast along the path (or finite differences are noisy): use --steps auto (it adds nodes until "
                  f"the scores converge), raise --steps, or try another --baseline",)
    return Attribution(scores, reduce, baseline_value, delta, notes, nodes)


def _at_nodes(problem: Problem, diff: np.ndarray, alphas: np.ndarray,
              reduce: str) -> Work[tuple[np.ndarray, np.ndarray | None]]:
    """Per-token directional derivatives along row i of diff at x' + a diff for each a: [m, S];
    with a non-linear reduction also the per-dimension terms diff * gradient, float32 [m, S, D]."""
    if reduce in LINEAR:
        return (yield from problem.backend.path_jvp(problem.baseline, diff, alphas)), None
    path = (problem.baseline[None] + alphas[:, None, None].astype(np.float32) * diff[None]).astype(np.float32)
    dims = (diff * (yield from problem.backend.gradient(path))).astype(np.float32)
    return dims.sum(axis=-1, dtype=np.float64), dims


def _adaptive(problem: Problem, diff: np.ndarray, gap: float,
              reduce: str) -> Work[tuple[np.ndarray, np.ndarray | None, int, tuple[str, ...]]]:
    """IG on nested Clenshaw-Curtis rules, each level reusing the nodes of the one before, until
    the error estimate is at most tolerance x sum |totals|. The estimate is the larger of the
    completeness delta (exact, but for the sum only) and the L1 change c_k of the token totals
    since the last level; from the third level on, c_k^2 / c_(k-1) where that is smaller (the
    rule converges geometrically, so the change overstates the newer level's error). Stops
    early, with a note, when two levels in a row fail to halve the estimate (the backend's
    noise floor), or at 257 nodes."""
    tol = problem.config.tolerance
    finest = AUTO_LEVELS[-1] - 1
    grid = (1.0 - np.cos(np.pi * np.arange(finest + 1) / finest)) / 2.0
    totals: dict[int, np.ndarray] = {}
    dims: dict[int, np.ndarray] = {}
    previous: np.ndarray | None = None
    estimates: list[float] = []
    changes: list[float] = []
    for m in AUTO_LEVELS:
        index = np.arange(0, finest + 1, finest // (m - 1))
        new = [int(i) for i in index if int(i) not in totals]
        t, d = yield from _at_nodes(problem, diff, grid[new], reduce)
        totals.update(zip(new, t, strict=True))
        if d is not None:
            dims.update(zip(new, d, strict=True))
        weights = QUADRATURES["clenshaw-curtis"](m)[1]
        total = weights @ np.stack([totals[int(i)] for i in index])
        per_dim = None if d is None else np.tensordot(weights, np.stack([dims[int(i)] for i in index]), axes=1)
        if previous is not None:
            changes.append(float(np.abs(total - previous).sum()))
            change = changes[-1] if len(changes) == 1 else min(changes[-1], changes[-1] ** 2 / max(changes[-2], 1e-300))
            estimates.append(max(abs(float(total.sum()) - gap), change))
            size = float(np.abs(total).sum())
            if estimates[-1] <= tol * size or size == 0.0:
                return total, per_dim, m, ()
            if len(estimates) >= 3 and estimates[-1] > estimates[-2] / 2 and estimates[-2] > estimates[-3] / 2:
                return total, per_dim, m, (
                    f"steps auto stopped at {m} nodes: the error estimate ({estimates[-1]:.3g}) stopped "
                    f"shrinking above the tolerance ({tol:g} x {size:.3g}); the derivatives are noisy "
                    f"(finite differences, a quantized model): a larger tolerance or --fd-step may help",)
        previous = total
    return total, per_dim, AUTO_LEVELS[-1], (
        f"steps auto reached {AUTO_LEVELS[-1]} nodes without meeting the tolerance ({tol:g}): the error "
        f"estimate is {estimates[-1]:.3g} against attributions of total size {size:.3g}",)


def _report(cfg: ExplainConfig, result: Attribution) -> dict[str, object]:
    if cfg.steps == AUTO:
        return {"steps": result.nodes, "quadrature": "clenshaw-curtis", "steps_auto": True,
                "tolerance": cfg.tolerance}
    return {"steps": result.nodes, "quadrature": cfg.quadrature}


INTEGRATED_GRADIENTS = MethodSpec(
    integrated_gradients, "gradients integrated along the straight path from the baseline", "sum",
    uses_baseline=True, baseline_value=True, report=_report)
