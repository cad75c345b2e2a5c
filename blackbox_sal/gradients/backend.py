"""The gradient backend protocol, and the registry of backends.

A backend answers, for one explained scalar f over one token sequence, what methods ask, as
work (:mod:`blackbox_sal.runs`): f's values, per-token derivatives along a path, full
gradients. Most attributions need less than the full gradient: gradient x input and
integrated gradients with a sum reduction need, per token i, only the derivative of f along
one vector placed in row i; that is L derivatives where the full gradient is L x D. A
finite-difference backend pays per derivative, a gradient graph per point, so methods ask for
exactly what they need and each backend answers in its cheapest way.

Shapes: points [P, S, D] float32; anchor, delta [S, D]; alphas [m]; results float64 (a
graph's full gradient float32).

``BACKENDS`` maps a name to a :class:`BackendSpec`; :func:`make_backend` builds the one a
config names:

- ``fd``: finite differences (any model; quantized ones with a wider step and a note);
- ``graph``: an exported gradient graph (exact; one forward+backward run per point); when
  none can be had, UnavailableError (exit 4) with the reason;
- ``auto``: the graph when one can be had, else finite differences, with a note saying why
  (quantized models go straight to finite differences);
- ``none``: values only, for methods that need no derivatives (occlusion).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from blackbox_sal.errors import UnavailableError
from blackbox_sal.gradients.finite_differences import DEFAULT_STEP, QUANTIZED_STEP, FiniteDifferences
from blackbox_sal.gradients.graph_backend import GraphBackend
from blackbox_sal.runs import Cost, Forward, Points, Seq, Work, as_points, ask
from blackbox_sal.scores import Objective


class GradientBackend(Protocol):
    """Derivatives of one target scalar f; see the module docstring for shapes."""

    name: str

    def values(self, points: np.ndarray | Points) -> Work[np.ndarray]:
        """f at each point: [P]."""
        ...

    def path_jvp(self, anchor: np.ndarray, delta: np.ndarray, alphas: np.ndarray) -> Work[np.ndarray]:
        """[m, S]: at anchor + alphas[k] delta, the derivative of f along the direction that is
        delta's row i in row i and zero elsewhere (= grad_i f . delta_i)."""
        ...

    def gradient(self, points: np.ndarray) -> Work[np.ndarray]:
        """[P, S, D]: the full gradient of f at each point."""
        ...

    def provenance(self) -> dict[str, Any]:
        """The settings this backend reports in an explanation's provenance."""
        ...


class ValuesOnly:
    """The backend of methods that need no derivatives: f's values, nothing else."""

    name = "none"

    def __init__(self, f: Objective, seq: Seq | None, cost: Cost | None = None) -> None:
        self.f, self.seq = f, seq
        self.cost = cost if cost is not None else Cost()

    def provenance(self) -> dict[str, Any]:
        return {}

    def values(self, points: np.ndarray | Points) -> Work[np.ndarray]:
        rows = as_points(points)
        outputs = yield from ask(Forward(self.seq, rows))
        self.cost.forward += rows.n
        return self.f.scalar(outputs)

    def path_jvp(self, anchor: np.ndarray, delta: np.ndarray, alphas: np.ndarray) -> Work[np.ndarray]:
        raise TypeError("this method asked for derivatives of a values-only backend")

    def gradient(self, points: np.ndarray) -> Work[np.ndarray]:
        raise TypeError("this method asked for derivatives of a values-only backend")


@dataclass(frozen=True)
class Setting:
    """What a backend is built from, besides its name: the scalar, the sequence, the step
    scale [S], the output width, the cost counter, and the facts of the model and method
    that decide notes (quantized op types; whether the method reads local gradients only)."""

    f: Objective
    seq: Seq | None
    scale: np.ndarray
    n_classes: int
    cost: Cost
    fd_step: float | None = None
    richardson: bool = False
    fd_scheme: str = "central"
    quantized: tuple[str, ...] = ()
    local_method: bool = False
    #: why no gradient graph can be had for this model (None: one can)
    graph_unavailable: str | None = None
    #: the method's reverse rules: "gradient", or an LRP rule set (graph backend only)
    rules: str = "gradient"


