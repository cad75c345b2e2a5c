"""Which operators make a graph quantized (integer arithmetic: no derivatives through them)."""

from __future__ import annotations

import onnx

#: operators of quantized graphs (ONNX and onnxruntime's com.microsoft)
QUANTIZED_OPS = frozenset({
    "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "QuantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QGemm", "QLinearAdd", "QLinearMul",
    "QEmbedLayerNormalization", "DynamicQuantizeLSTM", "MatMulNBits", "QOrderedMatMul",
})


def quantized_ops(proto: onnx.ModelProto) -> tuple[str, ...]:
    """The quantized operator types a graph uses, sorted (empty for a float model)."""
    return tuple(sorted({n.op_type for n in proto.graph.node} & QUANTIZED_OPS))
