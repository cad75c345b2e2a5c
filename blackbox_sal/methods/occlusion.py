"""Occlusion (leave-one-out): f(x) - f(x with token i replaced by its baseline embedding).

A pure black-box method: L + 1 forward passes, no derivatives. Special tokens keep their
own embedding in the baseline, so they score 0 and cost nothing. Occluded copies are built
``batch_size`` at a time, so memory stays bounded whatever the length.
"""

from __future__ import annotations

import numpy as np

from blackbox_sal.methods.attribution import Attribution, Problem


def occlusion(problem: Problem) -> Attribution:
    x, base = problem.x, problem.baseline
    rows = np.flatnonzero(np.any(x != base, axis=1))
    scores = np.zeros(x.shape[0])
    size = problem.config.batch_size
    for start in range(0, rows.size, size):
        chunk = rows[start : start + size]
        occluded = np.repeat(x[None], chunk.size, axis=0)
        occluded[np.arange(chunk.size), chunk] = base[chunk]
        scores[chunk] = problem.target_value - problem.backend.values(occluded)
    return Attribution(scores, None)
