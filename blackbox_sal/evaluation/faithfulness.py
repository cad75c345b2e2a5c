"""Faithfulness of token attributions: do the tokens a method ranks first matter to the model?

Each text is explained by each method (through the engine, so the rows of many texts share
onnxruntime runs). Its ordinary (non-special) tokens are ranked by score, highest first (ties
in text order; a score that is not finite ranks last). Tokens are **removed** by replacing
their embeddings with the baseline embedding (``baseline``, one for every method so they are
compared on the same footing; special tokens and padding keep their own), never by
re-tokenizing an edited text. With f the explained class's score under ``score``
(default ``probability``, as ERASER reports it), x the input and n its ordinary tokens:

- comprehensiveness at bin b: f(x) - f(x with its top k tokens removed), k = max(1, ceil(b n));
- sufficiency at bin b: f(x) - f(x with every ordinary token but the top k removed);
- AOPC: each one's mean over the bins (ERASER: DeYoung et al. 2020, "ERASER: A Benchmark to
  Evaluate Rationalized NLP Models");
- deletion curve: f(x with the top k tokens removed), insertion curve: f(the all-baseline
  input with the top k tokens put back), at ``curve_points`` fractions q evenly spaced over
  [0, 1] (both ends included), k = floor(q n + 1/2). Their areas are the trapezoid rule over
  q in [0, 1], so normalised on the token axis: the curve's mean height, in the units of f
  (deletion: lower is better; insertion: higher is better);
- leave-one-out rank correlation: Spearman's rho between the method's token scores and
  f(x) - f(x with token i removed), which *is* occlusion with the same baseline and score;
- IG completeness: |delta| / |f(x) - f(x')| of every explanation that reports a completeness
  delta (in the method's own score), mean and max over the texts;
- agreement with exact Shapley values, on the texts of at most ``shapley_tokens`` ordinary
  tokens (default 12: 4,094 rows per text): the exact Shapley values of the tokens
  (:mod:`blackbox_sal.methods.shapley`, players = tokens) of the method's own score (its
  config's ``score``; the random row: ``score``) for the class the method explained, tokens
  removed with the same baseline as every other metric here; against them, Spearman's rho of
  the method's token scores and the top-k overlap |top k of the method & top k of Shapley| / k
  (k = min(``top_k``, n), default 3). The reference's cost is not counted in any method's;
- cost: wall and CPU seconds per explanation (each method's pass over the dataset is timed
  alone, after a warm-up explanation that loads the sessions and the gradient graph) and
  the forward and gradient-graph passes per explanation.

All the removals of one text (every bin, every curve point, every leave-one-out copy) are one
:class:`~blackbox_sal.vocabulary.runs.Forward` request, built lazily a run at a time, and the requests of
all texts and methods are driven together. Results are means over the texts that both passes
completed; the others are counted with their reasons. ``"random"`` in ``methods`` adds the
reference row a method should beat: token scores drawn uniformly at random (seeded). Between
the two passes every text's tokens and scores are kept (a few numbers per token), so memory
grows with the dataset; texts over the model's token limit are counted as failed (no windows).

A per-token model's items are its targets (each predicted entity of each text, or the
position the config's ``at`` names: :func:`blackbox_sal.evaluation.common.per_token_items`),
found once on the model's prediction; f is then the target's score (its labels at its
positions summed, under ``score``: :class:`~blackbox_sal.vocabulary.scores.TokenWeights`) and
every metric above is per target, tokens removed from the whole text.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_sal.api.explaining import ClassQuestion, explanation, runner, text_explanation
from blackbox_sal.api.per_token import TextTarget, target_explanation
from blackbox_sal.baselines import baseline_token, make_baseline
from blackbox_sal.engine.drive import drive_many, drive_one
from blackbox_sal.evaluation.common import per_token_items
from blackbox_sal.evaluation.correlation import mean_defined, spearman
from blackbox_sal.gradient_graph.store import rules_session
from blackbox_sal.methods import METHODS
from blackbox_sal.methods.shapley import MAX_PLAYERS
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.targets.per_token import Target
from blackbox_sal.text.tokenization import Tokens, tokenize
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import InputError, ModelError, SalError, UsageError, unknown_choice
from blackbox_sal.vocabulary.result import Explanation
from blackbox_sal.vocabulary.runs import Forward, LazyPoints, Seq, Work, ask
from blackbox_sal.vocabulary.scores import SCORES, TokenWeights

#: ERASER's bins: fractions of the ordinary tokens
BINS = (0.01, 0.05, 0.10, 0.20, 0.50)
CURVE_POINTS = 10
#: the reference "method": token scores drawn uniformly at random
RANDOM = "random"
#: the most curve points
MAX_CURVE_POINTS = 1000
#: texts of at most this many ordinary tokens are compared with exact Shapley values (2^12 rows each)
SHAPLEY_TOKENS = 12
#: the top-k overlap with exact Shapley values
TOP_K = 3


@dataclass(frozen=True)
class MethodFaithfulness:
    """One method's row: means over the ``texts`` evaluated (see the module docstring).

    name: the row's label (the method, with its settings where two rows share a method).
    config: None for the random reference. backend: the backends its explanations used.
    failures: (reason, count) of the texts that could not be evaluated. comprehensiveness,
    sufficiency: per bin; their AOPCs. deletion, insertion: the mean curves at the result's
    fractions, and their areas. loo_spearman: mean over the ``loo_texts`` texts where it is
    defined (two or more ordinary tokens, neither side constant). completeness_mean/max:
    |delta| / |f(x) - f(x')| over ``completeness_texts`` explanations (None: no delta).
    shapley_spearman, shapley_top_k: agreement with exact Shapley values, means over the
    ``shapley_texts`` short enough texts (Spearman: where defined).
    seconds_per_text, cpu_seconds_per_text: wall and process time per explanation;
    forward_passes, gradient_passes: per explanation (None: none used).
    """

    name: str
    method: str
    config: ExplainConfig | None
    backend: str | None
    texts: int
    failures: tuple[tuple[str, int], ...]
    comprehensiveness: tuple[float, ...]
    sufficiency: tuple[float, ...]
    comprehensiveness_aopc: float | None
    sufficiency_aopc: float | None
    deletion: tuple[float, ...]
    insertion: tuple[float, ...]
    deletion_area: float | None
    insertion_area: float | None
    loo_spearman: float | None
    loo_texts: int
    completeness_mean: float | None
    completeness_max: float | None
    completeness_texts: int
    seconds_per_text: float | None
    cpu_seconds_per_text: float | None
    forward_passes: float | None
    gradient_passes: float | None
    shapley_spearman: float | None = None
    shapley_top_k: float | None = None
    shapley_texts: int = 0

    @property
    def failed(self) -> int:
        return sum(count for _, count in self.failures)


@dataclass(frozen=True)
class Faithfulness:
    """Faithfulness of several methods on one model and dataset (one row per method).

    score: what f is (probability, logit, log-probability) of the explained class. baseline:
    what removed tokens become. bins: ERASER's fractions. fractions: the curves' x axis.
    texts: how many texts were given. shapley_tokens, top_k: the agreement with exact Shapley
    values (texts of at most that many ordinary tokens; overlap of the top k).
    """

    model: str
    score: str
    baseline: str
    bins: tuple[float, ...]
    fractions: tuple[float, ...]
    texts: int
    methods: tuple[MethodFaithfulness, ...]
    notes: tuple[str, ...] = ()
    shapley_tokens: int = 0
    top_k: int = 3
    #: what each of the ``texts`` items is: "texts", or a per-token model's "targets"
    unit: str = "texts"


@dataclass(frozen=True)
class TextFaithfulness:
    """One text under one ranking: per bin, per curve point, and the leave-one-out rho."""

    target: int  # the class (a per-token target: the label at its first position)
    value: float  # f(x)
    baseline_value: float  # f(all ordinary tokens removed)
    comprehensiveness: np.ndarray
    sufficiency: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    loo: np.ndarray  # f(x) - f(x without token i), per ordinary token in text order
    loo_spearman: float | None


@dataclass(frozen=True)
class Evaluated:
    """One text's ranking evaluated: the text's index, its tokens and the method's scores, the
    removals' result, and the explanation (None for the random reference)."""

    text: int
    tokens: Tokens
    scores: np.ndarray
    result: TextFaithfulness
    explanation: Explanation | None


def bin_size(fraction: float, n: int) -> int:
    """Tokens in a bin: the top ceil(fraction n), at least one, at most n."""
    return min(n, max(1, math.ceil(fraction * n - 1e-9)))


def curve_size(fraction: float, n: int) -> int:
    """Tokens removed (or put back) at a curve point: round(fraction n), halves up."""
    return min(n, max(0, math.floor(fraction * n + 0.5)))


def ranking(scores: np.ndarray, ordinary: np.ndarray) -> np.ndarray:
    """The ordinary positions ordered by score, highest first (ties in text order; a score
    that is not finite last)."""
    s = np.asarray(scores, np.float64)[ordinary]
    key = np.where(np.isfinite(s), s, -np.inf)
    return ordinary[np.argsort(-key, kind="stable")]


def removals(model: TextModel, tokens: Tokens, scores: np.ndarray, target: int | Target | None,
             bins: Sequence[float], fractions: Sequence[float], score: str = "probability",
             baseline: str = "pad") -> Work[TextFaithfulness]:
    """The work of evaluating one ranking of one text: ``scores`` [len(tokens)] rank its
    ordinary tokens; ``target`` is the explained class (None: the predicted one), or a
    per-token model's target (its positions and labels). Every removal is a row of one
    Forward request."""
    ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)
    x = model.embed(ids)
    special = np.concatenate([tokens.special, np.ones(len(ids) - len(tokens), bool)])
    base = np.concatenate([make_baseline(baseline, model.tokenizer, model.table, tokens, x[:len(tokens)]),
                           x[len(tokens):]])
    ordinary = np.flatnonzero(~special)
    n = len(ordinary)
    if n == 0:
        raise InputError("the text has no ordinary tokens to remove")
    full = np.zeros(len(ids))
    full[:len(tokens)] = scores
    order = ranking(full, ordinary)
    index: dict[bytes, int] = {}
    masks: list[np.ndarray] = []

    def row(removed: np.ndarray) -> int:
        """The row of the copy of x with ``removed`` positions set to the baseline."""
        m = np.zeros(len(ids), bool)
        m[removed] = True
        key = m.tobytes()
        if key not in index:
            index[key] = len(masks)
            masks.append(m)
        return index[key]

    whole, empty = row(ordinary[:0]), row(ordinary)
    loo = [row(ordinary[i:i + 1]) for i in range(n)]
    ks = [bin_size(b, n) for b in bins]
    comp, suff = [row(order[:k]) for k in ks], [row(order[k:]) for k in ks]
    kc = [curve_size(q, n) for q in fractions]
    dele, ins = [row(order[:k]) for k in kc], [row(order[k:]) for k in kc]
    stacked = np.stack(masks)

    def copies(start: int, stop: int) -> np.ndarray:
        return np.where(stacked[start:stop, :, None], base[None], x[None])

    outputs = yield from ask(Forward(Seq(ids, type_ids, mask), LazyPoints(len(masks), copies),
                                     "faithfulness forward passes"))
    if not np.isfinite(outputs).all():
        raise ModelError("the model's output is not finite on a copy of this text with tokens removed")
    if isinstance(target, Target):  # a per-token output, flat [rows, S * L]: the target's labels summed
        width = outputs.shape[1] // len(ids)
        if width == 1 and score != "logit":
            raise UsageError(f"the model has one score per token: its {score} is constant; evaluate with "
                             f"score='logit'")
        t = target.labels[0]
        f = TokenWeights(target.weights(len(ids), width), score).scalar(outputs)
    else:
        n_classes = outputs.shape[1]
        if n_classes == 1 and score != "logit":
            raise UsageError(f"the model has one output: its {score} is constant; evaluate with score='logit'")
        t = int(np.argmax(outputs[whole])) if target is None else target
        if not 0 <= t < n_classes:
            raise ModelError(f"class {t} is not among the model's {n_classes} outputs")
        f = SCORES[score](outputs)[:, t]
    fx = float(f[whole])
    loo_values = fx - f[loo]
    return TextFaithfulness(t, fx, float(f[empty]), fx - f[comp], fx - f[suff], f[dele], f[ins], loo_values,
                            spearman(full[ordinary], loo_values))


