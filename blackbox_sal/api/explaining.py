"""Explain predictions: text -> tokens -> embeddings -> backend -> method -> Explanation (long
texts, optionally: windows -> one Explanation each -> stitched).

Each explanation is a piece of work (:mod:`blackbox_sal.vocabulary.runs`) that the engine drives:
:func:`explain` drives one, :func:`explain_many` many at once, their rows packed into shared
runs, with the same results.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from blackbox_sal.baselines import make_baseline
from blackbox_sal.diagnostics import special_tokens_note
from blackbox_sal.engine.drive import drive_many, drive_one
from blackbox_sal.engine.runner import Runner, rows_per_run, run_size
from blackbox_sal.gradient_graph.store import rules_session
from blackbox_sal.gradients.backend import GradientBackend, Setting, ValuesOnly, make_backend
from blackbox_sal.methods import METHODS
from blackbox_sal.methods.attribution import Attribution, Problem
from blackbox_sal.methods.channels import CHANNEL_METHODS, channel_scores
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.reductions import LINEAR
from blackbox_sal.targets.per_token import Target, find_targets
from blackbox_sal.text.tokenization import Tokens, check_text, stitch, tokenize, tokenize_windows
from blackbox_sal.text.words import Span, merge_words, token_spans
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.differences import step_scale
from blackbox_sal.vocabulary.errors import InputError, ModelError, SalError, TooLongError, UsageError
from blackbox_sal.vocabulary.result import (
    MAX_SCORES,
    TOP,
    ChannelScores,
    Explanation,
    Label,
    Prediction,
    Provenance,
    Window,
)
from blackbox_sal.vocabulary.runs import ArrayPoints, Cost, Forward, Seq, Work, ask, ask_all
from blackbox_sal.vocabulary.scores import (
    ClassScore,
    Contrast,
    Cosine,
    Objective,
    Projection,
    TokenWeights,
    resolve_target,
)


def explain(model: TextModel, text: str, config: ExplainConfig | None = None) -> Explanation:
    """Attribute the model's prediction on ``text`` to its tokens (see ExplainConfig).

    A text over the model's token limit is refused, or with ``long="window"`` explained in
    overlapping windows that are stitched back together.
    Raises InputError / UsageError (exit 2) for bad text or settings, ModelError (exit 3)
    when the model cannot be used, UnavailableError (exit 4) for a missing backend.
    """
    cfg = (config or ExplainConfig()).validated()
    return drive_one(text_explanation(model, text, cfg), runner(model, cfg))


def explain_many(model: TextModel, texts: Iterable[str], config: ExplainConfig | None = None,
                 window: int = 64) -> Iterator[Explanation | SalError]:
    """Explain many texts at once, in order: each item is the text's Explanation, or the
    SalError it ended with (an empty text, an unknown label...). Up to ``window`` texts are
    in flight together and their rows share onnxruntime runs (on CUDA in two lanes whose runs
    overlap each other's host work: :mod:`blackbox_sal.engine.drive`); results equal
    :func:`explain`'s."""
    cfg = (config or ExplainConfig()).validated()
    return drive_many((text_explanation(model, t, cfg) for t in texts), runner(model, cfg), window)


def runner(model: TextModel, cfg: ExplainConfig) -> Runner:
    """The engine's runner for ``model`` with the config's run sizes on the model's device."""
    rows, tokens = run_size(cfg.batch_size, cfg.tokens_per_run, model.device)
    return Runner(model, rows=rows, tokens=tokens, progress=cfg.progress)


def text_explanation(model: TextModel, text: str, cfg: ExplainConfig) -> Work[Explanation]:
    """The work of explaining one text (tokenized here, so bad text ends this work only)."""
    if cfg.at is not None and model.task != "per-token":  # not ignored: the answer would not be what was asked
        raise UsageError(f"--at names a position of a per-token model's output (a tagger's); {model.name} is a "
                         f"{model.task} model")
    if model.features is not None:
        return (yield from feature_explanation(model, text, cfg))
    if model.task == "answer-span":
        raise UsageError("a question-answering model explains an answer span: give the question as the text and "
                         "the context with --context (explain_answer in Python)")
    if cfg.answer is not None:
        raise UsageError("--answer chooses the span of a question-answering model: give the context with --context")
    tokens = tokenize(model.tokenizer, text, None, cfg.max_chars)
    if model.max_length is not None and len(tokens) > model.max_length:
        if cfg.long != "window":
            raise TooLongError(f"the text has {len(tokens)} tokens; the model takes at most {model.max_length} "
                               f"(--long window explains it in overlapping windows)")
        if model.task == "next-token":
            raise UsageError("--long window splits a text for a classifier; a causal LM predicts from the end "
                             f"of its prompt: shorten the prompt to {model.max_length} tokens")
        if model.task != "classification":  # a per-token model too: its targets are positions of the text
            raise UsageError(f"--long window splits a text for a classifier, not a {model.task} model")
        return (yield from _windows(model, text, cfg))
    question: Question = ProjectionQuestion(np.asarray(cfg.direction, np.float64)) if cfg.direction else \
        PerTokenQuestion(tokens) if model.task == "per-token" else ClassQuestion()
    return (yield from explanation(model, tokens, cfg, question))


@dataclass(frozen=True)
class Asked:
    """The scalar an explanation is about, as its result reports it."""

    objective: Objective
    target: Label
    prediction: Prediction
    task: str


@dataclass(frozen=True)
class ClassQuestion:
    """Explain a class's score: ``target`` fixed, else the config's target or the prediction."""

    target: int | None = None

    def answer(self, model: TextModel, outputs: np.ndarray, cfg: ExplainConfig) -> Asked:
        n_classes = outputs.shape[1]
        if model.task == "embedding" and self.target is None and cfg.target is None:
            raise UsageError(f"the model outputs a sentence embedding ({n_classes} values): say what to explain: "
                             f"--similar-to TEXT (a cosine), --direction FILE (a projection) or --target DIM")
        if model.labels is not None and len(model.labels) != n_classes:
            raise ModelError(f"config.json names {len(model.labels)} labels but output {model.output!r} has "
                             f"{n_classes} classes: they do not belong together")
        target = self.target if self.target is not None else resolve_target(
            cfg.target, model.labels, n_classes, int(np.argmax(outputs[0])),
            model.class_of if model.task == "next-token" else None)
        if cfg.contrast is None:
            return Asked(ClassScore(target, cfg.score, n_classes), Label(target, model.label(target)),
                         prediction(model, outputs[0]), model.task)
        other = resolve_target(cfg.contrast, model.labels, n_classes, target,
                               model.class_of if model.task == "next-token" else None)
        if other == target:
            raise UsageError(f"--contrast names the target itself ({model.label(target) or target}): nothing to "
                             f"contrast it with")
        said = f"{model.label(target) or target} rather than {model.label(other) or other}"
        return Asked(Contrast(target, other, cfg.score), Label(target, said), prediction(model, outputs[0]),
                     model.task)


@dataclass(frozen=True)
class SimilarityQuestion:
    """Explain the cosine of the output to a reference embedding [C] (sentence similarity)."""

    reference: np.ndarray

    def answer(self, model: TextModel, outputs: np.ndarray, cfg: ExplainConfig) -> Asked:
        return Asked(Cosine(self.reference), Label(0, "cosine"), Prediction(0, "cosine", (), ()), "similarity")


@dataclass(frozen=True)
class ProjectionQuestion:
    """Explain the projection of the output (an embedding [C]) on a direction [C]."""

    direction: np.ndarray

    def answer(self, model: TextModel, outputs: np.ndarray, cfg: ExplainConfig) -> Asked:
        if self.direction.shape != (outputs.shape[1],):
            raise UsageError(f"the direction has {self.direction.size} values; the model's output has "
                             f"{outputs.shape[1]}")
        return Asked(Projection(self.direction), Label(0, "projection"), Prediction(0, "projection", (), ()),
                     model.task)


@dataclass(frozen=True)
class PerTokenQuestion:
    """Explain one target of a per-token model (:mod:`blackbox_sal.targets.per_token`): the
    target ``chosen``, or the text's only one (``--at``, or a text with one entity)."""

    tokens: Tokens
    #: the target, already found on these outputs (explain_tokens finds them all once)
    chosen: Target | None = None

    def answer(self, model: TextModel, outputs: np.ndarray, cfg: ExplainConfig) -> Asked:
        seq = max(len(self.tokens), model.fixed_length or 0)  # a fixed-length export's padding is positions too
        scores = outputs[0].reshape(seq, -1)  # [S, L]: the flat output is position-major
        chosen = self.chosen
        if chosen is None:
            found = find_targets(scores, self.tokens, model.labels, cfg.at, cfg.target, cfg.contrast)
            if len(found) != 1:
                raise UsageError(f"the text has {len(found)} per-token targets: give one with --at (a token index or "
                                 f"a word), or explain them all together (explain_tokens; the CLI does)")
            chosen = found[0]
        said = chosen.name if chosen.contrast_name is None else f"{chosen.name} rather than {chosen.contrast_name}"
        row = scores[chosen.positions[0]]
        top = int(np.argmax(row))
        return Asked(TokenWeights(chosen.weights(*scores.shape), cfg.score), Label(chosen.labels[0], said),
                     Prediction(top, model.label(top), tuple(float(v) for v in row)), "per-token")


class Question(Protocol):
    """What an explanation is about, decided once the model's outputs [1, C] on the text are known."""

    def answer(self, model: TextModel, outputs: np.ndarray, cfg: ExplainConfig) -> Asked: ...


@dataclass(frozen=True)
class Attributed:
    """What the attribution of one input produced, before it is laid over the text."""

    method: str
    backend: str
    asked: Asked
    result: Attribution
    provenance: Provenance
    target_value: float
    notes: tuple[str, ...]  # the backend's
    #: a model with a second id channel: each channel's score of every position [S] (None: not split)
    channels: dict[str, np.ndarray] | None = None


def attribute(model: TextModel, seq: Seq, x: np.ndarray, baseline: np.ndarray, special: np.ndarray,
              cfg: ExplainConfig, question: Question, baseline_name: str,
              word_ids: np.ndarray | None = None, pieces: tuple[str, ...] | None = None) -> Work[Attributed]:
    """The work of attributing one input: x, baseline [S, D], special [S] over ``seq``;
    word_ids int [S] (-1: no word) and pieces (each position's text) for the methods whose
    players are words."""
    spec = METHODS[cfg.method]
    spec.check(cfg)
    cost = Cost()
    # the prediction, and f(baseline) where the method needs it, in one run: [1 or 2, C]
    points = np.stack([x, baseline]) if spec.baseline_value else x[None]
    both = yield from ask(Forward(seq, ArrayPoints(points), "prediction"))
    cost.forward += len(points)
    outputs = both[:1]
    asked = question.answer(model, outputs, cfg)
    target_value = float(asked.objective.scalar(outputs)[0])
    if not np.isfinite(outputs).all():
        raise ModelError(f"the model's output on this text is not finite ({_non_finite(outputs[0])}): nothing "
                         f"to explain (a model that overflows, or an input it was not built for)")
    baseline_value = float(asked.objective.scalar(both[1:])[0]) if spec.baseline_value else None
    scale = step_scale(x, model.row_norm)
    rows = model.fixed_batch or rows_per_run(*run_size(cfg.batch_size, cfg.tokens_per_run, model.device), len(seq))
    backend: GradientBackend
    if spec.needs_derivatives:
        backend, backend_notes = make_backend(cfg.backend, model, Setting(
            asked.objective, seq, scale, outputs.shape[1], cost, fd_step=cfg.fd_step, richardson=cfg.richardson,
            fd_scheme=cfg.fd_scheme, quantized=model.quantized, local_method=spec.local, rules=spec.rules))
    else:
        backend, backend_notes = ValuesOnly(asked.objective, seq, cost), ()
    if spec.rules != "gradient":  # which operators kept their plain gradient (built here, once)
        backend_notes += tuple(n for n in (rules_session(model, spec.rules).rules_note(),) if n)
    problem = Problem(backend, x, baseline, special, target_value, scale, cfg, cfg.reduction(), rows, baseline_value,
                      word_ids, pieces)
    result = yield from spec.run(problem)
    channels = None
    if model.channels and cfg.method in CHANNEL_METHODS:
        channels = yield from channel_scores(problem, cfg.method, model.channels, result)
    provenance = replace(
        Provenance(score=asked.objective.score, batch_size=rows, forward_passes=cost.forward,
                   device=model.device, baseline=baseline_name if spec.uses_baseline else None),
        **spec.report(cfg, result), **backend.provenance())
    return Attributed(cfg.method, backend.name, asked, result, provenance, target_value, backend_notes, channels)


def explanation(model: TextModel, tokens: Tokens, cfg: ExplainConfig,
                question: Question = ClassQuestion()) -> Work[Explanation]:
    """The work of explaining one tokenized text within the model's limit."""
    ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)  # a fixed-length export: padded, masked
    padding = len(ids) - len(tokens)
    x = model.embed(ids)
    special = np.concatenate([tokens.special, np.ones(padding, bool)])
    # a method without a baseline reads none: a tokenizer with no pad token (a character map) still explains
    baseline = x.copy() if not METHODS[cfg.method].uses_baseline else np.concatenate(
        [make_baseline(cfg.baseline, model.tokenizer, model.table, tokens, x[:len(tokens)]),
         x[len(tokens):]])  # the padding is kept, as special tokens are
    word_ids = np.array([-1 if w is None else w for w in tokens.word_ids] + [-1] * padding, np.int64)
    pieces = tuple("" if s else tokens.text[a:b] for (a, b), s in zip(tokens.offsets, tokens.special, strict=True))
    done = yield from attribute(model, Seq(ids, type_ids, mask), x, baseline, special, cfg, question, cfg.baseline,
                                word_ids, pieces + ("",) * padding)
    scores = done.result.scores[:len(tokens)]
    out = _explanation(model, done, tokens.text, token_spans(tokens, scores),
                       merge_words(tokens, scores) if cfg.words else None,
                       _padding_note(model, len(tokens)), _finite_note(scores) + _channels_note(model, done))
    if done.channels is not None:
        out = replace(out, channels=tuple(ChannelScores(c.name, c.input, tuple(float(v) for v in
                                                                              done.channels[c.name][:len(tokens)]))
                                          for c in model.channels))
    if done.result.errors is None:
        return out
    errors = done.result.errors[:len(tokens)]
    return replace(out, token_errors=tuple(float(e) for e in errors),
                   word_errors=tuple(w.score for w in merge_words(tokens, errors)) if cfg.words else None)


