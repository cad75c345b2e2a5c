"""The average gradient of a feature model over a dataset, and the per-row machinery the
global analyses share (see :mod:`blackbox_sal.evaluation.global_analysis` for the maths).

A feature model (bag of words, a scikit-learn pipeline, numbers) has its features as tokens,
each a one-dimensional embedding, so a point is [F, 1]; each row becomes a
:class:`FeaturePoint` (the sparse vector, the model's outputs, d f / d x), the rows' works
packed into shared runs by the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from blackbox_sal.api.explaining import runner
from blackbox_sal.engine.drive import drive_many
from blackbox_sal.evaluation.common import as_rows, gradients_at, graph_unavailable
from blackbox_sal.jobs.datasets import BadRow, Row
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import InputError, ModelError, SalError, UsageError
from blackbox_sal.vocabulary.runs import ArrayPoints, Forward, Seq, Work, ask
from blackbox_sal.vocabulary.scores import ClassScore, Margin, Objective, resolve_target

T = TypeVar("T")


@dataclass(frozen=True)
class AverageGradient:
    """g [F] (float64): the mean over ``n`` rows of d f / d features, f described by
    ``objective``; ``names`` the features' names. ``skipped``: (row key, reason) for rows that
    could not be used; ``backend``: graph or fd."""

    model: str
    objective: str
    names: tuple[str, ...]
    g: np.ndarray = field(repr=False)
    n: int
    backend: str
    skipped: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()


@dataclass
class FeaturePoint:
    """One row's feature vector (sparse: columns and values), outputs [C], gradient [F] of f
    (None when not asked for) and label index (None: none or unknown)."""

    columns: np.ndarray
    values: np.ndarray
    outputs: np.ndarray
    grad: np.ndarray | None
    label: str | None


@dataclass(frozen=True)
class Asked:
    objective: Objective
    description: str
    positive: int | None  # the class "positive" means (None: f > 0 itself)


def feature_seq(n: int) -> Seq:
    return Seq(np.zeros(n, np.int64), np.zeros(n, np.int64))


def require_features(model: TextModel, what: str) -> None:
    if model.features is None:
        raise UsageError(f"{what} needs a feature model (bag of words, a scikit-learn pipeline, numbers); "
                         f"{model.name} reads token embeddings: use word_importance")


def asked_of(model: TextModel, n_classes: int, cfg: ExplainConfig, objective: Objective | None) -> Asked:
    """The explained scalar: given, the target's score, a two-class margin, or the only output."""
    name = model.label
    if objective is not None:
        positive = (objective.positive if isinstance(objective, Margin) else
                    objective.target if isinstance(objective, ClassScore) else None)
        return Asked(objective, describe(objective, model), positive)
    if cfg.target is not None:
        t = resolve_target(cfg.target, model.labels, n_classes, 0)
        return Asked(ClassScore(t, cfg.score, n_classes), f"{cfg.score}[{name(t) or t}]", t)
    if n_classes == 2:
        return Asked(Margin(1, 0), f"logit[{name(1) or 1}] - logit[{name(0) or 0}]", 1)
    if n_classes == 1:
        return Asked(ClassScore(0, "logit", 1), "the output", None)
    raise UsageError(f"the model has {n_classes} classes: say which class's score to average (target=LABEL); "
                     f"for a pair, pass objective=Margin(positive, negative)")


def describe(objective: Objective, model: TextModel) -> str:
    if isinstance(objective, Margin):
        return (f"logit[{model.label(objective.positive) or objective.positive}] - "
                f"logit[{model.label(objective.negative) or objective.negative}]")
    if isinstance(objective, ClassScore):
        return f"{objective.score}[{model.label(objective.target) or objective.target}]"
    return objective.score


def failed(reason: str) -> Work[Any]:
    """Work that ends at once with InputError(reason): a row that could not be read."""
    raise InputError(reason)
    yield  # a generator


def feature_outputs(model: TextModel, row: Row) -> Work[tuple[np.ndarray, np.ndarray, Seq, np.ndarray]]:
    """A feature model's vector for ``row`` [F], its input (the vector as float32 [F, 1]), the
    sequence that stands for it, and the model's raw outputs [C]; ModelError when they are
    not finite."""
    featurizer = model.features
    assert featurizer is not None
    vector, _ = featurizer.featurize(row.text)
    x = vector[:, None].astype(np.float32)
    seq = feature_seq(featurizer.size)
    outputs = (yield from ask(Forward(seq, ArrayPoints(x[None]), "prediction")))[0]
    if not np.isfinite(outputs).all():
        raise ModelError("the model's output on this row is not finite")
    return vector, x, seq, outputs