def trapezoid(x: Sequence[float] | np.ndarray, y: np.ndarray) -> float:
    """The trapezoid rule's area under y over x."""
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return float(np.sum((ys[1:] + ys[:-1]) / 2 * np.diff(xs)))


def faithfulness(model: TextModel, texts: Iterable[str], methods: Sequence[ExplainConfig | str],
                 bins: Sequence[float] = BINS, curve_points: int = CURVE_POINTS, score: str = "probability",
                 baseline: str = "pad", seed: int = 0, window: int = 64, shapley_tokens: int = SHAPLEY_TOKENS,
                 top_k: int = TOP_K) -> Faithfulness:
    """Evaluate how faithful each method's explanations are on ``texts`` (see the module
    docstring). ``methods``: configs, method names (default settings) or ``"random"``.
    ``score``: what f is; ``baseline``: what removed tokens become; ``seed``: the random
    reference's draws; ``shapley_tokens``: the longest text (ordinary tokens, 0 to
    MAX_PLAYERS; 0: none) compared with exact Shapley values, ``top_k`` their top-k overlap.
    UsageError for bad settings; a text that fails is counted, not raised."""
    items = list(texts)
    configs = method_configs(methods)
    bins_t = tuple(float(b) for b in bins)
    if not bins_t or not all(0 < b <= 1 for b in bins_t):
        raise UsageError(f"bins are fractions of the tokens in (0, 1], got {list(bins)}")
    if isinstance(curve_points, bool) or not isinstance(curve_points, int) or \
            not 2 <= curve_points <= MAX_CURVE_POINTS:
        raise UsageError(f"curve_points must be an integer from 2 to {MAX_CURVE_POINTS}, got {curve_points!r}")
    if score not in SCORES:
        raise unknown_choice("score", score, SCORES)
    for name, value, low, high in (("shapley_tokens", shapley_tokens, 0, MAX_PLAYERS), ("top_k", top_k, 1, 1000)):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise UsageError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    if model.features is not None:
        raise UsageError(f"faithfulness removes tokens by replacing their embeddings; a {model.features.kind} "
                         f"model's input is one vector of features, with no token embeddings")
    baseline_token(model.tokenizer, baseline)  # a baseline the tokenizer lacks fails now, not per text
    fractions = tuple(float(q) for q in np.linspace(0.0, 1.0, curve_points))
    real = [c for c in configs if c is not None]
    units: Sequence[str | TextTarget] = items
    found_notes: list[str] = []
    if model.task == "per-token":
        units, found_notes = per_token_items(model, items, real[0] if real else ExplainConfig(), window)
    _warm_up(model, units, real)

    explained: list[list[tuple[Tokens, np.ndarray, int | Target | None, Explanation | None] | SalError]] = []
    timing: list[tuple[float, float]] = []
    for cfg in configs:
        if cfg is None:
            explained.append([_random(model, unit, seed, k) for k, unit in enumerate(units)])
            timing.append((0.0, 0.0))
            continue
        wall, cpu = time.perf_counter(), time.process_time()
        done = list(drive_many((_explained(model, unit, cfg) for unit in units), runner(model, cfg), window))
        timing.append((time.perf_counter() - wall, time.process_time() - cpu))
        explained.append([d if isinstance(d, SalError) else
                          (d[0], _scores(d[1]), unit.target if isinstance(unit, TextTarget) else d[1].target.index,
                           d[1]) for unit, d in zip(units, done, strict=True)])

    works = [removals(model, e[0], e[1], e[2], bins_t, fractions, score, baseline)
             for per_method in explained for e in per_method if not isinstance(e, SalError)]
    run_cfg = real[0] if real else ExplainConfig()
    evaluated = iter(drive_many(works, runner(model, run_cfg), window))
    outcomes: list[list[Evaluated | SalError]] = []
    for per_method in explained:
        per_text: list[Evaluated | SalError] = []
        for k, e in enumerate(per_method):
            if isinstance(e, SalError):
                per_text.append(e)
                continue
            result = next(evaluated)
            per_text.append(result if isinstance(result, SalError) else Evaluated(k, e[0], e[1], result, e[3]))
        outcomes.append(per_text)
    reference = exact_references(model, outcomes, configs, score, baseline, shapley_tokens, run_cfg, window, units)
    rows: list[MethodFaithfulness] = []
    for name, cfg, per_text, (wall, cpu) in zip(row_names(configs), configs, outcomes, timing, strict=True):
        pairs: list[tuple[TextFaithfulness, Explanation | None]] = []
        failures: Counter[str] = Counter()
        agreement: list[tuple[float | None, float]] = []
        made = sum(1 for e in explained[len(rows)] if not isinstance(e, SalError))
        for item in per_text:
            if isinstance(item, SalError):
                failures[str(item)] += 1
                continue
            pairs.append((item.result, item.explanation))
            exact = reference.get((item.text, item.result.target, score if cfg is None else cfg.score))
            if exact is not None:
                ordinary = np.flatnonzero(~np.asarray(item.tokens.special))
                agreement.append(shapley_agreement(item.scores[ordinary], exact[ordinary], top_k))
        row = _row(name, cfg, pairs, failures, fractions, wall, cpu, made)
        rho, _ = mean_defined(a[0] for a in agreement)
        rows.append(replace(row, shapley_spearman=rho, shapley_texts=len(agreement),
                            shapley_top_k=float(np.mean([a[1] for a in agreement])) if agreement else None))
    per_token = model.task == "per-token"
    notes: tuple[str, ...] = (*found_notes, (
        f"f is the {score} of each target's label (summed over its positions)" if per_token else
        f"f is the {score} of the explained class (each method's target: the predicted class unless its config "
        f"names one)") + f"; removed tokens take the {baseline} baseline embedding")
    if any(c is None for c in configs):
        notes += (f"{RANDOM}: token scores drawn uniformly at random (seed {seed}), the reference a method "
                  f"should beat",)
    if shapley_tokens:
        notes += (f"exact Shapley: the reference values of the tokens of texts of at most {shapley_tokens} "
                  f"ordinary tokens ({len({key[0] for key in reference})} text(s)), in each method's own score "
                  f"for the class it explained, tokens removed as above; top-k overlap with k = {top_k}",)
    return Faithfulness(model.name, score, baseline, bins_t, fractions, len(units), tuple(rows), notes,
                        shapley_tokens, top_k, "targets" if per_token else "texts")


