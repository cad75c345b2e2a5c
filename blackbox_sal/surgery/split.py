"""Split a model that takes ``input_ids`` at its word-embedding lookup.

Token ids are not differentiable; their embeddings are. An export that takes ``input_ids``
starts with a lookup ``Gather(table, ids)`` on a constant 2-D table. We cut it out::

    before:   input_ids --[Cast|Reshape|...]--> Gather(table) --> E --> ... --> logits
                   \\--> Shape --> position ids ... (other uses of the ids)

    after:    table (numpy [V, D])                       , the lookup, done by the caller
              inputs_embeds ---------------------------> E --> ... --> logits
              input_ids (kept only if other nodes still read it) --> Shape --> ...

Everything after the lookup (position and type embeddings, LayerNorm, ...) stays in the body,
so ``body(table[ids]) == original(ids)``; the loader checks that on real inputs. A table tied
to an LM head stays in the body for the head.

The paths from ``input_ids`` to the lookup that are recognised are data: ``PASS_THROUGH``
ops keep every id where it was; ``MIRRORED`` ops only move ids around (GPT-2 exports reshape
the ids to [-1, seq], others flatten or squeeze them), so the body repeats them on a
[batch, seq] stand-in taken from the embeddings and reshapes the embeddings to match::

    input_ids --Flatten--> Gather      becomes
    inputs_embeds --Slice[..., :1]--> stand-in [B, S] --Flatten--> Shape ++ [D] --> Reshape(inputs_embeds) --> E

Quantized tables are dequantized here: a ``DequantizeLinear`` of constants feeding the
Gather, or a Gather on an 8-bit table whose output goes through ``DequantizeLinear`` (as
onnxruntime's quantize_dynamic writes it; the split is then taken after the dequantization).
When nothing matches, :class:`ModelError` says what was looked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.errors import ModelError
from blackbox_sal.surgery.index import GraphIndex, attr_int
from blackbox_sal.surgery.names import EMBEDS
from blackbox_sal.surgery.prune import node_inputs, prune

#: Ops allowed between ``input_ids`` and the lookup's indices that change the dtype or
#: nothing at all.
PASS_THROUGH = ("Cast", "Identity")
#: Shape-only ops between ``input_ids`` and the lookup: the body repeats them.
MIRRORED = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
_INT8_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}


@dataclass(frozen=True)
class EmbeddingSplit:
    """The result of :func:`split_embedding`.

    table: float32 [vocab, dim], the word-embedding matrix (dequantized if it was quantized).
    body: the model from the embeddings on; inputs ``inputs_embeds`` [batch, seq, dim] plus the
        original inputs other than the ids (and the ids themselves if ``needs_ids``).
    needs_ids: whether the body still reads ``input_ids`` (e.g. ``Shape(input_ids)``).
    lookup: the name of the Gather node that was removed.
    quantized_table: whether the table was stored in 8 bits.
    """

    table: np.ndarray
    body: onnx.ModelProto
    needs_ids: bool
    lookup: str
    quantized_table: bool = False


@dataclass(frozen=True)
class Lookup:
    """A word-embedding lookup found in a graph (see :func:`find_lookup`).

    removed: the nodes the split deletes (the Gather, and a DequantizeLinear after it);
    output: the name that carries the embeddings in the original graph.
    requantize: (scale, zero point) when the graph consumes the 8-bit lookup itself: the body
    then quantizes inputs_embeds with the table's own parameters (exact for table rows).
    """

    gather: onnx.NodeProto
    table: np.ndarray
    chain: tuple[onnx.NodeProto, ...]
    removed: tuple[onnx.NodeProto, ...]
    output: str
    quantized: bool
    requantize: tuple[str, str] | None = None


def _reached_from(graph: onnx.GraphProto, start: str) -> dict[str, list[onnx.NodeProto]]:
    """Names computed from ``start`` through PASS_THROUGH / MIRRORED ops, each with the chain
    of nodes that leads to it (``start`` itself has an empty chain)."""
    reached: dict[str, list[onnx.NodeProto]] = {start: []}
    for node in graph.node:  # topological order: one pass suffices
        if node.op_type in PASS_THROUGH + MIRRORED and node.input and node.input[0] in reached:
            for out in node.output:
                reached[out] = [*reached[node.input[0]], node]
    return reached


def _dequantize(node: onnx.NodeProto, consts: dict[str, onnx.TensorProto], q: np.ndarray,
                axis_map: int) -> np.ndarray | None:
    """Apply a DequantizeLinear whose scale and zero point are constants to ``q`` (a table);
    ``axis_map``: the table axis the node's per-axis parameters run along. None if it cannot."""
    if attr_int(node, "block_size", 0) or any(i and i not in consts for i in node.input[1:]):
        return None
    scale = numpy_helper.to_array(consts[node.input[1]]).astype(np.float32)
    zero = (numpy_helper.to_array(consts[node.input[2]]).astype(np.float32)
            if len(node.input) > 2 and node.input[2] else np.zeros_like(scale))
    if scale.size > 1:  # per-axis: lay the parameters along the table's matching axis
        shape = [1, 1]
        shape[axis_map] = -1
        if q.shape[axis_map] != scale.size:
            return None
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def find_lookup(graph: onnx.GraphProto, ids_name: str) -> Lookup:
    """The word-embedding lookup fed by ``ids_name``.

    Several candidates (rare: a second table indexed by the ids) resolve to the largest table.
    """
    reached = _reached_from(graph, ids_name)
    index = GraphIndex.of(graph)
    consts, producer, users = index.constants, index.producer, index.users
    candidates: list[Lookup] = []
    refused: list[str] = []
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in reached:
            continue
        if attr_int(node, "axis", 0) != 0:
            continue
        chain = tuple(reached[node.input[1]])
        source = node.input[0]
        if source in consts and len(consts[source].dims) == 2:
            proto = consts[source]
            array = numpy_helper.to_array(proto)
            after = users.get(node.output[0], [])
            if proto.data_type in _FLOAT_TYPES:
                candidates.append(Lookup(node, array.astype(np.float32), chain, (node,), node.output[0], False))
            elif proto.data_type in _INT8_TYPES and len(after) == 1 and after[0].op_type == "DequantizeLinear":
                dq = after[0]  # per-axis parameters can only run along the output's last axis: the columns
                table = _dequantize(dq, consts, array, 1)
                if table is not None:
                    candidates.append(Lookup(node, table, chain, (node, dq), dq.output[0], True))
                else:
                    refused.append(f"{source!r} (8-bit, with a DequantizeLinear we cannot fold)")
            elif proto.data_type in _INT8_TYPES:
                # the 8-bit lookup feeds integer ops directly (quantize_dynamic fuses it into a
                # MatMulInteger); its parameters follow onnxruntime's naming: X_quantized, X_scale, X_zero_point
                base = source.removesuffix("_quantized")
                scale, zero = f"{base}_scale", f"{base}_zero_point"
                dq = helper.make_node("DequantizeLinear", [source, scale, zero], ["_"], axis=1)
                table = _dequantize(dq, consts, array, 1) if scale in consts and zero in consts else None
                if table is not None:
                    candidates.append(Lookup(node, table, chain, (node,), node.output[0], True, (scale, zero)))
                else:
                    refused.append(f"{source!r} (8-bit, without a DequantizeLinear or {scale!r}/{zero!r})")
            else:
                refused.append(f"{source!r} ({onnx.TensorProto.DataType.Name(proto.data_type)})")
        elif source in producer and producer[source].op_type == "DequantizeLinear":
            dq = producer[source]  # the table is dequantized from constants before the lookup
            q = consts.get(dq.input[0])
            table = (_dequantize(dq, consts, numpy_helper.to_array(q), attr_int(dq, "axis", 1) % 2)
                     if q is not None and len(q.dims) == 2 else None)
            if table is not None:
                candidates.append(Lookup(node, table, chain, (node,), node.output[0], True))
    if not candidates:
        tried = f" (found tables we cannot use: {', '.join(refused)})" if refused else ""
        raise ModelError(
            f"no word-embedding lookup found{tried}: looked for a Gather on a constant 2-D table "
            f"(float, or 8-bit with a DequantizeLinear) whose indices come from {ids_name!r} directly "
            f"or through {'/'.join(PASS_THROUGH + MIRRORED)}. Export the model with an 'inputs_embeds' "
            f"input instead and put the table beside it as embeddings.npy")
    return max(candidates, key=lambda c: c.table.shape[0])


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
    found = find_lookup(graph, ids_name)
    table = found.table

    body = onnx.ModelProto()
    body.CopyFrom(model)
    g = body.graph
    emb_out = found.output
    removed = {(n.name, tuple(n.output)) for n in found.removed}
    at = next(k for k, n in enumerate(g.node) if (n.name, tuple(n.output)) in removed)
    kept = [n for n in g.node if (n.name, tuple(n.output)) not in removed]
    del g.node[:]
    g.node.extend(kept)
    mirrored = [n for n in found.chain if n.op_type in MIRRORED]
    # the name the float embeddings take in the body; an 8-bit lookup is re-quantized from it
    floats = f"{emb_out}__float" if found.requantize else (emb_out if mirrored else EMBEDS)
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == emb_out and not mirrored and not found.requantize:
                node.input[k] = EMBEDS
        if emb_out in node_inputs(node) and emb_out not in node.input:
            raise ModelError("the embedding output is read inside a subgraph; cannot split this model")
    new_nodes = _mirror(mirrored, floats, table.shape[1], g) if mirrored else []
    if found.requantize:
        source = floats if mirrored else EMBEDS
        quantize = helper.make_node("QuantizeLinear", [source, *found.requantize], [emb_out])
        if _per_column(g, found.requantize[0]):
            quantize.attribute.append(helper.make_attribute("axis", -1))
        new_nodes.append(quantize)
    for k, node in enumerate(new_nodes):
        g.node.insert(at + k, node)
    if not new_nodes:
        for out in g.output:
            if out.name == emb_out:  # the embeddings are themselves an output: keep it an output
                g.node.append(helper.make_node("Identity", [EMBEDS], [emb_out]))

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
    return EmbeddingSplit(table=table, body=body, needs_ids=needs_ids, lookup=found.gather.name,
                          quantized_table=found.quantized)


