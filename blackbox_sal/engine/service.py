"""The engine as a service: works arriving over time from many callers (the HTTP server's
requests) share onnxruntime runs.

One thread per model owns its runner. It admits queued works (waiting ``batch_window``
seconds after the first so that requests arriving together are packed), steps every active
work to its next request, executes all of them together, and hands each work its results;
new works join between rounds (continuous batching). Bounded everywhere: at most
``max_active`` works in flight, at most ``queue_size`` waiting (:class:`Busy` beyond), so
memory is bounded by the settings. A work past its deadline ends with :class:`DeadlineExceeded`:
a run in progress is stopped through onnxruntime's ``RunOptions.terminate`` when every work in
it is past its deadline, and the others are run again. ``stop(drain=True)`` finishes what
was admitted and queued before the thread ends.

The thread survives anything a work, a model or a tokenizer throws, ``BaseException``
included (the Rust tokenizer's ``PanicException`` is one): the work that threw ends alone with a
:class:`~blackbox_sal.vocabulary.errors.ModelError` naming it. In the worker there is no caller for a
``KeyboardInterrupt`` or ``SystemExit`` to reach (signals go to the main thread; ``threading``
swallows ``SystemExit``), so they end their work the same way. Should the thread end anyway,
:meth:`EngineService.health` says so at once and the next ``submit`` starts a new one (the dead
thread's works are failed first); a thread stuck in one step past ``stall_after`` seconds (a
run that ignores ``terminate``, a tokenizer that never returns) is reported too.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from blackbox_sal.engine.drive import Active
from blackbox_sal.engine.runner import Runner
from blackbox_sal.model.session import RUN_OPTIONS
from blackbox_sal.vocabulary.errors import ModelError, SalError
from blackbox_sal.vocabulary.runs import All, Forward, Request, Work, split


class Busy(Exception):
    """The queue is full: the caller should come back later (HTTP 429 with Retry-After)."""


class DeadlineExceeded(Exception):
    """A work did not finish before its deadline (HTTP 504)."""


class Stopped(Exception):
    """The service is stopping and takes no new work (HTTP 503)."""


@dataclass
class _Job:
    """A work in the service, and what is left to run of its current request(s): ``pending``
    pieces (slot, rows) and the results of those run, per slot."""

    work: Work[Any]
    future: Future[Any]
    deadline: float | None
    active: Active[Any] = field(init=False)
    pending: list[tuple[int, Request]] = field(default_factory=list)
    parts: list[list[np.ndarray]] = field(default_factory=list)

    def plan(self, piece: Callable[[Request], int]) -> None:
        """Cut the request(s) just asked into pieces of at most ``piece(request)`` rows."""
        asked = self.active.asked
        requests = list(asked.requests) if isinstance(asked, All) else [asked]
        self.pending = [(k, p) for k, r in enumerate(requests) if r is not None for p in split(r, piece(r))]
        self.parts = [[] for _ in requests]

    def answer(self) -> Any:
        """The current request's result(s), from its pieces."""
        joined = [np.concatenate(p) if len(p) > 1 else (p[0] if p else np.zeros(0)) for p in self.parts]
        return joined if isinstance(self.active.asked, All) else joined[0]


