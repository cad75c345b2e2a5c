"""Global analysis: what a model relies on across a dataset (sections 5.2 and 5.3 of
*Interpretation of Prediction Models Using the Input Gradient*).

Feature models (bag of words, scikit-learn pipelines, numbers; their features are the tokens,
each a one-dimensional embedding, so a point is [F, 1]):

- :func:`average_gradient`: g = the mean over the rows of d f / d x, the full gradient of one
  scalar f with respect to the feature vector x. f is, by default, a two-class model's margin
  logit[1] - logit[0] (:class:`~blackbox_sal.scores.Margin`: its sign is the prediction);
  with ``target``, that class's score (``config.score``); a one-output model's output; or any
  :class:`~blackbox_sal.scores.Objective` given. As the paper does, the derivative is taken
  at the binary x for every coordinate, present or absent, as if x were continuous.
- :func:`global_bow`: g, its top positive and negative features (words), and the linear
  surrogate "positive when x . g + b > 0" compared with the model's predictions (f > 0 for a
  margin; arg-max == target for a class) for four choices of b:

  ==============  =============================================================================
  zero            b = 0: the paper's sign(x . g)
  fit_threshold   the threshold on s = x . g that agrees best with the model on the fit rows
                  (cuts at the midpoints between neighbouring scores; the lowest best one)
  fit_logistic    a 1-D logistic regression of the model's predictions on s over the fit rows
                  (L2 penalty 1e-6 on the slope, as scikit-learn's C = 1e6; b = intercept / slope)
  match_rate      the surrogate's positive rate on the analysed rows equals the model's
  ==============  =============================================================================

  The fit rows are ``fit_rows`` when given (a training split: honest), else the analysed
  rows themselves, which is in-sample and so *optimistic*; the result says which.
  ``match_rate`` is in-sample by definition (it reads the model's rate on the analysed rows).
  With labels, each surrogate's accuracy against them is given too.
- :func:`class_jacobians`: per class c, the mean over inputs of d logit_c / d x (one
  gradient run per class and input, the C rows of an input in one request), over all inputs
  (the paper's average) or over the inputs of class c only; :func:`jacobian_correlation`
  compares two such [C, F] arrays (Pearson per class, raw and centered over classes: softmax
  logits are defined up to a class-independent term).

Token (embedding) models: :func:`word_importance`, the mean attribution per word type
(lower-cased word text) of any method over a corpus, with count and spread, overall and per
predicted class.

Each result has a terminal table (``*_table``), a JSON-ready dict (``*_dict``) and a plot
(``*_plot``: PNG or SVG, needs matplotlib, the ``[plot]`` extra).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_sal.config import ExplainConfig
from blackbox_sal.datasets import BadRow, Row
from blackbox_sal.engine.drive import drive_many
from blackbox_sal.errors import InputError, ModelError, SalError, UsageError
from blackbox_sal.evaluation.common import (
    as_rows,
    config_value,
    gradients_at,
    graph_unavailable,
    label_index,
    pearson,
    pyplot,
    save_figure,
)
from blackbox_sal.explaining import explain_many, runner
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.runs import ArrayPoints, Forward, Seq, Work, ask
from blackbox_sal.scores import ClassScore, Margin, Objective, resolve_target

#: the surrogate's choices of b, in the order reported
RULES = ("zero", "fit_threshold", "fit_logistic", "match_rate")
#: fit_logistic's L2 penalty on the slope (scikit-learn's LogisticRegression(C=1e6))
LOGISTIC_PENALTY = 1e-6


# --------------------------------------------------------------------------- feature models


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


@dataclass(frozen=True)
class Surrogate:
    """The rule "positive when x . g + b > 0" for one choice of b (see :data:`RULES`):
    agreement with the model's predictions, accuracy against the labels (None without labels)
    and its positive rate, on the analysed rows; ``fitted_on`` says where b came from."""

    rule: str
    b: float
    agreement: float
    accuracy: float | None
    positive_rate: float
    fitted_on: str


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


@dataclass
class _Point:
    """One row's feature vector (sparse: columns and values), outputs [C], gradient [F] of f
    (None when not asked for) and label index (None: none or unknown)."""

    columns: np.ndarray
    values: np.ndarray
    outputs: np.ndarray
    grad: np.ndarray | None
    label: str | None


@dataclass(frozen=True)
class _Asked:
    objective: Objective
    description: str
    positive: int | None  # the class "positive" means (None: f > 0 itself)


def _feature_seq(n: int) -> Seq:
    return Seq(np.zeros(n, np.int64), np.zeros(n, np.int64))


def _require_features(model: TextModel, what: str) -> None:
    if model.features is None:
        raise UsageError(f"{what} needs a feature model (bag of words, a scikit-learn pipeline, numbers); "
                         f"{model.name} reads token embeddings: use word_importance")


def _asked(model: TextModel, n_classes: int, cfg: ExplainConfig, objective: Objective | None) -> _Asked:
    """The explained scalar: given, the target's score, a two-class margin, or the only output."""
    name = model.label
    if objective is not None:
        positive = (objective.positive if isinstance(objective, Margin) else
                    objective.target if isinstance(objective, ClassScore) else None)
        return _Asked(objective, _describe(objective, model), positive)
    if cfg.target is not None:
        t = resolve_target(cfg.target, model.labels, n_classes, 0)
        return _Asked(ClassScore(t, cfg.score, n_classes), f"{cfg.score}[{name(t) or t}]", t)
    if n_classes == 2:
        return _Asked(Margin(1, 0), f"logit[{name(1) or 1}] - logit[{name(0) or 0}]", 1)
    if n_classes == 1:
        return _Asked(ClassScore(0, "logit", 1), "the output", None)
    raise UsageError(f"the model has {n_classes} classes: say which class's score to average (target=LABEL); "
                     f"for a pair, pass objective=Margin(positive, negative)")


