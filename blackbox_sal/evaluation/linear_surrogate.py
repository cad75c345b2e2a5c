"""Fitting the linear surrogate "positive when s + b > 0" on the scores s = x . g: the four
choices of b (:data:`RULES`) and their agreement with the model (see
:mod:`blackbox_sal.evaluation.global_analysis`).

The 1-D logistic fit is Newton's method with its exact 2 x 2 Hessian, not scipy.optimize: a
dozen lines that converge to 1e-12 in a few steps (scipy's BFGS agrees to 3e-11 on 2,000 rows
and on separable ones), penalised on the raw slope as scikit-learn's C = 1e6 is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the surrogate's choices of b, in the order reported
RULES = ("zero", "fit_threshold", "fit_logistic", "match_rate")
#: fit_logistic's L2 penalty on the slope (scikit-learn's LogisticRegression(C=1e6))
LOGISTIC_PENALTY = 1e-6


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
