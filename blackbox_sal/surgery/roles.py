"""The inputs of a text model by their role, not their name, and the graph rewritten to the
names the rest of blackbox-sal fills (:mod:`blackbox_sal.surgery.names`).

Third-party exports call their ids ``x``, ``input``, ``chars`` or ``src``; their masks may be
boolean, True on the *padding*, or a sequence-length input of a recurrent layer. The roles:

==============  =============================================================================
role            how it is recognised (the first rule that applies)
==============  =============================================================================
ids             the integer input that feeds the word-embedding lookup (a Gather on a float or
                8-bit table, through casts, reshapes and index arithmetic); with several, the
                one whose table has at least as many rows as the tokenizer has tokens
token_types     an integer input named like ``token_type``/``segment`` (or ``token_type_ids``)
positions       an integer input named like ``position`` (or ``position_ids``)
lengths         an integer input of rank 1 ([batch]): the number of real tokens per row
mask            any other input of rank 2 ([batch, seq]: int, bool or float) or a float input
                of rank 4 (additive, [batch, 1, 1, seq]); its polarity (1 on the tokens, or 1 on
                the padding) is found by a probe in the loader (:func:`polarity_of`)
==============  =============================================================================

A second id channel (character classes beside the characters, each through its own lookup)
is not a role: config.json ``"channels"`` says how its ids follow from the tokens (a map over
the vocabulary), and :func:`canonical` computes them in the graph from the ids, so the model
takes the ids alone; :mod:`blackbox_sal.surgery.channels` then splits the channel's lookup.

A config.json ``"inputs"`` object settles what the graph leaves ambiguous, role -> input name:
``{"ids": "x", "mask": "m"}``; ``padding_mask`` names a mask that is 1 (True) on the padding.

:func:`canonical` rewrites the graph so that each role has its canonical input (pure)::

    x (int32 [B, S])              becomes   input_ids (int32 [B, S]) --Identity--> x
    classes (a second channel)    becomes   input_ids --Gather(map)--> classes
    m (bool, True on padding)     becomes   attention_mask (int64) --Sub(1, .)--> --Cast(bool)--> m
    lengths (int32 [B])           becomes   attention_mask (int64) --ReduceSum(axis 1)--> --Cast--> lengths

so the graph computes the same function of the canonical feeds, and the split, the probe and
the checks downstream run unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal.surgery.index import GraphIndex, attr_int, opset_of
from blackbox_sal.surgery.names import IDS, INPUT_ROLES, MASK, POSITIONS, TYPES
from blackbox_sal.surgery.split import find_lookup
from blackbox_sal.vocabulary.errors import ModelError

#: the roles a config.json "inputs" object may name (padding_mask: a mask that is 1 on padding)
ROLES = INPUT_ROLES
#: where each role's feed goes (lengths are computed from the mask)
CANONICAL = {"ids": IDS, "mask": MASK, "padding_mask": MASK, "token_types": TYPES, "positions": POSITIONS,
             "lengths": MASK}
_INTS = {TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8}
_FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
#: the most rows a table may have for the integer input indexing it to be taken for token types
#: (BERT's segments: 2); a larger one may be a second id channel (character classes, languages),
#: which zeros would silently change: refused, naming config.json "channels" and "inputs"
SEGMENTS = 2
#: the way out every ambiguity names
CONFIG_HINT = ('say which input is which in config.json: "inputs": {"ids": ..., "mask": ...} (roles: '
               + ", ".join(ROLES) + ")")
#: the way out for a second id channel whose ids follow from the tokens
CHANNELS_HINT = ('a second id channel whose ids follow from the tokens (characters and their classes) is explained '
                 'when config.json says how: "channels": {"NAME": {"input": INPUT, "map": {TOKEN: ID, ...} or '
                 '"file": FILE, "default": ID}}')


@dataclass(frozen=True)
class Roles:
    """Input name by role (None: the model has no such input). ``mask_on``: what a 1 (True) of
    the mask marks, "tokens" or "padding". ``found``: how the roles were found, for the notes."""

    ids: str
    mask: str | None = None
    mask_on: str = "tokens"
    token_types: str | None = None
    positions: str | None = None
    lengths: str | None = None
    found: str = "by name"
    #: second id channels: input name -> the channel's id of each token [vocab] (config.json "channels")
    channels: Mapping[str, np.ndarray] = field(default_factory=lambda: MappingProxyType({}), compare=False)

    def named(self) -> dict[str, str]:
        """role -> input name, for the roles the model has."""
        pairs = {"ids": self.ids, "mask": self.mask, "token_types": self.token_types, "positions": self.positions,
                 "lengths": self.lengths}
        return {k: v for k, v in pairs.items() if v is not None}

    def canonical_already(self, model: onnx.ModelProto) -> bool:
        """Whether the graph already takes the canonical names with types the loader fills."""
        types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
        return (self.ids == IDS and self.lengths is None and not self.channels and self.mask_on == "tokens"
                and self.mask in (None, MASK) and self.token_types in (None, TYPES)
                and self.positions in (None, POSITIONS)
                and (self.mask is None or types[MASK] in {TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT,
                                                          TensorProto.FLOAT16}))


def _inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    init = {t.name for t in model.graph.initializer}
    return {i.name: i for i in model.graph.input if i.name not in init}


def _rank(info: onnx.ValueInfoProto) -> int:
    return len(info.type.tensor_type.shape.dim)


def _hint(name: str) -> str | None:
    low = name.lower()
    if "type" in low or "segment" in low:
        return "token_types"
    if "position" in low or low in ("pos", "pos_ids"):
        return "positions"
    if "mask" in low:
        return "mask"
    if "len" in low:
        return "lengths"
    return None


def find_roles(model: onnx.ModelProto, config_inputs: Mapping[str, str] | None, vocab: int,
               channels: Mapping[str, np.ndarray] | None = None) -> Roles:
    """The role of every input of ``model`` (a text model taking token ids), from the graph, or
    from config.json's ``inputs`` (``config_inputs``) where given. ``vocab``: the tokenizer's
    size, which the ids' table must reach. ``channels``: second id channels, input name -> the
    channel's id of each token (config.json "channels"); they take no role. ModelError, naming
    what was found and the way out, when an input has no role, or the graph leaves a role
    ambiguous."""
    everything = _inputs(model)
    channels = dict(channels or {})
    for name in channels:
        if name not in everything:
            raise ModelError(f"config.json channels: input {name!r} is not an input of the model "
                             f"(inputs: {', '.join(everything)})")
    if IDS in channels:
        raise ModelError(f"config.json channels: {IDS!r} is the ids' own name; a second channel is another input")
    inputs = {n: i for n, i in everything.items() if n not in channels}
    if config_inputs:
        return replace(_from_config(inputs, config_inputs), channels=MappingProxyType(channels))
    roles: dict[str, str] = {}
    untyped: list[str] = []
    lookups: dict[str, int] = {}  # integer input -> rows of the table it indexes
    for name, info in inputs.items():
        elem = info.type.tensor_type.elem_type
        if IDS not in inputs and elem in _INTS and _hint(name) not in ("token_types", "positions", "lengths", "mask"):
            try:
                lookups[name] = find_lookup(model.graph, name).table.shape[0]
            except ModelError:
                pass
    if IDS not in inputs and not any(rows >= vocab for rows in lookups.values()):
        for name in channels:  # the ids named as a channel: the rest has no table as large as the vocabulary
            try:
                rows = find_lookup(model.graph, name).table.shape[0]
            except ModelError:
                continue
            if rows >= vocab:
                raise ModelError(f"config.json channels: input {name!r} looks like the ids (its lookup has {rows} "
                                 f"rows, the tokenizer {vocab} tokens); a channel is the other input, whose ids "
                                 f"follow from each token")
    if IDS in inputs:  # the split says why, where it finds no lookup
        ids = IDS
    else:
        # the ids' table holds the whole vocabulary; a table of a few rows is token types'
        wide = [n for n, rows in lookups.items() if rows >= vocab] or \
            ([max(lookups, key=lambda n: lookups[n])] if lookups else [])
        if not wide:
            _refuse_packed_channels(model, inputs)
            listed = ", ".join(f"{n} ({_describe(i)})" for n, i in inputs.items())
            raise ModelError(f"no input feeds a word-embedding lookup (inputs: {listed}): no ids input to explain; "
                             f"if the graph hides it, {CONFIG_HINT}")
        if len(wide) > 1:
            raise ModelError(
                f"two inputs feed their own embedding lookups "
                f"({', '.join(f'{n!r} ({lookups[n]} rows)' for n in wide)}): if one of them is not the ids (token "
                f"types, positions), {CONFIG_HINT}; {CHANNELS_HINT}; a decoder's target prefix beside the source is "
                f"read as an encoder/decoder with config.json \"is_encoder_decoder\": true, decoder_start_token_id "
                f"and eos_token_id")
        ids = wide[0]
    roles["ids"] = ids
    for name, info in inputs.items():
        if name == ids:
            continue
        elem, rank = info.type.tensor_type.elem_type, _rank(info)
        role = {TYPES: "token_types", POSITIONS: "positions", MASK: "mask"}.get(name) or _hint(name)
        if role is None and name in lookups and lookups[name] < vocab:
            if lookups[name] > SEGMENTS:  # fed zeros as token types, a second channel would be another model
                raise ModelError(
                    f"input {name!r} feeds a lookup of {lookups[name]} rows besides the ids' ({ids!r}): more than "
                    f"token types (segments) have, so it is not filled with zeros; {CHANNELS_HINT}; if it is token "
                    f"types after all, {CONFIG_HINT}")
            role = "token_types"  # a lookup in a table of a few rows: segment (token type) embeddings
        if role is None:
            if elem in _INTS and rank == 1:
                role = "lengths"
            elif (elem in _INTS | {TensorProto.BOOL} | _FLOATS and rank == 2) or _additive(info):
                role = "mask"
        if role == "lengths" and not (elem in _INTS and rank == 1):
            role = None
        if role in ("token_types", "positions") and elem not in _INTS:
            role = None
        if role is None:
            untyped.append(f"{name!r} ({_describe(info)})")
            continue
        if role in roles:
            raise ModelError(f"inputs {roles[role]!r} and {name!r} both look like the {role.replace('_', ' ')}: "
                             f"{CONFIG_HINT}")
        roles[role] = name
    if untyped:
        raise ModelError(f"the model needs {'inputs' if len(untyped) > 1 else 'an input'} {', '.join(untyped)} "
                         f"that blackbox-sal cannot fill (it fills ids, a mask, token types, positions and lengths); "
                         f"if that is one of them, {CONFIG_HINT}")
    found = "by name" if all(CANONICAL[r] == n for r, n in roles.items()) else "from the graph"
    return Roles(ids=ids, mask=roles.get("mask"), token_types=roles.get("token_types"),
                 positions=roles.get("positions"), lengths=roles.get("lengths"), found=found,
                 channels=MappingProxyType(channels))


def _refuse_packed_channels(model: onnx.ModelProto, inputs: Mapping[str, onnx.ValueInfoProto]) -> None:
    """ModelError, naming what was found, for an integer input [batch, channels, seq] whose
    channels each feed their own lookup (``Gather(input, k, axis=1)``), as attacut-sc packs
    characters and syllables in one input; nothing for any other model."""
    constants = GraphIndex.of(model.graph).constants
    for name, info in inputs.items():
        if info.type.tensor_type.elem_type not in _INTS or _rank(info) != 3:
            continue
        found: dict[int, int] = {}
        for node in model.graph.node:
            if (node.op_type != "Gather" or node.input[0] != name or attr_int(node, "axis", 0) != 1
                    or node.input[1] not in constants):
                continue
            index = numpy_helper.to_array(constants[node.input[1]])
            try:
                found[int(index)] = find_lookup(model.graph, node.output[0]).table.shape[0]
            except (ModelError, TypeError):
                continue
        if len(found) >= 2:
            said = ", ".join(f"channel {k}: a lookup of {rows} rows" for k, rows in sorted(found.items()))
            raise ModelError(
                f"input {name!r} ({_describe(info)}) packs {len(found)} id channels along its second axis ({said}); "
                f"blackbox-sal explains a second id channel given as an input of its own whose ids follow from each "
                f"token (config.json \"channels\"), not channels packed in one input, nor ids that other code "
                f"computes from the text (syllables from a syllable segmenter, say)")


def _additive(info: onnx.ValueInfoProto) -> bool:
    """A float input [batch, 1, 1, seq]: an additive attention mask (a past key or value cache,
    [batch, heads, past, dim], is not one)."""
    t = info.type.tensor_type
    dims = t.shape.dim
    return t.elem_type in _FLOATS and len(dims) == 4 and all(d.HasField("dim_value") and d.dim_value == 1
                                                             for d in dims[1:3])


def _from_config(inputs: Mapping[str, onnx.ValueInfoProto], mapping: Mapping[str, str]) -> Roles:
    for role, name in mapping.items():
        if name not in inputs:
            raise ModelError(f"config.json inputs: {role} is {name!r}, but the model has no such input "
                             f"(inputs: {', '.join(inputs)})")
    if "ids" not in mapping:
        raise ModelError('config.json inputs must name the ids input: "inputs": {"ids": ..., ...}')
    if "mask" in mapping and "padding_mask" in mapping:
        raise ModelError("config.json inputs: give mask (1 on tokens) or padding_mask (1 on padding), not both")
    left = [n for n in inputs if n not in mapping.values()]
    if left:
        raise ModelError(f"config.json inputs names no role for {', '.join(map(repr, left))}: every input needs one "
                         f"({', '.join(ROLES)})")
    mask = mapping.get("mask") or mapping.get("padding_mask")
    return Roles(ids=mapping["ids"], mask=mask, mask_on="padding" if "padding_mask" in mapping else "tokens",
                 token_types=mapping.get("token_types"), positions=mapping.get("positions"),
                 lengths=mapping.get("lengths"), found="as config.json says")


def _describe(info: onnx.ValueInfoProto) -> str:
    t = info.type.tensor_type
    dims = [d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in t.shape.dim]
    return f"{TensorProto.DataType.Name(t.elem_type).lower()} [{', '.join(dims)}]"


def role_feeds(model: onnx.ModelProto, roles: Roles, ids: np.ndarray, valid: np.ndarray,
               mask_on: str | None = None) -> dict[str, np.ndarray]:
    """Feeds for the ORIGINAL graph of ``model`` (its own names and types) for ids [B, S] whose
    real tokens are ``valid`` [B, S] (1 on tokens, 0 on padding); ``mask_on`` overrides the
    mask's polarity (for the probe that finds it)."""
    inputs = _inputs(model)
    on = mask_on or roles.mask_on
    feeds: dict[str, np.ndarray] = {}
    for role, name in roles.named().items():
        info = inputs[name]
        dtype = helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
        if role == "ids":
            value = ids
        elif role == "token_types":
            value = np.zeros_like(ids)
        elif role == "positions":
            value = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
        elif role == "lengths":
            value = valid.sum(axis=1)
        elif _rank(info) == 4:  # additive
            value = np.where(valid > 0, 0.0, np.finfo(np.float32).min)[:, None, None, :]
        else:
            value = valid if on == "tokens" else 1 - valid
        feeds[name] = np.ascontiguousarray(np.asarray(value).astype(dtype))
    for name, ids_map in roles.channels.items():
        dtype = helper.tensor_dtype_to_np_dtype(_inputs(model)[name].type.tensor_type.elem_type)
        feeds[name] = np.ascontiguousarray(ids_map[ids].astype(dtype))
    return feeds