def _describe(objective: Objective, model: TextModel) -> str:
    if isinstance(objective, Margin):
        return (f"logit[{model.label(objective.positive) or objective.positive}] - "
                f"logit[{model.label(objective.negative) or objective.negative}]")
    if isinstance(objective, ClassScore):
        return f"{objective.score}[{model.label(objective.target) or objective.target}]"
    return objective.score


def _failed(reason: str) -> Work[Any]:
    """Work that ends at once with InputError(reason): a row that could not be read."""
    raise InputError(reason)
    yield  # a generator


def _feature_outputs(model: TextModel, row: Row) -> Work[tuple[np.ndarray, np.ndarray, Seq, np.ndarray]]:
    """A feature model's vector for ``row`` [F], its input (the vector as float32 [F, 1]), the
    sequence that stands for it, and the model's raw outputs [C]; ModelError when they are
    not finite."""
    featurizer = model.features
    assert featurizer is not None
    vector, _ = featurizer.featurize(row.text)
    x = vector[:, None].astype(np.float32)
    seq = _feature_seq(featurizer.size)
    outputs = (yield from ask(Forward(seq, ArrayPoints(x[None]), "prediction")))[0]
    if not np.isfinite(outputs).all():
        raise ModelError("the model's output on this row is not finite")
    return vector, x, seq, outputs


def _point(model: TextModel, row: Row, cfg: ExplainConfig, objective: Objective | None,
           unavailable: str | None, gradient: bool) -> Work[_Point]:
    """One row: its vector, the model's outputs, and (``gradient``) d f / d x."""
    vector, x, seq, outputs = yield from _feature_outputs(model, row)
    grad = None
    if gradient:
        asked = _asked(model, outputs.shape[0], cfg, objective)
        weights = asked.objective.seed(outputs[None])
        grad = (yield from gradients_at(model, seq, x, weights, cfg, unavailable))[0, :, 0].astype(np.float64)
    columns = np.flatnonzero(vector)
    return _Point(columns.astype(np.int64), vector[columns].astype(np.float64), outputs, grad, row.label)


def _points(model: TextModel, rows: Iterable[Row | BadRow | str], cfg: ExplainConfig, objective: Objective | None,
            unavailable: str | None, gradient: bool, window: int,
            skipped: list[tuple[str, str]]) -> Iterator[_Point]:
    """The rows' points in order (gradients packed into shared runs); rows that fail are
    recorded in ``skipped``; a UsageError (a setting, not a row) is raised."""
    keys: list[str] = []

    def works() -> Iterator[Work[_Point]]:
        for row in as_rows(rows):
            keys.append(row.key)
            yield (_failed(row.error) if isinstance(row, BadRow) else
                   _point(model, row, cfg, objective, unavailable, gradient))

    for k, result in enumerate(drive_many(works(), runner(model, cfg), window)):
        if isinstance(result, UsageError):
            raise result
        if isinstance(result, SalError):
            skipped.append((keys[k], str(result)))
            continue
        yield result


def _config(config: ExplainConfig | None) -> ExplainConfig:
    return (config or ExplainConfig()).validated()