def _per_column(g: onnx.GraphProto, name: str) -> bool:
    """Whether quantization parameter ``name`` is per column (more than one value)."""
    t = next((t for t in g.initializer if t.name == name), None)
    return t is not None and int(np.prod(t.dims)) > 1


def _mirror(ops: list[onnx.NodeProto], out: str, dim: int, g: onnx.GraphProto) -> list[onnx.NodeProto]:
    """Nodes that repeat the shape-only ``ops`` the ids went through on a [batch, seq] stand-in
    cut from the embeddings, then reshape the embeddings to that shape plus [dim], as ``out``."""
    def const(name: str, value: list[int]) -> str:
        g.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{out}__{name}"))
        return f"{out}__{name}"

    stem = f"{out}__ids"
    nodes = [
        helper.make_node("Slice", [EMBEDS, const("zero", [0]), const("one", [1]), const("last", [-1])], [f"{stem}0"]),
        helper.make_node("Shape", [EMBEDS], [f"{stem}shape"]),
        helper.make_node("Slice", [f"{stem}shape", const("zero0", [0]), const("two", [2])], [f"{stem}bs"]),
        helper.make_node("Reshape", [f"{stem}0", f"{stem}bs"], [f"{stem}1"]),
    ]
    current = f"{stem}1"
    for k, op in enumerate(ops):
        node = onnx.NodeProto()
        node.CopyFrom(op)
        node.name = f"{stem}_{op.name or k}"
        node.input[0] = current
        del node.output[:]
        current = f"{stem}_m{k}"
        node.output.append(current)
        nodes.append(node)
    nodes += [
        helper.make_node("Shape", [current], [f"{stem}_shape"]),
        helper.make_node("Concat", [f"{stem}_shape", const("dim", [dim])], [f"{stem}_target"], axis=0),
        helper.make_node("Reshape", [EMBEDS, f"{stem}_target"], [out]),
    ]
    return nodes
