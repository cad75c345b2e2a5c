"""The progress bar: drawn on a terminal, erased when done, one on screen at a time."""

from __future__ import annotations

import io
import threading

from blackbox_sal.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_draws_with_rate_and_eta_and_erases_itself() -> None:
    screen = Terminal()
    with Progress(400, "ig:", stream=screen) as bar:
        bar.advance(400)
    text = screen.getvalue()
    assert "\rig: [" + "#" * 30 + "] 400/400 forward passes" in text and "s left" in text
    assert text.endswith("\r\033[K")
    quiet = Terminal()
    with Progress(10, "ig:", stream=quiet) as bar:  # too little work to wait for
        bar.advance(10)
    assert quiet.getvalue() == ""


def test_one_bar_on_screen_at_a_time() -> None:
    """A bar entered while another shows (nested, or from another thread) stays quiet; once
    the first is done, the next bar shows."""
    outer, inner, other, later = Terminal(), Terminal(), Terminal(), Terminal()
    with Progress(500, "batch", stream=outer) as a:
        with Progress(500, "runs", stream=inner) as b:
            b.advance(500)
        thread = threading.Thread(target=lambda: Progress(500, "lane", stream=other).__enter__().advance(500))
        thread.start()
        thread.join()
        a.advance(500)
    with Progress(500, "next", stream=later) as c:
        c.advance(500)
    assert "batch [" in outer.getvalue() and inner.getvalue() == "" and other.getvalue() == ""
    assert "next [" in later.getvalue()
