"""What attribution work asks the model to run, and how that work is written.

Methods and gradient backends do not call onnxruntime. They are generators: each ``yield``
hands the engine one :class:`Request` (or :class:`All` of several) and receives its result,
so the engine can pack the rows of many requests, from many texts, into shared runs::

    def values(points) -> Work[np.ndarray]:
        outputs = yield Forward(seq, ArrayPoints(points))    # [n, C] raw model outputs
        return objective.scalar(outputs)

Three kinds of request, each over one token sequence ``seq`` (ids and type ids, [S]):

==========  ==============================================================  ==============
request     rows                                                            result
==========  ==============================================================  ==============
Forward     points [n, S, D]                                                outputs [n, C]
Gradient    points [n, S, D], seed weights [n, C]                           grad [n, S, D]
PathJvp     anchor + alpha_k delta (k < n), weights [n, C]                   jvp [n, S]
==========  ==============================================================  ==============

Gradient: d(sum_c weights[k, c] output[k, c]) / d points[k]. PathJvp: at the path point
anchor + alpha_k delta, the derivative of the same seeded sum along row i of delta, per token
i (so only [n, S] numbers leave the device; integrated gradients and grad x input need no
more). Points may be lazy (:class:`LazyPoints`): finite differences ask for many thousand
perturbed rows and the engine builds them a run at a time, so memory stays bounded.

:func:`drive` runs one piece of work with a plain function answering each request (tests use
it with numpy functions); :mod:`blackbox_sal.engine` runs many against a model.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar, cast

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class Seq:
    """The integer side of a model input, shared by every row of a request: ids and type ids
    int64 [S], and the attention mask [S] (None: every token attended; 0 marks the padding of
    a fixed-length model). The engine makes the positions and other feeds from it."""

    ids: np.ndarray
    type_ids: np.ndarray
    mask: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])


class Points(Protocol):
    """Rows of embeddings, [n, S, D] float32, possibly built on demand."""

    @property
    def n(self) -> int: ...

    def take(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop as a float32 array [stop - start, S, D]."""
        ...

    def gather(self, index: np.ndarray) -> np.ndarray:
        """The rows ``index`` (int [k]) as a float32 array [k, S, D]."""
        ...


