"""Split a model that takes ``input_ids`` at its word-embedding lookup.

Token ids are not differentiable; their embeddings are. An export that takes ``input_ids``
starts with a lookup ``Gather(table, ids)`` on a constant 2-D table. We cut it out::

    before:   input_ids --[Cast|Reshape]--> Gather(table) --> E --> ... --> logits
                   \\--> Shape --> position ids ... (other uses of the ids)

    after:    table (numpy [V, D])                       , the lookup, done by the caller
              inputs_embeds ---------------------------> E --> ... --> logits
              input_ids (kept only if other nodes still read it) --> Shape --> ...

Everything after the lookup (position and type embeddings, LayerNorm, ...) stays in the body,
so ``body(table[ids]) == original(ids)``; the loader checks that on real inputs.

The paths from ``input_ids`` to the lookup that are recognised are data: ``PASS_THROUGH``
ops keep every id where it was; ``MIRRORED`` ops move ids around (GPT-2 exports reshape the
ids to [-1, seq] first), so the body applies the same op to the embeddings' leading axes::

    input_ids --Reshape(shape)--> Gather       becomes       inputs_embeds --Reshape(shape ++ [D])--> E

When nothing matches, :class:`ModelError` says what was looked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from blackbox_sal.errors import ModelError
from blackbox_sal.graph.prune import node_inputs, prune

EMBEDS = "inputs_embeds"

#: Ops allowed between ``input_ids`` and the lookup's indices: they change the dtype or
#: nothing at all, so the lookup output keeps the [batch, seq, dim] layout of the ids.
PASS_THROUGH = ("Cast", "Identity")
#: Ops between ``input_ids`` and the lookup that the body repeats on the embeddings.
MIRRORED = ("Reshape",)

_FLOAT_TYPES = {onnx.TensorProto.FLOAT}


@dataclass(frozen=True)
class EmbeddingSplit:
    """The result of :func:`split_embedding`.

    table: float32 [vocab, dim], the word-embedding matrix.
    body: the model from the embeddings on; inputs ``inputs_embeds`` [batch, seq, dim] plus the
        original inputs other than the ids (and the ids themselves if ``needs_ids``).
    needs_ids: whether the body still reads ``input_ids`` (e.g. ``Shape(input_ids)``).
    lookup: the name of the Gather node that was removed.
    """

    table: np.ndarray
    body: onnx.ModelProto
    needs_ids: bool
    lookup: str


def _constants(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    found = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = attr.t
    return found


def _reached_from(graph: onnx.GraphProto, start: str) -> dict[str, list[onnx.NodeProto]]:
    """Names computed from ``start`` through PASS_THROUGH / MIRRORED ops, each with the chain
    of nodes that leads to it (``start`` itself has an empty chain)."""
    reached: dict[str, list[onnx.NodeProto]] = {start: []}
    for node in graph.node:  # topological order: one pass suffices
        if node.op_type in PASS_THROUGH + MIRRORED and node.input and node.input[0] in reached:
            for out in node.output:
                reached[out] = [*reached[node.input[0]], node]
    return reached


def _gather_axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return int(attr.i)
    return 0


def find_lookup(graph: onnx.GraphProto, ids_name: str
                ) -> tuple[onnx.NodeProto, onnx.TensorProto, list[onnx.NodeProto]]:
    """The word-embedding Gather fed by ``ids_name``, its table, and the chain of ops between.

    Several candidates (rare: a second table indexed by the ids) resolve to the largest table.
    """
    reached = _reached_from(graph, ids_name)
    consts = _constants(graph)
    candidates = []
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in reached:
            continue
        table = consts.get(node.input[0])
        if table is None or len(table.dims) != 2 or _gather_axis(node) != 0:
            continue
        if table.data_type not in _FLOAT_TYPES:
            raise ModelError(
                f"the embedding table {node.input[0]!r} has data type "
                f"{onnx.TensorProto.DataType.Name(table.data_type)}; only float32 tables can be split")
        candidates.append((node, table, reached[node.input[1]]))
    if not candidates:
        raise ModelError(
            f"no word-embedding lookup found: looked for a Gather on a constant 2-D float table "
            f"whose indices come from {ids_name!r} directly or through {'/'.join(PASS_THROUGH + MIRRORED)}. "
            f"Export the model with an 'inputs_embeds' input instead and put the table beside it "
            f"as embeddings.npy")
    return max(candidates, key=lambda c: c[1].dims[0])


def split_embedding(model: onnx.ModelProto, ids_name: str = "input_ids") -> EmbeddingSplit:
    """Cut ``model`` at its word-embedding lookup. Pure: ``model`` is not modified.

    Raises ModelError when the model has no input ``ids_name`` or no recognisable lookup.
    """
    graph = model.graph
    inputs = {i.name: i for i in graph.input}
    if ids_name not in inputs:
        raise ModelError(
            f"the model has no {ids_name!r} input (inputs: {', '.join(inputs) or 'none'})")
    if EMBEDS in inputs:
        raise ModelError(f"the model already takes {EMBEDS!r}; nothing to split")
    lookup, table_proto, chain = find_lookup(graph, ids_name)
    table = numpy_helper.to_array(table_proto).astype(np.float32, copy=False)

    body = onnx.ModelProto()
    body.CopyFrom(model)
    g = body.graph
    emb_out = lookup.output[0]
    at = next(k for k, n in enumerate(g.node) if n.name == lookup.name and list(n.output) == [emb_out])
    del g.node[at]
    mirrored = [n for n in chain if n.op_type in MIRRORED]
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == emb_out and not mirrored:
                node.input[k] = EMBEDS
        if emb_out in node_inputs(node) and emb_out not in node.input:
            raise ModelError("the embedding output is read inside a subgraph; cannot split this model")
    if mirrored:  # repeat the id reshapes on the embeddings, ending in the lookup's output name
        dim = numpy_helper.from_array(np.array([table.shape[1]], np.int64), f"{emb_out}__dim")
        g.initializer.append(dim)
        current, new_nodes = EMBEDS, []
        for k, node in enumerate(mirrored):
            shape, out = f"{emb_out}__shape{k}", (emb_out if k == len(mirrored) - 1 else f"{emb_out}__m{k}")
            new_nodes.append(onnx.helper.make_node("Concat", [node.input[1], dim.name], [shape], axis=0))
            new_nodes.append(onnx.helper.make_node("Reshape", [current, shape], [out]))
            current = out
        for k, node in enumerate(new_nodes):
            g.node.insert(at + k, node)
    else:
        for out in g.output:
            if out.name == emb_out:  # the embeddings are themselves an output: keep it an output
                g.node.append(onnx.helper.make_node("Identity", [EMBEDS], [emb_out]))

    ids_info = inputs[ids_name]
    dims = [onnx.TensorShapeProto.Dimension() for _ in range(2)]
    for k, d in enumerate(ids_info.type.tensor_type.shape.dim[:2]):
        dims[k].CopyFrom(d)
    embeds = onnx.helper.make_tensor_value_info(
        EMBEDS, onnx.TensorProto.FLOAT,
        [d.dim_param or (d.dim_value if d.dim_value else None) for d in dims] + [table.shape[1]])
    g.input.insert(0, embeds)
    prune(g, keep_inputs=frozenset(i.name for i in g.input if i.name != ids_name))
    needs_ids = any(i.name == ids_name for i in g.input)
    try:
        onnx.checker.check_model(body)
    except onnx.checker.ValidationError as exc:  # a bug in the surgery, or a model onnx rejects
        raise ModelError(f"the split model does not pass onnx.checker: {exc}") from exc
    return EmbeddingSplit(table=table, body=body, needs_ids=needs_ids, lookup=lookup.name)
