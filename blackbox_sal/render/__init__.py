"""Renderers: pure functions Explanation -> str. ``RENDERERS`` maps a format to one.
A Generation (a continuation attributed step by step) renders as a terminal matrix or JSON,
a Similarity (two texts) as two terminal blocks or JSON, Choices as a list and the best
choice's explanation."""

from __future__ import annotations

from collections.abc import Callable

from blackbox_sal.render.html import render_html
from blackbox_sal.render.json import (
    render_choices_json,
    render_generation_json,
    render_json,
    render_similarity_json,
    to_dict,
)
from blackbox_sal.render.terminal import (
    render_choices_terminal,
    render_generation_terminal,
    render_similarity_terminal,
    render_terminal,
)
from blackbox_sal.result import Explanation

RENDERERS: dict[str, Callable[[Explanation], str]] = {
    "terminal": lambda e: render_terminal(e, color=False),
    "json": render_json,
    "html": render_html,
}

__all__ = [
    "RENDERERS", "render_choices_json", "render_choices_terminal", "render_generation_json",
    "render_generation_terminal", "render_html", "render_json", "render_similarity_json",
    "render_similarity_terminal", "render_terminal", "to_dict",
]
