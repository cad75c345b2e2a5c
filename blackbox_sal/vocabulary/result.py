"""Frozen result objects. Renderers take them as arguments; they have no output methods."""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any

from blackbox_sal.text.words import Span

#: bumped whenever the JSON rendering of an Explanation changes incompatibly
SCHEMA_VERSION = 2
#: a prediction keeps every class's output up to this many classes
MAX_SCORES = 1000
#: and names its best TOP classes
TOP = 5


@dataclass(frozen=True)
class Label:
    """A class of the explained output: its index and name (None when the model has none),
    and where it ranks a prediction, its output value."""

    index: int
    label: str | None
    value: float | None = None


@dataclass(frozen=True)
class Prediction:
    """The model's prediction: the arg-max class, the raw output values of every class (empty
    beyond MAX_SCORES classes, e.g. a causal LM's vocabulary), and the TOP best classes."""

    index: int
    label: str | None
    scores: tuple[float, ...]
    top: tuple[Label, ...] = ()


@dataclass(frozen=True)
class Window:
    """One window of a long text explained in windows: its character span, f(x), and where a
    baseline applies f(x') and the completeness delta within the window."""

    start: int
    end: int
    target_value: float
    baseline_value: float | None
    convergence_delta: float | None


@dataclass(frozen=True)
class Provenance:
    """What produced an explanation, typed. Fields that do not apply are None and are left
    out of :meth:`as_dict` (the ``settings`` object of the JSON output, in this order).

    score: the explained scalar (logit, probability, log-probability, cosine). batch_size:
    rows per onnxruntime run. forward_passes: rows through the model (prediction, baseline,
    perturbations, seeds). device: cpu or cuda. baseline: for methods that use one. steps,
    quadrature, steps_auto, tolerance: integrated gradients. samples, noise, seed: SmoothGrad.
    fd_step, richardson, fd_scheme: finite differences. gradient_passes: rows through the
    gradient graph. windows, window_overlap: a long text explained in windows. players: words
    or tokens (the Shapley and sampling methods; samples and seed are theirs too).
    """

    score: str
    batch_size: int
    forward_passes: int
    device: str
    baseline: str | None = None
    steps: int | None = None
    quadrature: str | None = None
    steps_auto: bool | None = None
    tolerance: float | None = None
    samples: int | None = None
    noise: float | None = None
    seed: int | None = None
    fd_step: float | None = None
    richardson: bool | None = None
    fd_scheme: str | None = None
    gradient_passes: int | None = None
    windows: int | None = None
    window_overlap: int | None = None
    players: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The fields that apply, in declaration order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class ChannelScores:
    """One id channel's scores: its name, the model input that took its ids, one score per token."""

    name: str
    input: str
    scores: tuple[float, ...]


@dataclass(frozen=True)
class Explanation:
    """One explained prediction.

    tokens: one scored span per token (character offsets into ``text``); words: the same
    merged to words when asked for. target_value: f(x), the explained scalar. baseline_value
    and convergence_delta: f(x') and sum(scores) - (f(x) - f(x')) where a baseline applies
    (integrated gradients). provenance: what produced it (method parameters, forward passes);
    ``settings`` is the same as a read-only mapping. notes: warnings the user should read
    (degenerate gradients, input equal to baseline, ...).
    """

    text: str
    model: str
    method: str
    backend: str
    reduce: str | None
    target: Label
    prediction: Prediction
    target_value: float
    tokens: tuple[Span, ...]
    words: tuple[Span, ...] | None
    baseline_value: float | None
    convergence_delta: float | None
    provenance: Provenance
    notes: tuple[str, ...]
    #: classification, next-token (a causal LM explained at its last position), or similarity
    #: (the cosine of the output to a reference text's output)
    task: str = "classification"
    #: for a long text explained in windows (``long="window"``): the windows, in order
    windows: tuple[Window, ...] | None = None
    #: the sampling methods' standard error of each token's score, aligned with ``tokens``
    #: (None: not estimated); ``word_errors`` the same for ``words``: the sum of its tokens'
    #: (exact when the players are words; an upper bound when they are tokens)
    token_errors: tuple[float, ...] | None = None
    word_errors: tuple[float, ...] | None = None
    #: a model with a second id channel (characters and their classes): each channel's own
    #: score of every token, aligned with ``tokens`` (with the sum reduction they add up to the
    #: token's score); None for a model with one channel, or a method that does not split them
    channels: tuple[ChannelScores, ...] | None = None

    @property
    def settings(self) -> MappingProxyType[str, Any]:
        """:attr:`provenance` as a read-only mapping (kept for scripts written against it)."""
        return MappingProxyType(self.provenance.as_dict())


@dataclass(frozen=True)
class Generation:
    """A continuation generated greedily by a causal LM and attributed step by step.

    prompt: the text given; text: prompt plus the continuation; generated: the tokens chosen
    (index, token, logit); steps: one Explanation per generated token, over everything before
    it (the prompt and the tokens generated so far), its target that token.
    """

    prompt: str
    text: str
    generated: tuple[Label, ...]
    steps: tuple[Explanation, ...]