def shapley_agreement(scores: np.ndarray, exact: np.ndarray, top_k: int) -> tuple[float | None, float]:
    """Spearman's rho of scores and exact Shapley values [n] (None where undefined) and the
    overlap of their top k (k = min(top_k, n); ties in text order, as the rankings above)."""
    k = min(top_k, scores.size)
    everyone = np.arange(scores.size)
    top = set(ranking(scores, everyone)[:k].tolist()) & set(ranking(exact, everyone)[:k].tolist())
    return spearman(scores, exact), len(top) / k if k else 0.0


def exact_references(model: TextModel,
                     outcomes: Sequence[Sequence[Evaluated | SalError]],
                     configs: Sequence[ExplainConfig | None], score: str, baseline: str, limit: int,
                     run_cfg: ExplainConfig, window: int,
                     units: Sequence[str | TextTarget] = ()) -> dict[tuple[int, int, str], np.ndarray]:
    """Exact Shapley token values per (text, target, score) that some method needs, for the
    texts of at most ``limit`` ordinary tokens: one explanation each, through the engine
    (a per-token model's: of the target ``units[text]``, for its positions and labels)."""
    wanted: dict[tuple[int, int, str], Tokens] = {}
    for cfg, done in zip(configs, outcomes, strict=True):
        for d in done:
            if not isinstance(d, SalError) and 0 < int(np.sum(~np.asarray(d.tokens.special))) <= limit:
                wanted.setdefault((d.text, d.result.target, score if cfg is None else cfg.score), d.tokens)
    keys = list(wanted)
    cfgs = [ExplainConfig(method="shapley", players="tokens", baseline=baseline, score=key[2], target=key[1],
                          batch_size=run_cfg.batch_size, tokens_per_run=run_cfg.tokens_per_run).validated()
            for key in keys]
    works = [_reference(model, units[key[0]] if units else None, wanted[key], key[1], cfg)
             for key, cfg in zip(keys, cfgs, strict=True)]
    out: dict[tuple[int, int, str], np.ndarray] = {}
    for key, made in zip(keys, drive_many(works, runner(model, run_cfg), window), strict=True):
        if not isinstance(made, SalError):
            out[key] = _scores(made)
    return out


