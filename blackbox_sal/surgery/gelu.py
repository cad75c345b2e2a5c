"""The exact GELU as the torch exporter spells it out, folded into one Gelu node before the
reverse pass: its adjoint then reads only x, which leaves the forward pattern whole for
onnxruntime's own Gelu fusion and costs fewer passes over the tensor."""

from __future__ import annotations

import math

import onnx
from onnx import helper

from blackbox_sal.surgery.facts import Facts
from blackbox_sal.surgery.index import GraphIndex


def fold_gelus(graph: onnx.GraphProto, f: Facts, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Replace, in the list of nodes to differentiate, each exact GELU spelled out by the torch
    exporter, ``0.5 * x * (1 + erf(x / sqrt(2)))`` (Div or Mul by the constant, either order of
    the products), by one Gelu node: its adjoint then reads only x, which leaves the forward
    pattern whole for onnxruntime's own Gelu fusion, and costs fewer passes over the tensor."""
    index = GraphIndex.of(graph)
    producer, users = index.producer, index.users

    def const(name: str, want: float) -> bool:
        v = f.values.get(name)
        return v is not None and v.size == 1 and abs(float(v.reshape(())) - want) < 1e-4 * abs(want)

    def other(node: onnx.NodeProto, name: str) -> str | None:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(node.input) == 2 and len(rest) == 1 else None

    def only_user(name: str, op: str) -> onnx.NodeProto | None:
        return index.only_user(name, op) if name not in graph_outputs else None

    def scaled(node: onnx.NodeProto) -> str | None:  # x of x / sqrt(2) or x * (1 / sqrt(2))
        if node.op_type == "Div" and const(node.input[1], math.sqrt(2)):
            return node.input[0]
        if node.op_type == "Mul":
            for a, c in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                if const(c, 1 / math.sqrt(2)):
                    return a
        return None

    graph_outputs = {o.name for o in graph.output}
    folded: dict[str, tuple[str, list[onnx.NodeProto]]] = {}  # y -> (x, pattern nodes)
    for erf in (n for n in nodes if n.op_type == "Erf"):
        scale = producer.get(erf.input[0])
        if scale is None or only_user(erf.input[0], "Erf") is None:
            continue
        x = scaled(scale)
        if x is None:
            continue
        add = only_user(erf.output[0], "Add")
        if add is None or not const(other(add, erf.output[0]) or "", 1.0):
            continue
        prod = only_user(add.output[0], "Mul")
        if prod is None:
            continue
        left = other(prod, add.output[0])
        if left == x:  # (x * (1 + erf)) * 0.5
            last = only_user(prod.output[0], "Mul")
            if last is None or not const(other(last, prod.output[0]) or "", 0.5):
                continue
            pattern = [scale, erf, add, prod, last]
        else:  # (x * 0.5) * (1 + erf)
            half = producer.get(left or "")
            if half is None or half.op_type != "Mul" or x not in half.input or not const(other(half, x) or "", 0.5) \
                    or len(users.get(half.output[0], [])) != 1:
                continue
            last, pattern = prod, [scale, erf, add, half, prod]
        folded[last.output[0]] = (x, pattern)
    if not folded:
        return nodes
    inner = {id(p) for _, pattern in folded.values() for p in pattern}
    out = []
    for node in nodes:
        if node.output and node.output[0] in folded:
            out.append(helper.make_node("Gelu", [folded[node.output[0]][0]], [node.output[0]]))
        elif id(node) not in inner:
            out.append(node)
    return out