def feature_point(model: TextModel, row: Row, cfg: ExplainConfig, objective: Objective | None,
                  unavailable: str | None, gradient: bool) -> Work[FeaturePoint]:
    """One row: its vector, the model's outputs, and (``gradient``) d f / d x."""
    vector, x, seq, outputs = yield from feature_outputs(model, row)
    grad = None
    if gradient:
        asked = asked_of(model, outputs.shape[0], cfg, objective)
        weights = asked.objective.seed(outputs[None])
        grad = (yield from gradients_at(model, seq, x, weights, cfg, unavailable))[0, :, 0].astype(np.float64)
    columns = np.flatnonzero(vector)
    return FeaturePoint(columns.astype(np.int64), vector[columns].astype(np.float64), outputs, grad, row.label)


def feature_points(model: TextModel, rows: Iterable[Row | BadRow | str], cfg: ExplainConfig,
                   objective: Objective | None, unavailable: str | None, gradient: bool, window: int,
                   skipped: list[tuple[str, str]]) -> Iterator[FeaturePoint]:
    """The rows' points in order (gradients packed into shared runs); rows that fail are
    recorded in ``skipped``; a UsageError (a setting, not a row) is raised."""
    return driven_rows(model, rows, cfg, window, skipped,
                       lambda row: feature_point(model, row, cfg, objective, unavailable, gradient))


def driven_rows(model: TextModel, rows: Iterable[Row | BadRow | str], cfg: ExplainConfig, window: int,
                skipped: list[tuple[str, str]], work_of: Callable[[Row], Work[T]]) -> Iterator[T]:
    """Each row's work (``work_of``) driven by the engine, runs shared, results in order: a row
    that fails is recorded in ``skipped`` (key, reason) and left out; a UsageError (a setting,
    not a row) is raised."""
    keys: list[str] = []

    def works() -> Iterator[Work[T]]:
        for row in as_rows(rows):
            keys.append(row.key)
            yield failed(row.error) if isinstance(row, BadRow) else work_of(row)

    for k, result in enumerate(drive_many(works(), runner(model, cfg), window)):
        if isinstance(result, UsageError):
            raise result
        if isinstance(result, SalError):
            skipped.append((keys[k], str(result)))
            continue
        yield result


def analysis_config(config: ExplainConfig | None) -> ExplainConfig:
    return (config or ExplainConfig()).validated()


def gradient_pass(model: TextModel, rows: Iterable[Row | BadRow | str], cfg: ExplainConfig,
                  objective: Objective | None, window: int) -> tuple[AverageGradient, list[FeaturePoint], Asked]:
    featurizer = model.features
    assert featurizer is not None
    unavailable = graph_unavailable(model, cfg.backend)
    skipped: list[tuple[str, str]] = []
    total = np.zeros(featurizer.size)
    kept: list[FeaturePoint] = []
    for point in feature_points(model, rows, cfg, objective, unavailable, True, window, skipped):
        assert point.grad is not None
        total += point.grad
        point.grad = None  # the sum is all that is kept: memory stays [F] plus the sparse vectors
        kept.append(point)
    if not kept:
        raise InputError("no row could be used" + (f" (the first: {skipped[0][1]})" if skipped else ""))
    asked = asked_of(model, kept[0].outputs.shape[0], cfg, objective)
    notes = () if unavailable is None else (f"gradients by finite differences: {unavailable}",)
    result = AverageGradient(model.name, asked.description, featurizer.names, total / len(kept), len(kept),
                             "graph" if unavailable is None else "fd", tuple(skipped), notes)
    return result, kept, asked


def average_gradient(model: TextModel, texts: Iterable[Row | BadRow | str], objective: Objective | None = None,
                     config: ExplainConfig | None = None, window: int = 64) -> AverageGradient:
    """The mean over ``texts`` (strings or dataset rows) of d f / d features for a feature
    model (see the module docstring for f). ``config``: target, score, backend, batch size."""
    require_features(model, "average_gradient")
    return gradient_pass(model, texts, analysis_config(config), objective, window)[0]
