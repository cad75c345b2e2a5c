"""Renderers: pure functions from a result (Explanation, Generation, Similarity, Choices) to
text, each dispatching on the result's type: terminal, JSON, HTML."""

from __future__ import annotations

from blackbox_sal.render import spans as _spans  # noqa: F401  (registers the answer-span views)
from blackbox_sal.render import token_matrix  # noqa: F401  (registers the per-token views)
from blackbox_sal.render.html import render_html
from blackbox_sal.render.json import render_json, to_dict
from blackbox_sal.render.terminal import render_terminal

#: the output formats the command line offers
FORMATS = ("terminal", "json", "html")

__all__ = ["FORMATS", "render_html", "render_json", "render_terminal", "to_dict"]
