"""A gradient graph's fan form (:mod:`blackbox_sal.surgery.fan`), built, checked and cached.

The fan form runs the forward pass once per point and the backward once per seed row; the
engine uses it for groups of gradient rows that repeat points (k targets of one text). It is
made from the path form of the graph the model's session runs (plain, LRP, shipped or built):

1. two probe runs of the path form at batch 1 and batch 2 (same length) fetch every forward
   tensor the backward reads, and give each its batch axis (:func:`batch_axes`); a tensor with
   its batch merged into another axis, or an integer tensor holding the batch size, refuses it;
2. the fan form is written (pure surgery) and **checked against the plain graph** on P = 2
   points and R = 5 seed rows (random points, seeds and mapping): the gradients must agree to
   FAN_RTOL, relative to their largest entry. A graph that fails is never used: the engine runs
   the plain graph, as it did before the fan form existed.

The result (or the reason there is none) is cached beside the gradient graphs
(``fan-<key>.onnx`` / ``.failed``, keyed by the path form's bytes and FAN_VERSION); a cached fan
graph is checked again on load, like a fresh one. Without the onnx package, for a fixed-batch
export or a prepared folder (which run the plain form), there is no fan form.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.gradient_graph.session import FanSession, GradientSession
from blackbox_sal.gradient_graph.store import cache_dir, graph_source, rules_session, store
from blackbox_sal.model.session import create_session, first_line, run
from blackbox_sal.model.text_model import TextModel, int_feeds
from blackbox_sal.surgery.names import ALPHA, ANCHOR, DELTA, GRAD, ROW, WEIGHTS
from blackbox_sal.text.printable import printable
from blackbox_sal.vocabulary.errors import ModelError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger("blackbox_sal")

#: bump when the fan surgery changes what it emits: cached fan graphs of other versions are rebuilt
FAN_VERSION = 1
#: the most the fan form's gradient may differ from the plain graph's, relative to its largest
#: entry (float32 sums in another order differ by ~1e-7)
FAN_RTOL = 1e-4
#: the check's points and seed rows
CHECK_POINTS, CHECK_ROWS = 2, 5


def fan_session(model: TextModel, rules: str = "gradient") -> FanSession | None:
    """The fan form of the model's gradient graph for ``rules``, checked; None where there is
    none (the reason is logged once and cached). Kept with the model's runtime."""
    plain = rules_session(model, rules)  # first, outside the runtime's lock (kept() does not nest)
    return model.runtime.kept(f"fan:{rules}", lambda: _fan(model, rules, plain))


def _fan(model: TextModel, rules: str, plain: GradientSession) -> FanSession | None:
    if model.fixed_batch is not None or not plain.path_form:
        return None
    source = graph_source(model, rules)
    if source is None:
        log.info("no fan form: the gradient graph's file cannot be read again")
        return None
    import onnx

    from blackbox_sal.surgery.path import path_model

    path_form = path_model(onnx.load_from_string(source))
    h = hashlib.sha256(f"fan={FAN_VERSION};".encode())
    h.update(path_form.SerializeToString(deterministic=True))
    cached = cache_dir() / f"fan-{h.hexdigest()[:32]}.onnx"
    failed = cached.with_suffix(".failed")
    if not cached.is_file() and failed.is_file():
        log.info("no fan form (cached reason): %s", printable(failed.read_text(encoding="utf-8", errors="replace")))
        return None
    if cached.is_file():
        try:
            fan = FanSession.create(cached.read_bytes(), model)
            check(model, plain, fan)
            return fan
        except (ModelError, OSError) as exc:
            log.warning("the cached fan form %s fails its check (%s): building it again", cached, printable(str(exc)))
    try:
        data = build_fan(model, path_form).SerializeToString()
        fan = FanSession.create(data, model)
        check(model, plain, fan)
    except ModelError as exc:
        log.info("no fan form for %s: %s", printable(model.name), printable(str(exc)))
        store(str(exc).encode("utf-8"), failed)
        return None
    except Exception as exc:  # a graph the surgery did not foresee: the plain graph answers, as before
        why = f"building the fan form failed ({type(exc).__name__}: {first_line(exc)})"
        log.warning("no fan form for %s: %s; please report it", printable(model.name), printable(why))
        store(why.encode("utf-8"), failed)
        return None
    store(data, cached)
    return fan


def build_fan(model: TextModel, path_form: onnx.ModelProto) -> onnx.ModelProto:
    """The (unchecked) fan form of a path-form gradient graph of ``model``."""
    from blackbox_sal.surgery.fan import fan_model

    return fan_model(path_form, batch_axes(model, path_form))


