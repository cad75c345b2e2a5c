"""What the evaluation analyses share: rows in, a per-token model's targets as the items,
gradients of many output weightings at one point (the gradient graph, else finite
differences), labels, Pearson, plots.

Gradients are engine work (:mod:`blackbox_sal.vocabulary.runs`): :func:`gradients_at` yields one
:class:`~blackbox_sal.vocabulary.runs.Gradient` request of K rows (the same point, K seed weightings of
the outputs) when a verified gradient graph can be had, so a dataset's points share runs;
otherwise K finite-difference full gradients (2 x S x D forward passes each).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_sal.api.per_token import TextTarget, targets_of_texts
from blackbox_sal.gradients.backend import Setting, choose_backend, make_backend
from blackbox_sal.jobs.datasets import BadRow, Row
from blackbox_sal.model.files import read_side_json
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.differences import step_scale
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.runs import ArrayPoints, Cost, Gradient, Seq, Work, ask
from blackbox_sal.vocabulary.scores import Projection

#: what a missing matplotlib says
PLOT_HINT = 'plots need matplotlib: pip install "blackbox-sal[plot]"'


def as_rows(items: Iterable[Row | BadRow | str]) -> Iterator[Row | BadRow]:
    """Dataset rows (from :func:`blackbox_sal.jobs.datasets.read_rows`) or plain texts, as rows."""
    for k, item in enumerate(items):
        yield Row(k, item) if isinstance(item, str) else item


def per_token_items(model: TextModel, texts: list[str], cfg: ExplainConfig,
                    window: int = 64) -> tuple[list[TextTarget], list[str]]:
    """A per-token model's items for sanity and eval: its targets (each predicted entity of
    each text, or the position ``cfg.at`` names), found once on the model's prediction and
    explained (and evaluated) for those positions and labels throughout; and notes saying so
    (and naming the texts where none could be found, with the first reason)."""
    found, lost = targets_of_texts(model, texts, cfg, window)
    what = f"the position --at {cfg.at!r} names" if cfg.at is not None else "each predicted entity"
    notes = [f"per-token model: the items are its targets, {what} in each text ({len(found):,} in "
             f"{len(texts) - len(lost):,} texts), each for the same positions and labels throughout"]
    if lost:
        notes.append(f"{len(lost):,} text(s) left out, their targets not found (the first: {lost[0]})")
    return found, notes


def graph_unavailable(model: TextModel, backend: str) -> str | None:
    """Why gradients come from finite differences for ``backend`` (auto, graph, fd) on this
    model; None when a verified gradient graph is used (:func:`choose_backend` decides).
    UnavailableError for ``graph`` when none can be had."""
    return choose_backend(backend, model).reason


def gradients_at(model: TextModel, seq: Seq, x: np.ndarray, weights: np.ndarray, cfg: ExplainConfig,
                 unavailable: str | None, cost: Cost | None = None) -> Work[np.ndarray]:
    """d(weights[k] . outputs) / d x at the one point x [S, D], for each row of weights [K, C]:
    [K, S, D]. With a gradient graph (``unavailable`` None) one request of K rows; else K
    finite-difference gradients (the weights fixed at x: the chain rule of any score)."""
    cost = cost if cost is not None else Cost()
    k = weights.shape[0]
    if unavailable is None:
        points = np.broadcast_to(x, (k, *x.shape))
        grad = yield from ask(Gradient(seq, ArrayPoints(points), np.asarray(weights, np.float64)))
        cost.gradient += k
        return grad
    out = []
    for row in weights:
        backend, _ = make_backend("fd", model, Setting(
            Projection(np.asarray(row, np.float64)), seq, step_scale(x, model.row_norm), weights.shape[1], cost,
            fd_step=cfg.fd_step, richardson=cfg.richardson, fd_scheme=cfg.fd_scheme, quantized=model.quantized))
        out.append((yield from backend.gradient(x[None]))[0])
    return np.stack(out)


def label_index(model: TextModel, label: str | None, n_classes: int) -> int | None:
    """The class a dataset's label names: a label of the model, or an index; None when absent or
    unknown (then accuracy against labels is left out for that row)."""
    if label is None:
        return None
    text = label.strip()
    if model.labels is not None and text in model.labels:
        return model.labels.index(text)
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and 0 <= value < n_classes else None


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's correlation of two vectors (nan when either is constant)."""
    a = np.asarray(a, np.float64).ravel() - np.mean(a)
    b = np.asarray(b, np.float64).ravel() - np.mean(b)
    denom = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b / denom) if denom > 0 else float("nan")


def config_value(model: TextModel, key: str) -> Any:
    """A key of the model folder's config.json (read with the loader's checks), or None."""
    if model.folder is None:
        return None
    raw = read_side_json(model.folder, "config.json")
    return raw.get(key) if isinstance(raw, dict) else None


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend; UsageError with the install hint when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError(PLOT_HINT) from exc
    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a figure as PNG or SVG (by the file's suffix) and close it."""
    out = Path(path)
    if out.suffix.lower() not in (".png", ".svg"):
        raise UsageError(f"{str(out)!r}: a plot is written as .png or .svg")
    try:
        fig.savefig(out, dpi=100, bbox_inches="tight")
    except OSError as exc:
        raise UsageError(f"cannot write {str(out)!r}: {exc.strerror}") from exc
    finally:
        pyplot().close(fig)
    return out
