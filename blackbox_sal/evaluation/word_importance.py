"""Token (embedding) models across a corpus: the mean attribution per word type (lower-cased
word text) of any method, with count and spread, overall and per predicted class.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np

from blackbox_sal.api.explaining import explain_many
from blackbox_sal.api.per_token import explain_tokens_many
from blackbox_sal.evaluation.common import as_rows
from blackbox_sal.evaluation.feature_gradients import analysis_config
from blackbox_sal.jobs.datasets import BadRow, Row
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import SalError, UsageError
from blackbox_sal.vocabulary.result import Explanation, TokenTargets


@dataclass(frozen=True)
class WordStat:
    """A word type's attributions over a corpus: occurrences, mean and spread (population std)."""

    word: str
    count: int
    mean: float
    std: float


@dataclass(frozen=True)
class WordImportance:
    """Mean attribution per word type (lower-cased word text) over ``n`` explained texts.

    target: the explained class (a label), or "predicted" (each text its own prediction: read
    the per-class tables). words: types seen at least ``min_count`` times, by mean, highest
    first; by_class: the same per predicted class. notes: per kind of note of the
    explanations (the text before its first colon), the first one and how many texts had
    one. skipped: (row key, reason)."""

    model: str
    method: str
    target: str
    n: int
    min_count: int
    words: tuple[WordStat, ...]
    by_class: tuple[tuple[str, tuple[WordStat, ...]], ...]
    notes: tuple[tuple[str, int], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    top_n: int = 20
    #: word types seen fewer than ``min_count`` times: left out of every table and plot
    rare: int = 0
    #: what each of the ``n`` explanations is of: "texts", or for a per-token model without
    #: ``at`` "entities" (every predicted entity of every text, by_class per entity type)
    unit: str = "texts"
    #: texts explained (for "texts", ``n``)
    texts: int = 0

    def top(self, n: int | None = None, of: tuple[WordStat, ...] | None = None) -> tuple[WordStat, ...]:
        stats = self.words if of is None else of
        return stats[:n or self.top_n]

    def bottom(self, n: int | None = None, of: tuple[WordStat, ...] | None = None) -> tuple[WordStat, ...]:
        stats = self.words if of is None else of
        return tuple(reversed(stats[-(n or self.top_n):]))


class _Running:
    """Welford's running mean and spread (a constant gives a spread of exactly 0)."""

    __slots__ = ("count", "m2", "mean")

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, value: float) -> None:
        self.count += 1
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    def stat(self, word: str) -> WordStat:
        return WordStat(word, self.count, self.mean, float(np.sqrt(max(self.m2, 0.0) / self.count)))


def _ranked(table: dict[str, _Running], min_count: int) -> tuple[WordStat, ...]:
    stats = [r.stat(w) for w, r in table.items() if r.count >= min_count and np.isfinite(r.mean)]
    return tuple(sorted(stats, key=lambda s: (-s.mean, s.word)))


def word_importance(model: TextModel, rows: Iterable[Row | BadRow | str], config: ExplainConfig | None = None,
                    min_count: int = 3, top: int = 20, window: int = 64) -> WordImportance:
    """Corpus-level word importance: every text explained with ``config`` (any method; words
    merged, ``words=True``), and per word type the mean, count and spread of its scores,
    overall and per predicted class; types seen fewer than ``min_count`` times are left out.
    Special tokens are not words. A feature model's words are its pieces of text. A per-token
    model without ``config.at``: every predicted entity of every text is one explanation (its
    tokens' label scores summed, :func:`~blackbox_sal.api.per_token.explain_tokens`), and the
    classes are the entity types."""
    if min_count < 1 or top < 1:
        raise UsageError("min_count and top must be at least 1")
    cfg = replace(analysis_config(config), words=True)
    keys: list[str] = []
    texts: list[str] = []
    skipped: list[tuple[str, str]] = []

    def kept_texts() -> Iterator[str]:
        for row in as_rows(rows):
            if isinstance(row, BadRow):
                skipped.append((row.key, row.error))
                continue
            keys.append(row.key)
            texts.append(row.text)
            yield row.text

    overall: dict[str, _Running] = {}
    per_class: dict[str, dict[str, _Running]] = {}
    notes: dict[str, tuple[str, int]] = {}
    n = done = 0
    entities = model.task == "per-token" and cfg.at is None
    results: Iterator[Explanation | TokenTargets | SalError] = (
        explain_tokens_many(model, kept_texts(), cfg, window) if entities else explain_many(model, kept_texts(), cfg,
                                                                                              window))
    for k, result in enumerate(results):
        if isinstance(result, UsageError):
            raise result
        if isinstance(result, SalError):
            skipped.append((keys[k], str(result)))
            continue
        done += 1
        explained = [(t.label, t.explanation) for t in result.targets] if isinstance(result, TokenTargets) else \
            [(result.prediction.label or str(result.prediction.index), result)]
        for label, e in explained:
            n += 1
            table = per_class.setdefault(label, {})
            for span in e.words or e.tokens:
                if span.special or not span.text.strip():
                    continue
                word = span.text.lower()
                overall.setdefault(word, _Running()).add(span.score)
                table.setdefault(word, _Running()).add(span.score)
            for note in e.notes:  # notes of a kind differ in their numbers: counted by kind, the first kept
                kind = note.split(":")[0]
                first, count = notes.get(kind, (note, 0))
                notes[kind] = (first, count + 1)
    target = ("each predicted entity" if entities else "predicted") if cfg.target is None else str(cfg.target)
    if model.labels is not None and target.isdigit() and int(target) < len(model.labels):
        target = model.labels[int(target)]
    return WordImportance(
        model.name, cfg.method, target, n, min_count, _ranked(overall, min_count),
        tuple((label, _ranked(t, min_count)) for label, t in sorted(per_class.items())),
        tuple(sorted(notes.values(), key=lambda kv: -kv[1])), tuple(skipped), top,
        sum(1 for r in overall.values() if r.count < min_count), "entities" if entities else "texts", done)
