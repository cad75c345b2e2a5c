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

:func:`diagnose` gives the notes for a finished :class:`~blackbox_sal.vocabulary.result.Explanation`
that it does not have yet, and :func:`with_diagnostics` adds them.
"""

from __future__ import annotations

from dataclasses import replace

from blackbox_sal.diagnostics import SPECIAL_NOTE_START, SPECIAL_SHARE, special_share, special_tokens_note
from blackbox_sal.methods.integrated_gradients import UNCONVERGED
from blackbox_sal.vocabulary.result import Explanation

__all__ = ["SPECIAL_NOTE_START", "SPECIAL_SHARE", "diagnose", "ig_unconverged", "special_share",
           "special_tokens_note", "with_diagnostics"]

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