def _gradient_pass(model: TextModel, rows: Iterable[Row | BadRow | str], cfg: ExplainConfig,
                   objective: Objective | None, window: int) -> tuple[AverageGradient, list[_Point], _Asked]:
    featurizer = model.features
    assert featurizer is not None
    unavailable = graph_unavailable(model, cfg.backend)
    skipped: list[tuple[str, str]] = []
    total = np.zeros(featurizer.size)
    kept: list[_Point] = []
    for point in _points(model, rows, cfg, objective, unavailable, True, window, skipped):
        assert point.grad is not None
        total += point.grad
        point.grad = None  # the sum is all that is kept: memory stays [F] plus the sparse vectors
        kept.append(point)
    if not kept:
        raise InputError("no row could be used" + (f" (the first: {skipped[0][1]})" if skipped else ""))
    asked = _asked(model, kept[0].outputs.shape[0], cfg, objective)
    notes = () if unavailable is None else (f"gradients by finite differences: {unavailable}",)
    result = AverageGradient(model.name, asked.description, featurizer.names, total / len(kept), len(kept),
                             "graph" if unavailable is None else "fd", tuple(skipped), notes)
    return result, kept, asked


def average_gradient(model: TextModel, texts: Iterable[Row | BadRow | str], objective: Objective | None = None,
                     config: ExplainConfig | None = None, window: int = 64) -> AverageGradient:
    """The mean over ``texts`` (strings or dataset rows) of d f / d features for a feature
    model (see the module docstring for f). ``config``: target, score, backend, batch size."""
    _require_features(model, "average_gradient")
    return _gradient_pass(model, texts, _config(config), objective, window)[0]


def _scores(points: Sequence[_Point], g: np.ndarray) -> np.ndarray:
    return np.array([float(p.values @ g[p.columns]) for p in points])


def _positive(points: Sequence[_Point], asked: _Asked) -> np.ndarray:
    """The model's positive predictions: f > 0 for a margin or a one-output model, arg-max ==
    the class for a class score."""
    outputs = np.stack([p.outputs for p in points])
    if asked.positive is None or isinstance(asked.objective, Margin):
        return asked.objective.scalar(outputs) > 0
    return outputs.argmax(axis=1) == asked.positive


def best_threshold(s: np.ndarray, positive: np.ndarray) -> float:
    """The threshold t on s whose rule [s > t] agrees best with ``positive``: candidates below
    all scores, between neighbouring distinct scores, and above all; the lowest best one."""
    order = np.unique(s)
    cuts = np.concatenate([[order[0] - 1.0], (order[1:] + order[:-1]) / 2, [order[-1] + 1.0]])
    ranked = np.searchsorted(order, s)  # s == order[ranked]; [s > cuts[j]] <=> ranked >= j
    pos = np.bincount(ranked[positive], minlength=len(order))
    neg = np.bincount(ranked[~positive], minlength=len(order))
    # agreement at cut j: positives with rank >= j plus negatives with rank < j
    pos_above = np.concatenate([np.cumsum(pos[::-1])[::-1], [0]])
    neg_below = np.concatenate([[0], np.cumsum(neg)])
    return float(cuts[int(np.argmax(pos_above + neg_below))])


def logistic_threshold(s: np.ndarray, positive: np.ndarray, penalty: float = LOGISTIC_PENALTY) -> float | None:
    """-intercept / slope of a 1-D logistic regression of ``positive`` on s (Newton's method;
    L2 ``penalty`` on the slope); None when the predictions are all one class."""
    if positive.all() or not positive.any():
        return None
    mu, sd = float(s.mean()), float(s.std()) or 1.0
    z = (s - mu) / sd  # standardized for the solver; the penalty is on the raw slope
    y = positive.astype(np.float64)
    a, c = 0.0, 0.0
    for _ in range(200):
        p = 1.0 / (1.0 + np.exp(-(a * z + c)))
        w = p * (1 - p)
        lam = penalty * sd**-2  # slope_raw = a / sd
        grad = np.array([z @ (p - y) + lam * a, (p - y).sum()])
        hess = np.array([[z @ (w * z) + lam, z @ w], [z @ w, w.sum()]]) + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, c = a - step[0], c - step[1]
        if np.abs(step).max() < 1e-12:
            break
    if a == 0:
        return None
    return mu - sd * c / a


def rate_threshold(s: np.ndarray, n_positive: int) -> float:
    """The threshold at which [s > t] has ``n_positive`` positives (midpoint of neighbours)."""
    ranked = np.sort(s)[::-1]
    if n_positive <= 0:
        return float(ranked[0] + 1.0)
    if n_positive >= len(s):
        return float(ranked[-1] - 1.0)
    return float((ranked[n_positive - 1] + ranked[n_positive]) / 2)


