"""Gradient backends behind one protocol (:class:`GradientBackend`).

``BACKENDS`` maps a name to a factory ``(f, scale, config) -> backend``:

- ``fd``: vectorized central finite differences (any model, quantized ones too);
- ``graph``: an exported gradient graph (exact, ~2x a forward pass): not built yet, a clear
  error (exit 4) until it lands;
- ``auto``: the graph when one can be built and verified, else finite differences; today,
  finite differences.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from blackbox_sal.config import ExplainConfig
from blackbox_sal.errors import UnavailableError, unknown_choice
from blackbox_sal.gradients.backend import GradientBackend
from blackbox_sal.gradients.finite_differences import FiniteDifferences, Scalar, step_scale
from blackbox_sal.progress import Progress


def _fd(f: Scalar, scale: np.ndarray, config: ExplainConfig) -> GradientBackend:
    def progress(total: int, label: str) -> Progress:
        return Progress(total, label, enabled=config.progress)

    return FiniteDifferences(f, scale, rel_step=config.fd_step, richardson=config.richardson,
                             batch_size=config.batch_size, progress=progress)


def _graph(f: Scalar, scale: np.ndarray, config: ExplainConfig) -> GradientBackend:
    raise UnavailableError("the gradient-graph backend is not available yet; "
                           "use --backend fd (or auto)")


BACKENDS: dict[str, Callable[[Scalar, np.ndarray, ExplainConfig], GradientBackend]] = {
    "auto": _fd,
    "fd": _fd,
    "graph": _graph,
}


def make_backend(f: Scalar, scale: np.ndarray, config: ExplainConfig) -> GradientBackend:
    """The backend ``config.backend`` names, for target scalar ``f`` with step scale [S]."""
    if config.backend not in BACKENDS:
        raise unknown_choice("backend", config.backend, BACKENDS)
    return BACKENDS[config.backend](f, scale, config)


__all__ = ["BACKENDS", "FiniteDifferences", "GradientBackend", "make_backend", "step_scale"]
