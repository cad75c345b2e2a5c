"""Integrated gradients (Sundararajan et al. 2017) along the straight embedding path.

    IG_{i,d} = (x - x')_{i,d} * integral_0^1 d f / d x_{i,d} (x' + a (x - x')) da

With the sum reduction the token score is the path integral of the directional derivative
of f along row i of (x - x'): one derivative per token per node (``token_jvp``), never the
full gradient. The integral is taken by the quadrature rule named in the config
(Gauss-Legendre, 50 nodes by default). Completeness says sum_i IG_i = f(x) - f(x'); the
difference, the convergence delta, is always reported: it measures the quadrature error
(and, by finite differences, the derivative error).
"""

from __future__ import annotations

import numpy as np

from blackbox_sal.methods.attribution import Attribution, Problem
from blackbox_sal.methods.quadrature import QUADRATURES
from blackbox_sal.reductions import LINEAR, REDUCTIONS

SAME_AS_BASELINE_NOTE = ("the input equals the baseline, so every attribution is zero; choose "
                         "another --baseline")


#: a completeness delta above this share of f(x) - f(x') is reported as not converged
UNCONVERGED = 0.05


def integrated_gradients(problem: Problem) -> Attribution:
    cfg = problem.config
    reduce = cfg.reduce or "sum"
    x, base, backend = problem.x, problem.baseline, problem.backend
    nodes, weights = QUADRATURES[cfg.quadrature](cfg.steps)
    diff = (x - base).astype(np.float32)
    path = (base[None] + nodes[:, None, None].astype(np.float32) * diff[None]).astype(np.float32)
    baseline_value = float(backend.values(base[None])[0])
    if reduce in LINEAR:
        per_node = backend.token_jvp(path, np.broadcast_to(diff, path.shape))  # [m, S]
        total = weights @ per_node  # [S], the sum-reduced IG
        scores = total * LINEAR[reduce](x.shape[1])
    else:
        grads = backend.gradient(path)  # [m, S, D]
        per_dim = diff * np.tensordot(weights, grads, axes=1)
        total = per_dim.sum(axis=-1)
        scores = REDUCTIONS[reduce](per_dim)
    delta = float(total.sum() - (problem.target_value - baseline_value))
    same = float(np.linalg.norm(diff)) <= 1e-6 * max(float(np.linalg.norm(x)), 1e-30)
    gap = problem.target_value - baseline_value
    notes: tuple[str, ...] = (SAME_AS_BASELINE_NOTE,) if same else ()
    if not same and abs(delta) > UNCONVERGED * max(abs(gap), 1e-6 * (1 + abs(problem.target_value))):
        notes += (f"integrated gradients have not converged: the completeness delta ({delta:+.4g}) is "
                  f"{abs(delta) / max(abs(gap), 1e-30):.0%} of f(x) - f(x') ({gap:+.4g}); the gradient changes "
                  f"fast along the path (or finite differences are noisy): raise --steps or try another --baseline",)
    return Attribution(scores, reduce, baseline_value, delta, notes)