def surrogates(s: np.ndarray, positive: np.ndarray, labels: np.ndarray | None, s_fit: np.ndarray,
               positive_fit: np.ndarray, fitted_on: str) -> tuple[Surrogate, ...]:
    """The surrogate [s + b > 0] for each rule; labels: bool [N] (True: the positive class) or
    None; the fit rows' scores and the model's predictions on them."""
    logistic = logistic_threshold(s_fit, positive_fit)
    thresholds = {
        "zero": (0.0, "none (the paper's rule)"),
        "fit_threshold": (best_threshold(s_fit, positive_fit), f"best threshold on {fitted_on}"),
        "fit_logistic": (logistic if logistic is not None else 0.0,
                         f"1-D logistic regression on {fitted_on}" if logistic is not None else
                         "the model predicts one class only on the fit rows: b = 0"),
        "match_rate": (rate_threshold(s, int(positive.sum())), "the model's positive rate on the analysed rows"),
    }
    out = []
    for rule in RULES:
        t, how = thresholds[rule]
        hat = s > t
        out.append(Surrogate(rule, 0.0 - t, float(np.mean(hat == positive)),
                             None if labels is None else float(np.mean(hat[labels >= 0] == (labels[labels >= 0] == 1))),
                             float(hat.mean()), how))
    return tuple(out)


def global_bow(model: TextModel, rows: Iterable[Row | BadRow | str], config: ExplainConfig | None = None,
               objective: Objective | None = None, fit_rows: Iterable[Row | BadRow | str] | None = None,
               top: int = 15, window: int = 64) -> BagOfWords:
    """The paper's section 5.2 on a feature model over ``rows`` (texts or dataset rows; labels,
    where given, add accuracies): g, the ``top`` features each way, and the linear surrogate
    for each choice of b (module docstring). ``fit_rows`` (e.g. a training split): where b is
    fitted, else on ``rows`` themselves (in-sample: optimistic)."""
    _require_features(model, "global_bow")
    cfg = _config(config)
    gradient, points, asked = _gradient_pass(model, rows, cfg, objective, window)
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
        fit = list(_points(model, fit_rows, cfg, objective, None, False, window, fit_skipped))
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


# --------------------------------------------------------------------------- class Jacobians


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
    _, x, seq, outputs = yield from _feature_outputs(model, row)
    jac = yield from gradients_at(model, seq, x, np.eye(outputs.shape[0]), cfg, unavailable)
    return outputs, jac[:, :, 0].astype(np.float64), row.label


def class_jacobians(model: TextModel, rows: Iterable[Row | BadRow | str], over: str = "all",
                    config: ExplainConfig | None = None, image_shape: tuple[int, int] | None = None,
                    window: int = 64) -> ClassJacobians:
    """The per-class average Jacobian of a feature model's raw outputs (the paper's 5.3) over
    ``rows``; ``over`` all or own (see :class:`ClassJacobians`)."""
    _require_features(model, "class_jacobians")
    if over not in ("all", "own"):
        raise UsageError(f"over must be all or own, got {over!r}")
    cfg = _config(config)
    featurizer = model.features
    assert featurizer is not None
    unavailable = graph_unavailable(model, cfg.backend)
    keys: list[str] = []
    skipped: list[tuple[str, str]] = []

    def works() -> Iterator[Work[tuple[np.ndarray, np.ndarray, str | None]]]:
        for row in as_rows(rows):
            keys.append(row.key)
            yield _failed(row.error) if isinstance(row, BadRow) else _jacobian_point(model, row, cfg, unavailable)

    total: np.ndarray | None = None
    by_label: np.ndarray | None = None
    by_prediction: np.ndarray | None = None
    n_label: np.ndarray | None = None
    n_prediction: np.ndarray | None = None
    n, all_labelled = 0, True
    for k, result in enumerate(drive_many(works(), runner(model, cfg), window)):
        if isinstance(result, UsageError):
            raise result
        if isinstance(result, SalError):
            skipped.append((keys[k], str(result)))
            continue
        outputs, jac, label = result
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


def _array(value: ClassJacobians | np.ndarray) -> np.ndarray:
    return np.asarray(value.jacobian if isinstance(value, ClassJacobians) else value, np.float64)


def jacobian_correlation(a: ClassJacobians | np.ndarray, b: ClassJacobians | np.ndarray) -> JacobianCorrelation:
    """Per-class Pearson of a and b ([C, F] arrays, or class Jacobians), raw and centered."""
    x, y = _array(a), _array(b)
    if x.shape != y.shape or x.ndim != 2:
        raise UsageError(f"the two arrays must be [classes, features] of one shape, got {x.shape} and {y.shape}")
    raw = tuple(pearson(x[c], y[c]) for c in range(x.shape[0]))
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    centered = tuple(pearson(xc[c], yc[c]) for c in range(x.shape[0]))
    return JacobianCorrelation(raw, float(np.mean(raw)), centered, float(np.mean(centered)))


# --------------------------------------------------------------------------- word importance


