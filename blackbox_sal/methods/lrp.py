"""Layer-wise relevance propagation for transformers, as input x modified gradient, in one
run of a gradient graph: AttnLRP (``lrp-attn``) and CP-LRP (``lrp-cp``).

    R_i = reduce(x_i * g_i),   g = the gradient of f with the backward rule changed at a few
                                   operators (:mod:`blackbox_sal.surgery.lrp_rules`)

- AttnLRP: Achtibat, Hatefi, Dreyer, Jain, Wiegand, Lapuschkin, Samek, "AttnLRP:
  Attention-Aware Layer-Wise Relevance Propagation for Transformers", ICML 2024
  (arXiv:2402.05602): the identity rule on elementwise nonlinearities, the uniform rule on
  products of two activations (Q Kᵀ, A V, gates), the softmax's own rule (in this form its
  Jacobian), normalization with its standard deviation held constant.
- CP-LRP: Ali, Schnake, Eberle, Montavon, Müller, Wolf, "XAI for Transformers: Better
  Explanations through Conservative Propagation", ICML 2022 (arXiv:2202.07304): the same,
  but the attention weights are held constant (no relevance flows through the softmax).
- The input x gradient form (one backward pass, no per-layer relevance tensors): the ``lxt``
  package's efficient mode; Arras et al. 2025.

Linear maps take the epsilon rule: R_in = x W g_out z / (z + eps), whose modified gradient is
the plain gradient as eps -> 0, so it is not changed here; the one stabilizer is the identity
rule's, y / (x + 1e-6 sign x).

Conservation: LRP rules conserve relevance layer by layer except what biases (and the
stabilizer) absorb, so sum_i R_i is close to f(x); the gap sum_i R_i - f(x) is reported as the
explanation's convergence delta, where integrated gradients report their completeness delta.
For a model whose biases all add up into f(x') (x' the baseline, e.g. zero embeddings), the
sum equals f(x) - f(x') instead: the note gives both when the gap is large. Cost: one
forward+backward run of the modified-gradient graph, like grad x input (f(x') rides along in
the prediction's run). Graph backend only: finite differences have no backward rules to
change.

The method's authors state that LRP is covered by a patent for commercial use (Fraunhofer
HHI; lxt's licence: "LRP is a patented technology that can only be used free of charge for
personal and scientific purposes").
"""

from __future__ import annotations

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.reductions import LINEAR, REDUCTIONS
from blackbox_sal.vocabulary.runs import Work

#: a conservation gap above this share of |f(x)| is explained in a note
GAP_NOTE = 0.05


def lrp(problem: Problem) -> Work[Attribution]:
    """reduce(x_i * g_i) with g from the backend's rule set; sum by default."""
    reduce, x = problem.reduce, problem.x
    assert reduce is not None
    if reduce in LINEAR:  # the modified derivative along x_i at x: a path of one point, alpha 0
        total = (yield from problem.backend.path_jvp(x, x, np.zeros(1)))[0]
        scores = total * LINEAR[reduce](x.shape[1])
    else:
        per_dim = x.astype(np.float64) * (yield from problem.backend.gradient(x[None]))[0]
        total, scores = per_dim.sum(axis=-1), REDUCTIONS[reduce](per_dim)
    fx, relevance = problem.target_value, float(total.sum())
    gap = relevance - fx
    notes: tuple[str, ...] = ()
    if abs(gap) > GAP_NOTE * max(abs(fx), 1e-12):
        against = ("" if problem.baseline_value is None else
                   f"; against f(x) - f(x') = {fx - problem.baseline_value:.4g}, x' the {problem.config.baseline} "
                   f"baseline: {gap + problem.baseline_value:+.4g}")
        notes = (f"the relevances sum to {relevance:.4g} against f(x) = {fx:.4g}: a conservation gap of {gap:+.4g}, "
                 f"what biases and stabilizers absorbed{against}",)
    return Attribution(scores, reduce, delta=gap, notes=notes)


LRP_ATTN = MethodSpec(lrp, "AttnLRP: input x gradient with LRP's rules for attention, norms and activations (one pass)",
                      "sum", local=True, baseline_value=True, rules="lrp-attn")
LRP_CP = MethodSpec(lrp, "CP-LRP: as lrp-attn, with the attention weights held constant (one pass)",
                    "sum", local=True, baseline_value=True, rules="lrp-cp")
