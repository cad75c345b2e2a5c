"""The paper's section 5.2 on a feature model (*Interpretation of Prediction Models Using the
Input Gradient*): the average gradient g, its top features each way, and the linear
surrogate "positive when x . g + b > 0" for each choice of b (see
:mod:`blackbox_sal.evaluation.global_analysis`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from blackbox_sal.evaluation.common import label_index
from blackbox_sal.evaluation.feature_gradients import (
    Asked,
    AverageGradient,
    FeaturePoint,
    analysis_config,
    feature_points,
    gradient_pass,
    require_features,
)
from blackbox_sal.evaluation.linear_surrogate import Surrogate, surrogates
from blackbox_sal.jobs.datasets import BadRow, Row
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import InputError
from blackbox_sal.vocabulary.scores import Margin, Objective


@dataclass(frozen=True)
class BagOfWords:
    """The paper's section 5.2 on a feature model: the average gradient, its top features and
    the linear surrogate. ``positive``: the class the surrogate predicts when x . g + b > 0."""

    gradient: AverageGradient
    top_positive: tuple[tuple[str, float], ...]
    top_negative: tuple[tuple[str, float], ...]
    surrogates: tuple[Surrogate, ...]
    positive: str
    positive_rate_model: float
    positive_rate_labels: float | None
    model_accuracy: float | None
    n_labelled: int
    n_fit: int | None  # rows b was fitted on when fit_rows were given (None: the analysed rows)

    @property
    def g(self) -> np.ndarray:
        return self.gradient.g

    def surrogate(self, rule: str) -> Surrogate:
        return next(s for s in self.surrogates if s.rule == rule)


def _scores(points: Sequence[FeaturePoint], g: np.ndarray) -> np.ndarray:
    return np.array([float(p.values @ g[p.columns]) for p in points])


def _positive(points: Sequence[FeaturePoint], asked: Asked) -> np.ndarray:
    """The model's positive predictions: f > 0 for a margin or a one-output model, arg-max ==
    the class for a class score."""
    outputs = np.stack([p.outputs for p in points])
    if asked.positive is None or isinstance(asked.objective, Margin):
        return asked.objective.scalar(outputs) > 0
    return outputs.argmax(axis=1) == asked.positive


def global_bow(model: TextModel, rows: Iterable[Row | BadRow | str], config: ExplainConfig | None = None,
               objective: Objective | None = None, fit_rows: Iterable[Row | BadRow | str] | None = None,
               top: int = 15, window: int = 64) -> BagOfWords:
    """The paper's section 5.2 on a feature model over ``rows`` (texts or dataset rows; labels,
    where given, add accuracies): g, the ``top`` features each way, and the linear surrogate
    for each choice of b (module docstring). ``fit_rows`` (e.g. a training split): where b is
    fitted, else on ``rows`` themselves (in-sample: optimistic)."""
    require_features(model, "global_bow")
    cfg = analysis_config(config)
    gradient, points, asked = gradient_pass(model, rows, cfg, objective, window)
    g = gradient.g
    s, positive = _scores(points, g), _positive(points, asked)
    n_classes = points[0].outputs.shape[0]
    label_ids = [label_index(model, p.label, n_classes) for p in points]
    labelled = [k for k, v in enumerate(label_ids) if v is not None]
    labels: np.ndarray | None = None
    if labelled:
        target = asked.positive if asked.positive is not None else 1
        labels = np.array([-1 if v is None else int(v == target) for v in label_ids])
    n_fit: int | None = None
    if fit_rows is not None:
        fit_skipped: list[tuple[str, str]] = []
        fit = list(feature_points(model, fit_rows, cfg, objective, None, False, window, fit_skipped))
        if not fit:
            raise InputError("no fit row could be used")
        s_fit, positive_fit, n_fit = _scores(fit, g), _positive(fit, asked), len(fit)
        fitted_on = f"the {n_fit:,} fit rows"
    else:
        s_fit, positive_fit, fitted_on = s, positive, "the analysed rows (in-sample: optimistic)"
    order = np.argsort(g, kind="stable")
    names = gradient.names
    accuracy = None
    if labels is not None:
        mask = labels >= 0
        accuracy = float(np.mean(positive[mask] == (labels[mask] == 1)))
    return BagOfWords(
        gradient=gradient,
        top_positive=tuple((names[j], float(g[j])) for j in order[::-1][:top]),
        top_negative=tuple((names[j], float(g[j])) for j in order[:top]),
        surrogates=surrogates(s, positive, labels, s_fit, positive_fit, fitted_on),
        positive=(model.label(asked.positive) or str(asked.positive)) if asked.positive is not None else "f > 0",
        positive_rate_model=float(positive.mean()),
        positive_rate_labels=None if labels is None else float(np.mean(labels[labels >= 0] == 1)),
        model_accuracy=accuracy, n_labelled=len(labelled), n_fit=n_fit)