def _reference(model: TextModel, unit: str | TextTarget | None, tokens: Tokens, target: int,
               cfg: ExplainConfig) -> Work[Explanation]:
    """The exact Shapley values' work: of a per-token target for its positions and labels, else
    of the class ``target``."""
    if isinstance(unit, TextTarget):
        return target_explanation(model, unit, cfg)
    return explanation(model, tokens, cfg, ClassQuestion(target))


def method_configs(methods: Sequence[ExplainConfig | str]) -> list[ExplainConfig | None]:
    if isinstance(methods, str | ExplainConfig) or not methods:
        raise UsageError("methods: a non-empty list of ExplainConfig, method names or 'random'")
    out: list[ExplainConfig | None] = []
    for m in methods:
        if m == RANDOM:
            out.append(None)
            continue
        cfg = ExplainConfig(method=m) if isinstance(m, str) else m
        if cfg.method not in METHODS:
            raise unknown_choice("method", cfg.method, [*METHODS, RANDOM])
        cfg = cfg.validated()
        if cfg.direction is not None:
            raise UsageError("faithfulness explains a class's score, not a projection (direction)")
        out.append(cfg)
    return out


def row_names(configs: Sequence[ExplainConfig | None]) -> list[str]:
    """Row labels: the method, with the settings that differ from the defaults where two rows
    share a method (and a number where even those agree)."""
    plain = [RANDOM if c is None else c.method for c in configs]
    default = ExplainConfig()
    names = []
    for name, cfg in zip(plain, configs, strict=True):
        if cfg is None or plain.count(name) == 1:
            names.append(name)
            continue
        diffs = [f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg)
                 if f.name != "method" and getattr(cfg, f.name) != getattr(default, f.name)]
        names.append(f"{name} ({', '.join(diffs)})" if diffs else name)
    return [n if names.count(n) == 1 else f"{n} #{names[:k + 1].count(n)}" for k, n in enumerate(names)]


