"""The one-hot view of a token model's gradient (seed 000): what if token i were another word?

A token enters the model as a one-hot row times the embedding table, so the gradient with
respect to the one-hot entry (i, v) is grad_i . E_v (grad_i = d f / d x_i, E_v = row v of the
table), and the first-order estimate of the change in f when token i is replaced by word v is

    est(i, v) = (E_v - E_{x_i}) . grad_i

(zero for v = the token itself; grad x input with the sum reduction is grad_i . E_{x_i}, the
one-hot gradient at the token present). :func:`swaps` computes it for the whole vocabulary at
once, grad [P, D] @ table^T [D, V] over the text's P ordinary positions, ``chunk`` vocabulary
rows at a time so memory stays [P, chunk] whatever the vocabulary, and keeps per position the
``top`` candidates by

    ``both`` (default)  |est|: the largest predicted changes, either way;
    ``increase``        est, largest first: the swaps predicted to raise f most;
    ``decrease``        -est: the swaps predicted to lower f most.

Candidates are every vocabulary entry except the tokenizer's special tokens ([PAD], [UNK],
[CLS]...) and the token itself; special positions of the text are not swapped. Each kept
candidate is then checked: the token ids with id v at position i, re-embedded from the table
and run (all candidates of the text in one round of runs), giving the actual change
f(x with i -> v) - f(x), and whether the prediction changes. The result reports, over all
checked candidates, Pearson's correlation of estimated and actual changes and how often their
signs agree. f is the class score explained (``config.target``/``score``, else the predicted
class's logit), as for :func:`blackbox_sal.explain`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from blackbox_sal.api.explaining import ClassQuestion, ProjectionQuestion, Question, runner
from blackbox_sal.engine.drive import drive_one
from blackbox_sal.evaluation.common import gradients_at, graph_unavailable, pearson
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.text.tokenization import tokenize
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import InputError, ModelError, UsageError
from blackbox_sal.vocabulary.result import Label, Prediction
from blackbox_sal.vocabulary.runs import ArrayPoints, Forward, Seq, Work, ask, ask_all

#: how candidates are ranked per position
DIRECTIONS = ("both", "increase", "decrease")
#: vocabulary rows scored at once (memory: positions x CHUNK floats)
CHUNK = 4096
#: the most candidates per position
MAX_TOP = 100


@dataclass(frozen=True)
class Substitution:
    """Word ``token`` (vocabulary id ``id``) in place of a position's token: the estimated and
    the actual change in f, and the predicted class after the swap."""

    id: int
    token: str
    estimate: float
    actual: float
    prediction: Label

    @property
    def error(self) -> float:
        return self.estimate - self.actual


@dataclass(frozen=True)
class Position:
    """A token of the text (position ``index``; characters [start, end) of the text; its id
    and vocabulary entry) and its best substitutions, ranked."""

    index: int
    text: str
    start: int
    end: int
    id: int
    token: str
    substitutions: tuple[Substitution, ...]


@dataclass(frozen=True)
class Swaps:
    """The one-hot view of one text (see the module docstring). candidates: vocabulary
    entries considered per position; correlation: Pearson of estimated and actual changes
    over every checked substitution (None with fewer than 2); sign_agreement: the share whose
    signs agree; flips: the substitutions that change the prediction."""

    text: str
    model: str
    backend: str
    target: Label
    prediction: Prediction
    target_value: float
    score: str
    direction: str
    top: int
    candidates: int
    positions: tuple[Position, ...]
    correlation: float | None
    sign_agreement: float | None
    notes: tuple[str, ...] = ()

    @property
    def substitutions(self) -> tuple[tuple[Position, Substitution], ...]:
        return tuple((p, s) for p in self.positions for s in p.substitutions)

    @property
    def flips(self) -> int:
        return sum(s.prediction.index != self.prediction.index for _, s in self.substitutions)


def special_ids(model: TextModel) -> np.ndarray:
    """Vocabulary ids of the tokenizer's special tokens (never candidates)."""
    ids = [k for k, token in model.tokenizer.get_added_tokens_decoder().items() if token.special]
    return np.array([k for k in ids if 0 <= k < model.table.shape[0]], np.int64)


