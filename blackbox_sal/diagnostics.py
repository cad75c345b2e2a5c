"""Checks every explanation runs on its own scores (pure): special tokens that dominate the
attributions get a note. The other diagnostics live with what they check: input equal to the
baseline and identical gradient rows with the methods, IG's convergence with IG, and the
dataset-level counts in :mod:`blackbox_sal.evaluation.diagnostics`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

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