def feature_explanation(model: TextModel, text: str, cfg: ExplainConfig,
                        question: Question = ClassQuestion()) -> Work[Explanation]:
    """The work of explaining a feature model's input (a text made into its vector, or its
    numbers): the features are its tokens, each word (or number) shown with its feature's
    score, shared equally among the occurrences of a word. The baseline is the zero vector
    (no word, a blank input)."""
    featurizer = model.features
    assert featurizer is not None
    if cfg.baseline not in ("pad", "zero"):
        raise UsageError(f"a {featurizer.kind} model's baseline is the zero vector (no words, a blank input): "
                         f"--baseline {cfg.baseline} does not apply")
    check_text(text, cfg.max_chars)
    vector, pieces = featurizer.featurize(text)
    x = vector[:, None].astype(np.float32)
    n = featurizer.size
    seq = Seq(np.zeros(n, np.int64), np.zeros(n, np.int64))
    done = yield from attribute(model, seq, x, np.zeros_like(x), np.zeros(n, bool), cfg, question, "zero")
    scores = done.result.scores
    shares = np.bincount([p.feature for p in pieces if p.feature is not None], minlength=n)
    spans = tuple(Span(text[p.start:p.end], p.start, p.end,
                       0.0 if p.feature is None else float(scores[p.feature] / shares[p.feature]), False)
                  for p in pieces)
    if not spans:
        raise InputError("the text has no words the model knows")
    said = (f"a {featurizer.kind} model: its {n:,} features are the input; each word shows its feature's score "
            f"(shared equally among a word's occurrences), against the zero vector",)
    out = _explanation(model, done, text, spans, None, said, _finite_note(scores))
    errors = done.result.errors
    if errors is None:
        return out
    return replace(out, token_errors=tuple(0.0 if p.feature is None else float(errors[p.feature] / shares[p.feature])
                                           for p in pieces))


