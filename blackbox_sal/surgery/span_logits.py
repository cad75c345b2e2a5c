"""An extractive question-answering export's two per-token outputs as one explained output.

A ``...ForQuestionAnswering`` export returns ``start_logits`` and ``end_logits``, each
[batch, seq]. Every target of an answer span (the start score, the end score, their sum) is a
weighted sum of these, so the model explained is the same graph with one more output::

    start_logits [B, S] --+
                          +-- Concat(axis=1) --> span_logits [B, 2S]
    end_logits   [B, S] --+

Column i is the start score of token i, column S + j the end score of token j; a target is a
weight vector over the 2S columns (one seed row of the gradient graph).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # onnx is imported where a graph is rewritten: the edge install explains without it
    import onnx

#: the output the span targets are read from: [batch, 2 * seq]
SPAN_LOGITS = "span_logits"


def span_logits(body: onnx.ModelProto, start: str, end: str) -> onnx.ModelProto:
    """``body`` with one more output, SPAN_LOGITS = Concat(start, end, axis=1) [batch, 2 seq]."""
    import onnx
    from onnx import helper

    outputs = {o.name for o in body.graph.output}
    if start not in outputs or end not in outputs:
        raise ValueError(f"{start!r} and {end!r} must both be outputs of the graph")
    out = onnx.ModelProto()
    out.CopyFrom(body)
    out.graph.node.append(helper.make_node("Concat", [start, end], [SPAN_LOGITS], axis=1, name=SPAN_LOGITS))
    out.graph.output.append(helper.make_tensor_value_info(SPAN_LOGITS, onnx.TensorProto.FLOAT, ["batch", None]))
    return out
