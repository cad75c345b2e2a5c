"""Vectorized central finite differences: derivatives from forward passes alone.

Works on any model onnxruntime can run (quantized ones included) and needs nothing but f.
For a direction v at point x, with t > 0,

    central:     D(t) = (f(x + t v) - f(x - t v)) / (2 t)             error O(t^2), 2 runs
    Richardson:  R    = (4 D(t/2) - D(t)) / 3                          error O(t^4), 4 runs
    forward:     F(t) = (f(x + t v) - f(x)) / t                        error O(t),   1 run
                 (f(x) is run once per point and shared by all of that point's derivatives:
                 for IG's L token derivatives per node, L + 1 runs instead of 2 L)

Step rule: every perturbation ``t v`` has norm ``h_i = rel_step * s_i``, where s_i is the
norm of token i's embedding in the explained input (the mean row norm of the table where that
is zero). Steps thus follow each token's own scale. In float32 the truncation error
(~h^2) and the round-off (~eps/h) balance near h ~ eps^(1/3) ~ 5e-3 relative; the default
``rel_step`` 1e-2 sits there (measured: rank 1.00, ~1e-3 relative error on fp32 MiniLM).

All perturbed copies of one request are built lazily, ``batch_size`` rows at a time, and run
through the session in those batches: memory is bounded whatever the number of derivatives.
Directions that are zero (e.g. special tokens kept in an IG baseline) cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from blackbox_sal.progress import Progress

log = logging.getLogger("blackbox_sal")

#: default relative step for float models
DEFAULT_STEP = 1e-2
#: default relative step for quantized models: int8 rounding of the activations flattens
#: differences below a few quantization levels (benchmarks/quantized_agreement.py)
QUANTIZED_STEP = 0.3

Scalar = Callable[[np.ndarray], np.ndarray]  # points [N, S, D] -> values [N]
ProgressFactory = Callable[[int, str], Progress]

_CENTRAL = np.array([1.0, -1.0])
_RICHARDSON = np.array([1.0, -1.0, 0.5, -0.5])
_FORWARD = np.array([1.0])
#: central: (f(x + tv) - f(x - tv)) / 2t, error O(t^2), 2 runs per derivative; forward:
#: (f(x + tv) - f(x)) / t, error O(t), 1 run per derivative plus f(x) once per point
SCHEMES = ("central", "forward")


def step_scale(embeds: np.ndarray, fallback: float) -> np.ndarray:
    """Per-token scale s_i [S]: the norm of each token embedding, or ``fallback`` (use the
    table's mean row norm, :func:`mean_row_norm`) for tokens whose embedding is zero."""
    norms = np.linalg.norm(embeds.astype(np.float64), axis=-1)
    return np.where(norms > 0, norms, fallback)


def mean_row_norm(table: np.ndarray) -> float:
    """The mean norm of the non-zero rows of an embedding table (1.0 if all are zero)."""
    rows = np.linalg.norm(table.astype(np.float64), axis=-1)
    return float(rows[rows > 0].mean()) if np.any(rows > 0) else 1.0


class FiniteDifferences:
    """The finite-difference :class:`~blackbox_sal.gradients.backend.GradientBackend`.

    f: the target scalar. scale: s_i per token [S] (see :func:`step_scale`).
    rel_step: h_i / s_i. richardson: 4 runs per derivative instead of 2, O(h^4) error.
    batch_size: rows per session run. progress: factory for progress bars.
    ``forward_passes`` counts the rows this backend sent to the model.
    """

    name = "fd"

    def __init__(self, f: Scalar, scale: np.ndarray, *, rel_step: float = DEFAULT_STEP,
                 richardson: bool = False, batch_size: int = 64,
                 progress: ProgressFactory = Progress, scheme: str = "central") -> None:
        self.f, self.scale = f, np.asarray(scale, dtype=np.float64)
        self.rel_step, self.batch_size, self.progress = rel_step, batch_size, progress
        if scheme not in SCHEMES:
            raise ValueError(f"unknown finite-difference scheme {scheme!r}")
        self.forward = scheme == "forward"  # one run per probe, f(point) shared by all its probes
        self.coeffs = _FORWARD if self.forward else _RICHARDSON if richardson else _CENTRAL
        self.forward_passes = 0

    def values(self, points: np.ndarray) -> np.ndarray:
        self.forward_passes += len(points)
        return self.f(points)

    def token_jvp(self, points: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        p, s, _ = points.shape
        norms = np.linalg.norm(blocks.astype(np.float64), axis=-1)  # [P, S]
        active = np.flatnonzero(norms.ravel() > 0)
        out = np.zeros(p * s)
        if active.size:
            pi, ti = np.divmod(active, s)
            t = self.rel_step * self.scale[ti] / norms.ravel()[active]  # step along blocks
            deltas = lambda k: blocks[pi[k], ti[k]] * t[k, None]  # noqa: E731
            out[active] = self._differences(points, pi, ti, deltas, t, "token derivatives")
        return out.reshape(p, s)

    def jvp(self, points: np.ndarray, directions: np.ndarray) -> np.ndarray:
        if self.forward:  # whole-input directions: no probes to share a point with
            return FiniteDifferences(self.f, self.scale, rel_step=self.rel_step, batch_size=self.batch_size,
                                     progress=self.progress).jvp(points, directions)
        norms = np.linalg.norm(directions.reshape(len(points), -1).astype(np.float64), axis=1)
        size = np.linalg.norm(self.scale)  # the whole input's norm
        t = np.where(norms > 0, self.rel_step * size / np.where(norms > 0, norms, 1.0), 0.0)
        rows = [points + (c * t)[:, None, None].astype(np.float32) * directions for c in self.coeffs]
        vals = self.values(np.concatenate(rows)).reshape(len(self.coeffs), len(points))
        safe_t = np.where(t > 0, t, 1.0)
        return np.where(t > 0, self._combine(vals.T, safe_t), 0.0)

    def gradient(self, points: np.ndarray) -> np.ndarray:
        p, s, d = points.shape
        n = p * s * d
        log.info("full gradient by finite differences: %d x %d points x %d tokens x %d dims "
                 "= %s forward passes", len(self.coeffs), p, s, d, f"{len(self.coeffs) * n:,}")
        idx = np.arange(n)
        pi, rest = np.divmod(idx, s * d)
        ti, di = np.divmod(rest, d)
        t = self.rel_step * self.scale[ti]

        def deltas(k: np.ndarray) -> np.ndarray:
            out = np.zeros((len(k), d), np.float32)
            out[np.arange(len(k)), di[k]] = t[k]
            return out

        return self._differences(points, pi, ti, deltas, t, "full gradient").reshape(p, s, d)

    def _differences(self, points: np.ndarray, pi: np.ndarray, ti: np.ndarray,
                     deltas: Callable[[np.ndarray], np.ndarray], t: np.ndarray,
                     label: str) -> np.ndarray:
        """Derivative estimates for probes k: point pi[k], token ti[k], perturbation
        deltas(k) [k, D] of length t[k] along the probe's direction. Returns [K]."""
        e = len(self.coeffs)
        per_run = max(1, self.batch_size // e)
        n_probes = len(pi)
        values = np.empty((n_probes, e))
        if self.forward:  # f at each point once, shared by every probe there
            used = np.unique(pi)
            base = np.zeros(len(points))
            for rows in range(0, len(used), self.batch_size):
                part = used[rows:rows + self.batch_size]
                base[part] = self.values(points[part])
        coeffs = self.coeffs.astype(np.float32)
        with self.progress(n_probes * e, label) as bar:
            for start in range(0, n_probes, per_run):
                k = np.arange(start, min(start + per_run, n_probes))
                buf = np.repeat(points[pi[k]], e, axis=0)  # [k*e, S, D]
                shifts = (coeffs[None, :, None] * deltas(k)[:, None, :]).reshape(len(k) * e, -1)
                buf[np.arange(len(k) * e), np.repeat(ti[k], e)] += shifts
                values[k] = self.values(buf).reshape(len(k), e)
                bar.advance(len(k) * e)
        if self.forward:
            return (values[:, 0] - base[pi]) / t
        return self._combine(values, t)

    def _combine(self, values: np.ndarray, t: np.ndarray) -> np.ndarray:
        """values [K, e] at the coefficient offsets -> derivative [K]."""
        central = (values[:, 0] - values[:, 1]) / (2.0 * t)
        if len(self.coeffs) == 2:
            return central
        half = (values[:, 2] - values[:, 3]) / t
        return (4.0 * half - central) / 3.0
