"""An encoder/decoder pair as a service: the server's admission rules for its instances.

A pair's explanation drives four sessions (encoder, its backward half, decoder, the decoder
with past) in its own order, so it does not go through the engine's runner; its instances are
admitted the way the engine admits works (:class:`~blackbox_sal.engine.service.EngineService`):
at most ``max_active`` run at once (one thread each), at most ``queue_size`` wait beyond them,
and the next ones are refused with :class:`~blackbox_sal.engine.service.Busy` (HTTP 429), all of
a request or none. Each instance runs under its request's deadline: one that starts after it
ends with :class:`~blackbox_sal.engine.service.DeadlineExceeded`, and every onnxruntime run
inside it is stopped when the deadline passes (:func:`~blackbox_sal.model.session.time_limit`;
DeadlineExceeded too, HTTP 504), so no thread goes on past it. :meth:`PairService.health` reports a
thread stuck in one instance past ``stall_after`` seconds; :meth:`PairService.stop` refuses new
work (:class:`~blackbox_sal.engine.service.Stopped`) and, with ``drain``, finishes the rest.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from blackbox_sal.engine.service import Busy, DeadlineExceeded, Stopped
from blackbox_sal.model.session import time_limit
from blackbox_sal.vocabulary.errors import DeadlineError


class PairService:
    """Bounded, deadline-keeping execution of a pair's instances (see the module)."""

    def __init__(self, max_active: int = 4, queue_size: int = 256, stall_after: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_active, self.queue_size, self.stall_after, self.clock = max_active, queue_size, stall_after, clock
        self.pool = ThreadPoolExecutor(max_workers=max_active, thread_name_prefix="blackbox-sal-pair")
        self.lock = threading.Lock()
        self.pending = 0  # instances admitted and not finished (running or waiting)
        self.started: dict[int, float] = {}  # thread id -> when its instance began
        self.accepting = True

    def submit_all(self, calls: list[Callable[[], Any]], deadline: float) -> list[Future[Any]]:
        """Queue every call or none (Busy when they do not all fit, Stopped when stopping);
        ``deadline`` on :attr:`clock`'s scale."""
        with self.lock:
            if not self.accepting:
                raise Stopped("the server is stopping")
            if self.pending + len(calls) > self.max_active + self.queue_size:
                raise Busy("the queue is full")
            self.pending += len(calls)
        return [self.pool.submit(self._one, call, deadline) for call in calls]

    def _one(self, call: Callable[[], Any], deadline: float) -> Any:
        me = threading.get_ident()
        try:
            left = deadline - self.clock()
            if left <= 0:
                raise DeadlineExceeded("the deadline passed before the instance started")
            with self.lock:
                self.started[me] = self.clock()
            with time_limit(left):
                return call()
        except DeadlineError as exc:  # a run stopped at the deadline: the request's deadline, as the engine says
            raise DeadlineExceeded("the deadline passed during the instance") from exc
        finally:
            with self.lock:
                self.pending -= 1
                self.started.pop(me, None)

    @property
    def load(self) -> int:
        """Instances admitted and not finished."""
        return self.pending

    def health(self) -> str | None:
        """None while the instances move; else why not (stopped, or a thread in one instance
        for over ``stall_after`` seconds)."""
        if not self.accepting:
            return "it is stopped"
        with self.lock:
            oldest = min(self.started.values(), default=None)
        if oldest is not None and self.clock() - oldest > self.stall_after:
            return f"its worker has been in one instance for {self.clock() - oldest:.0f} s"
        return None

    def stop(self, drain: bool = True) -> None:
        """Take no new work; with ``drain`` finish what was admitted, else drop what waits."""
        with self.lock:
            self.accepting = False
        self.pool.shutdown(wait=drain, cancel_futures=not drain)