def _explanation(model: TextModel, done: Attributed, text: str, tokens: tuple[Span, ...],
                 words: tuple[Span, ...] | None, before: tuple[str, ...], after: tuple[str, ...]) -> Explanation:
    """The Explanation of an attributed input laid over its text; notes in reading order."""
    result = done.result
    return Explanation(
        text=text, model=model.name, method=done.method, backend=done.backend, reduce=result.reduce,
        target=done.asked.target, prediction=done.asked.prediction, target_value=done.target_value,
        tokens=tokens, words=words, baseline_value=result.baseline_value, convergence_delta=result.delta,
        provenance=done.provenance,
        notes=model_notes(model) + before + done.notes + result.notes + after + special_tokens_note(tokens),
        task=done.asked.task)


def _channels_note(model: TextModel, done: Attributed) -> tuple[str, ...]:
    """What a model with a second id channel needs said: scores are totals over the channels."""
    if not model.channels:
        return ()
    names = ", ".join(f"{c.name} ({c.input!r})" for c in model.channels)
    if done.channels is None:
        return (f"the model reads {len(model.channels)} id channels ({names}): each score is the position's total "
                f"over them; {', '.join(CHANNEL_METHODS)} also give each channel's own scores",)
    totals = ", ".join(f"{c.name} {float(done.channels[c.name].sum()):+.4g}" for c in model.channels)
    how = "add up to" if done.result.reduce in LINEAR else f"combine ({done.result.reduce}) into"
    return (f"the model reads {len(model.channels)} id channels ({names}): each score is the position's total; "
            f"the channels' own scores (JSON 'channels') {how} it; summed over the text: {totals}",)