@dataclass(frozen=True)
class Similarity:
    """The cosine similarity of two texts' embeddings, attributed to both: ``texts[0]`` is the
    first text explained with the second's embedding fixed, ``texts[1]`` the other way round
    (each an Explanation whose target value is the cosine)."""

    cosine: float
    texts: tuple[Explanation, Explanation]


@dataclass(frozen=True)
class Choices:
    """Multiple choice: every choice's score (index, text, value) for the pair (text, choice),
    the best one, and the explanation of its score over the tokens of text and choice.
    score: what the choices are ranked by (logit, probability or log-probability; for a
    multiple-choice export, probabilities are a softmax across the choices)."""

    text: str
    choices: tuple[Label, ...]
    predicted: int
    explanation: Explanation
    score: str = "logit"


@dataclass(frozen=True)
class AnswerSpan:
    """Extractive question answering: the answer span of a (question, context) pair and its
    three explained scores, each an Explanation over the pair's tokens (the text is
    ``question + "\\n" + context``; token offsets point into it).

    parts: per token, "question", "context" or None (special tokens), so every view keeps the
    two apart; start, end: the span's first and last token (indices into the tokens, inclusive),
    answer its text in the context, ``answer_start``/``answer_end`` its characters there;
    start_logit, end_logit: the model's scores of those tokens (their sum is the span's score);
    chosen: "best" (the best valid span: start <= end, within the context, at most
    ``max_answer_tokens`` tokens) or "given"; candidates: the best valid spans, best first.
    explanations: the start score's, the end score's and their sum's, in that order.
    """

    question: str
    context: str
    parts: tuple[str | None, ...]
    start: int
    end: int
    answer: str
    answer_start: int
    answer_end: int
    start_logit: float
    end_logit: float
    chosen: str
    max_answer_tokens: int
    candidates: tuple[SpanCandidate, ...]
    explanations: tuple[Explanation, Explanation, Explanation]

    @property
    def score(self) -> float:
        """The span's score: start logit + end logit."""
        return self.start_logit + self.end_logit


@dataclass(frozen=True)
class SpanCandidate:
    """One valid answer span: its first and last token, its text, its score (start + end logit)."""

    start: int
    end: int
    text: str
    score: float


@dataclass(frozen=True)
class TokenTarget:
    """One per-token target: the span of text it names (``text``, characters ``start``..``end``,
    its token ``positions``), the label explained there (and the label it is contrasted with,
    "label rather than contrast"), and its explanation over the input tokens (``target_value``,
    ``tokens``, ``convergence_delta``: a classification explanation's fields)."""

    text: str
    start: int
    end: int
    positions: tuple[int, ...]
    label: str
    contrast: str | None
    explanation: Explanation


@dataclass(frozen=True)
class TokenTargets:
    """A per-token model's targets explained together (one packed run per step for all of
    them): row k of :attr:`matrix` is target k's score on each input token, its completeness
    gap ``targets[k].explanation.convergence_delta`` where the method has one. ``predicted``:
    the predicted label of every token (special tokens included), as the tokens are."""

    text: str
    model: str
    method: str
    predicted: tuple[str, ...]
    targets: tuple[TokenTarget, ...]
    notes: tuple[str, ...]

    @property
    def matrix(self) -> tuple[tuple[float, ...], ...]:
        """[targets, tokens]: each target's score on each input token."""
        return tuple(tuple(s.score for s in t.explanation.tokens) for t in self.targets)


@dataclass(frozen=True)
class GenerationExplanation:
    """An encoder/decoder's output explained step by step (blackbox_sal.seq2seq).

    source_tokens: the source's tokens [S]. prefix_tokens: the decoder's input tokens [T] (the
    start token, then each output token but the last). output_tokens: the explained tokens [T]
    (generated greedily, or given: ``teacher_forced``). log_probs: log p(output_t | source,
    prefix_<=t) [T]. source_scores [T][S] and prefix_scores [T][T]: each step's attribution to
    each source token and each decoder input token (zero above the diagonal: a causal decoder).
    deltas: per step, log p_t(x) - log p_t(baseline) - sum(source_scores[t]) (integrated
    gradients on the source, the prefix held fixed), else None. backend: "graph" (the chained
    gradient graphs) or "fd" (central differences). steps: integration points (IG).
    """

    model: str
    method: str
    source_text: str
    output_text: str
    source_tokens: tuple[str, ...]
    prefix_tokens: tuple[str, ...]
    output_tokens: tuple[str, ...]
    log_probs: tuple[float, ...]
    source_scores: tuple[tuple[float, ...], ...]
    prefix_scores: tuple[tuple[float, ...], ...]
    teacher_forced: bool
    backend: str = "graph"
    steps: int | None = None
    deltas: tuple[float, ...] | None = None
