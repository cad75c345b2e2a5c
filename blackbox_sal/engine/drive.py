"""Driving attribution work to the end: one piece (:func:`drive_one`), or many at once with
their requests packed together (:func:`drive_many`).

Each piece of work is a generator (:mod:`blackbox_sal.vocabulary.runs`). In a round, every active piece
is stepped to its next request; the runner executes all of them together (rows of the same
kind and length share onnxruntime runs), and each piece receives its results. A piece that
fails (a SalError: an unknown label, a text the model cannot take) ends with its error; the
others go on. At most ``window`` pieces are active at once, so memory is bounded whatever
the number of texts; results come out in input order.

With two lanes (the default on CUDA) the active pieces are split in two halves, each with
its own rounds, executed on its own worker thread: while one half's runs are on the device
(onnxruntime releases the GIL in ``run``), the other half's feeds are built and its pieces
stepped (reductions, explanations, the next texts' tokenization), so the host's work hides
behind the device's. At most two rounds are in flight, so memory is bounded by twice the
run size. Every piece sees the same requests and results as with one lane; only the runs'
grouping differs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from blackbox_sal.engine.runner import Runner
from blackbox_sal.vocabulary.errors import DeadlineError, SalError
from blackbox_sal.vocabulary.runs import All, Request, Work

T = TypeVar("T")


def drive_one(work: Work[T], runner: Runner) -> T:
    """Run one piece of work to the end; its SalError propagates."""
    result = next(iter(drive_many([work], runner, window=1)))
    if isinstance(result, SalError):
        raise result
    return result


@dataclass
class Active(Generic[T]):
    """A piece of work being driven: its place in the input (``index``), the request it asked
    last (None before its first step) and what it is sent at its next step."""

    index: int
    work: Work[T]
    asked: Request | All | None = None
    send: Any = field(default=None)

    def step(self, done: dict[int, T | SalError]) -> bool:
        """Advance to the next request; False (the result or SalError recorded in ``done``
        under ``index``) when the work ended."""
        try:
            self.asked = self.work.send(self.send) if self.asked is not None else next(self.work)
            return True
        except StopIteration as stop:
            done[self.index] = stop.value
        except DeadlineError:  # a run past its time limit ends the whole drive, not one work
            raise
        except SalError as exc:
            done[self.index] = exc
        return False


@dataclass
class _Lane(Generic[T]):
    """Some of the active pieces, and the round of theirs that is executing (if any)."""

    active: list[Active[T]] = field(default_factory=list)
    flight: Future[list[Any]] | None = None
    spans: list[tuple[int, int]] = field(default_factory=list)


def lanes_for(runner: Runner) -> int:
    """Two lanes where runs execute on a device (the host's work then overlaps them); one on
    the CPU, where onnxruntime's threads already take every core."""
    return 2 if runner.model.device == "cuda" else 1


def drive_many(works: Iterable[Work[T]], runner: Runner, window: int = 64,
               lanes: int | None = None) -> Iterator[T | SalError]:
    """Results (or the SalError each piece ended with) in input order. ``lanes``: 1 or 2
    (None: :func:`lanes_for` the runner); with 2, each lane holds up to half the window."""
    count = lanes_for(runner) if lanes is None else lanes
    if count not in (1, 2):
        raise ValueError(f"lanes must be 1 or 2, got {lanes!r}")
    count = min(count, max(window, 1))  # a window of one piece has one lane
    source = enumerate(works)
    per_lane = max(1, window // count)
    all_lanes: list[_Lane[T]] = [_Lane() for _ in range(count)]
    done: dict[int, T | SalError] = {}
    next_out = 0
    exhausted = False
    pool = ThreadPoolExecutor(count, thread_name_prefix="blackbox-sal-runs") if count > 1 else None
    try:
        while True:
            for lane in all_lanes:  # start new pieces where a lane has room (while the others run)
                while not exhausted and lane.flight is None and len(lane.active) < per_lane:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    entry = Active(item[0], item[1])
                    if entry.step(done):
                        lane.active.append(entry)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
            for lane in all_lanes:
                if lane.flight is None and lane.active:
                    _submit(lane, runner, pool)
            flying = [lane for lane in all_lanes if lane.flight is not None]
            if not flying:
                if exhausted:
                    return
                continue
            wait([lane.flight for lane in flying if lane.flight is not None], return_when=FIRST_COMPLETED)
            for lane in flying:
                if lane.flight is not None and lane.flight.done():
                    _land(lane, runner, done)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _submit(lane: _Lane[T], runner: Runner, pool: ThreadPoolExecutor | None) -> None:
    """Start executing every request the lane's pieces ask for (on the pool's thread, with
    this thread's context: a deadline's run options; without a pool, here and now)."""
    flat: list[Request] = []
    lane.spans = []
    for entry in lane.active:
        asked = entry.asked
        requests = list(asked.requests) if isinstance(asked, All) else [asked]
        lane.spans.append((len(flat), len(requests)))
        flat.extend(r for r in requests if r is not None)
    if pool is not None:
        lane.flight = pool.submit(contextvars.copy_context().run, runner.execute, flat)
        return
    lane.flight = Future()
    try:
        lane.flight.set_result(runner.execute(flat))
    except SalError as exc:
        lane.flight.set_exception(exc)


def _land(lane: _Lane[T], runner: Runner, done: dict[int, T | SalError]) -> None:
    """Hand each piece of the lane whose round ended its results and step it once."""
    assert lane.flight is not None
    try:
        results = lane.flight.result()
    except DeadlineError:  # not a bad row: running each piece alone would only wait as long again
        raise
    except SalError:  # one piece's rows broke a shared run: run each piece alone to find which
        results = None
    lane.flight = None
    if results is None:
        for entry in lane.active:
            _alone(entry, runner, done)
    else:
        for entry, (start, count) in zip(lane.active, lane.spans, strict=True):
            entry.send = results[start:start + count] if isinstance(entry.asked, All) else results[start]
            entry.step(done)
    lane.active = [a for a in lane.active if a.index not in done]


def _alone(entry: Active[T], runner: Runner, done: dict[int, T | SalError]) -> None:
    asked = entry.asked
    requests = list(asked.requests) if isinstance(asked, All) else [asked]
    try:
        results = runner.execute([r for r in requests if r is not None])
    except DeadlineError:
        raise
    except SalError as exc:
        entry.work.close()
        done[entry.index] = exc
        return
    entry.send = results if isinstance(asked, All) else results[0]
    entry.step(done)