class EngineService:
    """See the module docstring. ``submit`` is thread-safe; results come back as futures."""

    def __init__(self, runner: Runner, max_active: int = 64, queue_size: int = 256,
                 batch_window: float = 0.005, clock: Callable[[], float] = time.monotonic,
                 stall_after: float = 60.0) -> None:
        self.runner, self.max_active, self.batch_window, self.clock = runner, max_active, batch_window, clock
        self.queue_size, self.stall_after = queue_size, stall_after
        self.waiting: queue.Queue[_Job] = queue.Queue()
        self.lock = threading.Lock()
        self.jobs: list[_Job] = []
        self.accepting = True
        self.running = True
        self.rounds = 0
        self.packed = 0  # works executed in rounds with others (for the load test's report)
        self.restarts = 0  # threads started again after one ended (health reports them)
        self.beat = clock()  # when the thread last began a step (a stuck one stops beating)
        self.options: ort.RunOptions | None = None  # the run in progress, to terminate on stop
        self.thread = self._thread()

    def _thread(self) -> threading.Thread:
        thread = threading.Thread(target=self._loop, name="blackbox-sal-engine", daemon=True)
        thread.start()
        return thread

    def health(self) -> str | None:
        """None while the worker thread takes work; else why it does not (gone, or stuck in
        one step for over ``stall_after`` seconds), without waiting on it."""
        if not self.thread.is_alive():
            return "its worker thread has ended" if self.running else "it is stopped"
        stuck = self.clock() - self.beat
        if self.jobs and stuck > self.stall_after:
            return f"its worker has been in one step for {stuck:.0f} s"
        return None

    def _revive(self) -> None:
        """Start a new worker thread when the last one ended while running (the caller holds
        the lock): the works it held are failed, since no thread will step them."""
        if not self.running or self.thread.is_alive():
            return
        self._orphans()
        self.restarts += 1
        self.beat = self.clock()
        self.thread = self._thread()

    def submit(self, work: Work[Any], deadline: float | None = None) -> Future[Any]:
        """Queue a piece of work; its future gets the result, or the SalError it ended with
        raised, or DeadlineExceeded. Busy when the queue is full, Stopped when stopping."""
        return self.submit_all([work], deadline)[0]

    def submit_all(self, works: list[Work[Any]], deadline: float | None = None) -> list[Future[Any]]:
        """Queue all of ``works`` or none of them (Busy when they do not all fit)."""
        with self.lock:
            if not self.accepting:
                _close(works)
                raise Stopped("the server is stopping")
            self._revive()
            if self.waiting.qsize() + len(works) > self.queue_size:
                _close(works)
                raise Busy("the queue is full")
            jobs = [_Job(work, Future(), deadline) for work in works]
            for job in jobs:  # never blocks: only this lock's holder adds, and there is room
                self.waiting.put_nowait(job)
        return [job.future for job in jobs]

    @property
    def load(self) -> int:
        """Works admitted and waiting."""
        return len(self.jobs) + self.waiting.qsize()

    def stop(self, drain: bool = True, timeout: float = 30.0) -> None:
        """Stop taking work; with ``drain`` finish what is admitted and queued (up to timeout)."""
        with self.lock:
            self.accepting = False
        if drain:  # a thread that ended or is stuck will never drain: no waiting on it
            end = self.clock() + timeout
            while self.load and self.clock() < end and self.health() is None:
                time.sleep(0.01)
        self.running = False
        options = self.options
        if options is not None:  # the run in progress ends now, not when it would have
            options.terminate = True
        self.thread.join(timeout=2)
        for job in self.jobs + list(self.waiting.queue):
            if not job.future.done():
                job.future.set_exception(Stopped("the server stopped"))

    def _admit(self) -> None:
        if not self.jobs:  # idle: wait for the first, then a short window for others to join it
            try:
                self._start(self.waiting.get(timeout=0.05))
            except queue.Empty:
                return
            if self.batch_window > 0:
                time.sleep(self.batch_window)
        while len(self.jobs) < self.max_active:
            try:
                self._start(self.waiting.get_nowait())
            except queue.Empty:
                break

    def _start(self, job: _Job) -> None:
        job.active = Active(len(self.jobs), job.work)
        if _advance(job) and self._plan(job):
            self.jobs.append(job)

    def _plan(self, job: _Job) -> bool:
        """Cut the job's new request into pieces; False (the job ended with the error) when
        the request is malformed."""
        try:
            job.plan(self._piece)
            return True
        except BaseException as exc:  # see _advance
            _end(job, exc)
            return False

    def _piece(self, request: Request) -> int:
        """The rows of a request one job runs per round: two runs' worth. A job asking for
        many rows (finite differences over a long text) takes many rounds, and the jobs beside
        it are answered between them instead of waiting for it (no head-of-line blocking)."""
        if request.seq is None:
            return max(request.n, 1)
        return 2 * self.runner.capacity(len(request.seq), forward=isinstance(request, Forward))

    def _loop(self) -> None:
        try:
            while self.running:
                self.beat = self.clock()
                try:
                    self._admit()
                    self._expire()
                    if self.jobs:
                        self._round()
                except BaseException as exc:  # nothing may end the thread: fail the works in flight
                    error = _as_error(exc)
                    for job in self.jobs:
                        if not job.future.done():
                            job.future.set_exception(error)
                    self.jobs = []
        finally:
            if self.running:  # ended all the same (the handler above raised): no one is left waiting on it
                self._orphans()

    def _orphans(self) -> None:
        """Fail every work admitted or queued: the thread that would step them has ended."""
        gone = ModelError("the engine's worker ended while this request waited; try again")
        jobs, self.jobs = self.jobs, []
        while True:
            try:
                jobs.append(self.waiting.get_nowait())
            except queue.Empty:
                break
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(gone)

    def _expire(self) -> None:
        now = self.clock()
        for job in [j for j in self.jobs if j.deadline is not None and now > j.deadline]:
            job.work.close()
            job.future.set_exception(DeadlineExceeded("the request's deadline passed"))
            self.jobs.remove(job)

    def _round(self) -> None:
        """Execute the next pieces of every active job's request together (stopped at the
        latest deadline among them); step each job whose request is complete."""
        self._step_complete()  # requests of no rows
        if not self.jobs:
            return
        flat: list[Request] = []
        owners: list[tuple[_Job, int]] = []
        for job in self.jobs:
            slot, piece = job.pending.pop(0)
            flat.append(piece)
            owners.append((job, slot))
        options = ort.RunOptions()
        deadlines = [j.deadline for j in self.jobs]
        timer = None
        if all(d is not None for d in deadlines):  # stop the run once every job in it is late
            wait = max(d for d in deadlines if d is not None) - self.clock()
            timer = threading.Timer(max(wait, 0.0), lambda: setattr(options, "terminate", True))
            timer.start()
        token = RUN_OPTIONS.set(options)
        self.options = options
        try:
            results = self.runner.execute(flat)
        except SalError as exc:
            if options.terminate:  # stopped at the deadline: _expire ends the late jobs
                for (job, slot), piece in zip(owners, flat, strict=True):
                    job.pending.insert(0, (slot, piece))
                return
            self._one_by_one(exc, owners, flat)
            return
        finally:
            RUN_OPTIONS.reset(token)
            self.options = None
            if timer is not None:
                timer.cancel()
        self.rounds += 1
        self.packed += len(self.jobs) if len(self.jobs) > 1 else 0
        for (job, slot), result in zip(owners, results, strict=True):
            job.parts[slot].append(result)
        self._step_complete()

    def _step_complete(self) -> None:
        """Step every job whose request has all its results, until each asks for rows or ends."""
        for job in list(self.jobs):
            while not job.pending:
                job.active.send = job.answer()
                if not _advance(job) or not self._plan(job):
                    self.jobs.remove(job)
                    break

    def _one_by_one(self, error: SalError, owners: list[tuple[_Job, int]], flat: list[Request]) -> None:
        """A shared run failed: run each job's piece alone to find the one it was."""
        for (job, slot), piece in zip(owners, flat, strict=True):
            try:
                (result,) = self.runner.execute([piece])
            except BaseException as exc:  # this job's piece alone failed: it ends alone
                _end(job, exc)
                self.jobs.remove(job)
                continue
            job.parts[slot].append(result)
        self._step_complete()


