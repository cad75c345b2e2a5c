"""Local gradient methods: saliency, gradient x input, SmoothGrad.

Gradient x input with the sum reduction equals the gradient with respect to the one-hot
input at the token present: d f / d onehot_{i,v} = grad_i f . E_v, and at v = the token
itself E_v = x_i. It needs one directional derivative per token (along x_i), never the full
gradient; other reductions of x_i * grad_i do.

A model that averages the embeddings over the sequence (global average pooling, as in the
Keras IMDB tutorial) gives every token the same gradient row, so gradient norms cannot rank
tokens; :func:`identical_rows` detects that and the methods say so.
"""

from __future__ import annotations

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.reductions import LINEAR, REDUCTIONS
from blackbox_sal.vocabulary.runs import Work

DEGENERATE_NOTE = ("every token has the same gradient (the model averages its embeddings, e.g. "
                   "global average pooling): gradient norms cannot rank tokens; use grad-x-input "
                   "or ig, which weigh the gradient by each token's own embedding")


def identical_rows(grad: np.ndarray, rtol: float = 1e-2) -> bool:
    """Whether all token rows of grad [S, D] are equal within rtol of their norm (S >= 2)."""
    if grad.shape[0] < 2:
        return False
    mean = grad.mean(axis=0)
    scale = float(np.linalg.norm(mean))
    return scale > 0 and float(np.max(np.linalg.norm(grad - mean, axis=1))) <= rtol * scale


def _gradient_attribution(grad: np.ndarray, reduce: str) -> Attribution:
    notes = (DEGENERATE_NOTE,) if identical_rows(grad) else ()
    return Attribution(REDUCTIONS[reduce](grad), reduce, notes=notes)


def saliency(problem: Problem) -> Work[Attribution]:
    """reduce(grad_i f(x)), L2 by default: the paper's gradient-norm ranking."""
    assert problem.reduce is not None
    grad = yield from problem.backend.gradient(problem.x[None])
    return _gradient_attribution(grad[0], problem.reduce)


def grad_x_input(problem: Problem) -> Work[Attribution]:
    """reduce(x_i * grad_i f(x)), sum by default (= the one-hot gradient at the token)."""
    reduce, x = problem.reduce, problem.x
    assert reduce is not None
    if reduce in LINEAR:  # the derivative along x_i at x: a path of one point, alpha 0
        jvp = yield from problem.backend.path_jvp(x, x, np.zeros(1))
        return Attribution(jvp[0] * LINEAR[reduce](x.shape[1]), reduce)
    grad = (yield from problem.backend.gradient(x[None]))[0]
    notes = (DEGENERATE_NOTE,) if identical_rows(grad) else ()
    return Attribution(REDUCTIONS[reduce](x * grad), reduce, notes=notes)


def smoothgrad(problem: Problem) -> Work[Attribution]:
    """reduce(mean_k grad_i f(x + noise_k)), L2 by default (Smilkov et al. 2017).

    The noise is Gaussian with per-coordinate std ``noise * s_i / sqrt(D)`` (s_i/sqrt(D) is the
    RMS coordinate of token i), drawn from ``numpy.random.default_rng(seed)``; special tokens
    get noise too, as any other input row.
    """
    cfg = problem.config
    assert problem.reduce is not None
    s, d = problem.x.shape
    rng = np.random.default_rng(cfg.seed)
    sigma = (cfg.noise * problem.scale / np.sqrt(d))[None, :, None]
    total = np.zeros((s, d))
    for start in range(0, cfg.samples, problem.rows):  # a run of samples at a time: memory [rows, S, D]
        k = min(problem.rows, cfg.samples - start)
        noisy = (problem.x[None] + sigma * rng.standard_normal((k, s, d))).astype(np.float32)
        total += (yield from problem.backend.gradient(noisy)).sum(axis=0)
    return _gradient_attribution(total / cfg.samples, problem.reduce)


SALIENCY = MethodSpec(saliency, "the norm of each token's gradient (the paper's ranking)", "l2", local=True)
GRAD_X_INPUT = MethodSpec(grad_x_input, "each token's embedding times its gradient", "sum", local=True)
SMOOTHGRAD = MethodSpec(
    smoothgrad, "gradients averaged over noisy copies of the input", "l2", local=True,
    report=lambda cfg, result: {"samples": cfg.samples, "noise": cfg.noise, "seed": cfg.seed})