def _warm_up(model: TextModel, texts: Sequence[str | TextTarget], configs: Sequence[ExplainConfig]) -> None:
    """Load the sessions (and the gradient graph, built or read once) before anything is timed."""
    first = next((t for t in texts if isinstance(t, TextTarget) or t.strip()), None)
    if first is None or not configs:
        return
    backends = {c.backend for c in configs if METHODS[c.method].needs_derivatives} or {"auto"}
    for backend in sorted(backends):
        method = "grad-x-input" if any(METHODS[c.method].needs_derivatives for c in configs) else "occlusion"
        cfg = ExplainConfig(method=method, backend=backend, score=configs[0].score,
                            batch_size=configs[0].batch_size, tokens_per_run=configs[0].tokens_per_run)
        try:
            drive_one(target_explanation(model, first, cfg) if isinstance(first, TextTarget) else
                      text_explanation(model, first, cfg), runner(model, cfg))
        except SalError:
            pass  # the timed pass meets the same error and counts it
    for rules in sorted({METHODS[c.method].rules for c in configs} - {"gradient"}):  # LRP's own graphs
        try:
            rules_session(model, rules)
        except SalError:
            pass


def _explained(model: TextModel, text: str | TextTarget, cfg: ExplainConfig) -> Work[tuple[Tokens, Explanation]]:
    if isinstance(text, TextTarget):  # its tokens within the limit: its targets were found on them
        return text.tokens, (yield from target_explanation(model, text, cfg))
    tokens = tokenize(model.tokenizer, text, None, cfg.max_chars)
    if model.max_length is not None and len(tokens) > model.max_length:
        raise InputError(f"the text has {len(tokens)} tokens; the model takes at most {model.max_length} "
                         f"(faithfulness does not explain in windows)")
    done = yield from explanation(model, tokens, cfg, ClassQuestion())
    return tokens, done