@dataclass(frozen=True)
class WordStat:
    """A word type's attributions over a corpus: occurrences, mean and spread (population std)."""

    word: str
    count: int
    mean: float
    std: float


@dataclass(frozen=True)
class WordImportance:
    """Mean attribution per word type (lower-cased word text) over ``n`` explained texts.

    target: the explained class (a label), or "predicted" (each text its own prediction: read
    the per-class tables). words: types seen at least ``min_count`` times, by mean, highest
    first; by_class: the same per predicted class. notes: per kind of note of the
    explanations (the text before its first colon), the first one and how many texts had
    one. skipped: (row key, reason)."""

    model: str
    method: str
    target: str
    n: int
    min_count: int
    words: tuple[WordStat, ...]
    by_class: tuple[tuple[str, tuple[WordStat, ...]], ...]
    notes: tuple[tuple[str, int], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    top_n: int = 20
    #: word types seen fewer than ``min_count`` times: left out of every table and plot
    rare: int = 0

    def top(self, n: int | None = None, of: tuple[WordStat, ...] | None = None) -> tuple[WordStat, ...]:
        stats = self.words if of is None else of
        return stats[:n or self.top_n]

    def bottom(self, n: int | None = None, of: tuple[WordStat, ...] | None = None) -> tuple[WordStat, ...]:
        stats = self.words if of is None else of
        return tuple(reversed(stats[-(n or self.top_n):]))


class _Running:
    """Welford's running mean and spread (a constant gives a spread of exactly 0)."""

    __slots__ = ("count", "m2", "mean")

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def stat(self, word: str) -> WordStat:
        return WordStat(word, self.count, self.mean, float(np.sqrt(max(self.m2, 0.0) / self.count)))


def _ranked(table: dict[str, _Running], min_count: int) -> tuple[WordStat, ...]:
    stats = [r.stat(w) for w, r in table.items() if r.count >= min_count and np.isfinite(r.mean)]
    return tuple(sorted(stats, key=lambda s: (-s.mean, s.word)))


def word_importance(model: TextModel, rows: Iterable[Row | BadRow | str], config: ExplainConfig | None = None,
                    min_count: int = 3, top: int = 20, window: int = 64) -> WordImportance:
    """Corpus-level word importance: every text explained with ``config`` (any method; words
    merged, ``words=True``), and per word type the mean, count and spread of its scores,
    overall and per predicted class; types seen fewer than ``min_count`` times are left out.
    Special tokens are not words. A feature model's words are its pieces of text."""
    if min_count < 1 or top < 1:
        raise UsageError("min_count and top must be at least 1")
    cfg = replace(_config(config), words=True)
    keys: list[str] = []
    texts: list[str] = []
    skipped: list[tuple[str, str]] = []

    def kept_texts() -> Iterator[str]:
        for row in as_rows(rows):
            if isinstance(row, BadRow):
                skipped.append((row.key, row.error))
                continue
            keys.append(row.key)
            texts.append(row.text)
            yield row.text

    overall: dict[str, _Running] = {}
    per_class: dict[str, dict[str, _Running]] = {}
    notes: dict[str, tuple[str, int]] = {}
    n = 0
    for k, result in enumerate(explain_many(model, kept_texts(), cfg, window)):
        if isinstance(result, UsageError):
            raise result
        if isinstance(result, SalError):
            skipped.append((keys[k], str(result)))
            continue
        n += 1
        label = result.prediction.label or str(result.prediction.index)
        table = per_class.setdefault(label, {})
        for span in result.words or result.tokens:
            if span.special or not span.text.strip():
                continue
            word = span.text.lower()
            overall.setdefault(word, _Running()).add(span.score)
            table.setdefault(word, _Running()).add(span.score)
        for note in result.notes:  # notes of a kind differ in their numbers: counted by kind, the first kept
            kind = note.split(":")[0]
            first, count = notes.get(kind, (note, 0))
            notes[kind] = (first, count + 1)
    target = "predicted" if cfg.target is None else str(cfg.target)
    if model.labels is not None and target.isdigit() and int(target) < len(model.labels):
        target = model.labels[int(target)]
    return WordImportance(
        model.name, cfg.method, target, n, min_count, _ranked(overall, min_count),
        tuple((label, _ranked(t, min_count)) for label, t in sorted(per_class.items())),
        tuple(sorted(notes.values(), key=lambda kv: -kv[1])), tuple(skipped), top,
        sum(1 for r in overall.values() if r.count < min_count))


# --------------------------------------------------------------------------- renderers


def _f(value: float | None, spec: str = "+.4f") -> str:
    return "-" if value is None else format(value, spec)


def average_gradient_dict(result: AverageGradient) -> dict[str, Any]:
    return {"model": result.model, "objective": result.objective, "n": result.n, "backend": result.backend,
            "g": {name: float(v) for name, v in zip(result.names, result.g, strict=True)},
            "skipped": [{"row": k, "error": e} for k, e in result.skipped], "notes": list(result.notes)}


def global_bow_dict(result: BagOfWords) -> dict[str, Any]:
    """JSON-ready: everything but the full g (see :func:`average_gradient_dict` for that)."""
    gradient = result.gradient
    return {
        "model": gradient.model, "objective": gradient.objective, "n": gradient.n, "backend": gradient.backend,
        "positive": result.positive,
        "top_positive": [{"feature": w, "g": v} for w, v in result.top_positive],
        "top_negative": [{"feature": w, "g": v} for w, v in result.top_negative],
        "surrogate": {s.rule: {"b": s.b, "agreement_with_model": s.agreement, "accuracy_on_labels": s.accuracy,
                               "positive_rate": s.positive_rate, "fitted_on": s.fitted_on}
                      for s in result.surrogates},
        "positive_rate_model": result.positive_rate_model, "positive_rate_labels": result.positive_rate_labels,
        "model_accuracy": result.model_accuracy, "labelled": result.n_labelled, "fit_rows": result.n_fit,
        "skipped": [{"row": k, "error": e} for k, e in gradient.skipped], "notes": list(gradient.notes),
    }


def global_bow_table(result: BagOfWords) -> str:
    gradient = result.gradient
    lines = [f"global analysis of {gradient.model} over {gradient.n:,} rows (backend {gradient.backend})",
             f"g = mean over the rows of d({gradient.objective}) / d features", ""]
    width = max([len(w) for w, _ in result.top_positive + result.top_negative] + [12])
    lines.append(f"  {'top positive':<{width + 13}}top negative")
    for (wp, vp), (wn, vn) in zip(result.top_positive, result.top_negative, strict=False):
        lines.append(f"  {wp:<{width}} {vp:+9.4f}   {wn:<{width}} {vn:+9.4f}")
    lines += ["", f"linear surrogate: predict {result.positive} when x . g + b > 0",
              f"  {'b':<15} {'value':>9} {'agreement':>10} {'accuracy':>9} {'pos. rate':>10}  fitted on"]
    for s in result.surrogates:
        lines.append(f"  {s.rule:<15} {s.b:+9.4f} {s.agreement:10.4f} {_f(s.accuracy, '.4f'):>9} "
                     f"{s.positive_rate:10.4f}  {s.fitted_on}")
    model_line = f"the model: positive rate {result.positive_rate_model:.4f}"
    if result.model_accuracy is not None:
        model_line += (f"; accuracy against the labels {result.model_accuracy:.4f} ({result.n_labelled:,} labelled, "
                       f"positive rate {_f(result.positive_rate_labels, '.4f')})")
    lines += ["", model_line]
    lines += [f"note: {n}" for n in gradient.notes]
    if gradient.skipped:
        lines.append(f"note: {len(gradient.skipped)} row(s) skipped (the first, {gradient.skipped[0][0]}: "
                     f"{gradient.skipped[0][1]})")
    return "\n".join(lines) + "\n"


def _bars(ax: Any, pairs: Sequence[tuple[str, float]], title: str, errors: Sequence[float] | None = None,
          xlabel: str = "") -> None:
    """Horizontal bars, the first pair on top, in the palette's colours: blue for the target
    (>= 0), red against it; ``errors``: one standard deviation each, drawn as whiskers."""
    from blackbox_sal.render import palette

    names = [w for w, _ in pairs][::-1]
    values = [v for _, v in pairs][::-1]
    ax.barh(range(len(values)), values, xerr=None if errors is None else list(errors)[::-1],
            color=[palette.hex_of(palette.end_of(v)) for v in values], error_kw={"ecolor": "#444", "lw": 0.8})
    ax.set_yticks(range(len(values)))
    ax.set_yticklabels(names, fontsize=8)
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)


