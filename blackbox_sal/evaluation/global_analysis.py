"""Global analysis: what a model relies on across a dataset (sections 5.2 and 5.3 of
*Interpretation of Prediction Models Using the Input Gradient*).

Feature models (bag of words, scikit-learn pipelines, numbers; their features are the tokens,
each a one-dimensional embedding, so a point is [F, 1]):

- :func:`average_gradient`: g = the mean over the rows of d f / d x, the full gradient of one
  scalar f with respect to the feature vector x. f is, by default, a two-class model's margin
  logit[1] - logit[0] (:class:`~blackbox_sal.vocabulary.scores.Margin`: its sign is the prediction);
  with ``target``, that class's score (``config.score``); a one-output model's output; or any
  :class:`~blackbox_sal.vocabulary.scores.Objective` given. As the paper does, the derivative is taken
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

Where each part lives (this module only hands their names on)::

    feature_gradients   the average gradient g and the per-row work the analyses share
    linear_surrogate    fitting b: zero, fit_threshold, fit_logistic, match_rate   (5.2)
    bag_of_words        global_bow: g, its top features, the surrogates            (5.2)
    class_jacobians     class Jacobians and their correlation                      (5.3)
    word_importance     token models: mean attribution per word type
    global_views        tables, dicts and plots of every result above
"""

from __future__ import annotations

from blackbox_sal.evaluation.bag_of_words import BagOfWords, global_bow
from blackbox_sal.evaluation.class_jacobians import (
    ClassJacobians,
    JacobianCorrelation,
    class_jacobians,
    jacobian_correlation,
)
from blackbox_sal.evaluation.feature_gradients import AverageGradient, average_gradient
from blackbox_sal.evaluation.global_views import (
    average_gradient_dict,
    class_jacobians_dict,
    class_jacobians_plot,
    class_jacobians_table,
    global_bow_dict,
    global_bow_plot,
    global_bow_table,
    jacobian_correlation_dict,
    word_importance_dict,
    word_importance_plot,
    word_importance_table,
)
from blackbox_sal.evaluation.linear_surrogate import (
    LOGISTIC_PENALTY,
    RULES,
    Surrogate,
    best_threshold,
    logistic_threshold,
    rate_threshold,
    surrogates,
)
from blackbox_sal.evaluation.word_importance import WordImportance, WordStat, word_importance

__all__ = [
    "LOGISTIC_PENALTY",
    "RULES",
    "AverageGradient",
    "BagOfWords",
    "ClassJacobians",
    "JacobianCorrelation",
    "Surrogate",
    "WordImportance",
    "WordStat",
    "average_gradient",
    "average_gradient_dict",
    "best_threshold",
    "class_jacobians",
    "class_jacobians_dict",
    "class_jacobians_plot",
    "class_jacobians_table",
    "global_bow",
    "global_bow_dict",
    "global_bow_plot",
    "global_bow_table",
    "jacobian_correlation",
    "jacobian_correlation_dict",
    "logistic_threshold",
    "rate_threshold",
    "surrogates",
    "word_importance",
    "word_importance_dict",
    "word_importance_plot",
    "word_importance_table",
]