def canonical(model: onnx.ModelProto, roles: Roles) -> onnx.ModelProto:
    """``model`` taking the canonical inputs (see the module doc) in place of its own: the same
    function of the canonical feeds. Pure."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inputs = _inputs(out)
    opset = opset_of(out)
    front: list[onnx.NodeProto] = []
    new_inputs: list[onnx.ValueInfoProto] = []
    taken = {o for n in g.node for o in n.output} | {t.name for t in g.initializer}

    def adopt(name: str, canonical_name: str) -> str:
        """The tensor the converted value must be written to: ``name`` itself, renamed where
        ``name`` is the canonical name (its readers then read the renamed one)."""
        if canonical_name in taken:
            raise ModelError(f"the graph already computes a tensor {canonical_name!r}: cannot rename its inputs")
        if name != canonical_name:
            return name
        inner = f"{name}__own"
        _rename_uses(g, name, inner)
        return inner

    def value_info(name: str, elem: int, like: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                for d in like.type.tensor_type.shape.dim]
        return helper.make_tensor_value_info(name, elem, dims)

    mask_like: onnx.ValueInfoProto | None = None
    for role in ("ids", "token_types", "positions"):
        name = getattr(roles, role)
        if name is None:
            continue
        info, target = inputs[name], CANONICAL[role]
        if name != target:
            front.append(helper.make_node("Identity", [target], [adopt(name, target)], name=f"{target}__as_{name}"))
        new_inputs.append(value_info(target, info.type.tensor_type.elem_type, info))
        if role == "ids":
            mask_like = info
    mask = roles.mask
    if mask is not None:
        info = inputs[mask]
        elem = info.type.tensor_type.elem_type
        if roles.mask_on == "tokens" and elem in {TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT,
                                                  TensorProto.FLOAT16} and mask == MASK:
            new_inputs.append(info)
        elif roles.mask_on == "tokens" and elem in {TensorProto.INT64, TensorProto.INT32, TensorProto.FLOAT,
                                                    TensorProto.FLOAT16}:
            front.append(helper.make_node("Identity", [MASK], [adopt(mask, MASK)], name=f"{MASK}__as_{mask}"))
            new_inputs.append(value_info(MASK, elem, info))
        else:  # a bool mask, or one that marks the padding: an int64 mask converted in the graph
            target = adopt(mask, MASK)
            source = MASK
            if roles.mask_on == "padding":
                g.initializer.append(numpy_helper.from_array(np.array(1, np.int64), f"{MASK}__one"))
                front.append(helper.make_node("Sub", [f"{MASK}__one", MASK], [f"{MASK}__padding"]))
                source = f"{MASK}__padding"
            front.append(helper.make_node("Cast", [source], [target], to=elem))
            new_inputs.append(value_info(MASK, TensorProto.INT64, info))
        mask_like = info
    if roles.lengths is not None:
        info = inputs[roles.lengths]
        target = adopt(roles.lengths, MASK) if roles.lengths == MASK else roles.lengths
        if opset >= 13:
            g.initializer.append(numpy_helper.from_array(np.array([1], np.int64), f"{MASK}__axis"))
            front.append(helper.make_node("ReduceSum", [MASK, f"{MASK}__axis"], [f"{MASK}__lengths"], keepdims=0))
        else:
            front.append(helper.make_node("ReduceSum", [MASK], [f"{MASK}__lengths"], axes=[1], keepdims=0))
        front.append(helper.make_node("Cast", [f"{MASK}__lengths"], [target], to=info.type.tensor_type.elem_type))
        if mask is None:
            assert mask_like is not None  # the ids' shape: [batch, seq]
            new_inputs.append(value_info(MASK, TensorProto.INT64, mask_like))
    for name, ids_map in roles.channels.items():  # a second channel's ids: computed from the ids
        elem = inputs[name].type.tensor_type.elem_type
        table = numpy_helper.from_array(ids_map.astype(helper.tensor_dtype_to_np_dtype(elem)), f"{name}__of_ids")
        g.initializer.append(table)
        front.append(helper.make_node("Gather", [table.name, IDS], [name], name=f"{name}__of_ids"))
    kept = [i for i in g.input if i.name not in inputs]  # initializers listed as inputs (old IR)
    del g.input[:]
    g.input.extend(new_inputs + kept)
    for k, node in enumerate(front):
        g.node.insert(k, node)
    return out


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every read of ``old`` in ``graph`` (its nodes, their subgraphs, its outputs) reads ``new``."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for attr in node.attribute:
            for sub in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]:
                if old not in {i.name for i in sub.input}:
                    _rename_uses(sub, old, new)
    for out in graph.output:
        if out.name == old:
            out.name = new

