"""Owen values over the sentences, clauses and words of a text: exact, for texts too long for
exact Shapley values.

The players (words, or tokens: :mod:`blackbox_sal.methods.coalitions`) are grouped in a
hierarchy: sentences (ended by a token ``.``, ``!`` or ``?``), within them clauses (ended by
``,``, ``;`` or ``:``; the punctuation belongs to what it ends), within them the players.
The Owen value (Owen 1977; for more than two levels, Winter 1989's levels value) lets the
groups play a Shapley game among themselves and the members of a group a Shapley game within
it. With a_l the group holding player i at level l, S_l the siblings of a_l (its own group
included, k_l of them) and w(t, k) = t! (k - t - 1)! / k!:

    phi_i = sum over T_1 subset of S_1 \\ {a_1} ... sum over T_L subset of S_L \\ {i} of
            prod_l w(|T_l|, k_l)  (v(Q + i) - v(Q)),     Q = the players of T_1, ..., T_L

It is efficient (sum_i phi_i = f(x) - f(x')), gives a null player 0, is symmetric within a
group, and a group's total is the Shapley value of the game between the groups. A linear
model's values are its contributions, as with Shapley; with a single sentence of a single
clause it *is* the Shapley value of the words.

Cost: every distinct coalition Q and Q + i, in one Forward request: fewer than the
sum_i prod_l 2^(k_l - 1) terms times two, so a text of three sentences of three clauses of
five words takes hundreds of rows where exact Shapley values would take 2^45. Refused
(UsageError) above MAX_TERMS terms (one clause of 14 words; 2^15 clauses or sentences grow
it the same way) with a pointer to the sampling methods.
"""

from __future__ import annotations

from itertools import product
from math import factorial
from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.methods.attribution import Attribution, MethodSpec, Problem
from blackbox_sal.methods.coalitions import Players, empty_value, exact_report, no_players, players, spread, values
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.runs import Work

if TYPE_CHECKING:
    pass

SENTENCE_ENDS = frozenset(".!?")
CLAUSE_ENDS = frozenset(",;:")
#: the most terms (coalition pairs) Owen values may sum: one clause of 14 words has 14 x 2^13
MAX_TERMS = 131_072

Tree = list[list[list[int]]]  # sentences -> clauses -> players


def hierarchy(who: Players, pieces: tuple[str, ...] | None) -> Tree:
    """The players grouped into sentences of clauses, by the punctuation among the pieces
    (the text of each position; None: one sentence of one clause)."""
    tree: Tree = [[[]]]
    for j, members in enumerate(who.members):
        text = "" if pieces is None else "".join(pieces[int(p)] for p in members).strip()
        tree[-1][-1].append(j)
        if text and text[-1] in SENTENCE_ENDS:
            tree.append([[]])
        elif text and text[-1] in CLAUSE_ENDS:
            tree[-1].append([])
    cleaned = [[c for c in s if c] for s in tree]
    return [s for s in cleaned if s]


def weights(k: int) -> np.ndarray:
    """w(t, k) = t! (k - t - 1)! / k! for t = 0..k-1."""
    return np.array([factorial(t) * factorial(k - t - 1) / factorial(k) for t in range(k)])


def subsets(items: list[int]) -> list[tuple[int, ...]]:
    """Every subset of ``items``, as tuples."""
    return [tuple(x for x, keep in zip(items, bits, strict=True) if keep)
            for bits in product((False, True), repeat=len(items))]


def terms(tree: Tree, n: int) -> list[tuple[int, float, np.ndarray]]:
    """(player i, weight, coalition Q without i as bool [n]) for every term of every player's
    Owen value."""
    out = []
    for s, sentence in enumerate(tree):
        for c, clause in enumerate(sentence):
            for i in clause:
                levels = [([o for o in range(len(tree)) if o != s], len(tree)),
                          ([o for o in range(len(sentence)) if o != c], len(sentence)),
                          ([o for o in clause if o != i], len(clause))]
                for t_s, t_c, t_w in product(*(subsets(others) for others, _ in levels)):
                    q = np.zeros(n, bool)
                    for o in t_s:
                        q[[p for cl in tree[o] for p in cl]] = True
                    for o in t_c:
                        q[sentence[o]] = True
                    q[list(t_w)] = True
                    w = (weights(len(tree))[len(t_s)] * weights(len(sentence))[len(t_c)]
                         * weights(len(clause))[len(t_w)])
                    out.append((i, float(w), q))
    return out


def term_count(tree: Tree) -> int:
    """The terms of all the players' sums: prod_l 2^(k_l - 1) per player (each a pair of
    coalitions; distinct coalitions are far fewer)."""
    return sum(2 ** (len(tree) - 1) * 2 ** (len(sentence) - 1) * 2 ** (len(clause) - 1) * len(clause)
               for sentence in tree for clause in sentence)


def owen(problem: Problem) -> Work[Attribution]:
    """Owen values of the players over the text's sentences and clauses, split over tokens."""
    who = players(problem)
    if who.n == 0:
        return no_players(problem)
    tree = hierarchy(who, problem.pieces)
    count = term_count(tree)
    if count > MAX_TERMS:
        longest = max(len(c) for s in tree for c in s)
        raise UsageError(f"Owen values over {len(tree)} sentence(s) whose longest clause has {longest} "
                         f"{problem.config.players} sum {count:,} terms; at most {MAX_TERMS:,} (a clause of 14 "
                         f"{problem.config.players}): use --method kernel-shap or permutation (sampled)")
    v0 = yield from empty_value(problem, who)
    found = terms(tree, who.n)
    index: dict[bytes, int] = {}
    masks: list[np.ndarray] = []
    pairs = []
    for i, w, q in found:
        with_i = q.copy()
        with_i[i] = True
        rows = []
        for m in (with_i, q):
            key = m.tobytes()
            if key not in index:
                index[key] = len(masks)
                masks.append(m)
            rows.append(index[key])
        pairs.append((i, w, rows[0], rows[1]))
    stacked = np.stack(masks)
    full, empty = stacked.all(axis=1), ~stacked.any(axis=1)
    asked = ~(full | empty)
    v = np.where(full, problem.target_value, v0)
    v[asked] = yield from values(problem, who, stacked[asked])
    phi = np.zeros(who.n)
    for i, w, with_row, without_row in pairs:
        phi[i] += w * (v[with_row] - v[without_row])
    delta = float(phi.sum() - (problem.target_value - v0))
    note = (f"owen: {who.n} {problem.config.players} in {len(tree)} sentence(s) of "
            f"{sum(len(s) for s in tree)} clause(s); {int(asked.sum()):,} coalition rows",)
    return spread(problem, who, phi, None, note, baseline_value=v0, delta=delta)


OWEN = MethodSpec(
    owen, "exact Owen values over the sentences, clauses and words (long texts, where shapley refuses)", None,
    needs_derivatives=False, uses_baseline=True, baseline_value=True,
    report=exact_report)