@dataclass(frozen=True)
class ArrayPoints:
    """Points held in an array [n, S, D]."""

    array: np.ndarray

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    def take(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.array[start:stop], dtype=np.float32)

    def gather(self, index: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(self.array[index], dtype=np.float32)


@dataclass(frozen=True)
class LazyPoints:
    """``n`` rows that ``make(start, stop)`` builds on demand (perturbed copies)."""

    n: int
    make: Callable[[int, int], np.ndarray] = field(repr=False)

    def take(self, start: int, stop: int) -> np.ndarray:
        return np.ascontiguousarray(self.make(start, stop), dtype=np.float32)

    def gather(self, index: np.ndarray) -> np.ndarray:
        return np.concatenate([self.take(int(i), int(i) + 1) for i in index])


@dataclass(frozen=True)
class PathPoints:
    """The points anchor + alpha_k delta (anchor, delta [S, D]; alphas [n]), built on demand."""

    anchor: np.ndarray
    delta: np.ndarray
    alphas: np.ndarray

    @property
    def n(self) -> int:
        return int(self.alphas.shape[0])

    def take(self, start: int, stop: int) -> np.ndarray:
        return self.gather(np.arange(start, stop))

    def gather(self, index: np.ndarray) -> np.ndarray:
        a = self.alphas[index].astype(np.float32)[:, None, None]
        return (self.anchor[None] + a * self.delta[None]).astype(np.float32)


@dataclass(frozen=True)
class Forward:
    """Raw model outputs at ``points``: float64 [n, C]."""

    seq: Seq | None
    points: Points
    label: str = "forward passes"
    #: a fingerprint of the rows (None: none): Forward requests over the same seq with the same
    #: key ask for the same rows, and :func:`together` sends them once (the finite differences
    #: of k targets of one text perturb the same points: one set of runs serves all k)
    key: bytes | None = None

    @property
    def n(self) -> int:
        return self.points.n


@dataclass(frozen=True)
class Gradient:
    """d(weights . output)/d points at each point: [n, S, D] (float32 from a graph)."""

    seq: Seq | None
    points: Points
    weights: np.ndarray  # [n, C]
    label: str = "gradient runs"
    rules: str = "gradient"  # or an LRP rule set: the modified gradient

    @property
    def n(self) -> int:
        return self.points.n


@dataclass(frozen=True)
class PathJvp:
    """Per-token derivatives along delta's rows at anchor + alpha_k delta: float64 [n, S]."""

    seq: Seq | None
    anchor: np.ndarray  # [S, D]
    delta: np.ndarray  # [S, D]
    alphas: np.ndarray  # [n]
    weights: np.ndarray  # [n, C]
    label: str = "gradient runs"
    rules: str = "gradient"  # or an LRP rule set: the modified gradient

    @property
    def n(self) -> int:
        return int(self.alphas.shape[0])

    @property
    def points(self) -> PathPoints:
        return PathPoints(self.anchor, self.delta, self.alphas)


Request = Forward | Gradient | PathJvp


@dataclass(frozen=True)
class RowRange:
    """Rows start..stop of other points."""

    points: Points
    start: int
    stop: int

    @property
    def n(self) -> int:
        return self.stop - self.start

    def take(self, start: int, stop: int) -> np.ndarray:
        return self.points.take(self.start + start, self.start + stop)

    def gather(self, index: np.ndarray) -> np.ndarray:
        return self.points.gather(np.asarray(index) + self.start)


def split(request: Request, rows: int) -> list[Request]:
    """``request`` as consecutive requests of at most ``rows`` rows each; their results,
    concatenated along the first axis, are the request's."""
    if request.n <= rows:
        return [request]
    pieces: list[Request] = []
    for start in range(0, request.n, rows):
        stop = min(request.n, start + rows)
        if isinstance(request, Forward):
            pieces.append(replace(request, points=RowRange(request.points, start, stop)))
        elif isinstance(request, Gradient):
            pieces.append(replace(request, points=RowRange(request.points, start, stop),
                                  weights=request.weights[start:stop]))
        else:
            pieces.append(replace(request, alphas=request.alphas[start:stop], weights=request.weights[start:stop]))
    return pieces


def as_points(points: np.ndarray | Points) -> Points:
    """Arrays [n, S, D] as :class:`ArrayPoints`; Points as they are."""
    return ArrayPoints(points) if isinstance(points, np.ndarray) else points


@dataclass(frozen=True)
class All:
    """Several requests at once (the engine may pack them together): a list of results."""

    requests: tuple[Request, ...]


#: a piece of attribution work: yields requests, receives their results, returns a T
Work = Generator[Request | All, Any, T]


def ask(request: Request) -> Work[np.ndarray]:
    """``result = yield from ask(request)``: one request, its result typed as an array."""
    result = yield request
    return cast(np.ndarray, result)


def ask_all(requests: Sequence[Request]) -> Work[list[np.ndarray]]:
    """Several requests answered together, in order."""
    if not requests:
        return []
    results = yield All(tuple(requests))
    return cast(list[np.ndarray], results)


def _requests(asked: Request | All) -> tuple[Request, ...]:
    return asked.requests if isinstance(asked, All) else (asked,)


def _shared(request: Request) -> tuple[bytes, ...] | None:
    """What makes a Forward request's rows the same as another's: its key and its seq."""
    if not isinstance(request, Forward) or request.key is None or request.seq is None:
        return None
    seq = request.seq
    return (request.key, seq.ids.tobytes(), seq.type_ids.tobytes(), b"" if seq.mask is None else seq.mask.tobytes())


def together(works: Sequence[Work[T]]) -> Work[list[T]]:
    """Several pieces of work side by side: at each step the requests of every one not yet
    done go out as one :class:`All`, so the engine packs their rows into shared runs (k
    targets of one text: their forward rows in one run, their seeded gradient rows in
    another). Forward requests with the same key over the same seq are sent once and their
    result handed to each. Their results, in order; the first error ends them all."""
    results: dict[int, T] = {}
    pending: dict[int, Request | All] = {}
    for i, work in enumerate(works):
        try:
            pending[i] = next(work)
        except StopIteration as stop:
            results[i] = cast(T, stop.value)
    while pending:
        order = list(pending)
        asked = [_requests(pending[i]) for i in order]
        flat = [r for group in asked for r in group]
        unique: list[Request] = []
        where: list[int] = []
        seen: dict[tuple[bytes, ...], int] = {}
        for r in flat:
            shared = _shared(r)
            if shared is not None and shared in seen:
                where.append(seen[shared])
                continue
            if shared is not None:
                seen[shared] = len(unique)
            where.append(len(unique))
            unique.append(r)
        sent = yield All(tuple(unique))
        answers = [sent[k] for k in where]
        at = 0
        for i, group in zip(order, asked, strict=True):
            got = list(answers[at:at + len(group)])
            at += len(group)
            try:
                pending[i] = works[i].send(got if isinstance(pending[i], All) else got[0])
            except StopIteration as stop:
                results[i] = cast(T, stop.value)
                del pending[i]
    return [results[i] for i in range(len(works))]


def drive(work: Work[T], answer: Callable[[Request], np.ndarray]) -> T:
    """Run ``work`` to the end, answering each request with ``answer`` (one at a time)."""
    try:
        asked = next(work)
        while True:
            if isinstance(asked, All):
                asked = work.send([answer(r) for r in asked.requests])
            else:
                asked = work.send(answer(asked))
    except StopIteration as stop:
        return cast(T, stop.value)


@dataclass
class Cost:
    """Rows a piece of work sent to the model: plain forward passes, and gradient-graph runs
    (one forward+backward each)."""

    forward: int = 0
    gradient: int = 0
