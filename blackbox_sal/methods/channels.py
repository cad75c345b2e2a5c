"""Per-channel scores of a model with a second id channel (:mod:`blackbox_sal.surgery.channels`).

Such a model's embeddings input holds each token's channels side by side (dimensions
``start:stop`` each); a method's score of token i is its total over all of them. A channel's
own score is the same method restricted to the channel's dimensions c:

=============  ===============================================================================
method         score of token i in channel c
=============  ===============================================================================
grad-x-input   reduce over c of x_i * grad_i f(x); with sum: the derivative along x_i's part in
               c (one directional derivative per token and channel)
ig             reduce over c of (x_i - x'_i) * integral of grad_i f along x' -> x: the path
               moves both channels together from their baselines; with sum, the integral of
               the derivative along (x_i - x'_i)'s part in c, on the method's own nodes
saliency       reduce over c of grad_i f(x)
=============  ===============================================================================

With a linear reduction (sum, mean) the channels' scores add up to the token's score (the
derivative is linear in the direction), and for integrated gradients completeness holds for
the total: sum over tokens and channels = f(x) - f(x'). With l2 or max a channel's score is
the norm of its own part (they combine as the norm does, not by a sum). Each channel costs
what the method cost once more; the other methods give the per-position totals only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.methods.attribution import Attribution, Problem
from blackbox_sal.methods.quadrature import QUADRATURES
from blackbox_sal.reductions import LINEAR, REDUCTIONS
from blackbox_sal.vocabulary.runs import Work, together

if TYPE_CHECKING:
    from blackbox_sal.surgery.channels import Channel

#: the methods that give each channel its own scores
CHANNEL_METHODS = ("grad-x-input", "ig", "saliency")


def channel_scores(problem: Problem, method: str, channels: tuple[Channel, ...],
                   result: Attribution) -> Work[dict[str, np.ndarray]]:
    """Channel name -> float64 [S], the score of each token in that channel (see the module
    doc), for ``method`` in :data:`CHANNEL_METHODS` whose ``result`` is given (its reduction,
    and IG's node count)."""
    reduce, x = result.reduce, problem.x
    assert reduce is not None
    parts = [slice(c.start, c.stop) for c in channels]
    if method == "saliency":
        grad = (yield from problem.backend.gradient(x[None]))[0]
        return {c.name: REDUCTIONS[reduce](grad[:, part]) for c, part in zip(channels, parts, strict=True)}
    if method == "grad-x-input":
        nodes, weights, anchor, diff = np.zeros(1), np.ones(1), x, x
    elif method == "ig":
        steps = result.nodes
        assert steps is not None
        rule = problem.config.quadrature if isinstance(problem.config.steps, int) else "clenshaw-curtis"
        nodes, weights = QUADRATURES[rule](steps)
        anchor, diff = problem.baseline, (x - problem.baseline).astype(np.float32)
    else:
        raise ValueError(f"{method} gives no per-channel scores")
    if reduce in LINEAR:  # one derivative per node, token and channel, along the channel's part of the row
        works = [problem.backend.path_jvp((anchor + a * diff).astype(np.float32), _only(diff, part), np.zeros(1))
                 for part in parts for a in nodes]
        jvps = np.array([j[0] for j in (yield from together(works))]).reshape(len(parts), len(nodes), -1)
        scale = LINEAR[reduce](x.shape[1])
        return {c.name: scale * (weights @ jvps[k]) for k, c in enumerate(channels)}
    per_dim = np.zeros(diff.shape)
    for start in range(0, len(nodes), problem.rows):  # a run of nodes at a time: memory [rows, S, D]
        chunk = slice(start, start + problem.rows)
        path = (anchor[None] + nodes[chunk, None, None].astype(np.float32) * diff[None]).astype(np.float32)
        per_dim += np.tensordot(weights[chunk], diff * (yield from problem.backend.gradient(path)), axes=1)
    return {c.name: REDUCTIONS[reduce](per_dim[:, part]) for c, part in zip(channels, parts, strict=True)}


def _only(rows: np.ndarray, part: slice) -> np.ndarray:
    """``rows`` [S, D] with every dimension outside ``part`` zero."""
    out = np.zeros_like(rows)
    out[:, part] = rows[:, part]
    return out
