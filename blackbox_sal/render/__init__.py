"""Renderers: pure functions Explanation -> str. ``RENDERERS`` maps a format to one."""

from __future__ import annotations

from collections.abc import Callable

from blackbox_sal.render.html import render_html
from blackbox_sal.render.json import render_json, to_dict
from blackbox_sal.render.terminal import render_terminal
from blackbox_sal.result import Explanation

RENDERERS: dict[str, Callable[[Explanation], str]] = {
    "terminal": lambda e: render_terminal(e, color=False),
    "json": render_json,
    "html": render_html,
}

__all__ = ["RENDERERS", "render_html", "render_json", "render_terminal", "to_dict"]
