"""Gradient backends behind one protocol (:class:`GradientBackend`).

``BACKENDS`` maps a name to a factory ``(f, scale, config) -> backend``:

- ``fd``: vectorized central finite differences (any model, quantized ones too, with a wider
  step and a note);
- ``graph``: an exported gradient graph (exact; one forward+backward run per point), built
  and verified once per model (:mod:`blackbox_sal.gradients.graph`); when none can be had,
  UnavailableError (exit 4) with the reason;
- ``auto``: the graph when one can be built and verified, else finite differences, with a
  note saying why (quantized models go straight to finite differences).

A factory returns the backend and the notes the result should carry.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from blackbox_sal.config import ExplainConfig
from blackbox_sal.errors import SalError, UnavailableError, unknown_choice
from blackbox_sal.gradients.backend import GradientBackend
from blackbox_sal.gradients.finite_differences import DEFAULT_STEP, QUANTIZED_STEP, FiniteDifferences, step_scale
from blackbox_sal.gradients.graph import GraphBackend, gradient_session
from blackbox_sal.model.objective import Objective
from blackbox_sal.progress import Progress

Made = tuple[GradientBackend, tuple[str, ...]]
#: methods that read the gradient at the input point only (no path, no large steps)
LOCAL_METHODS = ("saliency", "grad-x-input", "smoothgrad")


def _fd(f: Objective, scale: np.ndarray, config: ExplainConfig) -> Made:
    def progress(total: int, label: str) -> Progress:
        return Progress(total, label, enabled=config.progress)

    step = config.fd_step or (QUANTIZED_STEP if f.model.quantized else DEFAULT_STEP)
    notes: tuple[str, ...] = ()
    if f.model.quantized:
        head = (f"the model is quantized ({', '.join(f.model.quantized)}): finite differences with steps of "
                f"{step:g} x each token's embedding norm, wide enough that int8 rounding does not flatten the "
                f"differences; ")
        if "QuantizeLinear" in f.model.quantized:  # static (QDQ): fixed activation scales, coarser still
            body = ("with static quantization every method is rough (rank agreement with the fp32 model on QDQ "
                    "MiniLM: ig 0.58, occlusion 0.56, grad x input 0.03); --dequantize explains the float twin of "
                    "its int8 weights with exact gradients instead (0.99)")
        else:
            body = ("local gradients of a quantized model are mostly rounding noise (rank agreement with the fp32 "
                    "model about 0.2 on int8 MiniLM): prefer ig or occlusion (0.82 and 0.86)"
                    if config.method in LOCAL_METHODS else
                    "read scores as approximate (ig on int8 MiniLM ranks tokens like the fp32 model at rho 0.82)"
                    ) + "; --dequantize explains the float twin of its int8 weights with exact gradients instead (0.93)"
        notes = (head + body,)
    return FiniteDifferences(f, scale, rel_step=step, richardson=config.richardson, batch_size=config.batch_size,
                             progress=progress, scheme=config.fd_scheme), notes


def _graph(f: Objective, scale: np.ndarray, config: ExplainConfig) -> Made:
    if f.model.quantized:
        raise UnavailableError(f"--backend graph: the model is quantized ({', '.join(f.model.quantized)}); "
                               "integer ops have no gradients: use --backend fd")
    try:
        session = gradient_session(f.model)
    except SalError as exc:
        raise UnavailableError(f"--backend graph: {exc}") from exc
    return GraphBackend(f, session, config.batch_size), ()


def _auto(f: Objective, scale: np.ndarray, config: ExplainConfig) -> Made:
    if f.model.quantized:  # no graph to try: say so once, in the finite-difference note
        return _fd(f, scale, config)
    try:
        return _graph(f, scale, config)
    except UnavailableError as exc:
        backend, notes = _fd(f, scale, config)
        reason = str(exc).removeprefix("--backend graph: ")
        return backend, (f"finite differences were used: {reason}", *notes)


BACKENDS: dict[str, Callable[[Objective, np.ndarray, ExplainConfig], Made]] = {
    "auto": _auto,
    "fd": _fd,
    "graph": _graph,
}


def make_backend(f: Objective, scale: np.ndarray, config: ExplainConfig) -> Made:
    """The backend ``config.backend`` names for target scalar ``f`` (step scale [S]), and the
    notes to report (why ``auto`` fell back to finite differences)."""
    if config.backend not in BACKENDS:
        raise unknown_choice("backend", config.backend, BACKENDS)
    return BACKENDS[config.backend](f, scale, config)


__all__ = ["BACKENDS", "FiniteDifferences", "GradientBackend", "GraphBackend", "make_backend", "step_scale"]
