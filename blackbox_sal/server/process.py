"""The server process: uvicorn on the app, and SIGTERM that drains.

On the first SIGTERM (or Ctrl-C) readiness turns off and new work is refused with 503, while
the requests in flight are answered (up to the deadline); then uvicorn stops and the engines
end at once (every request has had its answer by then: a worker that ended or is stuck is not
waited for). A second signal stops at once.

Connections are uvicorn's h11 protocol with one addition: a connection that has not sent a
whole request's headers ``read_timeout`` seconds after it opened (or after its last answer) is
closed, so connections that send nothing cannot fill uvicorn's connection limit. With
``access_log`` each request is one JSON line on stderr (see ``app.ACCESS_LOG``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from blackbox_sal.server.app import ACCESS_LOG, Server

log = logging.getLogger("blackbox_sal")


class _Uvicorn(uvicorn.Server):
    """uvicorn, with the first exit signal draining the blackbox-sal server first."""

    def __init__(self, config: uvicorn.Config, server: Server) -> None:
        super().__init__(config)
        self.sal = server
        self.draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.draining:  # a second signal: stop now
            self.sal.stop(drain=False)
            super().handle_exit(sig, frame)
            self.force_exit = True
            return
        self.draining = True
        self.sal.drain_started()
        log.info("%s: readiness off; finishing %d requests in flight", signal.Signals(sig).name, self.sal.in_flight)
        threading.Thread(target=self._drain_then_exit, daemon=True).start()

    def _drain_then_exit(self) -> None:
        end = time.monotonic() + self.sal.limits.deadline + 1
        while self.sal.in_flight and time.monotonic() < end:
            time.sleep(0.02)
        self.should_exit = True  # a drained stop exits 0 (uvicorn would re-raise the signal it captured)


def headers_within(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection that has not begun a request ``seconds``
    after it opened or after its last response (uvicorn itself has no such limit: a connection
    that sends part of a request line and stops is held for ever)."""

    class _HeadersWithin(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._timer is not None:
                self._timer.cancel()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            cycle = self.cycle
            self._timer = self.loop.call_later(seconds, self._expire, cycle)

        def _expire(self, cycle: Any) -> None:
            if self.cycle is cycle and not self.transport.is_closing():  # no request began since
                self.transport.close()

    return _HeadersWithin


def uvicorn_config(server: Server, host: str = "127.0.0.1", port: int = 8080) -> uvicorn.Config:
    """uvicorn's settings for ``server``: its connection limit a little above the server's own
    (which answers in JSON), our header timeout, no access log of uvicorn's (ours is JSON)."""
    return uvicorn.Config(server.app, host=host, port=port, limit_concurrency=server.limits.max_connections + 64,
                          access_log=False, log_level="info", timeout_graceful_shutdown=5,
                          server_header=False, http=headers_within(server.limits.read_timeout))


def run(server: Server, host: str = "127.0.0.1", port: int = 8080, access_log: bool = False) -> None:
    """Serve until SIGTERM or Ctrl-C (see the module docstring)."""
    if access_log and not ACCESS_LOG.handlers:
        handler = logging.StreamHandler(sys.stderr)  # the bare JSON line, no prefix
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)
        ACCESS_LOG.propagate = False
    elif not access_log:  # off, though its parent logger shows INFO (the CLI's messages)
        ACCESS_LOG.setLevel(logging.WARNING)
    try:
        _Uvicorn(uvicorn_config(server, host, port), server).run()
    finally:
        server.stop(drain=False)
