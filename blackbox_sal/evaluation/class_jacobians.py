"""The paper's section 5.3: per class, the mean over inputs of d logit_c / d x (one gradient
run per class and input, the C rows of an input in one request), and the per-class Pearson
correlation of two such [C, F] arrays, raw and centered over classes (see
:mod:`blackbox_sal.evaluation.global_analysis`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from blackbox_sal.evaluation.common import config_value, gradients_at, graph_unavailable, label_index, pearson
from blackbox_sal.evaluation.feature_gradients import analysis_config, driven_rows, feature_outputs, require_features
from blackbox_sal.jobs.datasets import BadRow, Row
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import InputError, UsageError
from blackbox_sal.vocabulary.runs import Work


@dataclass(frozen=True)
class ClassJacobians:
    """Per class c, the mean over inputs of d output_c / d features: ``jacobian`` [C, F]
    (float64). over: all (every input, the paper's average) or own (the inputs of class c:
    by their label where every row has one, else by the model's prediction: ``own_by``).
    counts: inputs averaged per class. image_shape: (H, W) from the model's config.json, for
    drawing."""

    model: str
    over: str
    jacobian: np.ndarray = field(repr=False)
    counts: tuple[int, ...]
    classes: tuple[str, ...]
    names: tuple[str, ...]
    n: int
    backend: str
    own_by: str | None = None
    image_shape: tuple[int, int] | None = None
    skipped: tuple[tuple[str, str], ...] = ()


def _jacobian_point(model: TextModel, row: Row, cfg: ExplainConfig, unavailable: str | None) -> Work[
        tuple[np.ndarray, np.ndarray, str | None]]:
    """One row's outputs [C] and Jacobian [C, F]: the C rows in one gradient request."""
    _, x, seq, outputs = yield from feature_outputs(model, row)
    jac = yield from gradients_at(model, seq, x, np.eye(outputs.shape[0]), cfg, unavailable)
    return outputs, jac[:, :, 0].astype(np.float64), row.label


def class_jacobians(model: TextModel, rows: Iterable[Row | BadRow | str], over: str = "all",
                    config: ExplainConfig | None = None, image_shape: tuple[int, int] | None = None,
                    window: int = 64) -> ClassJacobians:
    """The per-class average Jacobian of a feature model's raw outputs (the paper's 5.3) over
    ``rows``; ``over`` all or own (see :class:`ClassJacobians`)."""
    require_features(model, "class_jacobians")
    if over not in ("all", "own"):
        raise UsageError(f"over must be all or own, got {over!r}")
    cfg = analysis_config(config)
    featurizer = model.features
    assert featurizer is not None
    unavailable = graph_unavailable(model, cfg.backend)
    skipped: list[tuple[str, str]] = []
    total: np.ndarray | None = None
    by_label: np.ndarray | None = None
    by_prediction: np.ndarray | None = None
    n_label: np.ndarray | None = None
    n_prediction: np.ndarray | None = None
    n, all_labelled = 0, True
    for outputs, jac, label in driven_rows(model, rows, cfg, window, skipped,
                                          lambda row: _jacobian_point(model, row, cfg, unavailable)):
        if total is None or by_label is None or by_prediction is None or n_label is None or n_prediction is None:
            total, by_label, by_prediction = np.zeros_like(jac), np.zeros_like(jac), np.zeros_like(jac)
            n_label, n_prediction = np.zeros(jac.shape[0], np.int64), np.zeros(jac.shape[0], np.int64)
        total += jac
        n += 1
        predicted = int(np.argmax(outputs))
        by_prediction[predicted] += jac[predicted]
        n_prediction[predicted] += 1
        c = label_index(model, label, jac.shape[0])
        if c is None:
            all_labelled = False
        else:
            by_label[c] += jac[c]
            n_label[c] += 1
    if total is None or by_label is None or by_prediction is None or n_label is None or n_prediction is None:
        raise InputError("no row could be used" + (f" (the first: {skipped[0][1]})" if skipped else ""))
    n_classes = total.shape[0]
    if over == "all":
        jacobian, counts, own_by = total / n, np.full(n_classes, n), None
    else:
        sums, counts, own_by = ((by_label, n_label, "label") if all_labelled else
                                (by_prediction, n_prediction, "prediction"))
        jacobian = sums / np.maximum(counts, 1)[:, None]
    shape = image_shape or _image_shape(model)
    return ClassJacobians(
        model.name, over, jacobian, tuple(int(v) for v in counts),
        tuple(model.label(c) or str(c) for c in range(n_classes)), featurizer.names, n,
        "graph" if unavailable is None else "fd", own_by, shape, tuple(skipped))


def _image_shape(model: TextModel) -> tuple[int, int] | None:
    value = config_value(model, "image_shape")
    if (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
            and model.features is not None and value[0] * value[1] == model.features.size):
        return int(value[0]), int(value[1])
    return None


@dataclass(frozen=True)
class JacobianCorrelation:
    """Pearson's correlation of two [C, F] arrays class by class: ``raw`` as they are,
    ``centered`` after subtracting each array's mean over classes; and the means over classes."""

    raw: tuple[float, ...]
    raw_mean: float
    centered: tuple[float, ...]
    centered_mean: float


def as_array(value: ClassJacobians | np.ndarray) -> np.ndarray:
    return np.asarray(value.jacobian if isinstance(value, ClassJacobians) else value, np.float64)


def jacobian_correlation(a: ClassJacobians | np.ndarray, b: ClassJacobians | np.ndarray) -> JacobianCorrelation:
    """Per-class Pearson of a and b ([C, F] arrays, or class Jacobians), raw and centered."""
    x, y = as_array(a), as_array(b)
    if x.shape != y.shape or x.ndim != 2:
        raise UsageError(f"the two arrays must be [classes, features] of one shape, got {x.shape} and {y.shape}")
    raw = tuple(pearson(x[c], y[c]) for c in range(x.shape[0]))
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    centered = tuple(pearson(xc[c], yc[c]) for c in range(x.shape[0]))
    return JacobianCorrelation(raw, float(np.mean(raw)), centered, float(np.mean(centered)))