def _padding_note(model: TextModel, n: int) -> tuple[str, ...]:
    """What a fixed-shape export needs said: the padding, and runs of its own batch size."""
    notes: tuple[str, ...] = ()
    if model.fixed_length is not None and n < model.fixed_length:
        how = ("under the attention mask" if "attention_mask" in model.int_inputs else
               "with the pad token, which the model reads (it has no attention mask)")
        notes += (f"the model takes exactly {model.fixed_length} tokens: the text's {n} were padded {how}; "
                  f"the padding is kept in the baseline and not shown",)
    if model.fixed_batch is not None:
        notes += (f"the model takes exactly {model.fixed_batch} row(s) per run: rows are run "
                  f"{model.fixed_batch} at a time",)
    return notes


def _non_finite(values: np.ndarray) -> str:
    bad = values[~np.isfinite(values)]
    return f"{bad.size} of {values.size} values are {', '.join(sorted({str(v) for v in bad}))}"


def _finite_note(scores: np.ndarray) -> tuple[str, ...]:
    """A note when some token scores are not finite (they are null in JSON)."""
    if np.isfinite(scores).all():
        return ()
    return (f"{int((~np.isfinite(scores)).sum())} of {scores.size} token scores are not finite (the model's "
            f"derivatives overflow along the path): they are shown as nan, and null in JSON",)


