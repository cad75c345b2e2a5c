"""Explain arrays: a batch of token ids or embeddings in, numpy arrays out (as Captum's
``attribute()``), beside the text-level :func:`~blackbox_sal.explain`.

    >>> import numpy as np, blackbox_sal as bs
    >>> model = bs.load_model(bs.default_model_path())
    >>> ids = np.array([[5, 17, 230, 0], [9, 44, 12, 8]])          # [B, S], padded with 0
    >>> out = bs.attribute(model, ids=ids, mask=ids != 0, target="fresh", method="ig")
    >>> out.scores.shape, out.delta.shape                            # (2, 4), (2,)

Each row is one input, explained exactly as the text-level API explains the same ids: the
same work (:func:`blackbox_sal.api.explaining.attribute`) driven by the same engine, the rows of all
inputs packed into shared onnxruntime runs. Arrays are converted once here: ids int64 [B, S],
embeddings float32 [B, S, D] (1-D ids and 2-D embeddings are one input), mask [B, S] (1 or True
where a token is attended, 0 on padding).

Positions that are special keep their own embedding in the baseline, as the text-level API
does with [CLS], [SEP] and the like: by default the tokenizer's special tokens among ``ids``
and every masked position. Masked positions score 0 (they are padding, not input).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import ArrayLike

from blackbox_sal.api.explaining import Attributed, ClassQuestion, runner
from blackbox_sal.api.explaining import attribute as attribute_work
from blackbox_sal.baselines import baseline_token
from blackbox_sal.engine.drive import drive_many
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import InputError, SalError, TooLongError, UsageError
from blackbox_sal.vocabulary.runs import Seq, Work

Target = int | str | None


@dataclass(frozen=True)
class Attributions:
    """What :func:`attribute` returns, one entry per input row.

    scores: float64 [B, S], one score per position (0 where masked). target: int64 [B], the
    output index explained. target_value: float64 [B], f(x). baseline_value and delta:
    float64 [B], f(x') and the completeness delta sum(scores) - (f(x) - f(x')); NaN where the
    method uses no baseline value. method, reduce, backend: as in an Explanation (the backend
    of the first row: ``auto`` picks per model, so it is the same for every row). notes: each
    row's notes (degenerate gradients, not converged, ...).
    """

    scores: np.ndarray
    target: np.ndarray
    target_value: np.ndarray
    baseline_value: np.ndarray
    delta: np.ndarray
    method: str
    reduce: str | None
    backend: str
    notes: tuple[tuple[str, ...], ...]


def attribute(model: TextModel, ids: ArrayLike | None = None, *,
              embeddings: ArrayLike | None = None, target: Target | Sequence[Target] = None,
              mask: ArrayLike | None = None, type_ids: ArrayLike | None = None,
              baselines: ArrayLike | None = None, special: ArrayLike | None = None,
              method: str | None = None, config: ExplainConfig | None = None, window: int = 64) -> Attributions:
    """Attribute the model's output on each row of ``ids`` (or ``embeddings``) to its positions.

    ids: int [B, S] token ids; embeddings: float [B, S, D] instead of (or with) ids, e.g.
    perturbed embeddings (ids, when given too, feed the model's other integer inputs and
    decide the special positions). target: one label name or index for every row, one per
    row, or None for each row's prediction. mask: [B, S], 0 on padding. type_ids: [B, S]
    (default zeros). baselines: float [B, S, D] or [S, D]; default the config's baseline token
    (``pad``) at every non-special position. special: bool [B, S] positions that keep their
    own embedding in the baseline (default: the tokenizer's special tokens and the masked
    positions). method: shorthand for ``config.method``; config: every other setting, as for
    :func:`~blackbox_sal.explain` (its ``target`` is overridden by ``target``). window: rows in
    flight together in the engine.

    UsageError for inconsistent arrays or settings, TooLongError past the model's token limit;
    an error of one row is raised naming the row.
    """
    cfg = config or ExplainConfig()
    if method is not None:
        cfg = replace(cfg, method=method)
    cfg = cfg.validated()
    if model.features is not None:
        raise UsageError(f"attribute() takes token ids or embeddings; {model.name!r} is a {model.features.kind} "
                         f"model: explain its text with explain()")
    x, ids_arr = _inputs(model, ids, embeddings)
    b, s = x.shape[:2]
    if model.max_length is not None and s > model.max_length:
        raise TooLongError(f"the rows have {s} positions; the model takes at most {model.max_length}")
    if model.fixed_length is not None and s != model.fixed_length:
        raise UsageError(f"the model takes exactly {model.fixed_length} positions; the rows have {s} "
                         f"(pad them, with a mask)")
    attended = _int_array(mask, (b, s), "mask", fill=1) != 0
    types = _int_array(type_ids, (b, s), "type_ids", fill=0)
    keep = ~attended
    if special is not None:
        keep |= _bool_array(special, (b, s))
    elif ids_arr is not None:
        specials = [i for i, t in model.tokenizer.get_added_tokens_decoder().items() if t.special]
        keep |= np.isin(ids_arr, specials)
    base = _baselines(model, cfg, baselines, x, keep)
    targets = _targets(target, b)
    seq_ids = ids_arr if ids_arr is not None else np.zeros((b, s), np.int64)

    def work(k: int) -> Work[Attributed]:
        row_cfg = replace(cfg, target=targets[k])
        seq = Seq(seq_ids[k], types[k], attended[k].astype(np.int64) if mask is not None else None)
        return (yield from attribute_work(model, seq, x[k], base[k], keep[k], row_cfg, ClassQuestion(),
                                          cfg.baseline))

    done: list[Attributed] = []
    results: Iterator[Attributed | SalError] = drive_many((work(k) for k in range(b)), runner(model, cfg), window)
    for k, item in enumerate(results):
        if isinstance(item, SalError):
            raise type(item)(f"row {k}: {item}") from item
        done.append(item)
    nan = float("nan")
    scores = np.stack([np.asarray(d.result.scores, np.float64) for d in done]) if done else np.zeros((0, s))
    scores[~attended] = 0.0
    return Attributions(
        scores=scores,
        target=np.array([d.asked.target.index for d in done], np.int64),
        target_value=np.array([d.target_value for d in done], np.float64),
        baseline_value=np.array([nan if d.result.baseline_value is None else d.result.baseline_value for d in done]),
        delta=np.array([nan if d.result.delta is None else d.result.delta for d in done]),
        method=cfg.method, reduce=cfg.reduction(), backend=done[0].backend if done else cfg.backend,
        notes=tuple(d.notes + d.result.notes for d in done))


def _inputs(model: TextModel, ids: ArrayLike | None,
            embeddings: ArrayLike | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings float32 [B, S, D] and ids int64 [B, S] (None when only embeddings came)."""
    if ids is None and embeddings is None:
        raise UsageError("give ids [batch, seq] or embeddings [batch, seq, dim]")
    ids_arr = None
    if ids is not None:
        raw = np.asarray(ids)
        if raw.dtype.kind not in "iub" or raw.ndim not in (1, 2):
            raise UsageError(f"ids must be integers [batch, seq] (or [seq]); got {raw.dtype} {list(raw.shape)}")
        ids_arr = np.atleast_2d(raw).astype(np.int64)
        if ids_arr.shape[1] == 0:
            raise InputError("the rows have no positions")
        vocab = model.table.shape[0]
        if ids_arr.size and (int(ids_arr.min()) < 0 or int(ids_arr.max()) >= vocab):
            raise UsageError(f"ids must lie in 0..{vocab - 1} (the embedding table's rows)")
    if embeddings is None:
        assert ids_arr is not None
        return model.table[ids_arr], ids_arr
    x = np.asarray(embeddings)
    if x.ndim == 2:
        x = x[None]
    dim = model.table.shape[1]
    if x.ndim != 3 or x.shape[2] != dim or x.shape[1] == 0:
        raise UsageError(f"embeddings must be [batch, seq, {dim}]; got {list(np.asarray(embeddings).shape)}")
    if ids_arr is not None and ids_arr.shape != x.shape[:2]:
        raise UsageError(f"ids {list(ids_arr.shape)} and embeddings {list(x.shape)} disagree on [batch, seq]")
    if not np.isfinite(x).all():
        raise InputError("the embeddings hold values that are not finite")
    return np.ascontiguousarray(x, np.float32), ids_arr