Made = tuple[GradientBackend, tuple[str, ...]]


def _fd(s: Setting) -> Made:
    if s.rules != "gradient":
        why = (s.graph_unavailable if s.graph_unavailable is not None else
               f"the model is quantized ({', '.join(s.quantized)})" if s.quantized else "--backend fd was asked for")
        raise UnavailableError(f"{s.rules} needs a gradient graph, whose reverse rules it changes (finite "
                               f"differences have no rules to change): {why}; use --backend graph on a model that "
                               f"has one (--dequantize for a quantized model), or another method such as ig")
    step = s.fd_step or (QUANTIZED_STEP if s.quantized else DEFAULT_STEP)
    notes: tuple[str, ...] = ()
    if s.quantized:
        head = (f"the model is quantized ({', '.join(s.quantized)}): finite differences with steps of "
                f"{step:g} x each token's embedding norm, wide enough that int8 rounding does not flatten the "
                f"differences; ")
        if "QuantizeLinear" in s.quantized:  # static (QDQ): fixed activation scales, coarser still
            body = ("with static quantization every method is rough (rank agreement with the fp32 model on QDQ "
                    "MiniLM: ig 0.58, occlusion 0.56, grad x input 0.03); --dequantize explains the float twin of "
                    "its int8 weights with exact gradients instead (0.99)")
        else:
            body = ("local gradients of a quantized model are mostly rounding noise (rank agreement with the fp32 "
                    "model about 0.2 on int8 MiniLM): prefer ig or occlusion (0.82 and 0.86)"
                    if s.local_method else
                    "read scores as approximate (ig on int8 MiniLM ranks tokens like the fp32 model at rho 0.82)"
                    ) + "; --dequantize explains the float twin of its int8 weights with exact gradients instead (0.93)"
        notes = (head + body,)
    return FiniteDifferences(s.f, s.seq, s.scale, rel_step=step, richardson=s.richardson, scheme=s.fd_scheme,
                             cost=s.cost), notes


def _graph(s: Setting) -> Made:
    if s.quantized:
        raise UnavailableError(f"--backend graph: the model is quantized ({', '.join(s.quantized)}); "
                               "integer ops have no gradients: use --backend fd")
    if s.graph_unavailable is not None:
        raise UnavailableError(f"--backend graph: {s.graph_unavailable}")
    return GraphBackend(s.f, s.seq, s.n_classes, s.cost, s.rules), ()


def _auto(s: Setting) -> Made:
    if s.quantized:  # no graph to try: say so once, in the finite-difference note
        return _fd(s)
    if s.graph_unavailable is None:
        return _graph(s)
    backend, notes = _fd(s)
    return backend, (f"finite differences were used: {s.graph_unavailable}", *notes)


def _none(s: Setting) -> Made:
    return ValuesOnly(s.f, s.seq, s.cost), ()


@dataclass(frozen=True)
class BackendSpec:
    """A backend the user can name: how it is made, and whether it wants a gradient graph
    (the caller then builds or finds one first and passes on why none can be had)."""

    make: Callable[[Setting], Made]
    summary: str
    wants_graph: bool = False


BACKENDS: dict[str, BackendSpec] = {
    "auto": BackendSpec(_auto, "the gradient graph when one can be had, else finite differences", wants_graph=True),
    "fd": BackendSpec(_fd, "finite differences: forward passes only, any model"),
    "graph": BackendSpec(_graph, "an exported gradient graph: exact, built and verified once", wants_graph=True),
}
#: the backend of methods that need no derivatives (not a user choice)
VALUES_ONLY = BackendSpec(_none, "no derivatives: values only")
