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

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.fold import fold
from blackbox_sal.surgery.index import GraphIndex, attr_int
from blackbox_sal.surgery.names import EMBEDS
from blackbox_sal.surgery.prune import clear_shapes, node_inputs, prune, remove
from blackbox_sal.vocabulary.errors import ModelError

#: Ops allowed between ``input_ids`` and the lookup's indices that change the dtype or
#: nothing at all.
PASS_THROUGH = ("Cast", "Identity")
#: Shape-only ops between ``input_ids`` and the lookup: the body repeats them.
MIRRORED = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
#: Elementwise integer arithmetic on the ids, with constants: Keras's negative-index wrap
#: ``where(ids < 0, ids + V, ids)`` comes out of tf2onnx as Less, Not, Cast, Mul, Add. It leaves
#: valid ids as they are (the loader checks the split against the original model).
INDEX_ARITHMETIC = ("Add", "Sub", "Mul", "Mod", "Where", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                    "Equal", "Not", "And", "Or", "Clip", "Max", "Min", "Abs")

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
    table_name: the name its table had in the graph (an initializer's, or a computed tensor's).
    quantized_table: whether the table was stored in 8 bits.
    table_ops: the operators that computed the table from constants (folded at load).
    serialized: ``body`` serialized (what onnx.checker passed), for the session that runs it.
    """

    table: np.ndarray
    body: onnx.ModelProto
    needs_ids: bool
    lookup: str
    quantized_table: bool = False
    table_ops: tuple[str, ...] = ()
    serialized: bytes = field(default=b"", repr=False)
    table_name: str = ""


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
    #: the operators that computed the table from constants (empty for a stored table)
    ops: tuple[str, ...] = ()


def _reached_from(graph: onnx.GraphProto, start: str, constants: set[str]) -> dict[str, tuple[onnx.NodeProto, ...]]:
    """Names computed from ``start`` through PASS_THROUGH / MIRRORED / INDEX_ARITHMETIC ops
    (with constants), each with the nodes that lead to it, in graph order (``start``: none)."""
    reached: dict[str, tuple[onnx.NodeProto, ...]] = {start: ()}
    for node in graph.node:  # topological order: one pass suffices
        if not node.input or (node.input[0] not in reached and node.op_type not in INDEX_ARITHMETIC):
            continue
        if node.op_type in PASS_THROUGH + MIRRORED and node.input[0] in reached:
            chain = reached[node.input[0]]
        elif node.op_type in INDEX_ARITHMETIC and all(i in reached or i in constants for i in node.input if i) \
                and any(i in reached for i in node.input):
            seen: dict[int, onnx.NodeProto] = {}
            for i in node.input:
                seen.update((id(n), n) for n in reached.get(i, ()))
            chain = tuple(seen.values())
        else:
            continue
        for out in node.output:
            reached[out] = (*chain, node)
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
    """The word-embedding lookup fed by ``ids_name``: a Gather (axis 0) whose indices come from
    the ids and whose table is a constant 2-D tensor or a function of constants alone (folded,
    :mod:`blackbox_sal.surgery.fold`). Several candidates (rare: a second table indexed by the
    ids) resolve to the largest table; the others are joined to it once the explained output is
    known (:func:`blackbox_sal.surgery.channels.join_lookups`). ModelError names every Gather
    the search rejected."""
    candidates, refused = find_lookups(graph, ids_name)
    if not candidates:
        tried = f" (rejected: {'; '.join(why for _, why in refused)})" if refused else ""
        raise ModelError(
            f"no word-embedding lookup found{tried}: looked for a Gather whose indices come from {ids_name!r} "
            f"(directly or through casts, reshapes and index arithmetic) on a 2-D float table that is a constant "
            f"or computed from constants (an 8-bit table with its scale, say). Export the model with an "
            f"'inputs_embeds' input instead and put the table beside it as embeddings.npy")
    return max(candidates, key=lambda c: c.table.shape[0])


def find_lookups(graph: onnx.GraphProto, ids_name: str) -> tuple[list[Lookup], list[tuple[onnx.NodeProto, str]]]:
    """Every Gather whose indices come from ``ids_name`` (see :func:`_reached_from`), in graph
    order: those that are word-embedding lookups (as :func:`find_lookup` takes them), and the
    others, each with why it is not one (its table computed at run time, say)."""
    index = GraphIndex.of(graph)
    reached = _reached_from(graph, ids_name, set(index.constants))
    consts, users = index.constants, index.users
    candidates: list[Lookup] = []
    refused: list[tuple[onnx.NodeProto, str]] = []
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in reached:
            continue
        where = f"Gather {node.name or node.output[0]!r} on {node.input[0]!r}"
        if attr_int(node, "axis", 0) != 0:
            refused.append((node, f"{where}: it gathers along axis {attr_int(node, 'axis', 0)}, not the rows"))
            continue
        chain = tuple(n for n in reached[node.input[1]])
        source = node.input[0]
        folded = fold(index, source)
        if folded.value is None:
            refused.append((node, f"{where}: {folded.why}"))
            continue
        array, ops = folded.value, folded.ops
        if array.ndim != 2:
            refused.append((node, f"{where}: the table has {array.ndim} dimensions, not 2"))
            continue
        after = users.get(node.output[0], [])
        if array.dtype.kind == "f":
            candidates.append(Lookup(node, array.astype(np.float32), chain, (node,), node.output[0],
                                     folded.low_bit, ops=ops))
        elif array.dtype in (np.int8, np.uint8) and len(after) == 1 and after[0].op_type == "DequantizeLinear":
            dq = after[0]  # per-axis parameters can only run along the output's last axis: the columns
            table = _dequantize(dq, consts, array, 1)
            if table is not None:
                candidates.append(Lookup(node, table, chain, (node, dq), dq.output[0], True,
                                         ops=(*ops, "DequantizeLinear")))
            else:
                refused.append((node, f"{where}: 8-bit, with a DequantizeLinear whose parameters are not constants"))
        elif array.dtype in (np.int8, np.uint8):
            # the 8-bit lookup feeds integer ops directly (quantize_dynamic fuses it into a
            # MatMulInteger); its parameters follow onnxruntime's naming: X_quantized, X_scale, X_zero_point
            base = source.removesuffix("_quantized")
            scale, zero = f"{base}_scale", f"{base}_zero_point"
            dq = helper.make_node("DequantizeLinear", [source, scale, zero], ["_"], axis=1)
            table = _dequantize(dq, consts, array, 1) if scale in consts and zero in consts else None
            if table is not None:
                candidates.append(Lookup(node, table, chain, (node,), node.output[0], True, (scale, zero),
                                         ops=("DequantizeLinear",)))
            else:
                refused.append((node, f"{where}: 8-bit, without a DequantizeLinear or {scale!r}/{zero!r}"))
        else:
            refused.append((node, f"{where}: the table is {array.dtype}, not float"))
    return candidates, refused


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
    gone = [k for k, n in enumerate(g.node) if (n.name, tuple(n.output)) in removed]
    at = gone[0]
    remove(g.node, gone)
    mirrored = [n for n in found.chain if n.op_type in MIRRORED]
    if any(n.op_type in INDEX_ARITHMETIC for n in found.chain) and mirrored:
        raise ModelError("the ids are both reshaped and computed on before the lookup: cannot split this model")
    # the name the float embeddings take in the body; an 8-bit lookup is re-quantized from it
    floats = f"{emb_out}__float" if found.requantize else (emb_out if mirrored else EMBEDS)
    for node in g.node:
        for k, name in enumerate(node.input):
            if name == emb_out and not mirrored and not found.requantize:
                node.input[k] = EMBEDS
        if emb_out in node_inputs(node) and emb_out not in node.input:
            raise ModelError("the embedding output is read inside a subgraph; cannot split this model")
    new_nodes = mirror(mirrored, floats, table.shape[1], g) if mirrored else []
    if found.requantize:
        source = floats if mirrored else EMBEDS
        quantize = helper.make_node("QuantizeLinear", [source, *found.requantize], [emb_out])
        if per_column(g, found.requantize[0]):
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
    clear_shapes(g)
    serialized = body.SerializeToString()  # once: for the checker, and for the session that runs it
    try:
        onnx.checker.check_model(serialized)
    except onnx.checker.ValidationError as exc:  # a bug in the surgery, or a model onnx rejects
        raise ModelError(f"the split model does not pass onnx.checker: {exc}") from exc
    return EmbeddingSplit(table=table, body=body, needs_ids=needs_ids, lookup=found.gather.name,
                          quantized_table=found.quantized, table_ops=found.ops, serialized=serialized,
                          table_name=found.gather.input[0])


def per_column(g: onnx.GraphProto, name: str) -> bool:
    """Whether quantization parameter ``name`` is per column (more than one value)."""
    t = next((t for t in g.initializer if t.name == name), None)
    return t is not None and int(np.prod(t.dims)) > 1


def mirror(ops: list[onnx.NodeProto], out: str, dim: int, g: onnx.GraphProto,
            source: str = EMBEDS) -> list[onnx.NodeProto]:
    """Nodes that repeat the shape-only ``ops`` the ids went through on a [batch, seq] stand-in
    cut from the embeddings ``source`` [batch, seq, dim], then reshape them to that shape plus
    [dim], as ``out``."""
    def const(name: str, value: list[int]) -> str:
        g.initializer.append(numpy_helper.from_array(np.array(value, np.int64), f"{out}__{name}"))
        return f"{out}__{name}"

    stem = f"{out}__ids"
    nodes = [
        helper.make_node("Slice", [source, const("zero", [0]), const("one", [1]), const("last", [-1])], [f"{stem}0"]),
        helper.make_node("Shape", [source], [f"{stem}shape"]),
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
        helper.make_node("Reshape", [source, f"{stem}_target"], [out]),
    ]
    return nodes
