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

    from blackbox_sal.surgery.split import EmbeddingSplit

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

    from blackbox_sal.surgery.prune import clear_shapes, prune, remove
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
    for k, node in enumerate(front):
        g.node.insert(k, node)
    embeds = next(i for i in g.input if i.name == EMBEDS)
    embeds.type.tensor_type.shape.dim[2].dim_value = start
    prune(g, keep_inputs=frozenset(i.name for i in g.input if i.name != IDS))
    clear_shapes(g)
    serialized = body.SerializeToString()
    try:
        onnx.checker.check_model(serialized)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the model split at its channels does not pass onnx.checker: {exc}") from exc
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