def _random(model: TextModel, text: str | TextTarget, seed: int,
            k: int) -> tuple[Tokens, np.ndarray, int | Target | None, Explanation | None] | SalError:
    if isinstance(text, TextTarget):
        return text.tokens, np.random.default_rng([seed, k]).uniform(size=len(text.tokens)), text.target, None
    try:
        tokens = tokenize(model.tokenizer, text, None)
        if model.max_length is not None and len(tokens) > model.max_length:
            raise InputError(f"the text has {len(tokens)} tokens; the model takes at most {model.max_length} "
                             f"(faithfulness does not explain in windows)")
    except SalError as exc:
        return exc
    return tokens, np.random.default_rng([seed, k]).uniform(size=len(tokens)), None, None


def _scores(e: Explanation) -> np.ndarray:
    return np.array([t.score for t in e.tokens], np.float64)


def _row(name: str, cfg: ExplainConfig | None, pairs: list[tuple[TextFaithfulness, Explanation | None]],
         failures: Counter[str], fractions: tuple[float, ...], wall: float, cpu: float,
         made: int) -> MethodFaithfulness:
    results = [r for r, _ in pairs]
    explanations = [e for _, e in pairs if e is not None]

    def mean(attr: str) -> tuple[float, ...]:
        return tuple(float(v) for v in np.mean([getattr(r, attr) for r in results], axis=0)) if results else ()

    comp, suff, dele, ins = mean("comprehensiveness"), mean("sufficiency"), mean("deletion"), mean("insertion")
    loo, loo_n = mean_defined(r.loo_spearman for r in results)
    ratios = [abs(e.convergence_delta) / abs(e.target_value - e.baseline_value) for e in explanations
              if e.convergence_delta is not None and e.baseline_value is not None
              and abs(e.target_value - e.baseline_value) > 0]
    grads = [e.provenance.gradient_passes for e in explanations if e.provenance.gradient_passes is not None]
    real = cfg is not None and made > 0
    return MethodFaithfulness(
        name=name, method=RANDOM if cfg is None else cfg.method, config=cfg,
        backend=",".join(sorted({e.backend for e in explanations})) or None, texts=len(results),
        failures=tuple(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))),
        comprehensiveness=comp, sufficiency=suff,
        comprehensiveness_aopc=float(np.mean(comp)) if comp else None,
        sufficiency_aopc=float(np.mean(suff)) if suff else None,
        deletion=dele, insertion=ins,
        deletion_area=trapezoid(fractions, np.array(dele)) if dele else None,
        insertion_area=trapezoid(fractions, np.array(ins)) if ins else None,
        loo_spearman=loo, loo_texts=loo_n,
        completeness_mean=float(np.mean(ratios)) if ratios else None,
        completeness_max=float(np.max(ratios)) if ratios else None, completeness_texts=len(ratios),
        seconds_per_text=wall / made if real else None, cpu_seconds_per_text=cpu / made if real else None,
        forward_passes=float(np.mean([e.provenance.forward_passes for e in explanations])) if explanations else None,
        gradient_passes=float(np.mean(grads)) if grads else None)


