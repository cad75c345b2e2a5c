"""An ONNX model's protobuf bytes, checked without the onnx package.

An edge install (onnxruntime, numpy and tokenizers only) loads prepared folders
(:mod:`blackbox_sal.model.prepared`), and a prepared folder is as untrusted as any model
folder. Without onnx there is no ModelProto to walk, so this module walks the bytes
themselves, by a table of the ONNX schema (``onnx-ml.proto``, every message a model can
hold), and refuses what a prepared model never holds or what the loader does not accept:

- any tensor whose data is external (``data_location`` EXTERNAL or ``external_data``
  entries): a prepared model keeps everything inline, so nothing is resolved against any
  folder, and onnxruntime is handed the bytes (never a path);
- sparse tensors (prepared models are written dense), segmented tensors, tensors whose data
  does not match their type and shape, unknown element types, negative dimensions;
- operator domains outside the allow-list, in the model's and functions' ``opset_import``,
  in every node of the graph, of every subgraph (``If``/``Loop``/``Scan`` bodies, however
  deep) and of every function;
- strings that are not valid UTF-8;
- anything the table does not know: an unknown field, a field with another wire type than
  the schema's, a non-repeated field given twice (protobuf would merge it), groups,
  truncated or overlong varints and lengths past their message.

Bounds: the walk is iterative (an explicit stack, no recursion) and refuses nesting deeper
than :data:`MAX_DEPTH` messages (protobuf's own default limit) and more than
:data:`MAX_FIELDS` fields; tensors are capped at their full size as the onnx path caps them
(:data:`MAX_TENSOR_BYTES` in all). Tensor data is never decoded, only measured.

The element types and their sizes (the numbers of ``TensorProto.DataType``) live here too, so
that :mod:`blackbox_sal.model.external_data` needs no onnx to be imported.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from blackbox_sal.vocabulary.errors import ModelError

GiB = 1024**3
#: what every tensor of a model may take at its full size (the onnx path's cap too)
MAX_TENSOR_BYTES = 4 * GiB
#: the deepest nesting of messages accepted (protobuf's default recursion limit)
MAX_DEPTH = 100
#: the most fields one model may hold (a bound on the walk's time: about 10 s at most)
MAX_FIELDS = 1 << 24

# --- element types (TensorProto.DataType), by number ---------------------------------------

FLOAT, UINT8, INT8, UINT16, INT16, INT32, INT64, STRING, BOOL, FLOAT16, DOUBLE = range(1, 12)
UINT32, UINT64, COMPLEX64, COMPLEX128 = 12, 13, 14, 15
#: bits per element of every fixed-size element type (STRING has none)
BITS: dict[int, int] = {
    FLOAT: 32, UINT8: 8, INT8: 8, UINT16: 16, INT16: 16, INT32: 32, INT64: 64, BOOL: 8, FLOAT16: 16,
    DOUBLE: 64, UINT32: 32, UINT64: 64, COMPLEX64: 64, COMPLEX128: 128,
    16: 16,  # BFLOAT16
    17: 8, 18: 8, 19: 8, 20: 8,  # FLOAT8E4M3FN, FLOAT8E4M3FNUZ, FLOAT8E5M2, FLOAT8E5M2FNUZ
    21: 4, 22: 4, 23: 4,  # UINT4, INT4, FLOAT4E2M1
    24: 8,  # FLOAT8E8M0
    25: 2, 26: 2,  # UINT2, INT2
    27: 6, 28: 6,  # FLOAT6E2M3, FLOAT6E3M2
}
#: the typed field that holds each element type's values (int32_data for the rest)
TYPED_FIELD: dict[int, str] = {
    FLOAT: "float_data", COMPLEX64: "float_data", DOUBLE: "double_data", COMPLEX128: "double_data",
    INT64: "int64_data", UINT32: "uint64_data", UINT64: "uint64_data", STRING: "string_data"}
TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
#: TensorProto.DataLocation
DEFAULT_LOCATION, EXTERNAL_LOCATION = 0, 1


def typed_count(data_type: int, n: int) -> int:
    """How many entries of its typed field a tensor of ``n`` elements holds."""
    if data_type in (COMPLEX64, COMPLEX128):
        return 2 * n
    bits = BITS.get(data_type, 0)
    if bits in (2, 4):  # packed: 8 // bits elements per int32 entry
        return -(-n * bits // 8)
    return n


def nbytes(data_type: int, n: int) -> int | None:
    """The bytes ``n`` elements of ``data_type`` take (None for strings and unknown types)."""
    bits = BITS.get(data_type)
    return None if bits is None else -(-n * bits // 8)


# --- the schema -------------------------------------------------------------------------------

# field kinds: protobuf scalar types by their wire encoding, or a message name (capitalised)
_VARINT, _FIXED32, _FIXED64, _STRING, _BYTES = "varint", "fixed32", "fixed64", "string", "bytes"
# wire types
_WT_VARINT, _WT_I64, _WT_LEN, _WT_I32 = 0, 1, 2, 5

#: message -> field number -> (field name, kind, repeated): onnx-ml.proto (onnx 1.23, IR 13)
_SCHEMA: dict[str, dict[int, tuple[str, str, bool]]] = {
    "Model": {1: ("ir_version", _VARINT, False), 8: ("opset_import", "OpsetId", True),
              2: ("producer_name", _STRING, False), 3: ("producer_version", _STRING, False),
              4: ("domain", _STRING, False), 5: ("model_version", _VARINT, False),
              6: ("doc_string", _STRING, False), 7: ("graph", "MainGraph", False),
              14: ("metadata_props", "Entry", True), 20: ("training_info", "TrainingInfo", True),
              25: ("functions", "Function", True), 26: ("configuration", "DeviceConfiguration", True)},
    "DeviceConfiguration": {1: ("name", _STRING, False), 2: ("num_devices", _VARINT, False),
                            3: ("device", _STRING, True)},
    "OpsetId": {1: ("domain", _STRING, False), 2: ("version", _VARINT, False)},
    "Entry": {1: ("key", _STRING, False), 2: ("value", _STRING, False)},
    "TrainingInfo": {1: ("initialization", "Graph", False), 2: ("algorithm", "Graph", False),
                     3: ("initialization_binding", "Entry", True), 4: ("update_binding", "Entry", True)},
    "Graph": {1: ("node", "Node", True), 2: ("name", _STRING, False), 5: ("initializer", "Tensor", True),
              15: ("sparse_initializer", "Sparse", True), 10: ("doc_string", _STRING, False),
              11: ("input", "ValueInfo", True), 12: ("output", "ValueInfo", True),
              13: ("value_info", "ValueInfo", True), 14: ("quantization_annotation", "TensorAnnotation", True),
              16: ("metadata_props", "Entry", True)},
    "TensorAnnotation": {1: ("tensor_name", _STRING, False), 2: ("quant_parameter_tensor_names", "Entry", True)},
    "Node": {1: ("input", _STRING, True), 2: ("output", _STRING, True), 3: ("name", _STRING, False),
             4: ("op_type", _STRING, False), 7: ("domain", _STRING, False), 8: ("overload", _STRING, False),
             5: ("attribute", "Attribute", True), 6: ("doc_string", _STRING, False),
             9: ("metadata_props", "Entry", True), 10: ("device_configurations", "NodeDeviceConfiguration", True)},
    "NodeDeviceConfiguration": {1: ("configuration_id", _STRING, False), 2: ("sharding_spec", "ShardingSpec", True),
                                3: ("pipeline_stage", _VARINT, False)},
    "ShardingSpec": {1: ("tensor_name", _STRING, False), 2: ("device", _VARINT, True),
                     3: ("index_to_device_group_map", "IntIntList", True), 4: ("sharded_dim", "ShardedDim", True)},
    "IntIntList": {1: ("key", _VARINT, False), 2: ("value", _VARINT, True)},
    "ShardedDim": {1: ("axis", _VARINT, False), 2: ("simple_sharding", "SimpleShardedDim", True)},
    "SimpleShardedDim": {1: ("dim_value", _VARINT, False), 2: ("dim_param", _STRING, False),
                         3: ("num_shards", _VARINT, False)},
    "Attribute": {1: ("name", _STRING, False), 21: ("ref_attr_name", _STRING, False),
                  13: ("doc_string", _STRING, False), 20: ("type", _VARINT, False), 2: ("f", _FIXED32, False),
                  3: ("i", _VARINT, False), 4: ("s", _BYTES, False), 5: ("t", "Tensor", False),
                  6: ("g", "Graph", False), 22: ("sparse_tensor", "Sparse", False), 14: ("tp", "Type", False),
                  7: ("floats", _FIXED32, True), 8: ("ints", _VARINT, True), 9: ("strings", _BYTES, True),
                  10: ("tensors", "Tensor", True), 11: ("graphs", "Graph", True),
                  23: ("sparse_tensors", "Sparse", True), 15: ("type_protos", "Type", True)},
    "ValueInfo": {1: ("name", _STRING, False), 2: ("type", "Type", False), 3: ("doc_string", _STRING, False),
                  4: ("metadata_props", "Entry", True)},
    "Tensor": {1: ("dims", _VARINT, True), 2: ("data_type", _VARINT, False), 3: ("segment", "Segment", False),
               4: ("float_data", _FIXED32, True), 5: ("int32_data", _VARINT, True),
               6: ("string_data", _BYTES, True), 7: ("int64_data", _VARINT, True), 8: ("name", _STRING, False),
               12: ("doc_string", _STRING, False), 9: ("raw_data", _BYTES, False),
               13: ("external_data", "Entry", True), 14: ("data_location", _VARINT, False),
               10: ("double_data", _FIXED64, True), 11: ("uint64_data", _VARINT, True),
               16: ("metadata_props", "Entry", True)},
    "Segment": {1: ("begin", _VARINT, False), 2: ("end", _VARINT, False)},
    "Sparse": {1: ("values", "Tensor", False), 2: ("indices", "Tensor", False), 3: ("dims", _VARINT, True)},
    "Shape": {1: ("dim", "Dimension", True)},
    "Dimension": {1: ("dim_value", _VARINT, False), 2: ("dim_param", _STRING, False),
                  3: ("denotation", _STRING, False)},
    "Type": {1: ("tensor_type", "TypeTensor", False), 4: ("sequence_type", "TypeSequence", False),
             5: ("map_type", "TypeMap", False), 9: ("optional_type", "TypeOptional", False),
             8: ("sparse_tensor_type", "TypeTensor", False), 7: ("opaque_type", "TypeOpaque", False),
             6: ("denotation", _STRING, False)},
    "TypeTensor": {1: ("elem_type", _VARINT, False), 2: ("shape", "Shape", False)},
    "TypeSequence": {1: ("elem_type", "Type", False)},
    "TypeMap": {1: ("key_type", _VARINT, False), 2: ("value_type", "Type", False)},
    "TypeOptional": {1: ("elem_type", "Type", False)},
    "TypeOpaque": {1: ("domain", _STRING, False), 2: ("name", _STRING, False)},
    "Function": {1: ("name", _STRING, False), 4: ("input", _STRING, True), 5: ("output", _STRING, True),
                 6: ("attribute", _STRING, True), 11: ("attribute_proto", "Attribute", True),
                 7: ("node", "Node", True), 8: ("doc_string", _STRING, False), 9: ("opset_import", "OpsetId", True),
                 10: ("domain", _STRING, False), 13: ("overload", _STRING, False),
                 12: ("value_info", "ValueInfo", True), 14: ("metadata_props", "Entry", True)},
}
_SCHEMA["MainGraph"] = _SCHEMA["Graph"]
#: the fields whose values the checks read (all other scalars are only checked for form)
_KEPT: dict[str, frozenset[int]] = {
    "Tensor": frozenset({1, 2, 8, 14}), "Node": frozenset({3, 4, 7}), "OpsetId": frozenset({1}),
    "Function": frozenset({1, 10}),
}
_LOW_BYTES = bytes(range(0x80))


@dataclass
class Contents:
    """What :func:`check_model` found: counts for messages and tests, and every operator
    domain with where it sits (the caller checks them against its allow-list)."""

    nodes: int = 0
    tensors: int = 0
    graphs: int = 0
    functions: int = 0
    #: every tensor at its full size, in bytes
    tensor_bytes: int = 0
    domains: list[tuple[str, str]] = field(default_factory=list)


class _Bad(Exception):
    """A malformed message: turned into one ModelError by :func:`check_model`."""


@dataclass
class _Fields:
    """One message's fields as scanned: kept scalars by field number, counts of the rest,
    lengths of bytes fields, and the child messages to walk."""

    values: dict[int, list[int | str]] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    lengths: dict[int, int] = field(default_factory=dict)
    children: list[tuple[str, int, int]] = field(default_factory=list)


def check_model(data: bytes, what: str, allowed_domains: Iterable[str] | None = None) -> Contents:
    """Walk the ModelProto in ``data`` and refuse it (ModelError, naming ``what``) if it is
    malformed or holds anything listed in the module doc; with ``allowed_domains``, also if
    an operator domain is not among them. Returns what it found."""
    found = Contents()
    try:
        _walk(data, found)
    except _Bad as exc:
        raise ModelError(f"{what} is not a model blackbox-sal prepared: {exc}") from None
    if allowed_domains is not None:
        refuse_domains(found.domains, frozenset(allowed_domains))
    return found


def refuse_domains(domains: Iterable[tuple[str, str]], allowed: frozenset[str]) -> None:
    """ModelError naming the first few operator domains (with where they sit) that are not allowed."""
    bad: dict[str, str] = {}
    for domain, where in domains:
        if domain not in allowed:
            bad.setdefault(domain, where)
    if bad:
        listed = ", ".join(f"{d!r}{w}" for d, w in sorted(bad.items())[:5])
        raise ModelError(f"the model uses operator domains {listed}; only standard ONNX "
                         f"(and onnxruntime's built-in com.microsoft) operators are accepted")


def _walk(buf: bytes, found: Contents) -> None:
    """The iterative walk: each stack entry is (message, start, end, depth, where, inner):
    ``where`` places the message for messages, ``inner`` is where a node's subgraphs sit."""
    if not buf:
        raise _Bad("the file is empty")
    stack: list[tuple[str, int, int, int, str, str]] = [("Model", 0, len(buf), 0, "", "")]
    budget = [MAX_FIELDS]
    while stack:
        kind, start, end, depth, where, inner = stack.pop()
        if depth > MAX_DEPTH:
            raise _Bad(f"messages are nested more than {MAX_DEPTH} deep")
        fields = _scan(buf, kind, start, end, budget)
        children_where, children_inner = where, inner
        if kind == "Model":
            if 7 not in fields.counts:
                raise _Bad("it has no graph")
        elif kind == "MainGraph":
            if not fields.counts.get(1) and not fields.counts.get(12):
                raise _Bad("its graph is empty")
            found.graphs += 1
        elif kind == "Graph":
            found.graphs += 1
        elif kind == "Node":
            found.nodes += 1
            found.domains.append((_text(fields, 7), where))
            children_inner = (f" (in a subgraph of {_text(fields, 4)!r} node {_text(fields, 3)!r}{where})")
        elif kind == "OpsetId":
            found.domains.append((_text(fields, 1), where))
        elif kind == "Function":
            found.functions += 1
            children_where = children_inner = f" (in function {_text(fields, 1)!r})"
            found.domains.append((_text(fields, 10), children_where))
        elif kind == "Tensor":
            found.tensors += 1
            found.tensor_bytes += _tensor(fields, where, end - start)
            if found.tensor_bytes > MAX_TENSOR_BYTES:
                raise _Bad(f"its tensors would take {found.tensor_bytes / GiB:.3g} GiB, over the "
                           f"{MAX_TENSOR_BYTES / GiB:g} GiB limit")
        elif kind == "Sparse":
            raise _Bad(f"it holds a sparse tensor{where}; a prepared model keeps every tensor dense")
        elif kind == "Segment":
            raise _Bad(f"it holds a segmented tensor{where}; segmented tensors are not supported")
        for child, a, b in reversed(fields.children):
            if kind == "Attribute" and child == "Graph":
                stack.append((child, a, b, depth + 1, inner, ""))
            elif kind == "Node" and child == "Attribute":
                stack.append((child, a, b, depth + 1, where, children_inner))
            elif kind == "TrainingInfo":
                stack.append((child, a, b, depth + 1, " (in training info)", ""))
            else:
                stack.append((child, a, b, depth + 1, children_where, children_inner))


