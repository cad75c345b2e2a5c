"""Every tensor of an ONNX model, checked and resolved against the model folder only.

A model's tensors can keep their bytes in files beside it ("external data"). onnx and
onnxruntime resolve such a file themselves: against the model's own path, or, for a model
handed over as bytes (as blackbox-sal hands every model to onnxruntime), against the current
working directory; and the onnx package has had path-traversal bugs there. So before onnx or
onnxruntime sees a model, :func:`resolve` finds **every** tensor it holds (dense and sparse
initializers, node attributes such as a ``Constant``'s ``value`` and ``sparse_value``,
subgraphs of ``If`` / ``Loop`` / ``Scan``, the bodies and default attributes of the model's
local functions, training-info graphs), checks each against its shape, checks each external
entry, checks the total against the caps, and only then reads the bytes from the model folder
and puts them inline. What it returns has nothing left to resolve: no tensor is external, and
sparse initializers and sparse Constants are dense, as onnxruntime would make them (its own
sparse handling inside model-local functions can crash it).

An external entry must name a regular file inside the model folder by a relative path of
plain names (no absolute path, drive, ``..``, backslash or NUL; at most
:data:`MAX_LOCATION_CHARS` characters and 255 bytes a name) in which no part is a link, and
the file must not be a hard link; ``offset`` and ``length`` are plain decimal integers within
the file, and the length is what the tensor's type and shape take.

Caps, checked before anything is read: the model with its external data inline must fit one
protobuf message (:data:`MAX_PROTO_BYTES`, protobuf's own 2 GiB limit: blackbox-sal holds,
rewrites and serializes a model as one message), counting every entry as often as it is read,
so many tensors over the same bytes cannot multiply memory; and all tensors at their full
size, sparse ones densified (as onnxruntime does), may take at most :data:`MAX_TENSOR_BYTES`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.model import wire
from blackbox_sal.model.wire import BITS, DEFAULT_LOCATION, EXTERNAL_LOCATION, INT64, STRING
from blackbox_sal.vocabulary.errors import ModelError

if TYPE_CHECKING:  # the onnx package is imported where a model is walked, not with this module
    import onnx
    from onnx import TensorProto

GiB = wire.GiB
#: protobuf cannot serialize a message of 2 GiB or more: the model with its external data
#: inline must stay below it (an entry read twice counts twice)
MAX_PROTO_BYTES = 2**31 - 1
#: what every tensor of the model may take at its full size, sparse ones densified
MAX_TENSOR_BYTES = wire.MAX_TENSOR_BYTES
#: the longest external-data location accepted (each name in it at most 255 bytes)
MAX_LOCATION_CHARS = 1024
_MAX_NAME_BYTES = 255
_ENTRY_OVERHEAD = 16  # bytes an inlined tensor may add to the message (tag + length)


# element types and their sizes: by type number, in wire (no onnx needed to import this module)
_FIELD = wire.TYPED_FIELD
_TYPED = wire.TYPED_FIELDS
_typed_count = wire.typed_count


@dataclass
class Contents:
    """What a model holds, found by :func:`walk`; each item with where it sits, for messages."""

    tensors: list[tuple[TensorProto, str]] = field(default_factory=list)
    sparse: list[tuple[onnx.SparseTensorProto, str]] = field(default_factory=list)
    nodes: list[tuple[onnx.NodeProto, str]] = field(default_factory=list)
    #: operator-set domains: imported by the model or a function, or defining a function
    domains: list[tuple[str | bytes, str]] = field(default_factory=list)
    #: the main graph and every subgraph
    graphs: list[tuple[onnx.GraphProto, str]] = field(default_factory=list)


def walk(model: onnx.ModelProto) -> Contents:
    """Every tensor, sparse tensor, node and domain of ``model``, subgraphs and functions
    included (iteratively: nesting depth costs no recursion)."""
    found = Contents()
    found.domains.extend((op.domain, "") for op in model.opset_import)
    graphs: list[tuple[onnx.GraphProto, str]] = [(model.graph, "")]
    for info in model.training_info:
        graphs += [(info.initialization, " (in training info)"), (info.algorithm, " (in training info)")]

    def attributes(attrs: Iterable[onnx.AttributeProto], where: str, inner: str) -> None:
        for attr in attrs:
            if attr.HasField("t"):
                found.tensors.append((attr.t, where))
            found.tensors.extend((t, where) for t in attr.tensors)
            if attr.HasField("sparse_tensor"):
                found.sparse.append((attr.sparse_tensor, where))
            found.sparse.extend((s, where) for s in attr.sparse_tensors)
            if attr.HasField("g"):
                graphs.append((attr.g, inner))
            graphs.extend((g, inner) for g in attr.graphs)

    def nodes(ns: Iterable[onnx.NodeProto], where: str) -> None:
        for node in ns:
            found.nodes.append((node, where))
            if node.attribute:
                inner = f" (in a subgraph of {_text(node.op_type)!r} node {_text(node.name)!r}{where})"
                attributes(node.attribute, where, inner)

    for fn in model.functions:
        where = f" (in function {_text(fn.name)!r})"
        found.domains.append((fn.domain, where))
        found.domains.extend((op.domain, where) for op in fn.opset_import)
        nodes(fn.node, where)
        attributes(fn.attribute_proto, where, where)
    while graphs:
        graph, where = graphs.pop()
        found.graphs.append((graph, where))
        found.tensors.extend((t, where) for t in graph.initializer)
        found.sparse.extend((s, where) for s in graph.sparse_initializer)
        nodes(graph.node, where)
    for sparse, where in found.sparse:
        found.tensors += [(sparse.values, where), (sparse.indices, where)]
    return found


def _text(value: str | bytes) -> str:
    """A proto string as text: protobuf hands over invalid UTF-8 in proto2 strings as bytes."""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _describe(tensor: TensorProto, where: str) -> str:
    return f"tensor {_text(tensor.name)!r}{where}"


def _elements(tensor: TensorProto, what: str) -> int:
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{what} has a negative dimension {dims}")
    n = 1
    for d in dims:
        n *= d
    return n


_nbytes = wire.nbytes


def _check_size(nbytes: int, what: str) -> None:
    if nbytes > MAX_TENSOR_BYTES:
        raise ModelError(f"{what} would take {nbytes / GiB:.3g} GiB, over the "
                         f"{MAX_TENSOR_BYTES / GiB:g} GiB limit on a model's tensors")


@dataclass(frozen=True)
class Entry:
    """One external tensor, checked: read ``length`` bytes of ``path`` from ``offset``."""

    tensor: TensorProto
    path: Path
    stat: os.stat_result
    offset: int
    length: int


def _check_tensor(tensor: TensorProto, where: str, folder: Path) -> tuple[int, Entry | None]:
    """Check a tensor's data against its type and shape; returns the bytes it takes at full
    size and, for an external one, its checked entry (nothing is read here)."""
    what = _describe(tensor, where)
    if tensor.HasField("segment"):
        raise ModelError(f"{what} is segmented; segmented tensors are not supported")
    n = _elements(tensor, what)
    dtype = tensor.data_type
    if dtype != STRING and dtype not in BITS:
        raise ModelError(f"{what} has an unknown element type {dtype}")
    nbytes = _nbytes(dtype, n)
    if nbytes is not None:
        _check_size(nbytes, what)
    typed = [name for name in _TYPED if len(getattr(tensor, name))]
    has_raw = tensor.HasField("raw_data")
    if tensor.data_location == EXTERNAL_LOCATION:
        if has_raw or typed:
            raise ModelError(f"{what} is external but also holds data of its own")
        if nbytes is None:
            raise ModelError(f"{what} is a string tensor with external data, which ONNX does not allow")
        return nbytes, _entry(tensor, what, folder, nbytes)
    if tensor.external_data:  # entries on a tensor that is not external: meaningless, dropped
        del tensor.external_data[:]
    if has_raw:
        if typed:
            raise ModelError(f"{what} holds its data twice (raw and typed)")
        if nbytes is None:
            raise ModelError(f"{what} is a string tensor with raw data, which ONNX does not allow")
        if len(tensor.raw_data) != nbytes:
            raise ModelError(f"{what} has shape {list(tensor.dims)} ({nbytes} bytes) but holds "
                             f"{len(tensor.raw_data)} bytes")
        return nbytes, None
    want = _FIELD.get(dtype, "int32_data")
    if typed and typed != [want]:
        raise ModelError(f"{what} holds its data in the wrong field ({', '.join(typed)})")
    count, expected = len(getattr(tensor, want)), _typed_count(dtype, n)
    if count != expected:
        if count == 0:
            raise ModelError(f"{what} has shape {list(tensor.dims)} but no data")
        raise ModelError(f"{what} has shape {list(tensor.dims)} ({expected} values) but holds {count}")
    return (tensor.ByteSize() if nbytes is None else nbytes), None


def _entry(tensor: TensorProto, what: str, folder: Path, nbytes: int) -> Entry:
    values: dict[str, str] = {}
    for item in tensor.external_data:
        key, value = _text(item.key), item.value
        if key not in ("location", "offset", "length"):
            continue  # checksum, basepath: not used (the data is read here, from the folder)
        if key in values:
            raise ModelError(f"{what} names its external {key} twice")
        if not isinstance(value, str):
            raise ModelError(f"{what} has an external {key} that is not valid UTF-8")
        values[key] = value
    if "location" not in values:
        raise ModelError(f"{what} is external but names no file")
    location = values["location"]
    path = _confined(folder, location, f"external data {location[:80]!r} of {what}")
    st = path.lstat()  # _confined checked it is a regular file, not a link
    offset = _integer(values.get("offset", "0"), "offset", what)
    length = _integer(values["length"], "length", what) if "length" in values else nbytes
    if length != nbytes:
        raise ModelError(f"{what} has shape {list(tensor.dims)} ({nbytes} bytes) but its external "
                         f"length is {length}")
    if offset + length > st.st_size:
        raise ModelError(f"{what} reads bytes {offset}..{offset + length} of {location!r}, "
                         f"which has only {st.st_size}")
    return Entry(tensor, path, st, offset, length)


def _integer(value: str, key: str, what: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 20):
        raise ModelError(f"{what} has an external {key} {value[:40]!r}; expected a non-negative integer")
    return int(value)


def confined_parts(location: str, what: str) -> tuple[str, ...]:
    """The names of a relative path that must stay inside a folder: no absolute path or
    drive, no '..', no backslash or NUL, no over-long name. ModelError otherwise."""
    if not location:
        raise ModelError(f"{what}: the location is empty")
    if "\x00" in location:
        raise ModelError(f"{what}: the location holds a NUL byte")
    if len(location) > MAX_LOCATION_CHARS:
        raise ModelError(f"{what}: the location is {len(location)} characters long "
                         f"(at most {MAX_LOCATION_CHARS})")
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).drive or "\\" in location:
        raise ModelError(f"{what} is outside the model folder (an absolute path, a drive or a backslash)")
    parts = tuple(p for p in location.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ModelError(f"{what} is outside the model folder ('..')")
    if not parts:
        raise ModelError(f"{what}: the location names no file")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
            raise ModelError(f"{what}: a name in the location is over {_MAX_NAME_BYTES} bytes long")
    return parts


def _confined(folder: Path, location: str, what: str) -> Path:
    """``folder/location`` as a regular file reached through no link at all, and not itself
    hard-linked; ``folder`` is the real path of the model folder."""
    parts = confined_parts(location, what)
    path = folder
    for i, part in enumerate(parts):
        path = path / part
        try:
            st = path.lstat()
        except OSError as exc:
            raise ModelError(f"{what} is not in the model folder ({exc.strerror})") from exc
        if stat.S_ISLNK(st.st_mode):
            raise ModelError(f"{what} is reached through a link; links are refused (outside the model folder or not)")
        last = i == len(parts) - 1
        if not last and not stat.S_ISDIR(st.st_mode):
            raise ModelError(f"{what} is not in the model folder ({part!r} is not a folder)")
        if last and not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{what} is not a regular file")
        if last and st.st_nlink > 1:
            raise ModelError(f"{what} is a hard link; refusing it")
    return path


def resolve(model: onnx.ModelProto, folder: Path, found: Contents | None = None,
            size: int | None = None) -> Contents:
    """Check every tensor of ``model`` and put its external data inline, read from
    ``folder`` only (see the module doc); ModelError before anything is read if a check or a
    cap fails. ``size``: the model's serialized size, if known (the size of the file it was
    parsed from); else it is computed. Returns what :func:`walk` found."""
    found = found or walk(model)
    folder = folder.resolve()
    total, entries, densified = 0, [], 0
    for tensor, where in found.tensors:
        nbytes, entry = _check_tensor(tensor, where, folder)
        total += nbytes
        if entry is not None:
            entries.append(entry)
    for sparse, where in found.sparse:
        densified += _check_sparse(sparse, where)
    total += densified
    if total > MAX_TENSOR_BYTES:
        raise ModelError(f"the model's tensors would take {total / GiB:.3g} GiB (sparse ones densified), "
                         f"over the {MAX_TENSOR_BYTES / GiB:g} GiB limit")
    if entries or densified:
        inline = (model.ByteSize() if size is None else size) + densified + \
            sum(e.length + _ENTRY_OVERHEAD for e in entries)
        if inline > MAX_PROTO_BYTES:
            read = sum(e.length for e in entries)
            raise ModelError(f"the model with its external data ({read / GiB:.3g} GiB read from "
                             f"{len({e.path for e in entries})} file(s) for {len(entries)} tensors) and its "
                             f"sparse tensors densified would be {inline / GiB:.3g} GiB, over protobuf's 2 GiB "
                             f"limit on one model; blackbox-sal cannot load models that large")
    for path, group in _by_file(entries):
        _read(path, group, folder)
    _densify(found)
    return found


def _by_file(entries: list[Entry]) -> Iterator[tuple[Path, list[Entry]]]:
    groups: dict[Path, list[Entry]] = {}
    for e in entries:
        groups.setdefault(e.path, []).append(e)
    yield from groups.items()


def _read(path: Path, entries: list[Entry], folder: Path) -> None:
    """Read each entry's bytes into its tensor, from the file checked before (same inode,
    opened without following a link, so a file swapped since is noticed)."""
    where = f"external data file {str(path.relative_to(folder))!r}"
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelError(f"cannot open {where}: {exc.strerror}") from exc
    with open(fd, "rb") as fh:
        st = os.fstat(fd)
        first = entries[0].stat
        if (st.st_dev, st.st_ino) != (first.st_dev, first.st_ino) or not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{where} changed while the model was loading")
        for e in entries:
            try:
                fh.seek(e.offset)
                data = fh.read(e.length)
            except OSError as exc:
                raise ModelError(f"cannot read {where}: {exc.strerror}") from exc
            if len(data) != e.length:
                raise ModelError(f"{where} is shorter than its entries say (it changed while loading?)")
            e.tensor.raw_data = data
            e.tensor.data_location = DEFAULT_LOCATION  # type: ignore[assignment]  # the enum by number
            del e.tensor.external_data[:]


def _check_sparse(sparse: onnx.SparseTensorProto, where: str) -> int:
    """Shapes of a sparse tensor (its values and indices are checked as tensors); returns the
    bytes it takes densified."""
    what = f"sparse tensor {_text(sparse.values.name)!r}{where}"
    dims = list(sparse.dims)
    if any(d < 0 for d in dims):
        raise ModelError(f"{what} has a negative dimension {dims}")
    n = 1
    for d in dims:
        n *= d
    nbytes = _nbytes(sparse.values.data_type, n)
    if nbytes is None:
        raise ModelError(f"{what} holds strings; sparse string tensors are not supported")
    _check_size(nbytes, what)
    values, indices = list(sparse.values.dims), list(sparse.indices.dims)
    if len(values) != 1 or sparse.indices.data_type != INT64 or \
            indices not in ([values[0]], [values[0], len(dims)]):
        raise ModelError(f"{what} has values of shape {values} and int64 indices of shape {indices}; "
                         f"expected [nnz] and [nnz] or [nnz, {len(dims)}]")
    return nbytes


def _dense(sparse: onnx.SparseTensorProto, where: str) -> TensorProto:
    """A sparse tensor (data inline, shapes checked) as the dense tensor it stands for."""
    from onnx import numpy_helper

    what = f"sparse tensor {_text(sparse.values.name)!r}{where}"
    dims = tuple(int(d) for d in sparse.dims)
    try:
        values = numpy_helper.to_array(sparse.values)
        idx = numpy_helper.to_array(sparse.indices).astype(np.int64)
        size = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if idx.ndim == 2:
            if (idx < 0).any() or (idx >= np.array(dims, dtype=np.int64)).any():
                raise ValueError("an index lies outside the shape")
            idx = np.ravel_multi_index(tuple(idx.T), dims) if idx.size else idx.reshape(-1)
        elif idx.size and (idx.min() < 0 or idx.max() >= size):
            raise ValueError("an index lies outside the shape")
        dense = np.zeros(size, dtype=values.dtype)
        dense[idx] = values
        return numpy_helper.from_array(dense.reshape(dims), _text(sparse.values.name))
    except (ValueError, TypeError, IndexError) as exc:
        raise ModelError(f"{what} of shape {list(dims)} cannot be made dense: {exc}") from exc


def _densify(found: Contents) -> None:
    """Sparse initializers become initializers, and a Constant's ``sparse_value`` its
    ``value``, as onnxruntime makes them when it loads a model (its sparse handling inside
    model-local functions crashes: a function-body sparse Constant segfaults
    onnxruntime 1.31 in most runs)."""
    from onnx import helper

    for graph, where in found.graphs:
        if graph.sparse_initializer:
            graph.initializer.extend(_dense(s, where) for s in graph.sparse_initializer)
            del graph.sparse_initializer[:]
    for node, where in found.nodes:
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for attr in node.attribute:
            if attr.name == "sparse_value" and attr.HasField("sparse_tensor"):
                dense = _dense(attr.sparse_tensor, where)
                attr.Clear()
                attr.CopyFrom(helper.make_attribute("value", dense))