def global_bow_plot(result: BagOfWords, path: str | Path, top: int | None = None) -> Path:
    """Bar charts of the top positive and negative features of g (PNG or SVG by suffix)."""
    plt = pyplot()
    n = top or len(result.top_positive)
    fig, axes = plt.subplots(1, 2, figsize=(9, 0.25 * n + 1.6))
    objective = result.gradient.objective
    _bars(axes[0], result.top_positive[:n], f"for {result.positive}: largest g",
          xlabel=f"g = mean d({objective}) / d feature")
    _bars(axes[1], result.top_negative[:n], f"against {result.positive}: smallest g",
          xlabel=f"g = mean d({objective}) / d feature")
    fig.suptitle(f"{result.gradient.model}: mean gradient over {result.gradient.n:,} rows "
                 "(blue: for, red: against)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def class_jacobians_dict(result: ClassJacobians) -> dict[str, Any]:
    return {"model": result.model, "over": result.over, "own_by": result.own_by, "n": result.n,
            "backend": result.backend, "classes": list(result.classes), "counts": list(result.counts),
            "features": list(result.names), "image_shape": list(result.image_shape) if result.image_shape else None,
            "jacobian": [[float(v) for v in row] for row in result.jacobian],
            "skipped": [{"row": k, "error": e} for k, e in result.skipped]}


def jacobian_correlation_dict(result: JacobianCorrelation) -> dict[str, Any]:
    return {"raw": {"per_class": list(result.raw), "mean": result.raw_mean},
            "centered": {"per_class": list(result.centered), "mean": result.centered_mean}}


def class_jacobians_table(result: ClassJacobians, compare: JacobianCorrelation | None = None) -> str:
    """Per class: inputs averaged, mean |J|, the largest entries; with ``compare``, the
    correlations with another model's Jacobians (or weights)."""
    over = ("all inputs" if result.over == "all" else
            f"the inputs of each class (by {result.own_by})")
    lines = [f"mean Jacobian d output_c / d features of {result.model} over {over}: {result.n:,} inputs "
             f"(backend {result.backend})", ""]
    header = f"  {'class':<8} {'inputs':>7} {'mean |J|':>9}  largest +            largest -"
    if compare is not None:
        header = (f"  {'class':<8} {'inputs':>7} {'mean |J|':>9} {'pearson':>8} {'centered':>9}  "
                  f"largest +       largest -")
    lines.append(header)
    for c, name in enumerate(result.classes):
        row = result.jacobian[c]
        hi, lo = int(np.argmax(row)), int(np.argmin(row))
        extremes = f"{result.names[hi]} {row[hi]:+.4f}   {result.names[lo]} {row[lo]:+.4f}"
        corr = "" if compare is None else f" {compare.raw[c]:8.4f} {compare.centered[c]:9.4f}"
        lines.append(f"  {name:<8} {result.counts[c]:>7} {np.abs(row).mean():9.5f}{corr}  {extremes}")
    if compare is not None:
        lines += ["", f"mean over classes: pearson {compare.raw_mean:.4f}, centered {compare.centered_mean:.4f}"]
    return "\n".join(lines) + "\n"


def class_jacobians_plot(result: ClassJacobians, path: str | Path,
                         beside: Sequence[tuple[str, ClassJacobians | np.ndarray]] = (),
                         image_shape: tuple[int, int] | None = None, title: str | None = None) -> Path:
    """The per-class Jacobians as images (one row of C images), with rows ``beside`` (a title
    and [C, F] weights or Jacobians, e.g. a logistic regression's), each image in its own
    symmetric colour scale (the palette's: blue positive, red negative, with a colour bar).
    Needs an image shape (the model's config.json ``image_shape``, or ``image_shape``)."""
    shape = image_shape or result.image_shape
    if shape is None:
        raise UsageError("the Jacobians are drawn as images: the model's config.json has no image_shape [H, W]; "
                         "pass image_shape=(H, W)")
    rows = [(title or f"{result.model}\nmean Jacobian ({result.over})", result.jacobian),
            *((t, _array(v)) for t, v in beside)]
    n_classes = result.jacobian.shape[0]
    for t, arr in rows:
        if arr.shape != result.jacobian.shape:
            raise UsageError(f"{t!r}: shape {arr.shape}, not {result.jacobian.shape}")
    from blackbox_sal.render import palette

    plt = pyplot()
    cmap = palette.colormap()
    fig, axes = plt.subplots(len(rows), n_classes, figsize=(n_classes * 1.1 + 0.8, len(rows) * 1.3 + 0.4),
                             squeeze=False)
    for r, (t, arr) in enumerate(rows):
        for c in range(n_classes):
            ax = axes[r, c]
            lim = float(np.abs(arr[c]).max()) or 1.0
            image = ax.imshow(arr[c].reshape(shape), cmap=cmap, vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(result.classes[c], fontsize=9)
            if c == 0:
                ax.set_ylabel(t, fontsize=7)
    fig.tight_layout()
    # one scale per image: the bar reads in units of each image's own largest |value|
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, ticks=[-lim, 0, lim])
    bar.ax.set_yticklabels(["-max", "0", "+max"], fontsize=7)
    bar.set_label("blue raises the class, red lowers it", fontsize=7)
    return save_figure(fig, path)


def _stat_dict(s: WordStat) -> dict[str, Any]:
    return {"word": s.word, "count": s.count, "mean": s.mean, "std": s.std}


def word_importance_dict(result: WordImportance, top: int | None = None) -> dict[str, Any]:
    """JSON-ready: the top and bottom words overall and per predicted class, and every word's
    statistics overall (``all``)."""
    return {
        "model": result.model, "method": result.method, "target": result.target, "n": result.n,
        "min_count": result.min_count, "rare": result.rare,
        "top": [_stat_dict(s) for s in result.top(top)], "bottom": [_stat_dict(s) for s in result.bottom(top)],
        "by_class": {label: {"top": [_stat_dict(s) for s in result.top(top, stats)],
                             "bottom": [_stat_dict(s) for s in result.bottom(top, stats)]}
                     for label, stats in result.by_class},
        "all": [_stat_dict(s) for s in result.words],
        "notes": [{"note": n, "texts": k} for n, k in result.notes],
        "skipped": [{"row": k, "error": e} for k, e in result.skipped],
    }


def _stat_columns(left: tuple[WordStat, ...], right: tuple[WordStat, ...], titles: tuple[str, str]) -> list[str]:
    width = max([len(s.word) for s in left + right] + [10])
    cell = f"{{:<{width}}} {{:>9}} {{:>8}} {{:>6}}"
    lines = ["  " + cell.format(titles[0], "mean", "std", "count") + "   " + cell.format(titles[1], "mean", "std",
                                                                                            "count")]
    for k in range(max(len(left), len(right))):
        parts = []
        for stats in (left, right):
            s = stats[k] if k < len(stats) else None
            parts.append(cell.format("", "", "", "") if s is None else
                         cell.format(s.word, f"{s.mean:+.4f}", f"{s.std:.4f}", s.count))
        lines.append("  " + "   ".join(parts))
    return lines


def word_importance_table(result: WordImportance, top: int | None = None) -> str:
    target = "each text's predicted class" if result.target == "predicted" else result.target
    lines = [f"word importance of {result.model}: {result.method} scores of {target}, mean per word over "
             f"{result.n:,} texts (words seen at least {result.min_count} times: {len(result.words):,}; "
             f"{result.rare:,} rarer ones left out)", ""]
    lines += _stat_columns(result.top(top), result.bottom(top), ("highest", "lowest"))
    for label, stats in result.by_class:
        lines += ["", f"texts predicted {label}:"]
        lines += _stat_columns(result.top(top, stats), result.bottom(top, stats), ("highest", "lowest"))
    for note, count in result.notes:
        lines.append(f"note ({count} of {result.n} texts; the first): {note}")
    if result.skipped:
        lines.append(f"note: {len(result.skipped)} text(s) skipped (the first, {result.skipped[0][0]}: "
                     f"{result.skipped[0][1]})")
    return "\n".join(lines) + "\n"


def word_importance_plot(result: WordImportance, path: str | Path, top: int | None = None) -> Path:
    """Bar charts of the words with the highest and lowest mean scores, with their spread (one
    standard deviation) and counts (PNG or SVG). Explained for each text's predicted class, a
    row per class: the texts predicted ``c``, the words that pushed toward ``c`` and those
    that pushed against it (mixing classes would rank a word by which class it was read
    for). Words seen fewer than ``min_count`` times are hidden, and the figure says how many."""
    plt = pyplot()
    if result.target == "predicted" and result.by_class:
        panels = [(f"texts predicted {label}", label, stats) for label, stats in result.by_class]
    else:
        panels = [(f"all {result.n:,} texts", result.target, result.words)]
    n = max([len(result.top(top, stats)) for _, _, stats in panels] + [1])
    fig, axes = plt.subplots(len(panels), 2, figsize=(9, len(panels) * (0.22 * n + 1.3) + 0.8), squeeze=False)
    for (title, target, stats), row in zip(panels, axes, strict=True):
        # a panel holds only its side: with few words the top and the bottom overlap
        high = [s for s in result.top(top, stats) if s.mean > 0]
        low = [s for s in result.bottom(top, stats) if s.mean < 0]
        count = len(stats)
        axis = f"mean {result.method} score for {target}"
        _bars(row[0], [(f"{s.word} ({s.count})", s.mean) for s in high],
              f"{title}: most for {target} ({count:,} words)", [s.std for s in high], axis)
        _bars(row[1], [(f"{s.word} ({s.count})", s.mean) for s in low],
              f"{title}: most against {target}", [s.std for s in low], axis)
    fig.suptitle(f"{result.model}: {result.method}, mean score per word over {result.n:,} texts "
                 "(blue: for, red: against; whiskers: one std; in brackets: times seen)", fontsize=9)
    fig.text(0.5, 0.005, f"words seen fewer than {result.min_count} times are hidden: {result.rare:,} of "
             f"{result.rare + len(result.words):,} words", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return save_figure(fig, path)
