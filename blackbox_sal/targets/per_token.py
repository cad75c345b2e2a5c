"""Per-token targets: which (positions, label) scores of a tagger's output are explained.

A per-token output holds L label scores for each of S positions (a [batch, seq] output is one
"label", L = 1). A target is a set of positions and, at each, a label; its scalar is the sum
of those label scores (:class:`blackbox_sal.vocabulary.scores.TokenWeights` with weight +1 on
each), minus the same positions' ``contrast`` label scores for "label rather than contrast".

Chosen by:

- ``at`` (``--at``): a token index (``3``) or a piece of the text (``"new york"``: the tokens
  that overlap its first occurrence); the label is ``target`` at every position, else each
  position's predicted label;
- nothing: every predicted entity. Tags ``B-X`` / ``I-X`` (BIO), ``B``/``I``/``L``/``U``
  (BILOU), ``B``/``I``/``E``/``S`` (BIES) are grouped into entity spans; the "outside" label
  ``O`` is never a target; a tag without a prefix groups with the same tag before it. With no
  labels, or one label per position (L = 1), every position is its own target.

Special tokens and padding are never targets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from blackbox_sal.text.tokenization import Tokens
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.scores import named_index

#: the "outside" label: never a target of its own
OUTSIDE = "O"
#: prefixes that start an entity, continue one, and make one of a single token
STARTS = ("B", "S", "U")
CONTINUES = ("I", "E", "L")


@dataclass(frozen=True)
class Target:
    """Positions (token indices) and the label index explained at each; ``contrast``: the label
    subtracted at each (None: none); ``name`` / ``contrast_name``: what results call them."""

    positions: tuple[int, ...]
    labels: tuple[int, ...]
    name: str
    contrast: tuple[int, ...] | None = None
    contrast_name: str | None = None

    def weights(self, seq: int, width: int) -> np.ndarray:
        """float64 [seq, width]: +1 on each position's label, -1 on its contrast label."""
        w = np.zeros((seq, width), np.float64)
        for i, label in zip(self.positions, self.labels, strict=True):
            w[i, label] += 1.0
        for i, label in zip(self.positions, self.contrast or (), strict=False):
            w[i, label] -= 1.0
        return w


def tag_parts(tag: str) -> tuple[str, str]:
    """A tag as (prefix, entity type): 'B-PER' -> ('B', 'PER'); 'PER' -> ('', 'PER')."""
    for sep in ("-", "_"):
        head, found, rest = tag.partition(sep)
        if found and head in STARTS + CONTINUES and rest:
            return head, rest
    return "", tag


def entities(predicted: Sequence[int], labels: Sequence[str], candidates: Sequence[int]) -> list[list[int]]:
    """Token positions of each entity: ``predicted`` label index per position, ``candidates``
    the positions that may be targets (no special token, no padding), in order."""
    spans: list[list[int]] = []
    open_type: str | None = None
    last = -2
    for i in candidates:
        tag = labels[predicted[i]]
        if tag == OUTSIDE:
            open_type = None
            continue
        prefix, kind = tag_parts(tag)
        joins = open_type == kind and last == i - 1 and (prefix in CONTINUES or prefix == "")
        if joins:
            spans[-1].append(i)
        else:
            spans.append([i])
        open_type = None if prefix in ("S", "U", "E", "L") else kind
        last = i
    return spans


def positions_at(tokens: Tokens, at: str | int) -> tuple[int, ...]:
    """The token positions ``at`` names: a token index, or the tokens overlapping the first
    occurrence of a piece of the text (case-insensitive)."""
    text = str(at)
    if isinstance(at, int) or text.strip().isdigit():
        index = int(text)
        if not 0 <= index < len(tokens) or tokens.special[index]:
            raise UsageError(f"--at {index}: not a token of the text (tokens 0..{len(tokens) - 1}, special ones "
                             f"left out)")
        return (index,)
    start = tokens.text.lower().find(text.lower()) if text.strip() else -1
    if start < 0:
        raise UsageError(f"--at {text!r} is not in the text: give a token index or a piece of the text")
    end = start + len(text)
    found = tuple(i for i, (a, b) in enumerate(tokens.offsets)
                  if not tokens.special[i] and a < end and b > start)
    if not found:
        raise UsageError(f"--at {text!r} covers no token of the text")
    return found


def find_targets(outputs: np.ndarray, tokens: Tokens, labels: Sequence[str] | None, at: str | int | None,
                 target: str | int | None, contrast: str | int | None) -> list[Target]:
    """The targets of one text. outputs: float [S, L] (S >= len(tokens): padding past it)."""
    width = outputs.shape[1]
    names = list(labels) if labels is not None and len(labels) == width else None
    predicted = [int(i) for i in np.argmax(outputs, axis=1)]

    def name(i: int) -> str:
        return names[i] if names is not None else "score" if width == 1 else str(i)

    has = f"the model has {width} labels per token"
    fixed = None if target is None else named_index(target, names or (), width, "target", has)
    other = None if contrast is None else named_index(contrast, names or (), width, "contrast", has)

    def make(positions: Sequence[int], entity: bool = False) -> Target:
        chosen = tuple(fixed if fixed is not None else predicted[i] for i in positions)
        kinds = {tag_parts(name(c))[1] for c in chosen}
        said = kinds.pop() if entity and len(kinds) == 1 else name(chosen[0]) if len(set(chosen)) == 1 else \
            "+".join(name(c) for c in chosen)
        if other is not None and other in chosen:
            raise UsageError(f"--contrast {name(other)} is the explained label itself: nothing to contrast it with")
        return Target(tuple(positions), chosen, said, None if other is None else (other,) * len(positions),
                      None if other is None else name(other))

    if at is not None:
        return [make(positions_at(tokens, at))]
    candidates = [i for i in range(len(tokens)) if not tokens.special[i]]
    if names is None or width == 1:
        return [make([i]) for i in candidates]
    return [make(span, fixed is None) for span in entities(predicted, names, candidates)]
