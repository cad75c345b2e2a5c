"""Vectorized finite differences: derivatives from forward passes alone.

Works on any model onnxruntime can run (quantized ones included) and needs nothing but the
model's outputs. The formulas and their errors are in :mod:`blackbox_sal.vocabulary.differences`:
central differences (2 runs per derivative, O(h^2)), Richardson extrapolation (4 runs,
O(h^4)), or one-sided differences (1 run per derivative plus f(x) once per point, O(h): for
IG's L token derivatives per node, L + 1 runs instead of 2 L).

Step rule: every perturbation ``t v`` has norm ``h_i = rel_step * s_i``, where s_i is the
norm of token i's embedding in the explained input (the mean row norm of the table where that
is zero). In float32 the truncation error (~h^2) and the round-off (~eps/h) balance near
h ~ eps^(1/3) ~ 5e-3 relative; the default ``rel_step`` 1e-2 sits there (measured: rank 1.00,
~1e-3 relative error on fp32 MiniLM).

All perturbed copies are lazy (:class:`~blackbox_sal.vocabulary.runs.LazyPoints`): the engine builds them
a run at a time, so memory is bounded whatever the number of derivatives. Directions that are
zero (e.g. special tokens kept in an IG baseline) cost nothing.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from blackbox_sal.vocabulary.differences import CENTRAL, FORWARD, RICHARDSON, combine
from blackbox_sal.vocabulary.runs import (
    ArrayPoints,
    Cost,
    Forward,
    LazyPoints,
    PathPoints,
    Points,
    Seq,
    Work,
    as_points,
    ask,
)
from blackbox_sal.vocabulary.scores import Objective

log = logging.getLogger("blackbox_sal")

#: default relative step for float models
DEFAULT_STEP = 1e-2
#: default relative step for quantized models: int8 rounding of the activations flattens
#: differences below a few quantization levels (benchmarks/quantized_agreement.py)
QUANTIZED_STEP = 0.3
#: central: (f(x + tv) - f(x - tv)) / 2t; forward: (f(x + tv) - f(x)) / t
SCHEMES = ("central", "forward")


class FiniteDifferences:
    """The finite-difference :class:`~blackbox_sal.gradients.backend.GradientBackend`.

    f: the target scalar. seq: the token sequence every point shares. scale: s_i per token
    [S] (:func:`blackbox_sal.vocabulary.differences.step_scale`). rel_step: h_i / s_i. richardson: 4
    runs per derivative instead of 2, O(h^4) error. scheme: central or forward. cost: counts
    the rows sent to the model.
    """

    name = "fd"

    def __init__(self, f: Objective, seq: Seq | None, scale: np.ndarray, *, rel_step: float = DEFAULT_STEP,
                 richardson: bool = False, scheme: str = "central", cost: Cost | None = None) -> None:
        if scheme not in SCHEMES:
            raise ValueError(f"unknown finite-difference scheme {scheme!r}")
        self.f, self.seq, self.scale = f, seq, np.asarray(scale, dtype=np.float64)
        self.rel_step, self.richardson, self.scheme = rel_step, richardson, scheme
        self.forward = scheme == "forward"  # one run per probe, f(point) shared by all its probes
        self.coeffs = FORWARD if self.forward else RICHARDSON if richardson else CENTRAL
        self.cost = cost if cost is not None else Cost()

    def provenance(self) -> dict[str, Any]:
        return {"fd_step": self.rel_step, "richardson": self.richardson, "fd_scheme": self.scheme}

    def _values(self, points: Points, label: str = "forward passes", key: bytes | None = None) -> Work[np.ndarray]:
        outputs = yield from ask(Forward(self.seq, points, label, key))
        self.cost.forward += points.n
        return self.f.scalar(outputs)

    def values(self, points: np.ndarray | Points) -> Work[np.ndarray]:
        return self._values(as_points(points))

    def path_jvp(self, anchor: np.ndarray, delta: np.ndarray, alphas: np.ndarray) -> Work[np.ndarray]:
        """[m, S]: per-token derivatives along delta's rows at anchor + alpha_k delta."""
        norms = np.broadcast_to(np.linalg.norm(delta.astype(np.float64), axis=-1), (len(alphas), delta.shape[0]))
        return self._token_jvp(PathPoints(anchor, delta, alphas), norms, lambda p, i: delta[i])

    def _token_jvp(self, points: Points, block_norms: np.ndarray,
                   block: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Work[np.ndarray]:
        """Per-token derivatives at each point along block(p, i) [k, D], whose norms are
        block_norms [P, S]."""
        p, s = points.n, len(self.scale)
        norms = block_norms.ravel()
        active = np.flatnonzero(norms > 0)
        out = np.zeros(p * s)
        if active.size:
            pi, ti = np.divmod(active, s)
            t = self.rel_step * self.scale[ti] / norms[active]  # step along each block

            def deltas(k: np.ndarray) -> np.ndarray:
                return block(pi[k], ti[k]) * t[k, None]

            out[active] = yield from self._differences(points, pi, ti, deltas, t, "token derivatives")
        return out.reshape(p, s)

    def gradient(self, points: np.ndarray) -> Work[np.ndarray]:
        """[P, S, D]: the full gradient, one derivative per coordinate."""
        p, s, d = points.shape
        n = p * s * d
        log.info("full gradient by finite differences: %d x %d points x %d tokens x %d dims "
                 "= %s forward passes", len(self.coeffs), p, s, d, f"{len(self.coeffs) * n:,}")
        pi, rest = np.divmod(np.arange(n), s * d)
        ti, di = np.divmod(rest, d)
        t = self.rel_step * self.scale[ti]

        def deltas(k: np.ndarray) -> np.ndarray:
            out = np.zeros((len(k), d), np.float32)
            out[np.arange(len(k)), di[k]] = t[k]
            return out

        grad = yield from self._differences(ArrayPoints(points), pi, ti, deltas, t, "full gradient")
        return grad.reshape(p, s, d)

    def _differences(self, points: Points, pi: np.ndarray, ti: np.ndarray,
                     deltas: Callable[[np.ndarray], np.ndarray], t: np.ndarray, label: str) -> Work[np.ndarray]:
        """Derivative estimates for probes k: point pi[k], token ti[k], perturbation deltas(k)
        [k, D] of length t[k] along the probe's direction. Returns [K]."""
        e = len(self.coeffs)
        coeffs = self.coeffs.astype(np.float32)

        def perturbed(start: int, stop: int) -> np.ndarray:
            """Rows start..stop of the perturbed copies; row r is probe r // e at offset r % e."""
            k = np.arange(start // e, (stop - 1) // e + 1)
            buf = np.repeat(points.gather(pi[k]), e, axis=0)  # [k*e, S, D]
            shifts = (coeffs[None, :, None] * deltas(k)[:, None, :]).reshape(len(k) * e, -1)
            buf[np.arange(len(k) * e), np.repeat(ti[k], e)] += shifts
            first = start - k[0] * e
            return buf[first : first + stop - start]

        key = _fingerprint(points, pi, ti, t, coeffs, label.encode())
        if self.forward:  # f at each point once, shared by every probe there
            used = np.unique(pi)
            base = np.zeros(points.n)
            base[used] = yield from self._values(LazyPoints(len(used), lambda a, b: points.gather(used[a:b])),
                                                 key=None if key is None else key + b"f(x)")
        values = yield from self._values(LazyPoints(len(pi) * e, perturbed), label, key)
        values = values.reshape(len(pi), e)
        if self.forward:
            return (values[:, 0] - base[pi]) / t
        return combine(values, t)


def _fingerprint(points: Points, *arrays: np.ndarray | bytes) -> bytes | None:
    """A digest of perturbed rows: the points they perturb (an array, or a path's anchor, delta
    and alphas) and how (probes, steps, coefficients). Two targets of one text perturb the same
    points the same way, so their requests share this key (and one set of runs). None for
    points of another kind (never shared)."""
    if isinstance(points, ArrayPoints):
        parts: tuple[np.ndarray | bytes, ...] = (points.array,)
    elif isinstance(points, PathPoints):
        parts = (points.anchor, points.delta, points.alphas)
    else:
        return None
    digest = hashlib.blake2b(digest_size=20)
    for part in (*parts, *arrays):
        digest.update(part if isinstance(part, bytes) else np.ascontiguousarray(part).tobytes())
        digest.update(b"|")
    return digest.digest()