def top_candidates(grad: np.ndarray, current: np.ndarray, table: np.ndarray, excluded: np.ndarray, top: int,
                   direction: str = "both", chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """For positions with gradients grad [P, D] and current token ids [P]: the ``top``
    candidate ids [P, k] by the ``direction`` ranking of est = (E_v - E_current) . grad, and
    their estimates [P, k] (float64), best first. ``excluded`` ids (and each position's own)
    are never candidates; the vocabulary is scored ``chunk`` rows at a time."""
    n_pos, vocab = grad.shape[0], table.shape[0]
    g32 = np.ascontiguousarray(grad, np.float32)
    base = np.einsum("pd,pd->p", g32.astype(np.float64), table[current].astype(np.float64))
    keep = min(top, vocab)
    best_key = np.full((n_pos, 0), -np.inf)
    best_id = np.zeros((n_pos, 0), np.int64)
    rows = np.arange(n_pos)[:, None]
    for start in range(0, vocab, chunk):
        stop = min(vocab, start + chunk)
        est = (g32 @ table[start:stop].T).astype(np.float64) - base[:, None]  # [P, stop - start]
        key = np.abs(est) if direction == "both" else est if direction == "increase" else -est
        key[:, excluded[(excluded >= start) & (excluded < stop)] - start] = -np.inf
        own = (current >= start) & (current < stop)
        key[np.flatnonzero(own), current[own] - start] = -np.inf
        k = min(keep, stop - start)
        part = np.argpartition(-key, k - 1, axis=1)[:, :k]
        best_key = np.concatenate([best_key, key[rows, part]], axis=1)
        best_id = np.concatenate([best_id, part + start], axis=1)
        if best_key.shape[1] > keep:
            sel = np.argpartition(-best_key, keep - 1, axis=1)[:, :keep]
            best_key, best_id = best_key[rows, sel], best_id[rows, sel]
    order = np.lexsort((best_id, -best_key), axis=1) if n_pos else np.zeros((0, 0), np.int64)
    best_key, best_id = best_key[rows, order], best_id[rows, order]
    valid = np.isfinite(best_key)
    estimates = np.einsum("pkd,pd->pk", table[best_id].astype(np.float64) - table[current][:, None].astype(
        np.float64), grad.astype(np.float64))  # exact in float64 for the kept ones
    return np.where(valid, best_id, -1), np.where(valid, estimates, np.nan)


def swaps(model: TextModel, text: str, config: ExplainConfig | None = None, top: int = 5,
          direction: str = "both", chunk: int = CHUNK) -> Swaps:
    """The one-hot view of ``text``: per position, the ``top`` substitutions by first-order
    estimate (``direction``: both, increase, decrease), each checked by a run of the model
    (see the module docstring). ``config``: target, score, backend, batch size, max_chars."""
    cfg = (config or ExplainConfig()).validated()
    if direction not in DIRECTIONS:
        raise UsageError(f"direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= MAX_TOP:
        raise UsageError(f"top must be an integer from 1 to {MAX_TOP}, got {top!r}")
    if chunk < 1:
        raise UsageError("chunk must be at least 1")
    return drive_one(swaps_work(model, text, cfg, top, direction, chunk), runner(model, cfg))


def swaps_work(model: TextModel, text: str, cfg: ExplainConfig, top: int, direction: str,
               chunk: int = CHUNK) -> Work[Swaps]:
    """The work of :func:`swaps` (so many texts can share runs through the engine)."""
    if model.features is not None:
        raise UsageError(f"swaps replace tokens by other vocabulary words through their embeddings; {model.name} "
                         f"is a {model.features.kind} model (its features have no embeddings)")
    if model.task != "classification" and cfg.direction is None:
        raise UsageError(f"swaps explain a class score; {model.name} is a {model.task} model")
    tokens = tokenize(model.tokenizer, text, None, cfg.max_chars)
    if model.max_length is not None and len(tokens) > model.max_length:
        raise InputError(f"the text has {len(tokens)} tokens; the model takes at most {model.max_length}")
    ids, type_ids, mask = model.pad(tokens.ids, tokens.type_ids)
    x = model.embed(ids)
    seq = Seq(ids, type_ids, mask)
    outputs = yield from ask(Forward(seq, ArrayPoints(x[None]), "prediction"))
    if not np.isfinite(outputs).all():
        raise ModelError("the model's output on this text is not finite: nothing to explain")
    question: Question = (ProjectionQuestion(np.asarray(cfg.direction, np.float64)) if cfg.direction else
                          ClassQuestion())
    asked = question.answer(model, outputs, cfg)
    f_x = float(asked.objective.scalar(outputs)[0])
    unavailable = graph_unavailable(model, cfg.backend)
    grad = (yield from gradients_at(model, seq, x, asked.objective.seed(outputs), cfg, unavailable))[0]
    positions = np.flatnonzero(~tokens.special)
    excluded = special_ids(model)
    cand, est = top_candidates(grad[positions], ids[positions], model.table, excluded, top, direction, chunk)
    checks = [(p, k) for p in range(len(positions)) for k in range(cand.shape[1]) if cand[p, k] >= 0]
    requests = []
    for p, k in checks:
        swapped = ids.copy()
        swapped[positions[p]] = cand[p, k]
        requests.append(Forward(Seq(swapped, type_ids, mask), ArrayPoints(model.embed(swapped)[None]),
                                "substitutions"))
    results = yield from ask_all(requests)
    after = {check: out[0] for check, out in zip(checks, results, strict=True)}
    out_positions = []
    for p, i in enumerate(positions):
        subs = []
        for k in range(cand.shape[1]):
            if (p, k) not in after:
                continue
            o = after[(p, k)]
            predicted = int(np.argmax(o))
            subs.append(Substitution(int(cand[p, k]), _token(model, int(cand[p, k])), float(est[p, k]),
                                     float(asked.objective.scalar(o[None])[0]) - f_x,
                                     Label(predicted, model.label(predicted))))
        a, b = tokens.offsets[i]
        out_positions.append(Position(int(i), text[a:b], a, b, int(ids[i]), _token(model, int(ids[i])), tuple(subs)))
    estimates = np.array([s.estimate for p in out_positions for s in p.substitutions])
    actual = np.array([s.actual for p in out_positions for s in p.substitutions])
    notes: tuple[str, ...] = ()
    if unavailable is not None:
        notes += (f"the gradient came from finite differences: {unavailable}",)
    return Swaps(
        text=text, model=model.name, backend="graph" if unavailable is None else "fd", target=asked.target,
        prediction=asked.prediction, target_value=f_x, score=asked.objective.score, direction=direction, top=top,
        candidates=int(model.table.shape[0] - len(excluded) - 1), positions=tuple(out_positions),
        correlation=pearson(estimates, actual) if len(estimates) >= 2 else None,
        sign_agreement=float(np.mean(np.sign(estimates) == np.sign(actual))) if len(estimates) else None,
        notes=notes)


def _token(model: TextModel, index: int) -> str:
    return model.tokenizer.id_to_token(index) or f"<{index}>"


def swaps_dict(result: Swaps) -> dict[str, Any]:
    """JSON-ready."""
    return {
        "text": result.text, "model": result.model, "backend": result.backend,
        "target": {"index": result.target.index, "label": result.target.label},
        "prediction": {"index": result.prediction.index, "label": result.prediction.label},
        "target_value": result.target_value, "score": result.score, "direction": result.direction,
        "top": result.top, "candidates": result.candidates,
        "positions": [{"index": p.index, "text": p.text, "start": p.start, "end": p.end, "id": p.id,
                       "token": p.token,
                       "substitutions": [{"id": s.id, "token": s.token, "estimate": s.estimate, "actual": s.actual,
                                          "prediction": {"index": s.prediction.index, "label": s.prediction.label}}
                                         for s in p.substitutions]} for p in result.positions],
        "correlation": result.correlation, "sign_agreement": result.sign_agreement, "flips": result.flips,
        "notes": list(result.notes),
    }


def swaps_table(result: Swaps) -> str:
    """A readable table: per position, its substitutions with estimated and actual change."""
    rank = {"both": "|estimate|", "increase": "estimate, highest", "decrease": "estimate, lowest"}[result.direction]
    lines = [f"model {result.model} | swaps (the one-hot view) | backend {result.backend}",
             f"prediction: {result.prediction.label or result.prediction.index}   target: "
             f"{result.target.label or result.target.index}   f(x) = {result.target_value:.4g} ({result.score})",
             f"first-order change in f if token i became word v: (E_v - E_x_i) . grad_i, over {result.candidates:,} "
             f"vocabulary words; top {result.top} per token by {rank}; actual: the model re-run", ""]
    width = max([len(p.text) for p in result.positions] + [5])
    cw = max([len(s.token) for p in result.positions for s in p.substitutions] + [9])
    lines.append(f"  {'token':<{width}}  {'candidate':<{cw}} {'estimate':>9} {'actual':>9}  prediction")
    for p in result.positions:
        for k, s in enumerate(p.substitutions):
            flip = "" if s.prediction.index == result.prediction.index else "  (flips)"
            lines.append(f"  {p.text if k == 0 else '':<{width}}  {s.token:<{cw}} {s.estimate:+9.4f} {s.actual:+9.4f}"
                         f"  {s.prediction.label or s.prediction.index}{flip}")
    summary = f"{len(result.substitutions)} substitutions checked"
    if result.correlation is not None:
        summary += (f": Pearson(estimate, actual) = {result.correlation:.3f}, signs agree for "
                    f"{result.sign_agreement:.0%}")
    summary += f"; {result.flips} change the prediction"
    lines += ["", summary]
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def swaps_plot(result: Swaps, path: str | Path) -> Path:
    """Every checked substitution as a point: its first-order estimate against the actual
    change of f (the model re-run), with the line where they agree; blue points raise the
    target, red ones lower it, crosses change the prediction; the largest are named. PNG or
    SVG by suffix; needs matplotlib (the ``plot`` extra)."""
    from blackbox_sal.evaluation.faithfulness import figure_class, save_figure
    from blackbox_sal.render import palette

    fig = figure_class()(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    points = [(p, s) for p in result.positions for s in p.substitutions]
    for flips, marker, label in ((False, "o", "prediction kept"), (True, "X", "prediction changes")):
        chosen = [(p, s) for p, s in points if (s.prediction.index != result.prediction.index) == flips]
        if chosen:
            ax.scatter([s.estimate for _, s in chosen], [s.actual for _, s in chosen], marker=marker, s=40,
                       c=[palette.hex_of(palette.end_of(s.actual)) for _, s in chosen], edgecolors="black",
                       linewidths=0.4, label=label)
    values = [v for _, s in points for v in (s.estimate, s.actual)] or [1.0]
    lo, hi = min(min(values), 0.0), max(max(values), 0.0)
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--", label="estimate = actual")
    ax.axhline(0.0, color="black", linewidth=0.4)
    ax.axvline(0.0, color="black", linewidth=0.4)
    for p, s in sorted(points, key=lambda ps: -abs(ps[1].actual))[:8]:
        ax.annotate(f"{p.text} -> {s.token}", (s.estimate, s.actual), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    target = result.target.label or str(result.target.index)
    ax.set_xlabel(f"first-order estimate (E_v - E_x_i) . grad_i of the change in f ({result.score} of {target})")
    ax.set_ylabel(f"actual change in f (the model re-run): blue raises {target}, red lowers it")
    summary = f"{len(points)} substitutions"
    if result.correlation is not None:
        summary += f", Pearson {result.correlation:.3f}, signs agree {result.sign_agreement:.0%}"
    ax.set_title(f"{result.model}: one-token swaps of {result.text[:50]!r}\n{summary}", fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path)