# ---------------------------------------------------------------------------------------------
# rendering


def fmt_number(value: float | None, digits: int = 4) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    if value != 0 and (abs(value) < 10 ** -(digits - 1) or abs(value) >= 10**6):
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}f}"


def _percent(b: float) -> str:
    return f"{b * 100:g}%"


def faithfulness_table(result: Faithfulness) -> str:
    """The methods side by side in one plain-text table (a column per method)."""
    ms = result.methods
    lines: list[tuple[str, list[str]]] = []

    def add(label: str, values: Iterable[str]) -> None:
        lines.append((label, list(values)))

    def section(label: str) -> None:
        lines.append((label, [""] * len(ms)))

    add("texts evaluated", (f"{m.texts}" for m in ms))
    add("texts failed", (f"{m.failed}" for m in ms))
    add("backend", (m.backend or "-" for m in ms))
    section("comprehensiveness (higher is better)")
    for k, b in enumerate(result.bins):
        add(f"  {_percent(b)}", (fmt_number(m.comprehensiveness[k]) if m.comprehensiveness else "-" for m in ms))
    add("  AOPC", (fmt_number(m.comprehensiveness_aopc) for m in ms))
    section("sufficiency (lower is better)")
    for k, b in enumerate(result.bins):
        add(f"  {_percent(b)}", (fmt_number(m.sufficiency[k]) if m.sufficiency else "-" for m in ms))
    add("  AOPC", (fmt_number(m.sufficiency_aopc) for m in ms))
    add("deletion area (lower is better)", (fmt_number(m.deletion_area) for m in ms))
    add("insertion area (higher is better)", (fmt_number(m.insertion_area) for m in ms))
    add("leave-one-out Spearman", (fmt_number(m.loo_spearman, 3) for m in ms))
    if result.shapley_tokens:
        add(f"exact-Shapley Spearman (<= {result.shapley_tokens} tokens)", (fmt_number(m.shapley_spearman, 3)
                                                                             for m in ms))
        add(f"exact-Shapley top-{result.top_k} overlap", (fmt_number(m.shapley_top_k, 3) for m in ms))
        add("texts compared with exact Shapley", (f"{m.shapley_texts}" for m in ms))
    add("completeness |delta| / |f(x)-f(x')| mean", (fmt_number(m.completeness_mean, 3) for m in ms))
    add("completeness |delta| / |f(x)-f(x')| max", (fmt_number(m.completeness_max, 3) for m in ms))
    add("seconds per explanation", (fmt_number(m.seconds_per_text, 4) for m in ms))
    add("CPU seconds per explanation", (fmt_number(m.cpu_seconds_per_text, 4) for m in ms))
    add("forward passes per explanation", (fmt_number(m.forward_passes, 1) for m in ms))
    add("gradient passes per explanation", (fmt_number(m.gradient_passes, 1) for m in ms))
    left = max(len(label) for label, _ in lines)
    widths = [max(len(m.name), *(len(v[k]) for _, v in lines)) for k, m in enumerate(ms)]
    what = "each target's labels" if result.unit == "targets" else "the explained class"
    header = (f"faithfulness of {result.model} on {result.texts} {result.unit} | f = {result.score} of {what} | "
              f"removed tokens -> {result.baseline} embedding")
    out = [header, "", " " * left + "  " + "  ".join(m.name.rjust(w) for m, w in zip(ms, widths, strict=True))]
    out += [(label.ljust(left) + "  " + "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))).rstrip()
            for label, values in lines]
    failed = [(m.name, reason, count) for m in ms for reason, count in m.failures]
    if failed:
        out += ["", "failed texts:"] + [f"  {name}: {count} x {reason}" for name, reason, count in failed]
    out += ["", *(f"note: {n}" for n in result.notes)]
    return "\n".join(out)


def json_float(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def faithfulness_dict(result: Faithfulness) -> dict[str, Any]:
    """The result as JSON-ready values (numbers that are not finite, and missing ones, are None)."""
    def floats(values: Iterable[float]) -> list[float | None]:
        return [json_float(v) for v in values]

    return {
        "model": result.model, "score": result.score, "baseline": result.baseline,
        "bins": list(result.bins), "fractions": list(result.fractions), "texts": result.texts, "unit": result.unit,
        "shapley_tokens": result.shapley_tokens, "top_k": result.top_k,
        "methods": [{
            "name": m.name, "method": m.method, "backend": m.backend,
            "settings": None if m.config is None else {f.name: getattr(m.config, f.name) for f in fields(m.config)
                                                      if f.name not in ("direction", "progress")},
            "texts": m.texts, "failed": m.failed,
            "failures": [{"reason": reason, "count": count} for reason, count in m.failures],
            "comprehensiveness": floats(m.comprehensiveness), "sufficiency": floats(m.sufficiency),
            "comprehensiveness_aopc": json_float(m.comprehensiveness_aopc),
            "sufficiency_aopc": json_float(m.sufficiency_aopc),
            "deletion": floats(m.deletion), "insertion": floats(m.insertion),
            "deletion_area": json_float(m.deletion_area), "insertion_area": json_float(m.insertion_area),
            "loo_spearman": json_float(m.loo_spearman), "loo_texts": m.loo_texts,
            "shapley_spearman": json_float(m.shapley_spearman), "shapley_top_k": json_float(m.shapley_top_k),
            "shapley_texts": m.shapley_texts,
            "completeness_mean": json_float(m.completeness_mean), "completeness_max": json_float(m.completeness_max),
            "completeness_texts": m.completeness_texts,
            "seconds_per_text": json_float(m.seconds_per_text),
            "cpu_seconds_per_text": json_float(m.cpu_seconds_per_text),
            "forward_passes": json_float(m.forward_passes), "gradient_passes": json_float(m.gradient_passes),
        } for m in result.methods],
        "notes": list(result.notes),
    }


def faithfulness_plot(result: Faithfulness, path: str | Path) -> Path:
    """Draw the deletion and insertion curves of every method side by side, and each method's
    agreement with exact Shapley values (or, where no text was short enough, its
    comprehensiveness AOPC) against its seconds per explanation, to ``path`` (the format
    follows its suffix: .png, .svg, .pdf). Needs matplotlib (the ``plot`` extra)."""
    from blackbox_sal.render import palette

    fig = figure_class()(figsize=(15, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[1].sharey(axes[0])
    for ax, attr, area, title in ((axes[0], "deletion", "deletion_area", "deletion (lower is better)"),
                                  (axes[1], "insertion", "insertion_area", "insertion (higher is better)")):
        for k, m in enumerate(result.methods):
            curve = getattr(m, attr)
            if curve:  # Okabe and Ito's colour-blind safe colours, one per method (render.palette)
                floor = m.name == "random"  # the floor every method should beat: grey, dashed
                ax.plot(result.fractions, curve, marker="o", markersize=3, linestyle="--" if floor else "-",
                        color="#777777" if floor else palette.CATEGORICAL[k % len(palette.CATEGORICAL)],
                        label=f"{m.name} ({fmt_number(getattr(m, area), 3)})")
        ax.set_title(title)
        ax.set_xlabel("fraction of tokens, in rank order")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", title="method (area)", title_fontsize="small")
    axes[0].set_ylabel(f"{result.score} of the explained class")
    _cost_panel(axes[2], result)
    fig.suptitle(f"{result.model}: {result.texts} {result.unit}, removed tokens -> {result.baseline}")
    return save_figure(fig, path)


def _cost_panel(ax: Any, result: Faithfulness) -> None:
    """Each method as a point: seconds per explanation (log) against its exact-Shapley Spearman
    (else its comprehensiveness AOPC)."""
    shapley = any(m.shapley_spearman is not None for m in result.methods)
    for m in result.methods:
        y = m.shapley_spearman if shapley else m.comprehensiveness_aopc
        if m.seconds_per_text is None or y is None or m.seconds_per_text <= 0:
            continue
        ax.scatter([m.seconds_per_text], [y], s=25)
        ax.annotate(m.name, (m.seconds_per_text, y), fontsize="small", xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(_null_formatter())
    ax.set_xlabel("seconds per explanation")
    ax.set_ylabel("Spearman with exact Shapley" if shapley else "comprehensiveness AOPC")
    ax.set_title("faithfulness against cost (up and left is better)")
    ax.grid(alpha=0.3)


def _null_formatter() -> Any:
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise UsageError('plots need matplotlib: pip install "blackbox-sal[plot]"') from exc
    return Figure


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write a matplotlib figure; UsageError when the file cannot be written."""
    out = Path(path)
    try:
        fig.savefig(out)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot write the plot {str(out)!r}: {exc}") from exc
    return out