def _int_array(values: ArrayLike | None, shape: tuple[int, int], name: str, fill: int) -> np.ndarray:
    if values is None:
        return np.full(shape, fill, np.int64)
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.shape != shape or arr.dtype.kind not in "iub":
        raise UsageError(f"{name} must be integers (or booleans) {list(shape)}; got {arr.dtype} {list(arr.shape)}")
    return arr.astype(np.int64)


def _bool_array(values: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    return _int_array(values, shape, "special", 0) != 0


def _baselines(model: TextModel, cfg: ExplainConfig, given: ArrayLike | None, x: np.ndarray,
               keep: np.ndarray) -> np.ndarray:
    """Baseline embeddings [B, S, D]: given, or the config's baseline token everywhere; the
    special (kept) positions hold the input's own embedding either way."""
    if given is None:
        token = baseline_token(model.tokenizer, cfg.baseline)
        row = np.zeros(x.shape[2], np.float32) if token is None else model.table[token]
        base = np.broadcast_to(row, x.shape).copy()
    else:
        arr = np.asarray(given, np.float32)
        if arr.shape not in (x.shape, x.shape[1:]):
            raise UsageError(f"baselines must be {list(x.shape)} or {list(x.shape[1:])}; got {list(arr.shape)}")
        base = np.broadcast_to(arr, x.shape).copy()
    base[keep] = x[keep]
    return base


def _targets(target: Target | Sequence[Target], b: int) -> list[Target]:
    if target is None or isinstance(target, (int, str, np.integer)):
        one: Target = int(target) if isinstance(target, np.integer) else target
        return [one] * b
    many = [int(t) if isinstance(t, np.integer) else t for t in target]
    if len(many) != b:
        raise UsageError(f"{len(many)} targets for {b} rows: give one, or one per row")
    return many