def _text(fields: _Fields, number: int) -> str:
    values = fields.values.get(number)
    return str(values[-1]) if values else ""


def _tensor(fields: _Fields, where: str, size: int) -> int:
    """Check a tensor's fields (see the module doc); returns the bytes it takes at full size."""
    what = f"tensor {_text(fields, 8)!r}{where}"
    if fields.counts.get(13) or any(v != DEFAULT_LOCATION for v in fields.values.get(14, [])):
        raise _Bad(f"{what} keeps its data in an external file; a prepared model keeps every tensor inline")
    dims = [int(d) for d in fields.values.get(1, [])]
    if any(d < 0 for d in dims):
        raise _Bad(f"{what} has a negative dimension {dims}")
    n = 1
    for d in dims:
        n *= d
    dtype = int(fields.values.get(2, [0])[-1])
    if dtype != STRING and dtype not in BITS:
        raise _Bad(f"{what} has an unknown element type {dtype}")
    size_bytes = nbytes(dtype, n)
    if size_bytes is not None and size_bytes > MAX_TENSOR_BYTES:
        raise _Bad(f"{what} would take {size_bytes / GiB:.3g} GiB, over the {MAX_TENSOR_BYTES / GiB:g} GiB "
                   f"limit on a model's tensors")
    numbers = {"float_data": 4, "int32_data": 5, "string_data": 6, "int64_data": 7, "double_data": 10,
               "uint64_data": 11}
    typed = [name for name in TYPED_FIELDS if fields.counts.get(numbers[name])]
    if 9 in fields.lengths:  # raw_data
        if typed:
            raise _Bad(f"{what} holds its data twice (raw and typed)")
        if size_bytes is None:
            raise _Bad(f"{what} is a string tensor with raw data, which ONNX does not allow")
        if fields.lengths[9] != size_bytes:
            raise _Bad(f"{what} has shape {dims} ({size_bytes} bytes) but holds {fields.lengths[9]} bytes")
        return size_bytes
    want = TYPED_FIELD.get(dtype, "int32_data")
    if typed and typed != [want]:
        raise _Bad(f"{what} holds its data in the wrong field ({', '.join(typed)})")
    count, expected = fields.counts.get(numbers[want], 0), typed_count(dtype, n)
    if count != expected:
        if count == 0:
            raise _Bad(f"{what} has shape {dims} but no data")
        raise _Bad(f"{what} has shape {dims} ({expected} values) but holds {count}")
    return size if size_bytes is None else size_bytes