def model_notes(model: TextModel) -> tuple[str, ...]:
    """What every explanation of this model should say about how it was loaded (the notes found
    at load, which inputs and output were taken, the twin's measured agreement, last)."""
    return _how_loaded(model) + model.notes


def _how_loaded(model: TextModel) -> tuple[str, ...]:
    if model.pooling:
        return (f"the model's token states were pooled into one embedding: {model.pooling}",)
    if model.weight_only:
        return (f"the model's low-bit weights ({', '.join(model.weight_only)}) were dequantized into float "
                f"MatMuls: its activations are float, so that is the same function (checked on a probe sentence) "
                f"and its gradients are exact",)
    if not model.twin_of:
        return ()
    return (f"explained the float twin of a quantized model ({', '.join(model.twin_of)} replaced): its int8 weights "
            f"exactly, its activations in float, so gradients are exact for the deployed weights; the int8 model's "
            f"own outputs differ by its activation rounding",)


def prediction_work(model: TextModel, text: str, cfg: ExplainConfig) -> Work[Prediction]:
    """The work of predicting on one text (one forward row; no attribution): what a server's
    ``:predict`` answers. A text over the model's limit is refused as :func:`explain` does; a
    per-token model's prediction (a label per token) is not one class: refused, not flattened."""
    if model.task == "per-token":
        raise UsageError("a per-token model predicts a label per token, not one class per text: its predicted tags "
                         "are in each explanation (:explain, or explain_tokens)")
    if model.features is not None:
        check_text(text, cfg.max_chars)  # a non-string or a lone surrogate too, as explain() refuses them
        vector, _ = model.features.featurize(text)
        n = model.features.size
        seq = Seq(np.zeros(n, np.int64), np.zeros(n, np.int64))
        outputs = yield Forward(seq, ArrayPoints(vector[None, :, None].astype(np.float32)))
    else:
        tokens = tokenize(model.tokenizer, text, None, cfg.max_chars)
        if model.max_length is not None and len(tokens) > model.max_length:
            raise TooLongError(f"the text has {len(tokens)} tokens; the model takes at most {model.max_length}")
        ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)
        outputs = yield Forward(Seq(ids, type_ids, mask), ArrayPoints(model.embed(ids)[None]))
    values = np.asarray(outputs, np.float64)[0]
    if not np.isfinite(values).all():
        raise ModelError(f"the model's output is not finite ({_non_finite(values)})")
    return prediction(model, values)


