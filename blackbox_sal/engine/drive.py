"""Driving attribution work to the end: one piece (:func:`drive_one`), or many at once with
their requests packed together (:func:`drive_many`).

Each piece of work is a generator (:mod:`blackbox_sal.runs`). In a round, every active piece
is stepped to its next request; the runner executes all of them together (rows of the same
kind and length share onnxruntime runs), and each piece receives its results. A piece that
fails (a SalError: an unknown label, a text the model cannot take) ends with its error; the
others go on. At most ``window`` pieces are active at once, so memory is bounded whatever
the number of texts; results come out in input order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from blackbox_sal.engine.runner import Runner
from blackbox_sal.errors import SalError
from blackbox_sal.runs import All, Request, Work

T = TypeVar("T")


def drive_one(work: Work[T], runner: Runner) -> T:
    """Run one piece of work to the end; its SalError propagates."""
    result = next(iter(drive_many([work], runner, window=1)))
    if isinstance(result, SalError):
        raise result
    return result


@dataclass
class _Active(Generic[T]):
    index: int
    work: Work[T]
    asked: Request | All | None = None
    send: Any = field(default=None)


def drive_many(works: Iterable[Work[T]], runner: Runner, window: int = 64) -> Iterator[T | SalError]:
    """Results (or the SalError each piece ended with) in input order."""
    source = enumerate(works)
    active: list[_Active[T]] = []
    done: dict[int, T | SalError] = {}
    next_out = 0
    exhausted = False
    while True:
        while not exhausted and len(active) < window:
            item = next(source, None)
            if item is None:
                exhausted = True
                break
            entry = _Active(item[0], item[1])
            if _step(entry, done):
                active.append(entry)
        while next_out in done:
            yield done.pop(next_out)
            next_out += 1
        if not active:
            if exhausted:
                return
            continue
        _round(active, runner, done)
        active = [a for a in active if a.index not in done]


def _step(entry: _Active[T], done: dict[int, T | SalError]) -> bool:
    """Advance ``entry`` to its next request; False (its result or error recorded) when it ended."""
    try:
        entry.asked = entry.work.send(entry.send) if entry.asked is not None else next(entry.work)
        return True
    except StopIteration as stop:
        done[entry.index] = stop.value
    except SalError as exc:
        done[entry.index] = exc
    return False


def _round(active: list[_Active[T]], runner: Runner, done: dict[int, T | SalError]) -> None:
    """Execute every active piece's request together and step each piece once."""
    flat: list[Request] = []
    spans: list[tuple[int, int]] = []
    for entry in active:
        asked = entry.asked
        requests = list(asked.requests) if isinstance(asked, All) else [asked]
        spans.append((len(flat), len(requests)))
        flat.extend(r for r in requests if r is not None)
    try:
        results = runner.execute(flat)
    except SalError:  # one piece's rows broke a shared run: run each piece alone to find which
        for entry in active:
            _alone(entry, runner, done)
        return
    for entry, (start, count) in zip(active, spans, strict=True):
        entry.send = results[start:start + count] if isinstance(entry.asked, All) else results[start]
        _step(entry, done)


def _alone(entry: _Active[T], runner: Runner, done: dict[int, T | SalError]) -> None:
    asked = entry.asked
    requests = list(asked.requests) if isinstance(asked, All) else [asked]
    try:
        results = runner.execute([r for r in requests if r is not None])
    except SalError as exc:
        entry.work.close()
        done[entry.index] = exc
        return
    entry.send = results if isinstance(asked, All) else results[0]
    _step(entry, done)
