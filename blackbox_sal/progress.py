"""A small progress bar on stderr for long work (no dependency).

Shown only when stderr is a terminal and the work is large enough to wait for; it redraws at
most ten times a second and erases itself when done. One bar is on screen at a time: a bar
entered while another is showing (a batch job's runs inside its rows, the engine's two lanes
at once) stays quiet.
"""

from __future__ import annotations

import sys
import threading
import time
from types import TracebackType
from typing import TextIO

#: work below this many forward passes finishes too fast to need a bar
MIN_TOTAL = 200

_SHOWING: list[Progress] = []  # the bar on screen (at most one)
_LOCK = threading.Lock()


class Progress:
    """``with Progress(total, "label") as bar: bar.advance(n)``."""

    def __init__(self, total: int, label: str, enabled: bool | None = None,
                 stream: TextIO | None = None, unit: str = "forward passes", minimum: int = MIN_TOTAL) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            enabled = total >= minimum and getattr(self.stream, "isatty", lambda: False)()
        self.enabled = enabled
        self.total, self.label, self.done, self.unit = max(total, 1), label, 0, unit
        self.start = self.last = time.monotonic()

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or self.done >= self.total):
            self.last = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            self.stream.write(f"\r{self.label} [{bar:<30}] {self.done:,}/{self.total:,} "
                              f"{self.unit}, {rate:,.1f}/s, {eta:4.0f}s left ")
            self.stream.flush()

    def __enter__(self) -> Progress:
        if self.enabled:
            with _LOCK:
                if _SHOWING:
                    self.enabled = False
                else:
                    _SHOWING.append(self)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()
            with _LOCK:
                _SHOWING.remove(self)
