"""The fan form of a gradient graph: the forward pass runs on P points, the backward on R seed rows.

k targets of one text (per-token entities, an answer's start, end and sum, the classes of a
Jacobian) ask for k gradients at the same point with different seeds. The plain graph runs k
copies of the forward pass for them; the fan form runs it once::

    points [P, ...] -> forward nodes (batch P) -> t [P, ...] --+-> output [P, C]
                                                               |
    fan_rows [R] (each seed row's point, 0..P-1) -> Gather(t, fan_rows, axis=batch axis of t)
                                                               |
    target_weights [R, C] -> backward nodes (batch R) <--------+-> grad [R, S, D]

Which nodes are the backward pass is read from the graph itself: a node is backward when it
depends, directly or through other nodes, on ``target_weights`` (the seed). Everything else
(the model, the path form's front, the reverse rules' nodes that read forward tensors only)
runs at batch P. Every forward tensor a backward node reads (a *crossing* tensor) is gathered
along its batch axis, found by the caller from two probe runs at batch 1 and 2
(:func:`batch_axis`): a tensor without one (positions, a causal mask, weights) is read as it is.
A tensor whose batch is merged with another axis ([B*H, S, d] attention exports) cannot be
gathered row by row: ModelError, and the plain graph runs. So does a graph whose backward nodes
hold subgraphs, or whose gradient does not depend on the seed.

The result is pure onnx -> onnx and unverified: :mod:`blackbox_sal.gradient_graph.fan` checks
it against the plain graph before use. Its interface: the plain graph's inputs (their batch axis
now P), ``fan_rows`` [R] int64, ``target_weights`` [R, C]; outputs: the explained output
[P, C], ``grad`` [R, S, D] (and the path form's ``token_jvp`` [R, S]).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnx
from onnx import helper

from blackbox_sal.surgery.names import FAN_ROWS, GRAD, WEIGHTS
from blackbox_sal.surgery.prune import node_inputs
from blackbox_sal.vocabulary.errors import ModelError


def backward_nodes(graph: onnx.GraphProto) -> list[bool]:
    """Per node of ``graph`` (topologically sorted): whether it depends on the seed."""
    seeded = {WEIGHTS}
    marks = []
    for node in graph.node:
        mark = any(i in seeded for i in node_inputs(node))
        if mark:
            seeded.update(o for o in node.output if o)
        marks.append(mark)
    return marks


def crossing(model: onnx.ModelProto) -> list[str]:
    """The forward tensors (graph inputs and forward node outputs, not weights) that backward
    nodes read, in graph order: the tensors whose batch axes :func:`fan_model` needs. For a
    forward ``Shape`` (or ``Size``) the backward reads, the tensor it measures: the backward
    gets its own copy of that node, measuring the gathered tensor (its batch is R, not P)."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    marks = backward_nodes(graph)
    made_by_backward = {o for node, mark in zip(graph.node, marks, strict=True) if mark for o in node.output}
    measures = _measures(graph, marks)
    seen: dict[str, None] = {}
    for node, mark in zip(graph.node, marks, strict=True):
        if mark:
            for name in node.input:
                if name and name not in made_by_backward and name not in constant and name != WEIGHTS:
                    seen.setdefault(measures[name].input[0] if name in measures else name, None)
    return list(seen)


def _measures(graph: onnx.GraphProto, marks: list[bool]) -> dict[str, onnx.NodeProto]:
    """The forward Shape and Size nodes, by output name."""
    return {node.output[0]: node for node, mark in zip(graph.node, marks, strict=True)
            if not mark and node.op_type in ("Shape", "Size") and node.input and node.input[0]}


def batch_axis(name: str, one: Sequence[int], two: Sequence[int]) -> int | None:
    """The batch axis of a tensor seen with shape ``one`` at batch 1 and ``two`` at batch 2 (same
    length): the one axis that went from 1 to 2; None when no axis changed (no batch axis).
    ModelError for an axis that doubled from more than 1 (a batch merged with another axis),
    several changed axes, or a changed rank."""
    if len(one) != len(two):
        raise ModelError(f"tensor {name!r} changes rank with the batch size: no fan form")
    changed = [a for a, (x, y) in enumerate(zip(one, two, strict=True)) if x != y]
    if not changed:
        return None
    if len(changed) == 1 and one[changed[0]] == 1 and two[changed[0]] == 2:
        return changed[0]
    raise ModelError(f"tensor {name!r} has shape {list(one)} at batch 1 and {list(two)} at batch 2: its batch is "
                     f"merged with another axis, so it cannot be gathered per seed row; no fan form")


def fan_model(model: onnx.ModelProto, axes: Mapping[str, int | None]) -> onnx.ModelProto:
    """``model`` (a gradient graph, plain or in path form) in fan form (pure; see the module
    docstring). ``axes``: the batch axis of every tensor :func:`crossing` names (None: none)."""
    graph = model.graph
    if WEIGHTS not in {i.name for i in graph.input}:
        raise ModelError(f"the gradient graph has no {WEIGHTS!r} input: no fan form")
    marks = backward_nodes(graph)
    made_by_backward = {o for node, mark in zip(graph.node, marks, strict=True) if mark for o in node.output}
    if GRAD not in made_by_backward:
        raise ModelError(f"the gradient graph's {GRAD!r} does not depend on the seed: no fan form")
    for node, mark in zip(graph.node, marks, strict=True):
        if mark and any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ModelError(f"backward node {node.name or node.output[0]!r} holds a subgraph: no fan form")
    wanted = crossing(model)
    missing = [n for n in wanted if n not in axes]
    if missing:
        raise ModelError(f"no batch axis given for {', '.join(missing[:5])}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    measures = _measures(g, marks)
    gathered: dict[str, str] = {}
    measured: dict[str, str] = {}
    nodes: list[onnx.NodeProto] = []

    def seed_rows(name: str) -> str:
        """``name`` with one row per seed row (gathered where it has a batch axis)."""
        axis = axes.get(name)
        if axis is None:
            return name
        if name not in gathered:
            gathered[name] = f"bbs_fan_{len(gathered)}"
            nodes.append(helper.make_node("Gather", [name, FAN_ROWS], [gathered[name]], axis=axis,
                                          name=gathered[name]))
        return gathered[name]

    for node, mark in zip(g.node, marks, strict=True):
        if mark:
            for k, name in enumerate(node.input):
                if name in measures:  # the backward measures the gathered tensor: its own Shape node
                    if name not in measured:
                        copy = onnx.NodeProto()
                        copy.CopyFrom(measures[name])
                        measured[name] = copy.name = copy.output[0] = f"bbs_fan_measure_{len(measured)}"
                        copy.input[0] = seed_rows(copy.input[0])
                        nodes.append(copy)
                    node.input[k] = measured[name]
                elif name in wanted:
                    node.input[k] = seed_rows(name)
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    for info in g.input:
        if info.name == WEIGHTS:
            info.type.tensor_type.shape.dim[0].dim_param = "seeds"
    g.input.append(helper.make_tensor_value_info(FAN_ROWS, onnx.TensorProto.INT64, ["seeds"]))
    for info in g.output:  # what the backward makes has R rows, the rest P
        dims = info.type.tensor_type.shape.dim
        if info.name in made_by_backward and len(dims):
            dims[0].dim_param = "seeds"
    try:
        onnx.checker.check_model(out)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the fan form of the gradient graph does not pass onnx.checker: {exc}") from exc
    return out