def batch_axes(model: TextModel, path_form: onnx.ModelProto) -> dict[str, int | None]:
    """The batch axis of every forward tensor the backward of ``path_form`` reads, from probe
    runs at batch 1 and 2 (CPU, no optimisation). ModelError for a merged batch axis or an
    integer tensor without one whose value changes with the batch (a shape the backward reads)."""
    import onnx

    from blackbox_sal.surgery.fan import batch_axis, crossing

    names = crossing(path_form)
    probe = onnx.ModelProto()
    probe.CopyFrom(path_form)
    known = {o.name for o in probe.graph.output}
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    session = create_session(probe.SerializeToString(), "cpu", threads=1, optimize=False)
    ids, types, mask = model.probe()
    x = model.embed(ids)[None].astype(np.float32)
    classes = model.forward(x, ids, types, mask).shape[1]
    seen = []
    for batch in (1, 2):
        feeds = int_feeds(model.int_inputs, ids, types, batch, mask, model.mask_rank)
        feeds.update({ANCHOR: x, DELTA: x, ROW: np.zeros(batch, np.int64), ALPHA: np.full(batch, 0.5, np.float32),
                      WEIGHTS: np.ones((batch, classes), np.float32)})
        seen.append(dict(zip(names, run(session, names, feeds, "the fan form's probe"), strict=True)))
    axes: dict[str, int | None] = {}
    for name in names:
        one, two = np.asarray(seen[0][name]), np.asarray(seen[1][name])
        axes[name] = batch_axis(name, one.shape, two.shape)
        if axes[name] is None and one.dtype.kind in "iu" and not np.array_equal(one, two):
            raise ModelError(f"the backward reads {name!r}, whose value changes with the batch size "
                             f"({one.tolist()} at 1, {two.tolist()} at 2): no fan form")
    return axes


def check(model: TextModel, plain: GradientSession, fan: FanSession, seed: int = 0) -> None:
    """ModelError unless the fan form's gradient equals the plain graph's (FAN_RTOL, relative
    to the largest entry) on CHECK_POINTS points and CHECK_ROWS seed rows: random anchors,
    directions, alphas, seeds, and seed rows mapped to the points out of order."""
    rng = np.random.default_rng(seed)
    ids, types, mask = model.probe()
    x = model.embed(ids).astype(np.float32)
    classes = model.forward(x[None], ids, types, mask).shape[1]
    scale = float(np.abs(x).mean()) or 1.0
    anchors = (x[None] + rng.normal(0, 0.3 * scale, (CHECK_POINTS, *x.shape))).astype(np.float32)
    deltas = rng.normal(0, scale, (CHECK_POINTS, *x.shape)).astype(np.float32)
    rows = np.arange(CHECK_POINTS)[::-1].copy()
    alphas = rng.uniform(0.2, 0.9, CHECK_POINTS).astype(np.float32)
    fan_rows = np.array([1, 0, 1, 1, 0][:CHECK_ROWS], np.int64)
    weights = rng.normal(size=(CHECK_ROWS, classes)).astype(np.float32)
    ids_p, types_p = np.stack([ids] * CHECK_POINTS), np.stack([types] * CHECK_POINTS)
    ids_p[1] = rng.permutation(ids)  # the points' own ids, so a feed gathered wrongly shows
    mask_p = None if mask is None else np.stack([mask] * CHECK_POINTS)
    got = np.asarray(run(fan.session, [GRAD], fan.feeds(model, anchors, deltas, rows, alphas, ids_p, types_p, mask_p,
                                                        fan_rows, weights), "the fan form's check")[0])
    feeds = int_feeds(model.int_inputs, ids_p[fan_rows], types_p[fan_rows], CHECK_ROWS,
                      None if mask_p is None else mask_p[fan_rows], model.mask_rank)
    feeds.update({ANCHOR: anchors, DELTA: deltas, ROW: rows[fan_rows], ALPHA: alphas[fan_rows], WEIGHTS: weights})
    want = np.asarray(run(plain.session, [GRAD], feeds, "the gradient graph")[0])
    if got.shape != want.shape:
        raise ModelError(f"the fan form's gradient has shape {list(got.shape)}, the plain graph's {list(want.shape)}")
    peak = float(np.max(np.abs(want)))
    gap = float(np.max(np.abs(got - want))) / (peak or 1.0)
    if not gap <= FAN_RTOL:
        raise ModelError(f"the fan form's gradient differs from the plain graph's by {gap:.2g} of its largest entry "
                         f"(allowed {FAN_RTOL:g}); it is not used")
