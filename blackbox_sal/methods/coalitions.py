"""Players and coalitions: what the Shapley and sampling methods share.

A **player** is a word (the default, ``players="words"``) or a token (``players="tokens"``)
of the input: the ordinary positions, those whose embedding differs from the baseline
(special tokens and padding equal their baseline and are never players). A **coalition**
z in {0, 1}^n is a copy of the input with the absent players' tokens replaced by the
baseline embedding, exactly as ``eval --removal`` removes tokens (``pad``, ``mask``,
``unk``, ``zero`` or a token: the config's ``baseline``); its value is v(z) = f(that copy).
v(1) = f(x) is the prediction's and v(0) = f(x'), all tokens removed.

A method returns one value per player; :func:`spread` lays it over the player's tokens in
equal shares, so the token scores merged to words (summed, ``--words``) give the word's
value back exactly. Coalition values are asked for as one :class:`~blackbox_sal.vocabulary.runs.Forward`
request whose rows are built lazily, a run at a time, so 2^14 copies never sit in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from blackbox_sal.methods.attribution import Attribution, Problem
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.runs import LazyPoints, Work

if TYPE_CHECKING:
    from blackbox_sal.vocabulary.config import ExplainConfig

#: the most coalition rows one explanation may ask for (samples x players)
MAX_ROWS = 1_000_000
#: bootstrap resamples for the standard errors of the regression methods
BOOTSTRAP = 200


@dataclass(frozen=True)
class Players:
    """The players of one input: ``members[j]`` holds the token positions of player j."""

    members: tuple[np.ndarray, ...]

    @property
    def n(self) -> int:
        return len(self.members)

    def assign(self, positions: int) -> np.ndarray:
        """int [S]: the player of each position, -1 for none."""
        owner = np.full(positions, -1, np.int64)
        for j, m in enumerate(self.members):
            owner[m] = j
        return owner


def players(problem: Problem) -> Players:
    """The players of ``problem``: its ordinary positions, grouped by word unless the config
    asks for tokens or the tokenizer gives no words (then each token plays alone)."""
    ordinary = np.flatnonzero(np.any(problem.x != problem.baseline, axis=1))
    words = problem.word_ids
    if problem.config.players == "tokens" or words is None:
        return Players(tuple(ordinary[k:k + 1] for k in range(ordinary.size)))
    # a word is a run of consecutive positions with one word id, as merge_words joins them (the
    # two texts of a pair number their words from 0 each)
    members: list[list[int]] = []
    for p in ordinary:
        w = int(words[p])
        if w >= 0 and members and members[-1][-1] == p - 1 and int(words[p - 1]) == w:
            members[-1].append(int(p))
        else:
            members.append([int(p)])
    return Players(tuple(np.array(m, np.int64) for m in members))


def values(problem: Problem, who: Players, masks: np.ndarray) -> Work[np.ndarray]:
    """v(z) for each row of ``masks`` (bool [m, n], True = present): float64 [m], one
    Forward request built a run at a time."""
    x, base = problem.x, problem.baseline
    owner = who.assign(x.shape[0])
    kept = owner >= 0

    def copies(start: int, stop: int) -> np.ndarray:
        present = np.ones((stop - start, x.shape[0]), bool)
        present[:, kept] = masks[start:stop][:, owner[kept]]
        return np.where(present[:, :, None], x[None], base[None])

    if masks.shape[0] == 0:
        return np.zeros(0)
    out = yield from problem.backend.values(LazyPoints(masks.shape[0], copies))
    return np.asarray(out, np.float64)


def empty_value(problem: Problem, who: Players) -> Work[float]:
    """v(0) = f(x'): the baseline's value (computed with the prediction when the method's
    spec asks for it; else one row)."""
    if problem.baseline_value is not None:
        return problem.baseline_value
    v = yield from values(problem, who, np.zeros((1, who.n), bool))
    return float(v[0])


def spread(problem: Problem, who: Players, phi: np.ndarray, errors: np.ndarray | None, notes: tuple[str, ...] = (),
           baseline_value: float | None = None, delta: float | None = None) -> Attribution:
    """Per-player values ``phi`` [n] (and standard errors) as per-token scores: each player's
    share split equally over its tokens (errors too: the shares of one estimate are fully
    correlated, so their sum is the player's error)."""
    scores = np.zeros(problem.x.shape[0])
    err = None if errors is None else np.zeros(problem.x.shape[0])
    for j, m in enumerate(who.members):
        scores[m] = phi[j] / m.size
        if err is not None and errors is not None:
            err[m] = errors[j] / m.size
    return Attribution(scores, None, baseline_value=baseline_value, delta=delta, notes=notes, errors=err)


def budget(problem: Problem, who: Players, per_player: int) -> int:
    """``samples`` x n rows, refused past MAX_ROWS (memory and time stay bounded)."""
    rows = per_player * who.n
    if rows > MAX_ROWS:
        raise UsageError(f"{problem.config.method} with samples={per_player} asks for {rows:,} model rows over "
                         f"{who.n} {problem.config.players}; at most {MAX_ROWS:,}: lower --samples")
    return rows


def no_players(problem: Problem) -> Attribution:
    """Every token equals its baseline: nothing to attribute."""
    return Attribution(np.zeros(problem.x.shape[0]), None, baseline_value=problem.target_value, delta=0.0,
                       notes=("the input equals the baseline: every score is 0",))


def exact_report(cfg: ExplainConfig, result: Attribution) -> dict[str, Any]:
    """The settings an exact method (shapley, owen) reports."""
    return {"players": cfg.players}


def sampled_report(cfg: ExplainConfig, result: Attribution) -> dict[str, Any]:
    """The settings a sampling method (kernel-shap, permutation, lime) reports."""
    return {"players": cfg.players, "samples": cfg.samples, "seed": cfg.seed}


def sample_sizes(n: int) -> np.ndarray:
    """The Shapley kernel's distribution over coalition sizes 1..n-1: p(k) proportional to
    (n - 1) / (k (n - k)) (the kernel weight times C(n, k) coalitions of that size)."""
    k = np.arange(1, n)
    p = (n - 1) / (k * (n - k))
    return np.asarray(p / p.sum(), np.float64)


def random_masks(rng: np.random.Generator, n: int, sizes: Sequence[int] | np.ndarray) -> np.ndarray:
    """One uniformly random coalition of each size in ``sizes``: bool [len(sizes), n]."""
    order = np.argsort(rng.random((len(sizes), n)), axis=1)
    ranks = np.argsort(order, axis=1)
    return np.asarray(ranks < np.asarray(sizes)[:, None])
