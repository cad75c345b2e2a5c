"""Occlusion (leave-one-out): f(x) - f(x with token i replaced by its baseline embedding).

A pure black-box method: L + 1 forward passes, no derivatives. Special tokens keep their
own embedding in the baseline, so they score 0 and cost nothing. Occluded copies are built
a run at a time by the engine, so memory stays bounded whatever the length.
"""

from __future__ import annotations

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.vocabulary.runs import LazyPoints, Work


def occlusion(problem: Problem) -> Work[Attribution]:
    x, base = problem.x, problem.baseline
    rows = np.flatnonzero(np.any(x != base, axis=1))
    scores = np.zeros(x.shape[0])

    def occluded(start: int, stop: int) -> np.ndarray:
        """Copies start..stop of x, copy k with token rows[k] set to its baseline."""
        out = np.repeat(x[None], stop - start, axis=0)
        out[np.arange(stop - start), rows[start:stop]] = base[rows[start:stop]]
        return out

    if rows.size:
        values = yield from problem.backend.values(LazyPoints(rows.size, occluded))
        scores[rows] = problem.target_value - values
    return Attribution(scores, None)


OCCLUSION = MethodSpec(occlusion, "the drop in f when a token is replaced by its baseline", None,
                       needs_derivatives=False, uses_baseline=True)
