"""Diagnostics that speak up: checks of an attribution that deserve a note (pure functions).

- **Special tokens dominate**: the special tokens ([CLS], [SEP], BOS...) hold more than
  :data:`SPECIAL_SHARE` (half) of the scores' total size, sum |score|. Gradient norms and
  grad x input often put much of the mass there; it says more about how the model uses those
  positions than about the words. (IG and occlusion score special tokens 0: they keep their
  own embedding in the baseline.)
- **IG has not converged**: |completeness delta| above :data:`UNCONVERGED` (5%) of
  |f(x) - f(x')|, the rule of :mod:`blackbox_sal.methods.integrated_gradients`, whose note
  points to ``--steps auto``; :func:`ig_unconverged` applies the same rule to any result, e.g.
  to count such texts over a dataset.
- **Input equals the baseline** and **identical gradient rows**: said by the methods
  themselves (``SAME_AS_BASELINE_NOTE``, ``DEGENERATE_NOTE``).

:func:`diagnose` gives the notes for a finished :class:`~blackbox_sal.result.Explanation`
that it does not have yet, and :func:`with_diagnostics` adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from blackbox_sal.methods.integrated_gradients import UNCONVERGED
from blackbox_sal.result import Explanation

#: special tokens holding more than this share of sum |score| get a note
SPECIAL_SHARE = 0.5
#: the start of the special-token note (to recognise it)
SPECIAL_NOTE_START = "special tokens"


class Scored(Protocol):
    """A scored token: a :class:`~blackbox_sal.text.words.Span`."""

    @property
    def text(self) -> str: ...

    @property
    def score(self) -> float: ...

    @property
    def special(self) -> bool: ...


def special_share(scores: np.ndarray | Sequence[float], special: np.ndarray | Sequence[bool]) -> float | None:
    """The special tokens' share of sum |score| (finite scores only); None when there are no
    special tokens or every score is zero."""
    s = np.abs(np.asarray(scores, np.float64))
    mask = np.asarray(special, bool)
    s = np.where(np.isfinite(s), s, 0.0)
    total = float(s.sum())
    if not mask.any() or total <= 0:
        return None
    return float(s[mask].sum() / total)


def special_tokens_note(tokens: Sequence[Scored], threshold: float = SPECIAL_SHARE) -> tuple[str, ...]:
    """A note when special tokens hold more than ``threshold`` of sum |score|, else ()."""
    share = special_share([t.score for t in tokens], [t.special for t in tokens])
    if share is None or share <= threshold:
        return ()
    names = ", ".join(dict.fromkeys(t.text for t in tokens if t.special))
    return (f"{SPECIAL_NOTE_START} ({names}) hold {share:.0%} of the scores' total size (sum of |score|): the "
            f"explanation is dominated by positions that are not words of the text; compare the words' scores "
            f"among themselves, or use ig or occlusion, which leave special tokens as they are (score 0)",)


def ig_unconverged(delta: float | None, target_value: float, baseline_value: float | None,
                   threshold: float = UNCONVERGED) -> bool:
    """Whether an IG result's completeness delta exceeds ``threshold`` of |f(x) - f(x')| (the
    rule of the integrated-gradients note)."""
    if delta is None or baseline_value is None:
        return False
    gap = target_value - baseline_value
    return abs(delta) > threshold * max(abs(gap), 1e-6 * (1 + abs(target_value)))


def diagnose(explanation: Explanation) -> tuple[str, ...]:
    """The diagnostic notes an explanation should carry and does not yet."""
    found = special_tokens_note(explanation.tokens)
    return tuple(n for n in found if n not in explanation.notes)


def with_diagnostics(explanation: Explanation) -> Explanation:
    """The explanation with :func:`diagnose`'s notes added at the end."""
    extra = diagnose(explanation)
    return replace(explanation, notes=explanation.notes + extra) if extra else explanation
