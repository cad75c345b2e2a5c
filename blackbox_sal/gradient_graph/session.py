"""Running a gradient graph: full gradients, and per-token derivatives along a path.

A gradient graph has the interface of :mod:`blackbox_sal.surgery.gradient`. Where the onnx
package is installed it is run in its path form (:mod:`blackbox_sal.surgery.path`): the
points are built inside the graph from each request's anchor and direction, and on a GPU the
per-token derivatives are reduced there too, so only [rows, S] numbers cross back to the
host. On the CPU the [rows, S, D] gradient is fetched and reduced in float64 on the host
(measured no slower there, and the same numbers as before the path form existed). Without
the onnx package (an edge install) the plain interface runs and points are built on the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from blackbox_sal.model.session import batches, create_session, on_cuda, run
from blackbox_sal.model.text_model import TextModel, fill, int_feeds, per_row
from blackbox_sal.surgery.names import (
    ALPHA,
    ANCHOR,
    DELTA,
    EMBEDS,
    FAN_ROWS,
    GRAD,
    ROW,
    RULES_NOTE_KEY,
    TOKEN_JVP,
    WEIGHTS,
)
from blackbox_sal.vocabulary.errors import ModelError


@dataclass(frozen=True)
class GradientSession:
    """A gradient graph loaded for one model. ``path_form``: the session takes the path inputs;
    ``reduce_on_device``: per-token derivatives come from the graph's ``token_jvp`` output
    (GPU) rather than from the gradient reduced on the host (CPU)."""

    session: ort.InferenceSession
    path_form: bool
    reduce_on_device: bool

    @classmethod
    def create(cls, grad_model: bytes, model: TextModel, path_form: bool = True) -> GradientSession:
        """Load a serialized gradient graph on the model's device, in path form where it can be
        (``path_form`` False: in its plain form, as a prepared folder's graph always runs)."""
        path = _path_form(grad_model) if path_form else None
        session = create_session(path if path is not None else grad_model, model.device_request, model.threads)
        return cls(session, path is not None, path is not None and on_cuda(session))

    def rules_note(self) -> str:
        """What a graph of an LRP rule set says about operators that kept their plain gradient
        ("" when none did, and for a gradient graph)."""
        return str(self.session.get_modelmeta().custom_metadata_map.get(RULES_NOTE_KEY, ""))

    def input_names(self) -> set[str]:
        return {i.name for i in self.session.get_inputs()}

    def output_names(self) -> set[str]:
        return {o.name for o in self.session.get_outputs()}

    def gradient(self, model: TextModel, points: np.ndarray, ids: np.ndarray, type_ids: np.ndarray,
                 weights: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """d(weights . output)/d points for points [k, S, D], weights [k, C]: float32 [k, S, D]."""
        k = points.shape[0]
        if model.fixed_batch is not None and k != model.fixed_batch:  # a fixed-batch export: its own run sizes
            ids, type_ids, mask = per_row(k, ids, type_ids, mask)
            return np.concatenate([self.gradient(model, *fill(model.fixed_batch, rows, points, ids, type_ids, weights,
                                                              mask))[: rows.stop - rows.start]
                                   for rows in batches(k, model.fixed_batch)])
        feeds = self.point_feeds(model, points, ids, type_ids, weights, mask)
        return np.asarray(run(self.session, [GRAD], feeds, "the gradient graph")[0])

    def point_feeds(self, model: TextModel, points: np.ndarray, ids: np.ndarray, type_ids: np.ndarray,
                    weights: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The feeds that run the graph at points [k, S, D] with seed weights [k, C], in
        either form (the path form: each point its own anchor, at alpha 0)."""
        k = points.shape[0]
        points = np.ascontiguousarray(points, dtype=np.float32)
        feeds = int_feeds(model.int_inputs, ids, type_ids, k, mask, model.mask_rank)
        if self.path_form:
            feeds.update({ANCHOR: points, DELTA: points, ROW: np.arange(k, dtype=np.int64),
                          ALPHA: np.zeros(k, np.float32)})
        else:
            feeds[EMBEDS] = points
        feeds[WEIGHTS] = np.ascontiguousarray(weights, dtype=np.float32)
        return feeds

    def model_output(self, model: TextModel, points: np.ndarray, ids: np.ndarray, type_ids: np.ndarray,
                     classes: int) -> np.ndarray:
        """The graph's own copy of the model's explained output (``classes`` wide) at points
        [k, S, D]: float64 [k, C] (ModelError where the graph does not return it)."""
        if model.output not in self.output_names():
            raise ModelError(f"it has no output {model.output!r} to compare with the model's")
        k = points.shape[0]
        feeds = self.point_feeds(model, points, ids, type_ids, np.zeros((k, classes), np.float32))
        return model.as_classes(run(self.session, [model.output], feeds, "the gradient graph")[0], k)

    def path_jvp(self, model: TextModel, anchors: np.ndarray, deltas: np.ndarray, rows: np.ndarray,
                 alphas: np.ndarray, ids: np.ndarray, type_ids: np.ndarray, weights: np.ndarray,
                 mask: np.ndarray | None = None) -> np.ndarray:
        """Row k: at anchors[rows[k]] + alphas[k] deltas[rows[k]], the derivative of weights[k] .
        output along row i of deltas[rows[k]], per token i. anchors, deltas [R, S, D]; rows,
        alphas [k]; ids/type ids/mask [k, S]; weights [k, C]. Returns float64 [k, S]."""
        k = rows.shape[0]
        if model.fixed_batch is not None and k != model.fixed_batch:  # a fixed-batch export: its own run sizes
            ids, type_ids, mask = per_row(k, ids, type_ids, mask)
            return np.concatenate([self.path_jvp(model, anchors, deltas, *fill(
                model.fixed_batch, part, rows, alphas, ids, type_ids, weights, mask))[: part.stop - part.start]
                                   for part in batches(k, model.fixed_batch)])
        anchors = np.ascontiguousarray(anchors, dtype=np.float32)
        deltas = np.ascontiguousarray(deltas, dtype=np.float32)
        feeds = int_feeds(model.int_inputs, ids, type_ids, k, mask, model.mask_rank)
        feeds[WEIGHTS] = np.ascontiguousarray(weights, dtype=np.float32)
        if self.reduce_on_device:
            feeds.update({ANCHOR: anchors, DELTA: deltas, ROW: rows.astype(np.int64),
                          ALPHA: alphas.astype(np.float32)})
            return np.asarray(run(self.session, [TOKEN_JVP], feeds, "the gradient graph")[0], dtype=np.float64)
        if self.path_form:
            feeds.update({ANCHOR: anchors, DELTA: deltas, ROW: rows.astype(np.int64),
                          ALPHA: alphas.astype(np.float32)})
        else:
            a = alphas.astype(np.float32)[:, None, None]
            feeds[EMBEDS] = (anchors[rows] + a * deltas[rows]).astype(np.float32)
        grad = np.asarray(run(self.session, [GRAD], feeds, "the gradient graph")[0])
        return np.einsum("psd,psd->ps", grad.astype(np.float64), deltas[rows].astype(np.float64))


@dataclass(frozen=True)
class FanSession:
    """A gradient graph's fan form over its path form (:mod:`blackbox_sal.surgery.fan`),
    loaded: the forward pass runs once per point (P of them), the backward once per seed row
    (R), row r at point ``fan_rows[r]``. Made and checked by :mod:`.fan`."""

    session: ort.InferenceSession
    reduce_on_device: bool

    @classmethod
    def create(cls, fan_model: bytes, model: TextModel) -> FanSession:
        session = create_session(fan_model, model.device_request, model.threads)
        return cls(session, on_cuda(session))

    def feeds(self, model: TextModel, anchors: np.ndarray, deltas: np.ndarray, rows: np.ndarray, alphas: np.ndarray,
              ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray | None, fan_rows: np.ndarray,
              weights: np.ndarray) -> dict[str, np.ndarray]:
        """Points anchors[rows[p]] + alphas[p] deltas[rows[p]] (anchors, deltas [Q, S, D]; rows,
        alphas [P]; ids, type ids, mask [P, S]), seed rows ``fan_rows`` [R] with weights [R, C]."""
        feeds = int_feeds(model.int_inputs, ids, type_ids, rows.shape[0], mask, model.mask_rank)
        feeds.update({ANCHOR: np.ascontiguousarray(anchors, dtype=np.float32),
                      DELTA: np.ascontiguousarray(deltas, dtype=np.float32), ROW: rows.astype(np.int64),
                      ALPHA: alphas.astype(np.float32), FAN_ROWS: fan_rows.astype(np.int64),
                      WEIGHTS: np.ascontiguousarray(weights, dtype=np.float32)})
        return feeds

    def gradient(self, model: TextModel, points: np.ndarray, ids: np.ndarray, type_ids: np.ndarray,
                 mask: np.ndarray | None, fan_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Row r: d(weights[r] . output)/d points at points[fan_rows[r]] (points [P, S, D]; ids,
        type ids, mask [P, S]; weights [R, C]): float32 [R, S, D]."""
        p = points.shape[0]
        feeds = self.feeds(model, points, points, np.arange(p), np.zeros(p, np.float32), ids, type_ids, mask,
                           fan_rows, weights)
        return np.asarray(run(self.session, [GRAD], feeds, "the gradient graph (fan form)")[0])

    def path_jvp(self, model: TextModel, anchors: np.ndarray, deltas: np.ndarray, rows: np.ndarray,
                 alphas: np.ndarray, ids: np.ndarray, type_ids: np.ndarray, mask: np.ndarray | None,
                 fan_rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """:meth:`GradientSession.path_jvp` of seed row r at point fan_rows[r] (the points as in
        :meth:`feeds`): float64 [R, S], reduced where the plain graph's would be."""
        feeds = self.feeds(model, anchors, deltas, rows, alphas, ids, type_ids, mask, fan_rows, weights)
        if self.reduce_on_device:
            return np.asarray(run(self.session, [TOKEN_JVP], feeds, "the gradient graph (fan form)")[0],
                              dtype=np.float64)
        grad = np.asarray(run(self.session, [GRAD], feeds, "the gradient graph (fan form)")[0])
        return np.einsum("psd,psd->ps", grad.astype(np.float64), deltas[rows[fan_rows]].astype(np.float64))


def _path_form(grad_model: bytes) -> bytes | None:
    """The serialized path form of a gradient graph, or None without the onnx package or for
    a graph that cannot take it (a shipped graph of an old opset)."""
    try:
        import onnx

        from blackbox_sal.surgery.path import path_model
    except ImportError:  # an edge install: onnxruntime, numpy and tokenizers only
        return None
    try:
        return path_model(onnx.load_from_string(grad_model)).SerializeToString()
    except ModelError:
        return None
