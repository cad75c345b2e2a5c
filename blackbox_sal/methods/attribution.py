"""What every attribution method receives, returns, and says about itself.

A method is a generator function ``(Problem) -> Work[Attribution]``: it composes the pieces
it is given (a gradient backend, a baseline, the settings) and asks the backend only for what
it needs. Its :class:`MethodSpec` carries its facts, so adding a method is one spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from blackbox_sal.vocabulary.runs import Work

if TYPE_CHECKING:  # the config is read, never imported at run time: it validates against the methods
    from blackbox_sal.gradients.backend import GradientBackend
    from blackbox_sal.vocabulary.config import ExplainConfig


@dataclass(frozen=True)
class Problem:
    """x, baseline: float32 [S, D] (special tokens equal in both). special: bool [S].
    target_value: f(x). scale: the finite-difference/noise scale per token [S]. reduce: the
    reduction to use (the config's, or the method's default). rows: the rows one run takes
    for this text (methods that ask in several steps use it to bound memory). baseline_value:
    f(baseline), when it was computed with the prediction (one run fewer). word_ids: the word
    of each position, int [S] (-1: none; None: the input has no words, e.g. a feature vector),
    for the methods whose players are words. pieces: the text of each position ("" for special
    tokens and padding), for the methods that group words by punctuation (None: unknown)."""

    backend: GradientBackend
    x: np.ndarray
    baseline: np.ndarray
    special: np.ndarray
    target_value: float
    scale: np.ndarray
    config: ExplainConfig
    reduce: str | None
    rows: int = 64
    baseline_value: float | None = None
    word_ids: np.ndarray | None = None
    pieces: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Attribution:
    """scores: float64 [S], one per token. reduce: the reduction used (None for occlusion).
    baseline_value: f(baseline) where a baseline was used. delta: IG's completeness delta
    sum(attributions) - (f(x) - f(baseline)). notes: things the user should know. nodes: the
    path points IG used (its steps, or what steps="auto" settled on). errors: the standard
    error of each score, float64 [S], for the sampling methods (None: not estimated)."""

    scores: np.ndarray
    reduce: str | None
    baseline_value: float | None = None
    delta: float | None = None
    notes: tuple[str, ...] = ()
    nodes: int | None = None
    errors: np.ndarray | None = None


def _no_check(config: ExplainConfig) -> None:
    return None


def _reports_nothing(config: ExplainConfig, result: Attribution) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class MethodSpec:
    """A method and its facts.

    run: the method. summary: one line for help texts. default_reduce: the reduction when the
    config names none (None: the method has no per-dimension step). needs_derivatives: asks a
    gradient backend for derivatives (else it runs forward passes only). uses_baseline:
    replaces tokens by a baseline embedding. local: reads gradients at the input point only
    (no path, no large steps: quantized models give it rounding noise). baseline_value: needs
    f(baseline), which the caller computes in the prediction's run. check: constraints on its
    settings that the settings spec (blackbox_sal.vocabulary.config) cannot say, checked before it runs
    (UsageError); ranges and names belong in the spec. report: the settings it reports. rules: the
    reverse rules its gradient backend runs ("gradient", or an LRP rule set of
    :mod:`blackbox_sal.surgery.lrp_rules`: a graph backend only).
    """

    run: Callable[[Problem], Work[Attribution]]
    summary: str
    default_reduce: str | None
    needs_derivatives: bool = True
    uses_baseline: bool = False
    local: bool = False
    baseline_value: bool = False
    check: Callable[[ExplainConfig], None] = field(default=_no_check, repr=False)
    report: Callable[[ExplainConfig, Attribution], dict[str, Any]] = field(default=_reports_nothing, repr=False)
    rules: str = "gradient"
