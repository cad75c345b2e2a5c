"""The gradient backend protocol, and the registry of backends.

A backend answers, for one explained scalar f over one token sequence, what methods ask, as
work (:mod:`blackbox_sal.vocabulary.runs`): f's values, per-token derivatives along a path, full
gradients. Most attributions need less than the full gradient: gradient x input and
integrated gradients with a sum reduction need, per token i, only the derivative of f along
one vector placed in row i; that is L derivatives where the full gradient is L x D. A
finite-difference backend pays per derivative, a gradient graph per point, so methods ask for
exactly what they need and each backend answers in its cheapest way.

Shapes: points [P, S, D] float32; anchor, delta [S, D]; alphas [m]; results float64 (a
graph's full gradient float32).

``BACKENDS`` names the backends a user may ask for; :func:`choose_backend` is the one place
that decides which answers (every caller asks it), and :func:`make_backend` builds it:

- ``fd``: finite differences (any model; quantized ones with a wider step and a note);
- ``graph``: an exported gradient graph (exact; one forward+backward run per point); when
  none can be had, UnavailableError (exit 4) with the reason;
- ``auto``: the graph when one can be had, else finite differences, with a note saying why
  (quantized models go straight to finite differences);

and :class:`ValuesOnly` answers methods that need no derivatives (occlusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from blackbox_sal.gradient_graph.store import gradient_session
from blackbox_sal.gradients.finite_differences import DEFAULT_STEP, QUANTIZED_STEP, FiniteDifferences
from blackbox_sal.gradients.graph_backend import GraphBackend
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.errors import ModelError, UnavailableError, unknown_choice
from blackbox_sal.vocabulary.runs import Cost, Forward, Points, Seq, Work, as_points, ask
from blackbox_sal.vocabulary.scores import Objective


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
class Decision:
    """Which backend answers: ``graph`` or ``fd``; ``reason``: why not the graph (None when the
    graph answers)."""

    name: str
    reason: str | None = None


def choose_backend(requested: str, model: TextModel) -> Decision:
    """The backend that answers a request for ``requested`` (auto, fd, graph) on ``model``: the
    verified gradient graph (built now if need be, and kept with the model) when it is asked for
    or ``auto`` and one can be had; else finite differences, with the reason. Quantized models
    have no graph (integer ops have no gradients). UnavailableError (exit 4) for ``graph`` when
    none can be had."""
    if requested not in BACKENDS:
        raise unknown_choice("backend", requested, BACKENDS)
    if requested == "fd":
        return Decision("fd", "finite differences were asked for")
    if model.quantized:
        reason = f"the model is quantized ({', '.join(model.quantized)})"
        if requested == "graph":
            raise UnavailableError(f"--backend graph: {reason}; integer ops have no gradients: use --backend fd")
        return Decision("fd", reason)
    try:
        gradient_session(model)
    except ModelError as exc:
        if requested == "graph":
            raise UnavailableError(f"--backend graph: {exc}") from None
        return Decision("fd", str(exc))
    return Decision("graph")


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
    #: the method's reverse rules: "gradient", or an LRP rule set (graph backend only)
    rules: str = "gradient"


Made = tuple[GradientBackend, tuple[str, ...]]


def _fd(s: Setting) -> Made:
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


def make_backend(requested: str, model: TextModel, s: Setting) -> Made:
    """The backend :func:`choose_backend` decides on, built for ``s``, with its notes (why
    finite differences answer an ``auto`` request; how a quantized model is differentiated).
    A method with its own reverse rules (LRP) has no finite-difference form: UnavailableError
    with the way out where the decision is finite differences."""
    decision = choose_backend(requested, model)
    if decision.name == "graph":
        return GraphBackend(s.f, s.seq, s.n_classes, s.cost, s.rules), ()
    if s.rules != "gradient":
        raise UnavailableError(f"{s.rules} needs a gradient graph, whose reverse rules it changes (finite "
                               f"differences have no rules to change): {decision.reason}; use --backend graph on a "
                               f"model that has one (--dequantize for a quantized model), or another method such as "
                               f"ig")
    backend, notes = _fd(s)
    if requested == "auto" and not s.quantized:  # a quantized model's note says why already
        notes = (f"finite differences were used: {decision.reason}", *notes)
    return backend, notes


@dataclass(frozen=True)
class BackendSpec:
    """A backend the user can name, with its one line for help texts."""

    summary: str


BACKENDS: dict[str, BackendSpec] = {
    "auto": BackendSpec("the gradient graph when one can be had, else finite differences"),
    "fd": BackendSpec("finite differences: forward passes only, any model"),
    "graph": BackendSpec("an exported gradient graph: exact, built and verified once"),
}