def prediction(model: TextModel, outputs: np.ndarray) -> Prediction:
    """The prediction for one row of outputs [C]: the arg-max, every score (up to MAX_SCORES
    classes) and the TOP best."""
    predicted = int(np.argmax(outputs))
    top = np.argsort(-outputs, kind="stable")[:TOP]
    return Prediction(predicted, model.label(predicted),
                      tuple(float(v) for v in outputs) if outputs.shape[0] <= MAX_SCORES else (),
                      tuple(Label(int(i), model.label(int(i)), float(outputs[i])) for i in top))


def _windows(model: TextModel, text: str, cfg: ExplainConfig) -> Work[Explanation]:
    """Explain a long text window by window (overlapping, each within the model's limit) and
    stitch: the prediction is the mean of the windows' outputs, the target is resolved on it
    and explained in every window, and a token's score is the mean over the windows that
    hold it. Windows are explained one after the other, so memory stays bounded."""
    assert model.max_length is not None
    overlap = cfg.window_overlap if cfg.window_overlap is not None else model.max_length // 4
    windows = tokenize_windows(model.tokenizer, text, model.max_length, overlap, cfg.max_chars)
    per_window = yield from ask_all([Forward(Seq(w.ids, w.type_ids), ArrayPoints(model.embed(w.ids)[None]))
                                     for w in windows])
    outputs = np.mean([o[0] for o in per_window], axis=0)
    predicted = prediction(model, outputs)
    target = resolve_target(cfg.target, model.labels, outputs.shape[0], predicted.index)
    parts = []
    for w in windows:
        parts.append((yield from explanation(model, w, cfg, ClassQuestion(target))))
    total: dict[tuple[int, int], list[float]] = {}
    for part in parts:
        for span in part.tokens:
            if not span.special:
                total.setdefault((span.start, span.end), []).append(span.score)
    stitched = stitch(windows)
    scores = np.array([0.0 if s else float(np.mean(total[o])) for o, s in zip(stitched.offsets, stitched.special,
                                                                              strict=True)])
    notes: tuple[str, ...] = (
        f"the text has {len(stitched)} tokens, more than the model's {model.max_length}: explained in "
        f"{len(windows)} windows overlapping by {overlap} tokens; a token's score is the mean over the windows "
        f"that hold it, the prediction the mean of their outputs",)
    for part in parts:
        notes += tuple(n for n in part.notes if n not in notes)
    first = parts[0].provenance
    provenance = replace(
        first, forward_passes=sum(p.provenance.forward_passes for p in parts) + len(windows),
        windows=len(windows), window_overlap=overlap,
        gradient_passes=(None if first.gradient_passes is None else
                         sum(p.provenance.gradient_passes or 0 for p in parts)),
        # steps auto: each window settles on its own count: the most any needed
        steps=(max(p.provenance.steps or 0 for p in parts) if first.steps_auto else first.steps))
    return replace(
        parts[0], text=text, prediction=predicted, target_value=float(np.mean([p.target_value for p in parts])),
        tokens=token_spans(stitched, scores), words=merge_words(stitched, scores) if cfg.words else None,
        baseline_value=None, convergence_delta=None, provenance=provenance, notes=notes, token_errors=None,
        word_errors=None,
        windows=tuple(Window(w.offsets[int(np.flatnonzero(~w.special)[0])][0],
                             w.offsets[int(np.flatnonzero(~w.special)[-1])][1], p.target_value,
                             p.baseline_value, p.convergence_delta) for w, p in zip(windows, parts, strict=True)))
