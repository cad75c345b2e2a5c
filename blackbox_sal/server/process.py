"""The server process: uvicorn on the app, and SIGTERM that drains.

On the first SIGTERM (or Ctrl-C) readiness turns off and new work is refused with 503, while
the requests in flight are answered (up to the deadline); then uvicorn stops and the engines
end. A second signal stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import uvicorn

from blackbox_sal.server.app import Server

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


def run(server: Server, host: str = "127.0.0.1", port: int = 8080, access_log: bool = False) -> None:
    """Serve until SIGTERM or Ctrl-C (see the module docstring)."""
    config = uvicorn.Config(server.app, host=host, port=port, limit_concurrency=server.limits.max_connections + 64,
                            access_log=access_log, log_level="info", timeout_graceful_shutdown=5,
                            server_header=False)
    try:
        _Uvicorn(config, server).run()
    finally:
        server.stop(drain=True)
