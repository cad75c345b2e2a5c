"""A second id channel split at its own lookup, into one embeddings input shared with the ids.

Some models read two id inputs, each through its own embedding lookup: characters and their
character classes, say. When the second channel's id at each position is a function of the
token there (config.json ``"channels"``, :class:`blackbox_sal.model.model_config.ChannelConfig`),
:func:`blackbox_sal.surgery.roles.canonical` computes it in the graph from the ids
(``Gather(map, input_ids)``), and :func:`split_channels` then cuts the channel's lookup out of
the body that :func:`blackbox_sal.surgery.split.split_embedding` left::

    before:   inputs_embeds [B, S, D1] -------------------------------------> ... --> logits
              input_ids --Gather(map)--> classes --Gather(T2)--> E2 [B, S, D2] -> ...

    after:    inputs_embeds [B, S, D1 + D2] --Slice[..., :D1]--> (what read inputs_embeds)
                                            --Slice[..., D1:]--> (what read E2)

and the table grows by the channel's rows, taken at each token's id: row t of the table is
``[T1[t], T2[map[t]]]``. So ``body(table[ids]) == original(ids, map[ids])``, which the loader
checks on a probe as for any split, and every method works on the joined embeddings as on
one: a token's score is its total over both channels. A channel's own score is the part of
that total from its dimensions (:mod:`blackbox_sal.methods.channels`): with a linear
reduction the channels' scores add up to the token's.

The same joining serves ids that feed several lookups themselves (a gate with its own table of
the tokens): :func:`join_lookups` splits every other lookup of the ids that the explained output
reads, each a channel with the identity map, and refuses one it cannot join.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.surgery.names import EMBEDS, IDS
from blackbox_sal.vocabulary.errors import ModelError

if TYPE_CHECKING:  # onnx is imported where a graph is split: a prepared folder's Channels need none
    import onnx

    from blackbox_sal.surgery.split import EmbeddingSplit, Lookup

#: the name of the ids' own channel in per-channel scores
TOKENS = "tokens"


@dataclass(frozen=True)
class Channel:
    """One id channel of a split model: its ``name`` (:data:`TOKENS` for the ids' own), the
    model's ``input`` that took its ids, and the dimensions ``start:stop`` of inputs_embeds
    that hold its embeddings."""

    name: str
    input: str
    start: int
    stop: int


def split_channels(split: EmbeddingSplit, ids_input: str,
                   channels: Mapping[str, tuple[str, np.ndarray]]) -> tuple[EmbeddingSplit, tuple[Channel, ...]]:
    """``split`` (cut at the ids' lookup) cut at each channel's lookup too. ``channels``: name ->
    (the tensor of the body that holds the channel's ids, the channel's id of each token
    [vocab]). ``ids_input``: the file's name of the ids input (for the channels' report).
    Pure. ModelError when a channel's lookup is not a plain float Gather, or its map gives an
    id its table lacks."""
    import onnx
    from onnx import helper

    from blackbox_sal.surgery.prune import remove
    from blackbox_sal.surgery.split import MIRRORED, find_lookup

    body = onnx.ModelProto()
    body.CopyFrom(split.body)
    g = body.graph
    first = split.table.shape[1]
    tokens = f"{EMBEDS}__{TOKENS}"
    for node in g.node:
        node.input[:] = [tokens if i == EMBEDS else i for i in node.input]
    for out in g.output:
        if out.name == EMBEDS:
            raise ModelError("the embeddings are an output of the model: cannot split its second channel")
    front = [_slice(g, EMBEDS, tokens, 0, first)]
    tables = [split.table]
    found = [Channel(TOKENS, ids_input, 0, first)]
    start = first
    for name, (tensor, ids_map) in channels.items():
        lookup = find_lookup(g, tensor)
        if lookup.quantized or lookup.requantize or any(n.op_type in MIRRORED for n in lookup.chain):
            raise ModelError(f"channel {name!r}: its lookup ({lookup.gather.name or lookup.output!r}) reshapes its "
                             f"ids or is quantized: only a plain float lookup is split for a second channel")
        rows = lookup.table.shape[0]
        if ids_map.size and int(ids_map.max()) >= rows:
            raise ModelError(f"channel {name!r}: the map gives id {int(ids_map.max())}, but the channel's table has "
                             f"{rows} rows: they do not belong together")
        removed = {(n.name, tuple(n.output)) for n in lookup.removed}
        remove(g.node, [k for k, n in enumerate(g.node) if (n.name, tuple(n.output)) in removed])
        stop = start + lookup.table.shape[1]
        sliced = f"{EMBEDS}__{name}"
        for node in g.node:
            node.input[:] = [sliced if i == lookup.output else i for i in node.input]
        for k, out in enumerate(g.output):
            if out.name == lookup.output:  # the channel's embeddings are an output: keep it one
                g.node.append(helper.make_node("Identity", [sliced], [lookup.output], name=f"{sliced}__output{k}"))
        front.append(_slice(g, EMBEDS, sliced, start, stop))
        # rows past the tokenizer's vocabulary (a table with spare rows) are never looked up: id 0
        rows_of = np.zeros(split.table.shape[0], np.int64)
        rows_of[:min(len(ids_map), len(rows_of))] = ids_map[:len(rows_of)]
        tables.append(lookup.table[rows_of])
        found.append(Channel(name, tensor, start, stop))
        start = stop
    serialized = _finished(body, front, start, "the model split at its channels")
    needs_ids = any(i.name == IDS for i in g.input)
    table = np.concatenate(tables, axis=1).astype(np.float32)
    return replace(split, table=table, body=body, needs_ids=needs_ids, serialized=serialized), tuple(found)


def _slice(g: onnx.GraphProto, source: str, out: str, start: int, stop: int) -> onnx.NodeProto:
    """Slice(source)[..., start:stop] as ``out``, its bounds as initializers."""
    from onnx import helper, numpy_helper

    for suffix, value in (("starts", start), ("ends", stop), ("axes", -1)):
        g.initializer.append(numpy_helper.from_array(np.array([value], np.int64), f"{out}__{suffix}"))
    return helper.make_node("Slice", [source, f"{out}__starts", f"{out}__ends", f"{out}__axes"], [out],
                            name=f"{out}__slice")


@dataclass(frozen=True)
class Joined:
    """The result of :func:`join_lookups`: the body with every lookup of the ids that the
    explained output reads cut into the embeddings input, its ``serialized`` bytes (what
    onnx.checker passed), the joined ``table`` [vocab, D1 + D2 + ...], the ``channels`` (the
    ids' own first) and the ``note`` that says so."""

    body: onnx.ModelProto
    serialized: bytes
    table: np.ndarray
    channels: tuple[Channel, ...]
    note: str


def join_lookups(body: onnx.ModelProto, table: np.ndarray, channels: tuple[Channel, ...], ids_input: str,
                 output: str, first: str) -> Joined | None:
    """``body`` (split at the ids' largest lookup, ``first``, by
    :func:`blackbox_sal.surgery.split.split_embedding`) split at every other lookup of the ids
    that ``output`` depends on, each as a channel of the joined embeddings with the identity
    map: row t of the table is ``[T1[t], T2[t], ...]``, so ``body(table[ids]) == original(ids)``
    and every path from a token to the output is differentiated and perturbed together::

        before:   inputs_embeds [B, S, D1] ----------------------------> E1 --> ... --> output
                  input_ids --[Cast|Reshape|...]--> Gather(T2) --> E2 --> ... ----^

        after:    inputs_embeds [B, S, D1 + D2] --Slice[..., :D1]--> E1 --> ... --> output
                                                --Slice[..., D1:]--[Reshape|Quantize]--> E2 --^

    Only lookups reached from the ids through casts and reshapes are joined: ids computed on
    (index arithmetic, ``ids + 1`` say) index another table by another function of the token,
    and a Gather on a table computed at run time has no rows to join; either is refused
    (ModelError, naming both lookups) rather than explained in part. Position ids computed
    from the ids (RoBERTa's CumSum of the mask) are not reached from the ids at all
    (:func:`blackbox_sal.surgery.split._reached_from`), so they stay positions. A lookup the
    output does not read is left alone. None when ``output`` reads no other lookup of the ids.
    ``ids_input``: the file's name of the ids (for the channels' report). Pure."""
    import onnx
    from onnx import helper

    from blackbox_sal.surgery.prune import node_inputs, remove
    from blackbox_sal.surgery.split import INDEX_ARITHMETIC, MIRRORED, find_lookups, mirror, per_column

    if IDS not in {i.name for i in body.graph.input}:
        return None
    lookups, refused = find_lookups(body.graph, IDS)
    needed = _ancestors(body.graph, output)
    lookups = [lk for lk in lookups if lk.gather.output[0] in needed]
    refused = [(node, why) for node, why in refused if node.output[0] in needed]
    if refused:
        where, _, why = refused[0][1].partition(": ")
        raise ModelError(f"the ids feed the lookup {first!r} and also {where}, which the output {output!r} reads but "
                         f"which cannot be split beside the first ({why}); explaining the first alone would leave "
                         f"out part of what each token does")
    for lookup in lookups:
        computed = sorted({n.op_type for n in lookup.chain if n.op_type in INDEX_ARITHMETIC})
        if computed:
            raise ModelError(f"the ids feed the lookup {first!r} and also {_said(lookup)} through index arithmetic "
                             f"({', '.join(computed)}), which the output {output!r} reads: a second table indexed "
                             f"by a function of the ids is not split; explaining the first alone would leave "
                             f"out part of what each token does")
    if not lookups:
        return None
    new = onnx.ModelProto()
    new.CopyFrom(body)
    g = new.graph
    if any(out.name == EMBEDS for out in g.output):
        raise ModelError("the embeddings are an output of the model: cannot split its other lookups of the ids")
    front: list[onnx.NodeProto] = []
    tables = [table]
    found = list(channels)
    if not found:  # the ids' own channel: what read inputs_embeds reads its first dimensions
        tokens = f"{EMBEDS}__{TOKENS}"
        for node in g.node:
            node.input[:] = [tokens if i == EMBEDS else i for i in node.input]
        front.append(_slice(g, EMBEDS, tokens, 0, table.shape[1]))
        found.append(Channel(TOKENS, ids_input, 0, table.shape[1]))
    start = found[-1].stop
    taken = {c.name for c in found}
    names = [first]
    for lookup in lookups:
        name = _name(lookup, taken)
        taken.add(name)
        names.append(lookup.gather.input[0])
        stop = start + lookup.table.shape[1]
        sliced = f"{EMBEDS}__{name}"
        front.append(_slice(g, EMBEDS, sliced, start, stop))
        removed = {(n.name, tuple(n.output)) for n in lookup.removed}
        gone = [k for k, n in enumerate(g.node) if (n.name, tuple(n.output)) in removed]
        at = gone[0]
        remove(g.node, gone)
        mirrored = [n for n in lookup.chain if n.op_type in MIRRORED]
        if mirrored or lookup.requantize:  # nodes that compute the lookup's own output from the slice
            floats = f"{lookup.output}__float" if lookup.requantize else lookup.output
            nodes = mirror(mirrored, floats, lookup.table.shape[1], g, source=sliced) if mirrored else []
            if lookup.requantize:
                quantize = helper.make_node("QuantizeLinear", [floats if mirrored else sliced, *lookup.requantize],
                                            [lookup.output], name=f"{sliced}__quantize")
                if per_column(g, lookup.requantize[0]):
                    quantize.attribute.append(helper.make_attribute("axis", -1))
                nodes.append(quantize)
            for k, node in enumerate(nodes):
                g.node.insert(at + k, node)
        else:
            for node in g.node:
                node.input[:] = [sliced if i == lookup.output else i for i in node.input]
                if lookup.output in node_inputs(node) and lookup.output not in node.input:
                    raise ModelError(f"the lookup {_said(lookup)} is read inside a subgraph: cannot split it")
            for k, out in enumerate(g.output):
                if out.name == lookup.output:  # the lookup is an output itself: keep it one
                    g.node.append(helper.make_node("Identity", [sliced], [lookup.output], name=f"{sliced}__output{k}"))
        # the identity map: ids past the table's rows (which the original cannot look up either) get zeros
        rows = np.zeros((table.shape[0], lookup.table.shape[1]), np.float32)
        shared = min(table.shape[0], lookup.table.shape[0])
        rows[:shared] = lookup.table[:shared]
        tables.append(rows)
        found.append(Channel(name, ids_input, start, stop))
        start = stop
    serialized = _finished(new, front, start, "the model split at its other lookups of the ids")
    said = "both are" if len(names) == 2 else f"all {len(names)} are"
    if EMBEDS in needed or channels:
        note = (f"the ids feed {len(names)} lookups ({', '.join(repr(n) for n in names)}) that the output reads: "
                f"{said} split; scores are their sum, per-table scores in channels")
    else:  # the largest table, split first, is not what this output reads
        read = ", ".join(repr(n) for n in names[1:])
        note = (f"the ids feed {len(names)} lookups ({', '.join(repr(n) for n in names)}); the output reads {read}, "
                f"not {first!r} (the largest, split first): {said} split; scores are their sum, per-table scores in "
                f"channels ({first!r}'s are zero)")
    return Joined(new, serialized, np.concatenate(tables, axis=1).astype(np.float32), tuple(found), note)


def _ancestors(g: onnx.GraphProto, output: str) -> set[str]:
    """Every name ``output`` depends on in ``g`` (itself included)."""
    from blackbox_sal.surgery.prune import node_inputs

    needed = {output}
    for node in reversed(g.node):  # topologically sorted
        if any(o in needed for o in node.output):
            needed |= node_inputs(node)
    return needed


def _said(lookup: Lookup) -> str:
    return f"Gather {lookup.gather.name or lookup.gather.output[0]!r} on {lookup.gather.input[0]!r}"


def _name(lookup: Lookup, taken: set[str]) -> str:
    """A channel's name: its table's (initializer's) name, made unique."""
    base = lookup.gather.input[0] or "table"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _finished(model: onnx.ModelProto, front: list[onnx.NodeProto], width: int, what: str) -> bytes:
    """``model`` with the joined embeddings' slices ``front`` put first, ``inputs_embeds``
    ``width`` wide, what no output needs pruned and stale shapes cleared: serialized once
    (for the checker and the session), onnx.checker passed (ModelError naming ``what``)."""
    import onnx

    from blackbox_sal.surgery.prune import clear_shapes, prune

    g = model.graph
    for k, node in enumerate(front):
        g.node.insert(k, node)
    embeds = next(i for i in g.input if i.name == EMBEDS)
    embeds.type.tensor_type.shape.dim[2].dim_value = width
    prune(g, keep_inputs=frozenset(i.name for i in g.input if i.name != IDS))
    clear_shapes(g)
    serialized = model.SerializeToString()
    try:
        onnx.checker.check_model(serialized)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"{what} does not pass onnx.checker: {exc}") from exc
    return serialized
