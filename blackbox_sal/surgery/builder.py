"""Emitting the adjoint nodes of a reverse pass: fresh names, deduplicated constants, and
the static un-broadcasting every elementwise rule needs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.facts import Facts
from blackbox_sal.vocabulary.errors import ModelError


class Builder:
    """Emits the adjoint nodes, for the model's opset."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple[bytes, str, tuple[int, ...]], str] = {}

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"bbs_{stem}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        return self.ops(op_type, inputs, 1, **attrs)[0]

    def ops(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs: object) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))  # type: ignore[arg-type]
        return outs

    def const(self, value: np.ndarray) -> str:
        value = np.ascontiguousarray(value)
        key = (value.tobytes(), value.dtype.str, value.shape)
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(value, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.array(list(values), np.int64))

    def scalar(self, value: float, rank: int, dtype: np.dtype) -> str:
        """A single value shaped [1]*rank: onnxruntime broadcasts those fast."""
        return self.const(np.full([1] * rank, value, dtype))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        axes = sorted(axes)
        if (op_type == "ReduceSum" and self.opset >= 13) or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(sorted(axes))])

    def shape(self, x: str) -> str:
        return self.op("Shape", [x])


def unbroadcast_shapes(b: Builder, g: str, g_shapes: Sequence[tuple[int, ...]],
                        x_shapes: Sequence[tuple[int, ...]]) -> str:
    """Sum g (with shapes g_shapes, one per probe) down to the operand's shapes x_shapes."""
    lead = len(g_shapes[0]) - len(x_shapes[0])
    axes = []
    for k in range(len(x_shapes[0])):
        xs = [s[k] for s in x_shapes]
        gs = [s[lead + k] for s in g_shapes]
        if xs == gs:
            continue
        if all(v == 1 for v in xs):
            axes.append(lead + k)
        else:
            raise ModelError("broadcasting that changes with the input shape: no gradient graph")
    if axes:
        g = b.reduce("ReduceSum", g, axes, keepdims=True)
    if lead > 0:
        g = b.reduce("ReduceSum", g, range(lead), keepdims=False)
    return g


def unbroadcast(b: Builder, f: Facts, g: str, x: str, y: str) -> str:
    return unbroadcast_shapes(b, g, f.shapes[y], f.shapes[x])


def zero_like(b: Builder, f: Facts, like: str) -> str:
    return b.scalar(0.0, f.rank(like), f.dtypes[like])
