"""One index of a graph for the rewrites: who produces a name, who reads it, which names
are constants, and typed attribute readers.

Hand-written rather than onnx-ir or onnxscript's IR: the rewrites need a producer map, a
user map and the constants (initializers and Constant nodes), nothing more, and building an
IR would copy every weight of a large model for that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx


@dataclass(frozen=True)
class GraphIndex:
    """Maps over one graph's nodes, as they were when the index was made."""

    producer: dict[str, onnx.NodeProto]
    users: dict[str, list[onnx.NodeProto]]
    constants: dict[str, onnx.TensorProto]

    @classmethod
    def of(cls, graph: onnx.GraphProto) -> GraphIndex:
        producer = {o: n for n in graph.node for o in n.output if o}
        users: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                if i:
                    users.setdefault(i, []).append(n)
        constants = {t.name: t for t in graph.initializer}
        for n in graph.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value" and a.HasField("t"):
                        constants[n.output[0]] = a.t
        return cls(producer, users, constants)

    def only_user(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The single node reading ``name``, when there is one and it is an ``op_type``."""
        found = self.users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op_type else None


def attr_int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def attr_float(node: onnx.NodeProto, name: str, default: float) -> float:
    for a in node.attribute:
        if a.name == name:
            return float(a.f)
    return default


def attr_ints(node: onnx.NodeProto, name: str, default: Sequence[int] | None = None) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return [int(v) for v in a.ints]
    return None if default is None else list(default)


def attr_str(node: onnx.NodeProto, name: str, default: str) -> str:
    for a in node.attribute:
        if a.name == name:
            return a.s.decode("utf-8", "replace")
    return default


def has_attr(node: onnx.NodeProto, name: str) -> bool:
    return any(a.name == name for a in node.attribute)


def input_at(node: onnx.NodeProto, k: int) -> str:
    """The node's k-th input name, "" when absent (optional inputs)."""
    return node.input[k] if len(node.input) > k else ""


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (0 when none is declared)."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
