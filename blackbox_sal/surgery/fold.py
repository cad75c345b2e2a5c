"""Folding a tensor that is a function of constants alone into its value, with numpy.

Third-party exports compute their embedding table inside the graph: an int8 table [V, D]
becomes float by ``Cast`` then ``Mul`` by a per-row scale [V, 1] before the lookup, or goes
through ``DequantizeLinear``, ``Reshape``, ``Transpose``... :func:`fold` evaluates such a
chain (the ops in ``FOLDABLE``) and says which ops it went through and whether it started
from 8-bit integers, or why it could not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.index import GraphIndex, attr_int, attr_ints

#: a chain deeper than this is not folded (no embedding table is computed in more steps)
MAX_DEPTH = 12
_LOW_BITS = {np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16), np.dtype(np.uint16)}


@dataclass(frozen=True)
class Folded:
    """value: the tensor (None when it could not be folded, ``why`` then says why). ops: the
    operator types the chain went through, in order from the constants. low_bit: whether a
    constant in the chain was 8- or 16-bit integers (a quantized table)."""

    value: np.ndarray | None
    ops: tuple[str, ...] = ()
    low_bit: bool = False
    why: str = ""


def _reshape(x: np.ndarray, shape: np.ndarray, node: onnx.NodeProto) -> np.ndarray:
    target = [int(s) for s in shape]
    if not attr_int(node, "allowzero", 0):
        target = [x.shape[k] if s == 0 else s for k, s in enumerate(target)]
    return x.reshape(target)


def _dequantize(node: onnx.NodeProto, q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None) -> np.ndarray:
    if attr_int(node, "block_size", 0):
        raise ValueError("blocked DequantizeLinear")
    zero_f = np.zeros_like(scale, np.float32) if zero is None else zero.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.size > 1:
        shape = [1] * q.ndim
        shape[attr_int(node, "axis", 1) % q.ndim] = scale.size
        scale, zero_f = scale.reshape(shape), zero_f.reshape(shape)
    return ((q.astype(np.float32) - zero_f) * scale).astype(np.float32)


def _axes(node: onnx.NodeProto, values: list[np.ndarray | None]) -> tuple[int, ...]:
    """Squeeze / Unsqueeze axes: the second input (opset 13+) or the attribute."""
    given = values[1] if len(values) > 1 else None
    return tuple(int(a) for a in (given if given is not None else attr_ints(node, "axes", []) or []))


def _evaluate(node: onnx.NodeProto, values: list[np.ndarray | None]) -> np.ndarray:
    """One FOLDABLE node on constant inputs (an absent optional input is None)."""
    op = node.op_type
    x = values[0]
    if x is None:
        raise ValueError("no data input")
    if op == "Identity":
        return x
    if op == "Cast":
        return x.astype(helper.tensor_dtype_to_np_dtype(attr_int(node, "to", 1)))
    if op == "Neg":
        return np.negative(x)
    if op == "Transpose":
        return np.transpose(x, attr_ints(node, "perm"))
    if op == "Squeeze":
        return np.squeeze(x, _axes(node, values) or None)
    if op == "Unsqueeze":
        return np.expand_dims(x, _axes(node, values))
    y = values[1] if len(values) > 1 else None
    if op == "DequantizeLinear":
        if y is None:
            raise ValueError("no scale")
        return _dequantize(node, x, y, values[2] if len(values) > 2 else None)
    if y is None:
        raise ValueError("a second input is missing")
    if op == "Reshape":
        return _reshape(x, y, node)
    return {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[op](x, y)


#: the operators a constant chain may go through
FOLDABLE = frozenset({"Identity", "Cast", "Mul", "Add", "Sub", "Div", "Neg", "Reshape", "Transpose", "Squeeze",
                      "Unsqueeze", "DequantizeLinear"})


def fold(index: GraphIndex, name: str, depth: int = 0) -> Folded:
    """The value of tensor ``name`` when it is a constant or a FOLDABLE function of constants."""
    if name in index.constants:
        value = numpy_helper.to_array(index.constants[name])
        return Folded(value, (), value.dtype in _LOW_BITS)
    node = index.producer.get(name)
    if node is None:
        return Folded(None, why=f"{name!r} is a graph input, not a constant")
    if depth >= MAX_DEPTH:
        return Folded(None, why=f"{name!r} is computed in more than {MAX_DEPTH} steps")
    if node.op_type not in FOLDABLE:
        return Folded(None, why=f"{name!r} comes from a {node.op_type} (folded are {', '.join(sorted(FOLDABLE))})")
    parts = [fold(index, i, depth + 1) if i else Folded(None) for i in node.input]
    for i, part in zip(node.input, parts, strict=True):
        if i and part.value is None:
            return Folded(None, why=part.why)
    try:
        value = np.asarray(_evaluate(node, [p.value for p in parts]))
    except (ValueError, TypeError, IndexError) as exc:
        return Folded(None, why=f"{node.op_type} {node.name or name!r} could not be evaluated ({exc})")
    ops = (*(op for p in parts for op in p.ops), node.op_type)
    return Folded(value, ops, any(p.low_bit for p in parts))