def _close(works: list[Work[Any]]) -> None:
    for work in works:
        work.close()


def _as_error(exc: BaseException) -> Exception:
    """What a work's caller gets for ``exc``: itself when it is an Exception; a ModelError
    naming it when it is a BaseException that is not (a ``PanicException`` from the Rust
    tokenizer, a ``SystemExit`` from model code), which re-raised in the caller's event loop
    would take the server down."""
    if isinstance(exc, Exception):
        return exc
    detail = (str(exc).strip().splitlines() or [""])[0][:200]
    return ModelError(f"the model or its tokenizer failed on this text ({type(exc).__name__}"
                      + (f": {detail})" if detail else ")"))


def _end(job: _Job, exc: BaseException) -> None:
    """End ``job`` with ``exc`` (as :func:`_as_error` makes it); closing its work may raise too."""
    try:
        job.work.close()
    except BaseException:  # a work that cannot be closed is ended all the same
        pass
    if not job.future.done():
        job.future.set_exception(_as_error(exc))


def _advance(job: _Job) -> bool:
    """Step ``job`` to its next request; False when it ended, its future then set. An error
    that is not a SalError (a bug, or an input the library does not catch) ends this job
    alone: raised out of the loop it would leave a job being admitted unanswered (its
    caller waiting for ever) and fail every other job in flight with it."""
    done: dict[int, Any] = {}
    try:
        if job.active.step(done):
            return True
        outcome = done.pop(job.active.index)
    except BaseException as exc:  # a PanicException too: it ends this job, not the thread
        outcome = exc
    if isinstance(outcome, BaseException):
        job.future.set_exception(_as_error(outcome))
    else:
        job.future.set_result(outcome)
    return False


__all__ = ["Busy", "DeadlineExceeded", "EngineService", "ModelError", "Stopped"]
