"""The path form of a gradient graph: points built inside the graph, per-token derivatives out.

Integrated gradients and grad x input need, per token, only the derivative along that token's
row of one direction; the full gradient [B, S, D] never has to leave the device::

    path_anchor [R, S, D]  path_delta [R, S, D]  path_row [B]  path_alpha [B]
          |                      |                   |            |
          +-- Gather(row) -------+-- Gather(row) -----+            |
          a                      d                                |
          inputs_embeds = a + alpha * d  <------------------------+
          ... the gradient graph ...  -> output [B, C], grad [B, S, D]
          token_jvp [B, S] = ReduceSum(grad * d, axis 2)

Rows of several requests share one run: row b belongs to request path_row[b], so each
request's anchor and direction cross to the device once, not once per row. An IG path is
anchor = baseline, delta = x - baseline, alphas = the nodes; grad x input is anchor = delta = x,
alpha = 0; a plain gradient at points P is anchor = delta = P, row = 0..n-1, alpha = 0.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.index import opset_of
from blackbox_sal.surgery.names import ALPHA, ANCHOR, DELTA, EMBEDS, GRAD, ROW, TOKEN_JVP
from blackbox_sal.vocabulary.errors import ModelError


def path_model(grad_model: onnx.ModelProto) -> onnx.ModelProto:
    """``grad_model`` (the gradient-graph interface) in path form (pure). ModelError for a
    graph that does not have the interface or predates opset 13."""
    if opset_of(grad_model) < 13:
        raise ModelError("the gradient graph's opset is older than 13: no path form")
    inputs = {i.name: i for i in grad_model.graph.input}
    if EMBEDS not in inputs or GRAD not in {o.name for o in grad_model.graph.output}:
        raise ModelError(f"the gradient graph lacks {EMBEDS!r} or {GRAD!r}")
    out = onnx.ModelProto()
    out.CopyFrom(grad_model)
    g = out.graph
    embeds_info = inputs[EMBEDS]
    dim = embeds_info.type.tensor_type.shape.dim
    width: int | str | None = dim[2].dim_value or dim[2].dim_param or None if len(dim) == 3 else None
    kept = [i for i in g.input if i.name != EMBEDS]
    del g.input[:]
    g.input.extend([
        helper.make_tensor_value_info(ANCHOR, onnx.TensorProto.FLOAT, ["requests", "sequence", width]),
        helper.make_tensor_value_info(DELTA, onnx.TensorProto.FLOAT, ["requests", "sequence", width]),
        helper.make_tensor_value_info(ROW, onnx.TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info(ALPHA, onnx.TensorProto.FLOAT, ["batch"]),
        *kept,
    ])
    axes12 = numpy_helper.from_array(np.array([1, 2], np.int64), "bbs_path_axes12")
    axis2 = numpy_helper.from_array(np.array([2], np.int64), "bbs_path_axis2")
    g.initializer.extend([axes12, axis2])
    front = [
        helper.make_node("Gather", [ANCHOR, ROW], ["bbs_path_a"], axis=0, name="bbs_path_a"),
        helper.make_node("Gather", [DELTA, ROW], ["bbs_path_d"], axis=0, name="bbs_path_d"),
        helper.make_node("Unsqueeze", [ALPHA, axes12.name], ["bbs_path_alpha"], name="bbs_path_alpha"),
        helper.make_node("Mul", ["bbs_path_alpha", "bbs_path_d"], ["bbs_path_step"], name="bbs_path_step"),
        helper.make_node("Add", ["bbs_path_a", "bbs_path_step"], [EMBEDS], name="bbs_path_point"),
    ]
    for k, node in enumerate(front):
        g.node.insert(k, node)
    g.node.extend([
        helper.make_node("Mul", [GRAD, "bbs_path_d"], ["bbs_path_terms"], name="bbs_path_terms"),
        helper.make_node("ReduceSum", ["bbs_path_terms", axis2.name], [TOKEN_JVP], keepdims=0, name=TOKEN_JVP),
    ])
    g.output.append(helper.make_tensor_value_info(TOKEN_JVP, onnx.TensorProto.FLOAT, ["batch", "sequence"]))
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the path form of the gradient graph does not pass onnx.checker: {exc}") from exc
    return out