def _scan(buf: bytes, kind: str, pos: int, end: int, budget: list[int]) -> _Fields:
    """The fields of one message ``buf[pos:end]`` of type ``kind``, checked against the schema."""
    schema, kept = _SCHEMA[kind], _KEPT.get(kind, frozenset())
    out = _Fields()
    seen: set[int] = set()
    while pos < end:
        budget[0] -= 1
        if budget[0] < 0:
            raise _Bad(f"it holds more than {MAX_FIELDS:,} fields")
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        spec = schema.get(number)
        if spec is None:
            raise _Bad(f"it holds a field {number} in a {kind} message, which ONNX does not define "
                       f"(or this reader does not know)")
        name, ftype, repeated = spec
        if not repeated:
            if number in seen:
                raise _Bad(f"{kind}.{name} is given twice")
            seen.add(number)
        if wire == _WT_VARINT:
            if ftype != _VARINT:
                raise _Bad(f"{kind}.{name} has the wrong wire type")
            value, pos = _varint(buf, pos, end)
            if number in kept:
                out.values.setdefault(number, []).append(_signed(value))
            out.counts[number] = out.counts.get(number, 0) + 1
        elif wire == _WT_I32 or wire == _WT_I64:
            if ftype != (_FIXED32 if wire == _WT_I32 else _FIXED64):
                raise _Bad(f"{kind}.{name} has the wrong wire type")
            pos += 4 if wire == _WT_I32 else 8
            if pos > end:
                raise _Bad("it is truncated")
            out.counts[number] = out.counts.get(number, 0) + 1
        elif wire == _WT_LEN:
            length, pos = _varint(buf, pos, end)
            a, pos = pos, pos + length
            if pos > end:
                raise _Bad("it is truncated (a length runs past its message)")
            if ftype == _STRING:
                try:
                    text = buf[a:pos].decode("utf-8")
                except UnicodeDecodeError:
                    raise _Bad(f"{kind}.{name} is not valid UTF-8") from None
                if number in kept:
                    out.values.setdefault(number, []).append(text)
                out.counts[number] = out.counts.get(number, 0) + 1
            elif ftype == _BYTES:
                out.lengths[number] = length
                out.counts[number] = out.counts.get(number, 0) + 1
            elif ftype in (_FIXED32, _FIXED64):  # packed
                width = 4 if ftype == _FIXED32 else 8
                if not repeated or length % width:
                    raise _Bad(f"{kind}.{name} is malformed")
                out.counts[number] = out.counts.get(number, 0) + length // width
            elif ftype == _VARINT:  # packed
                if not repeated:
                    raise _Bad(f"{kind}.{name} has the wrong wire type")
                if number in kept:
                    values = _packed(buf, a, pos)
                    out.values.setdefault(number, []).extend(values)
                    out.counts[number] = out.counts.get(number, 0) + len(values)
                else:
                    out.counts[number] = out.counts.get(number, 0) + _count_packed(buf, a, pos)
            else:
                out.children.append((ftype, a, pos))
                out.counts[number] = out.counts.get(number, 0) + 1
        else:
            raise _Bad(f"it holds a field of wire type {wire}, which ONNX never uses")
    return out


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """A varint at ``pos`` (at most 10 bytes, within ``end``): (its value as uint64, the next position)."""
    result, shift = 0, 0
    while True:
        if pos >= end:
            raise _Bad("it is truncated (in a varint)")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos
        shift += 7
        if shift >= 70:
            raise _Bad("it holds a varint over 10 bytes")


def _signed(value: int) -> int:
    """A uint64 read from the wire as the int64 it encodes."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _packed(buf: bytes, pos: int, end: int) -> list[int]:
    values = []
    while pos < end:
        value, pos = _varint(buf, pos, end)
        values.append(_signed(value))
    return values


def _count_packed(buf: bytes, pos: int, end: int) -> int:
    """How many varints ``buf[pos:end]`` holds (each ends in a byte under 0x80), at C speed."""
    if pos == end:
        return 0
    chunk = buf[pos:end]
    if chunk[-1] >= 0x80:
        raise _Bad("it is truncated (in a packed varint)")
    return len(chunk) - len(chunk.translate(None, _LOW_BYTES))
