"""Remove what no graph output needs: nodes, initializers, inputs.

Surgery leaves dead parts behind (the Cast that fed a removed Gather, an embedding table
nobody reads any more); onnxruntime would still load them, and some would still run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import onnx


def subgraph_inputs(node: onnx.NodeProto) -> Iterator[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    for attr in node.attribute:
        graphs = list(attr.graphs)
        if attr.HasField("g"):
            graphs.append(attr.g)
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer}
            for inner in g.node:
                local.update(inner.output)
            for inner in g.node:
                for name in list(inner.input) + list(subgraph_inputs(inner)):
                    if name and name not in local:
                        yield name


def node_inputs(node: onnx.NodeProto) -> set[str]:
    """Every name a node reads, its subgraphs' outer-scope reads included."""
    return {n for n in node.input if n} | set(subgraph_inputs(node))


def remove(repeated: Any, indices: Iterable[int]) -> None:
    """Delete, in place, the elements at ``indices`` of a repeated protobuf field. The others
    are not copied (clearing the field and extending it with the kept ones would copy each:
    a model's weights, twice over while both lists live)."""
    for k in sorted(set(indices), reverse=True):
        del repeated[k]


def prune(graph: onnx.GraphProto, keep_inputs: frozenset[str] = frozenset()) -> None:
    """Drop, in place, nodes and initializers no output depends on, and unused graph inputs
    (except those named in ``keep_inputs``)."""
    needed = {o.name for o in graph.output}
    dead: list[int] = []
    for k in range(len(graph.node) - 1, -1, -1):  # graph.node is topologically sorted
        node = graph.node[k]
        if any(o in needed for o in node.output):
            needed |= node_inputs(node)
        else:
            dead.append(k)
    remove(graph.node, dead)
    remove(graph.initializer, [k for k, t in enumerate(graph.initializer) if t.name not in needed])
    kept_inputs = [i for i in graph.input if i.name in needed or i.name in keep_inputs]
    del graph.input[:]
    graph.input.extend(kept_inputs)
    produced = {o for n in graph.node for o in n.output}
    kept_info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(kept_info)


def clear_shapes(graph: onnx.GraphProto) -> None:
    """Drop, in place, the shapes recorded for intermediate tensors (``value_info``). An
    export's static shapes (a fixed [1, 64] input, say) go stale once the graph is rewritten,
    and onnxruntime's optimizer would fold ``Shape`` nodes from them; it infers them anew."""
    del graph.value_info[:]
