"""Pooling a feature-extraction export's token states into one sentence embedding (pure).

Most sentence-encoder exports end at ``last_hidden_state`` [batch, seq, hidden]; the pooling
that makes the sentence embedding lives outside the file (sentence-transformers'
``1_Pooling/config.json``). Explaining such a model means explaining the pooled vector, so
:func:`pooled` adds it to the graph as ``sentence_embedding`` [batch, hidden]::

    mean   sum_s h[b, s] m[b, s] / max(sum_s m[b, s], 1e-9)      (sentence-transformers' default)
    cls    h[b, 0]
    max    max_s (h[b, s] where m[b, s] else -1e9)
    then, with normalize, y / max(||y||_2, 1e-12)

m is the attention mask (1 on tokens; an additive float mask's 0 entries), or all ones when
the model takes none.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.index import opset_of
from blackbox_sal.surgery.names import POOLINGS
from blackbox_sal.vocabulary.errors import ModelError

#: the explained output a pooled model gets
SENTENCE = "sentence_embedding"


def pooled(body: onnx.ModelProto, hidden: str, mode: str, normalize: bool, mask: str | None,
           mask_rank: int = 2) -> onnx.ModelProto:
    """``body`` with one more output, SENTENCE [batch, hidden], pooled from ``hidden``
    [batch, seq, hidden] by ``mode`` over the mask input ``mask`` (None: every position)."""
    if mode not in POOLINGS:
        raise ModelError(f"unknown pooling {mode!r} (choose from {', '.join(POOLINGS)})")
    if opset_of(body) < 13:
        raise ModelError(f"pooling needs opset 13 or newer; the model has {opset_of(body)} (re-export it)")
    out = onnx.ModelProto()
    out.CopyFrom(body)
    g = out.graph
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(value, f"bbs_pool_{name}"))
        return f"bbs_pool_{name}"

    def node(op: str, inputs: list[str], **attrs: object) -> str:
        name = f"bbs_pool_{op.lower()}_{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))  # type: ignore[arg-type]
        return name

    weights: str | None = None  # m [B, S, 1] as float, when there is a mask
    if mask is not None:
        if mask_rank == 4:  # additive: 0 on tokens; [B, 1, 1, S] -> [B, S]
            flat = node("Squeeze", [mask, const("axes12", np.array([1, 2], np.int64))])
            on = node("Cast", [node("Equal", [flat, const("zero", np.zeros((), np.float32))])],
                      to=onnx.TensorProto.FLOAT)
        else:
            on = node("Cast", [mask], to=onnx.TensorProto.FLOAT)
        weights = node("Unsqueeze", [on, const("axis2", np.array([2], np.int64))])
    axis1 = const("axis1", np.array([1], np.int64))
    if mode == "cls":
        y = node("Gather", [hidden, const("first", np.array(0, np.int64))], axis=1)
    elif mode == "mean" and weights is not None:
        total = node("ReduceSum", [node("Mul", [hidden, weights]), axis1], keepdims=0)
        count = node("Max", [node("ReduceSum", [weights, axis1], keepdims=0), const("tiny", np.full((1, 1), 1e-9,
                                                                                                     np.float32))])
        y = node("Div", [total, count])
    elif mode == "mean":
        y = node("ReduceMean", [hidden], axes=[1], keepdims=0) if opset_of(out) < 18 else \
            node("ReduceMean", [hidden, axis1], keepdims=0)
    else:  # max
        masked = hidden if weights is None else node("Add", [hidden, node("Mul", [
            node("Sub", [const("one", np.ones((1, 1, 1), np.float32)), weights]),
            const("minus", np.full((1, 1, 1), -1e9, np.float32))])])
        y = node("ReduceMax", [masked], axes=[1], keepdims=0) if opset_of(out) < 18 else \
            node("ReduceMax", [masked, axis1], keepdims=0)
    if normalize:
        norm = node("ReduceL2", [y], axes=[1], keepdims=1) if opset_of(out) < 18 else \
            node("ReduceL2", [y, axis1], keepdims=1)
        y = node("Div", [y, node("Max", [norm, const("eps", np.full((1, 1), 1e-12, np.float32))])])
    nodes.append(helper.make_node("Identity", [y], [SENTENCE], name=SENTENCE))
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info(SENTENCE, onnx.TensorProto.FLOAT, ["batch", None]))
    return out

