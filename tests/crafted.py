"""Crafted model folders: hostile or broken, one case each, for tests/test_untrusted.py.

Every builder takes ``root`` (the test's tmp_path, which is also the working directory the CLI
runs in) and returns the model folder it wrote under it. A file meant to leak (``leak.bin``)
sits in ``root``, never in the folder: a loader that resolves external data against the
current directory would read it. Large files are sparse (``truncate``), so they take no disk.

The models are tiny.py's: a tanh MLP over an 8-wide table (``input_ids``), or the same taking
``inputs_embeds`` with an ``embeddings.npy`` beside it. Folders are written byte for byte
(``SerializeToString``), never with ``onnx.save``, which acts on external data itself.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tiny
from onnx import TensorProto, helper, numpy_helper

D, H, C = 8, 6, 2
TABLE = tiny.table(D)
W1, B1, W2 = tiny.mlp_weights(D, H, C, seed=3)
LABELS = ["neg", "pos"]
#: what leak.bin in the working directory holds: a bias that would swamp the logits
LEAK = np.full(H, 100.0, np.float32)
TEXT = "the film was good"
GiB = 1024**3


def mlp() -> onnx.ModelProto:
    """The valid base model: logits = sum_s tanh(E_s W1 + b1) W2 (masked)."""
    return tiny.tanh_mlp(TABLE, W1, B1, W2)


def embeds_model() -> onnx.ModelProto:
    """The same MLP taking ``inputs_embeds`` [batch, seq, D] (the table goes beside it)."""
    nodes = [
        helper.make_node("MatMul", ["inputs_embeds", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h"]),
        helper.make_node("ReduceSum", ["h", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "embeds", [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "seq", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])],
        [numpy_helper.from_array(v, k) for k, v in
         {"W1": W1, "b1": B1, "W2": W2, "axes": np.array([1], np.int64)}.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    return m


def write(root: Path, model: onnx.ModelProto, config: dict[str, object] | None = None,
          name: str = "model") -> Path:
    """A model folder ``root/name``: model.onnx (as serialized), tokenizer.json, config.json."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    tiny.tokenizer().save(str(folder / "tokenizer.json"))
    cfg = {"id2label": {str(i): label for i, label in enumerate(LABELS)}, **(config or {})}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def initializer(model: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def drop_initializer(model: onnx.ModelProto, name: str) -> None:
    kept = [t for t in model.graph.initializer if t.name != name]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)


def external(tensor: TensorProto, location: str, offset: str | None = "0",
             length: str | None = None) -> TensorProto:
    """Turn ``tensor`` into an external-data stub: its data gone, its entries as given
    (``length`` defaults to the tensor's true byte size)."""
    if length is None:
        length = str(numpy_helper.to_array(tensor).nbytes)
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    entries = [("location", location), ("offset", offset), ("length", length)]
    for key, value in entries:
        if value is not None:
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return tensor


def b1_stub(location: str = "leak.bin", name: str = "b1") -> TensorProto:
    """A float [H] tensor whose data is external at ``location``."""
    return external(numpy_helper.from_array(B1, name), location)


def b1_sparse(location: str = "leak.bin") -> onnx.SparseTensorProto:
    """b1 as a sparse tensor (every entry listed) whose values are external."""
    return helper.make_sparse_tensor(b1_stub(location), numpy_helper.from_array(np.arange(H, dtype=np.int64), "b1_i"),
                                     [H])


def with_b1_from_function(constant: onnx.NodeProto, body_domain: str = "",
                          extra_opsets: tuple[str, ...] = ()) -> onnx.ModelProto:
    """The MLP whose bias add is a model-local function ``LocalAddBias`` (domain
    com.microsoft, an allowed one) that makes b1 with ``constant`` inside its body."""
    m = mlp()
    drop_initializer(m, "b1")
    fn = helper.make_function(
        "com.microsoft", "LocalAddBias", ["x"], ["y"],
        [constant, helper.make_node("Add", ["x", "b1"], ["y"], domain=body_domain)],
        [helper.make_opsetid("", tiny.OPSET), *(helper.make_opsetid(d, 1) for d in extra_opsets)])
    m.functions.append(fn)
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    for node in m.graph.node:
        if node.op_type == "Add":
            node.op_type, node.domain = "LocalAddBias", "com.microsoft"
            del node.input[1:]
    return m


def with_b1_from_node(node: onnx.NodeProto) -> onnx.ModelProto:
    """The MLP whose b1 is made by ``node`` (first in the graph) instead of an initializer."""
    m = mlp()
    drop_initializer(m, "b1")
    m.graph.node.insert(0, node)
    return m


def leak_file(root: Path) -> None:
    LEAK.tofile(root / "leak.bin")


# --- the current-directory leak (issue 9 item 1) -------------------------------------------


def sparse_initializer_leak(root: Path) -> Path:
    m = mlp()
    drop_initializer(m, "b1")
    m.graph.sparse_initializer.append(b1_sparse())
    leak_file(root)
    return write(root, m)


def function_sparse_constant_leak(root: Path) -> Path:
    leak_file(root)
    return write(root, with_b1_from_function(helper.make_node("Constant", [], ["b1"], sparse_value=b1_sparse())))


def function_constant_leak(root: Path) -> Path:
    leak_file(root)
    return write(root, with_b1_from_function(helper.make_node("Constant", [], ["b1"], value=b1_stub())))


def constant_sparse_value_leak(root: Path) -> Path:
    leak_file(root)
    return write(root, with_b1_from_node(helper.make_node("Constant", [], ["b1"], sparse_value=b1_sparse())))


def constant_value_leak(root: Path) -> Path:
    leak_file(root)
    return write(root, with_b1_from_node(helper.make_node("Constant", [], ["b1"], value=b1_stub())))


def _branch(name: str, node: onnx.NodeProto) -> onnx.GraphProto:
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info("b1", TensorProto.FLOAT, [H])])


def subgraph_constant_leak(root: Path) -> Path:
    """b1 from an If whose branches each hold a Constant with external data."""
    leak_file(root)
    m = with_b1_from_node(helper.make_node(
        "If", ["cond"], ["b1"],
        then_branch=_branch("then", helper.make_node("Constant", [], ["b1"], value=b1_stub())),
        else_branch=_branch("else", helper.make_node("Constant", [], ["b1"], sparse_value=b1_sparse()))))
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    return write(root, m)


def sparse_attribute_leak(root: Path) -> Path:
    """A Constant's sparse_value in an If branch inside a model-local function: function,
    subgraph and sparse tensor at once."""
    leak_file(root)
    inner = helper.make_node(
        "If", ["c"], ["b1"],
        then_branch=_branch("then", helper.make_node("Constant", [], ["b1"], sparse_value=b1_sparse())),
        else_branch=_branch("else", helper.make_node("Constant", [], ["b1"], value_floats=[0.0] * H)))
    cond = helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.array(True), "c"))
    m = with_b1_from_function(cond)
    body = m.functions[0].node
    body.insert(1, inner)
    return write(root, m)


def function_sparse_constant_inline(root: Path) -> Path:
    """A valid model: b1 = LEAK from a sparse Constant, its data inline, in a function body.
    onnxruntime 1.31 segfaults creating a session for it after another session was made in
    the same process (5 of 5 loops of two loads), unless the Constant is made dense first."""
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(LEAK, "b1"),
                                       numpy_helper.from_array(np.arange(H, dtype=np.int64), "b1_i"), [H])
    return write(root, with_b1_from_function(helper.make_node("Constant", [], ["b1"], sparse_value=sparse)),
                 name="sparse-in-function")


LEAKS: dict[str, Callable[[Path], Path]] = {
    "sparse-initializer": sparse_initializer_leak,
    "function-sparse-constant": function_sparse_constant_leak,
    "function-constant": function_constant_leak,
    "constant-sparse-value": constant_sparse_value_leak,
    "constant-value": constant_value_leak,
    "subgraph-constant": subgraph_constant_leak,
    "function-subgraph-sparse": sparse_attribute_leak,
}


# --- external-data entries (items 1, 4) ----------------------------------------------------


def _b1_external(root: Path, location: str, offset: str | None = "0", length: str | None = None,
                 data: bytes | None = B1.tobytes(), file: str | None = "w.bin") -> Path:
    """The MLP with b1 external at ``location``; ``data`` written to folder/``file``."""
    m = mlp()
    external(initializer(m, "b1"), location, offset, length)
    folder = write(root, m)
    if file is not None and data is not None:
        (folder / file).write_bytes(data)
    return folder


def absolute_location(root: Path) -> Path:
    (root / "abs.bin").write_bytes(B1.tobytes())
    return _b1_external(root, str(root / "abs.bin"), file=None)


def dotdot_location(root: Path) -> Path:
    (root / "outside.bin").write_bytes(B1.tobytes())
    return _b1_external(root, "../outside.bin", file=None)


def dotdot_inside_location(root: Path) -> Path:
    """sub/../w.bin names a file inside the folder, but '..' is refused as such."""
    folder = _b1_external(root, "sub/../w.bin")
    (folder / "sub").mkdir()
    return folder


def backslash_location(root: Path) -> Path:
    (root / "outside.bin").write_bytes(B1.tobytes())
    return _b1_external(root, "..\\outside.bin", file=None)


def nul_location(root: Path) -> Path:
    return _b1_external(root, "w.bin\x00.txt")


def long_location(root: Path) -> Path:
    return _b1_external(root, "a" * 300 + ".bin")


def empty_location(root: Path) -> Path:
    return _b1_external(root, "")


def missing_file(root: Path) -> Path:
    return _b1_external(root, "w.bin", file=None)


def symlink_file(root: Path) -> Path:
    """w.bin is a link to a file inside the folder: links are refused outright."""
    folder = _b1_external(root, "w.bin", file="real.bin")
    (folder / "w.bin").symlink_to("real.bin")
    return folder


def symlink_parent(root: Path) -> Path:
    """sub/ is a link to a folder outside; sub/w.bin is a plain file there."""
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "w.bin").write_bytes(B1.tobytes())
    folder = _b1_external(root, "sub/w.bin", file=None)
    (folder / "sub").symlink_to(root / "elsewhere", target_is_directory=True)
    return folder


def hard_link(root: Path) -> Path:
    (root / "other.bin").write_bytes(B1.tobytes())
    folder = _b1_external(root, "w.bin", file=None)
    os.link(root / "other.bin", folder / "w.bin")
    return folder


def fifo(root: Path) -> Path:
    """A named pipe: opening it would block forever."""
    folder = _b1_external(root, "w.bin", file=None)
    os.mkfifo(folder / "w.bin")
    return folder


def directory(root: Path) -> Path:
    folder = _b1_external(root, "w.bin", file=None)
    (folder / "w.bin").mkdir()
    return folder


def negative_offset(root: Path) -> Path:
    return _b1_external(root, "w.bin", offset="-4")


def non_numeric_offset(root: Path) -> Path:
    return _b1_external(root, "w.bin", offset="4x")


def signed_offset(root: Path) -> Path:
    """'+0' is an integer to Python, but not a plain decimal: refused."""
    return _b1_external(root, "w.bin", offset="+0")


def offset_past_end(root: Path) -> Path:
    return _b1_external(root, "w.bin", offset="1000")


def short_length(root: Path) -> Path:
    return _b1_external(root, "w.bin", length=str(B1.nbytes - 4))


def length_past_end(root: Path) -> Path:
    return _b1_external(root, "w.bin", offset="4")


def huge_length(root: Path) -> Path:
    return _b1_external(root, "w.bin", length="9" * 30)


def duplicate_key(root: Path) -> Path:
    folder = _b1_external(root, "w.bin")
    m = onnx.load_model(str(folder / "model.onnx"), load_external_data=False)
    entry = initializer(m, "b1").external_data.add()
    entry.key, entry.value = "location", "../outside.bin"
    (folder / "model.onnx").write_bytes(m.SerializeToString())
    return folder


EXTERNAL_ENTRIES: dict[str, Callable[[Path], Path]] = {
    "absolute": absolute_location,
    "dotdot": dotdot_location,
    "dotdot-inside": dotdot_inside_location,
    "backslash": backslash_location,
    "nul": nul_location,
    "300-char-name": long_location,
    "empty-location": empty_location,
    "missing-file": missing_file,
    "symlink-file": symlink_file,
    "symlink-parent": symlink_parent,
    "hard-link": hard_link,
    "fifo": fifo,
    "directory": directory,
    "negative-offset": negative_offset,
    "non-numeric-offset": non_numeric_offset,
    "signed-offset": signed_offset,
    "offset-past-end": offset_past_end,
    "short-length": short_length,
    "length-past-end": length_past_end,
    "huge-length": huge_length,
    "duplicate-key": duplicate_key,
}


# --- tensors: shape against data, size caps (items 2, 4) ------------------------------------


def dims_without_data(root: Path) -> Path:
    m = mlp()
    initializer(m, "b1").ClearField("raw_data")
    return write(root, m)


def raw_data_wrong_size(root: Path) -> Path:
    m = mlp()
    initializer(m, "b1").raw_data = b"\x00" * 5
    return write(root, m)


def typed_data_wrong_count(root: Path) -> Path:
    m = mlp()
    t = initializer(m, "b1")
    t.ClearField("raw_data")
    t.float_data.extend([0.0] * (H + 1))
    return write(root, m)


def negative_dims(root: Path) -> Path:
    m = mlp()
    t = initializer(m, "b1")
    t.dims[:] = [-1, -H]
    return write(root, m)


def overflowing_dims(root: Path) -> Path:
    """dims whose product is far beyond any int64, on an otherwise valid external entry."""
    m = mlp()
    t = external(initializer(m, "b1"), "w.bin")
    t.dims[:] = [2**62, 2**62]
    folder = write(root, m)
    (folder / "w.bin").write_bytes(B1.tobytes())
    return folder


def aliased_external(root: Path) -> Path:
    """2,100 tensors over the same 1 MiB of one file: 2.05 GiB to read from a 1 MiB file."""
    m = mlp()
    stub = external(numpy_helper.from_array(np.zeros(2**18, np.float32), "alias"), "w.bin")
    for i in range(2100):
        t = m.graph.initializer.add()
        t.CopyFrom(stub)
        t.name = f"alias{i}"
    folder = write(root, m)
    (folder / "w.bin").write_bytes(b"\x00" * 2**20)
    return folder


def huge_external(root: Path) -> Path:
    """One 3 GiB tensor in a sparse 3 GiB file: over protobuf's 2 GiB, refused before reading."""
    m = mlp()
    t = m.graph.initializer.add()
    t.name, t.data_type = "big", TensorProto.FLOAT
    t.dims.append(3 * GiB // 4)
    external(t, "big.bin", length=str(3 * GiB))
    folder = write(root, m)
    with open(folder / "big.bin", "wb") as fh:
        fh.truncate(3 * GiB)
    return folder


def sparse_dense_huge(root: Path) -> Path:
    """A sparse initializer of one value whose dense shape is 8 TiB of float32."""
    m = mlp()
    values = numpy_helper.from_array(np.ones(1, np.float32), "huge")
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "huge_i")
    m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [2**41]))
    return write(root, m)


def segmented_tensor(root: Path) -> Path:
    m = mlp()
    seg = initializer(m, "b1").segment
    seg.begin, seg.end = 0, 3
    return write(root, m)


TENSORS: dict[str, Callable[[Path], Path]] = {
    "dims-without-data": dims_without_data,
    "raw-data-wrong-size": raw_data_wrong_size,
    "typed-data-wrong-count": typed_data_wrong_count,
    "negative-dims": negative_dims,
    "overflowing-dims": overflowing_dims,
    "aliased-external-over-cap": aliased_external,
    "3-GiB-external": huge_external,
    "sparse-dense-over-cap": sparse_dense_huge,
    "segment": segmented_tensor,
}


# --- operator domains in function bodies and subgraphs (item 8) ----------------------------


def function_body_domain(root: Path) -> Path:
    m = with_b1_from_function(helper.make_node("Constant", [], ["b1"], value=numpy_helper.from_array(B1, "b1")),
                              body_domain="com.evil", extra_opsets=("com.evil",))
    return write(root, m)


def function_opset_domain(root: Path) -> Path:
    """The function imports a custom domain (its body uses only standard ops)."""
    m = with_b1_from_function(helper.make_node("Constant", [], ["b1"], value=numpy_helper.from_array(B1, "b1")),
                              extra_opsets=("com.evil",))
    return write(root, m)


def subgraph_domain(root: Path) -> Path:
    then = helper.make_graph([helper.make_node("Constant", [], ["b1"], value=numpy_helper.from_array(B1, "b1"),
                                               domain="com.evil")],
                             "then", [], [helper.make_tensor_value_info("b1", TensorProto.FLOAT, [H])])
    els = _branch("else", helper.make_node("Constant", [], ["b1"], value_floats=[0.0] * H))
    m = with_b1_from_node(helper.make_node("If", ["cond"], ["b1"], then_branch=then, else_branch=els))
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    return write(root, m)


DOMAINS: dict[str, Callable[[Path], Path]] = {
    "function-body-domain": function_body_domain,
    "function-opset-domain": function_opset_domain,
    "subgraph-domain": subgraph_domain,
}


# --- side files: embeddings.npy, tokenizer.json, config.json, gradient_model (items 4, 8) ----


def _embeds_folder(root: Path) -> Path:
    return write(root, embeds_model())


def npy_huge_rows(root: Path) -> Path:
    """A header claiming 1e9 rows (32 GB) over a file of a few bytes."""
    folder = _embeds_folder(root)
    with open(folder / "embeddings.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**9, D)})
        fh.write(TABLE.tobytes())
    return folder


def npy_huge_sparse(root: Path) -> Path:
    """A true 1e9-row table, as a sparse file: 32 GB of zeros, over the memory cap."""
    folder = _embeds_folder(root)
    with open(folder / "embeddings.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (10**9, D)})
        fh.truncate(fh.tell() + 10**9 * D * 4)
    return folder


def npy_wrong_width(root: Path) -> Path:
    folder = _embeds_folder(root)
    np.save(folder / "embeddings.npy", TABLE[:, : D - 3])
    return folder


def npy_truncated(root: Path) -> Path:
    folder = _embeds_folder(root)
    np.save(folder / "embeddings.npy", TABLE)
    data = (folder / "embeddings.npy").read_bytes()
    (folder / "embeddings.npy").write_bytes(data[: len(data) - 40])
    return folder


def npy_garbage(root: Path) -> Path:
    folder = _embeds_folder(root)
    (folder / "embeddings.npy").write_bytes(b"\x93NUMPY\x01\x00\xff\xff{'descr': ")
    return folder


def npy_huge_header(root: Path) -> Path:
    """A version-2 header announcing a 4 GiB header length."""
    folder = _embeds_folder(root)
    (folder / "embeddings.npy").write_bytes(b"\x93NUMPY\x02\x00\xff\xff\xff\xff" + b" " * 64)
    return folder


def tokenizer_over_cap(root: Path) -> Path:
    folder = write(root, mlp())
    with open(folder / "tokenizer.json", "r+b") as fh:
        fh.truncate(64 * 1024**2 + 1)
    return folder


def tokenizer_garbage(root: Path) -> Path:
    folder = write(root, mlp())
    (folder / "tokenizer.json").write_bytes(b"\xff\xfe{\"model\": 1")
    return folder


def tokenizer_symlink_outside(root: Path) -> Path:
    folder = write(root, mlp())
    (folder / "tokenizer.json").rename(root / "tokenizer.json")
    (folder / "tokenizer.json").symlink_to(root / "tokenizer.json")
    return folder


def model_symlink_outside(root: Path) -> Path:
    folder = write(root, mlp())
    (folder / "model.onnx").rename(root / "model.onnx")
    (folder / "model.onnx").symlink_to(root / "model.onnx")
    return folder


def model_truncated(root: Path) -> Path:
    folder = write(root, mlp())
    data = (folder / "model.onnx").read_bytes()
    (folder / "model.onnx").write_bytes(data[: len(data) // 2])
    return folder


def gradient_model_symlink_outside(root: Path) -> Path:
    """config.json names grad.onnx, a link to a valid gradient graph outside the folder."""
    from blackbox_sal import load_model
    from blackbox_sal.gradient_graph.build import build_gradient as build_model_gradient

    folder = write(root, mlp())
    grad = build_model_gradient(load_model(folder, verify=False))
    (root / "grad.onnx").write_bytes(grad.SerializeToString())
    (folder / "grad.onnx").symlink_to(root / "grad.onnx")
    labels = {str(i): label for i, label in enumerate(LABELS)}
    (folder / "config.json").write_text(json.dumps({"gradient_model": "grad.onnx", "id2label": labels}))
    return folder


def _config(value: object) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        folder = write(root, mlp())
        raw = value if isinstance(value, bytes) else (value if isinstance(value, str) else json.dumps(value)).encode()
        (folder / "config.json").write_bytes(raw)
        return folder
    return build


CONFIGS: dict[str, object] = {
    "id2label-list": {"id2label": ["neg", "pos"]},
    "id2label-values": {"id2label": {"0": {"x": 1}, "1": [2]}},
    "id2label-keys": {"id2label": {"zero": "neg", "one": "pos"}},
    "id2label-huge-key": {"id2label": {"9" * 5000: "neg"}},
    "name-number": {"name": 5},
    "max-length-string": {"max_length": "512"},
    "max-length-bool": {"max_position_embeddings": True},
    "max-length-float": {"n_positions": 1e400},
    "gradient-model-list": {"gradient_model": ["grad.onnx"]},
    "gradient-model-long": {"gradient_model": "g" * 300},
    "gradient-model-nul": {"gradient_model": "grad.onnx\x00"},
    "gradient-model-absolute": {"gradient_model": "/etc/hostname"},
    "deep-nesting": "[" * 100_000 + "]" * 100_000,
    "int-over-4300-digits": '{"max_length": ' + "9" * 5000 + "}",
    "not-utf8": b'{"name": "\xff"}',
    "not-an-object": [1, 2],
}


SIDE_FILES: dict[str, Callable[[Path], Path]] = {
    "npy-1e9-rows-header": npy_huge_rows,
    "npy-1e9-rows-sparse": npy_huge_sparse,
    "npy-wrong-width": npy_wrong_width,
    "npy-truncated": npy_truncated,
    "npy-garbage": npy_garbage,
    "npy-huge-header": npy_huge_header,
    "tokenizer-over-cap": tokenizer_over_cap,
    "tokenizer-garbage": tokenizer_garbage,
    "tokenizer-symlink-outside": tokenizer_symlink_outside,
    "model-symlink-outside": model_symlink_outside,
    "model-truncated": model_truncated,
    "gradient-model-symlink-outside": gradient_model_symlink_outside,
    **{f"config-{name}": _config(value) for name, value in CONFIGS.items()},
}

ALL: dict[str, Callable[[Path], Path]] = {**LEAKS, **EXTERNAL_ENTRIES, **TENSORS, **DOMAINS, **SIDE_FILES}
#: the cases that need POSIX file kinds (links, pipes)
POSIX_ONLY = {"symlink-file", "symlink-parent", "hard-link", "fifo", "tokenizer-symlink-outside",
              "model-symlink-outside", "gradient-model-symlink-outside"}


# --- mutated model folders for the fuzz test -----------------------------------------------


NASTY = ["", "..", "../weights.bin", "/etc/hostname", "weights.bin\x00", "-1", "1e3", "99999999999", "x" * 300,
         "com.evil", "Gather", "If", "\u202e", "0", "24"]


def _field_flip(model: onnx.ModelProto, rng: np.random.Generator) -> None:
    """Set one field of the model to a hostile value: a tensor's dim or element type, an
    external entry, or a node's op type, domain or input."""
    tensor = model.graph.initializer[int(rng.integers(len(model.graph.initializer)))]
    node = model.graph.node[int(rng.integers(len(model.graph.node)))]
    nasty = NASTY[int(rng.integers(len(NASTY)))]
    what = int(rng.integers(6))
    if what == 0 and tensor.dims:
        tensor.dims[int(rng.integers(len(tensor.dims)))] = int(rng.choice([-1, 0, 1, 3, 2**31, 2**62]))
    elif what == 1:
        tensor.data_type = int(rng.integers(0, 30))
    elif what == 2 and tensor.external_data:
        tensor.external_data[int(rng.integers(len(tensor.external_data)))].value = nasty
    elif what == 3:
        node.op_type = nasty
    elif what == 4:
        node.domain = nasty
    elif node.input:
        node.input[int(rng.integers(len(node.input)))] = nasty


def mutations(root: Path, n: int, seed: int) -> list[Path]:
    """``n`` copies of a valid model folder (with a sparse initializer, and two tensors in
    ``weights.bin`` external data) whose model.onnx has 1-3 random bytes flipped, or is
    truncated at a random point, or has one field set to a hostile value; all from one
    seeded Generator."""
    rng = np.random.default_rng(seed)
    good = mlp()
    good.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(2, np.float32), "unused"),
        numpy_helper.from_array(np.array([0, 3], np.int64), "unused_i"), [5]))
    weights = B1.tobytes() + W2.tobytes()
    external(initializer(good, "b1"), "weights.bin", "0")
    external(initializer(good, "W2"), "weights.bin", str(B1.nbytes))
    data = good.SerializeToString()
    folders = []
    for i in range(n):
        kind = rng.choice(["bytes", "truncate", "field"], p=[0.4, 0.2, 0.4])
        if kind == "field":
            m = onnx.ModelProto()
            m.CopyFrom(good)
            _field_flip(m, rng)
            mutated = bytearray(m.SerializeToString())
        else:
            mutated = bytearray(data)
        if kind == "bytes":
            for pos in rng.integers(0, len(mutated), size=int(rng.integers(1, 4))):
                mutated[pos] ^= int(rng.integers(1, 256))
        if kind == "truncate":
            del mutated[int(rng.integers(0, len(mutated))):]
        folder = write(root, good, name=f"m{i:03d}")
        (folder / "model.onnx").write_bytes(bytes(mutated))
        (folder / "weights.bin").write_bytes(weights)
        folders.append(folder)
    return folders


DRIVER = r"""
import json, os, sys, tempfile, traceback
from blackbox_sal.cli import main
results = []
with open(sys.argv[1]) as fh:
    calls = json.load(fh)
for call in calls:
    os.chdir(call["cwd"])
    with tempfile.TemporaryFile() as err:
        sys.stdout.flush(); sys.stderr.flush()
        saved_out, saved_err = os.dup(1), os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1); os.dup2(err.fileno(), 2)
        try:
            try:
                rc = main(call["args"])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
                rc = 1
            sys.stdout.flush(); sys.stderr.flush()
        finally:
            os.dup2(saved_out, 1); os.dup2(saved_err, 2)
            for fd in (saved_out, saved_err, devnull):
                os.close(fd)
        err.seek(0)
        results.append({"rc": rc, "stderr": err.read().decode("utf-8", "replace")})
with open(sys.argv[2], "w") as fh:
    json.dump(results, fh)
"""


def explain_args(folder: Path, method: str = "occlusion", *extra: str) -> list[str]:
    return ["explain", TEXT, "--model", str(folder), "--method", method, *extra]


def drive(calls: list[tuple[list[str], Path]], out: Path, timeout: float = 300,
          prelude: str = "") -> list[dict[str, Any]]:
    """Run the CLI's ``main`` on each (arguments, working directory) in one subprocess (one
    interpreter start for all: a start costs ~0.4 s), as ``python -m blackbox_sal`` would:
    each call's exit code (1 with the traceback for an exception that escapes) and everything
    written to file descriptor 2, onnxruntime's own logging included. ``prelude``: a line of
    code run first (``sys.modules['onnx'] = None``, say)."""
    import subprocess

    payload = out.with_name(out.name + ".calls")
    payload.write_text(json.dumps([{"args": args, "cwd": str(cwd)} for args, cwd in calls]))
    subprocess.run([sys.executable, "-c", prelude + "\n" + DRIVER, str(payload), str(out)], timeout=timeout, check=True,
                   env={**os.environ, "NO_COLOR": "1"})
    results: list[dict[str, Any]] = json.loads(out.read_text())
    return results


# --- hostile folders of the second round (issue 22): tests/test_hostile.py -------------------


def _with_tokenizer(root: Path, edit: Callable[[dict[str, Any]], None], rows: int = 0) -> Path:
    """The valid MLP folder (its table ``rows`` longer) whose tokenizer.json is tiny.py's with
    ``edit`` applied to its JSON."""
    table = np.vstack([TABLE, tiny.table(D, seed=9)[:rows]]) if rows else TABLE
    folder = write(root, tiny.tanh_mlp(table, W1, B1, W2))
    spec = json.loads((folder / "tokenizer.json").read_text())
    edit(spec)
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    return folder


#: a Split pattern that backtracks exponentially on a run of a's ending in a b: the regex engine
#: stops at its retry limit and the Rust tokenizer panics (pyo3_runtime.PanicException)
PANIC_PATTERN = r"(a|aa)+$"
PANIC_TEXT = "the film " + "a" * 40 + "b"


def panicking_pretokenizer(root: Path) -> Path:
    return _with_tokenizer(root, lambda s: s.update(pre_tokenizer={
        "type": "Sequence", "pretokenizers": [s["pre_tokenizer"], {
            "type": "Split", "pattern": {"Regex": PANIC_PATTERN}, "behavior": "Isolated", "invert": False}]}))


def panicking_probe(root: Path) -> Path:
    """A pattern that panics on ordinary sentences of a dozen words (the loader's probe)."""
    return _with_tokenizer(root, lambda s: s.update(pre_tokenizer={
        "type": "Split", "pattern": {"Regex": r"(\w+\s*)+$"}, "behavior": "Isolated", "invert": False}))


def _replace(pattern: str, content: str) -> dict[str, Any]:
    return {"type": "Replace", "pattern": {"String": pattern}, "content": content}


def expanding_normalizer(root: Path) -> Path:
    """Three Replace steps, each making 1,000 characters of one: 10^9 per 'e'."""
    return _with_tokenizer(root, lambda s: s.update(normalizer={
        "type": "Sequence", "normalizers": [_replace("e", "e" * 1000)] * 3}))


def widening_normalizer(root: Path) -> Path:
    """One Replace making 50 characters of each 'e' (accepted at load; long texts are refused)."""
    return _with_tokenizer(root, lambda s: s.update(normalizer=_replace("e", "e" * 50)))


def _no_unknown(spec: dict[str, Any], words: list[str]) -> None:
    spec["model"]["unk_token"] = "<not in the vocabulary>"
    spec["model"]["vocab"] = {**spec["model"]["vocab"],
                              **{w: len(spec["model"]["vocab"]) + k for k, w in enumerate(words)}}


#: the words of the loader's probe sentence, as WhitespaceSplit cuts them
PROBE_WORDS = "The quick brown fox jumps over the lazy dog, and the film was good.".split()


def no_unknown_token(root: Path) -> Path:
    """A WordLevel vocabulary whose unknown token is not in it (as good as none); it knows the
    probe sentence's words."""
    words = [w for w in PROBE_WORDS if w not in tiny.VOCAB]
    return _with_tokenizer(root, lambda s: _no_unknown(s, words), rows=len(words))


def no_unknown_token_probe(root: Path) -> Path:
    """The same without the probe sentence's words: the loader's own probe meets unknown ones."""
    return _with_tokenizer(root, lambda s: _no_unknown(s, []))


def loop_forever(root: Path) -> Path:
    """The MLP whose logits gain 0 * (a Loop of 2^62 steps adding 1): runs until stopped."""
    m = mlp()
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one_f"], ["v_out"])],
        "forever", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                    helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                    helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one_f")])
    logits = next(n for n in m.graph.node if n.output[0] == "logits")
    logits.output[0] = "raw"
    m.graph.node.extend([
        helper.make_node("ReduceSum", ["raw"], ["v0"], keepdims=0),
        helper.make_node("Loop", ["trips", "true", "v0"], ["v_end"], body=body),
        helper.make_node("Mul", ["v_end", "zero_f"], ["nothing"]),
        helper.make_node("Add", ["raw", "nothing"], ["logits"]),
    ])
    m.graph.initializer.extend([numpy_helper.from_array(np.array(2**62, np.int64), "trips"),
                                numpy_helper.from_array(np.array(True), "true"),
                                numpy_helper.from_array(np.array(0.0, np.float32), "zero_f")])
    return write(root, m)


def huge_static_input(root: Path) -> Path:
    """input_ids and attention_mask declared [1, 10^9]: 8 GB of int64 per feed."""
    m = mlp()
    for inp in m.graph.input:
        dims = inp.type.tensor_type.shape.dim
        dims[0].dim_value, dims[1].dim_value = 1, 10**9
    return write(root, m)


def huge_features(root: Path) -> Path:
    """A numbers model declaring 10^9 features (its name tuple would be built first)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10**9])
    graph = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["logits"], keepdims=1)], "wide", [x],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
                              [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    return write(root, m, {"input_kind": "features", "id2label": {"0": "y"}})


def features_model(root: Path) -> Path:
    """A numbers model of three features: logits = [x0 + 2 x1 - x2]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["logits"])], "three", [x],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
                              [numpy_helper.from_array(np.array([[1.0], [2.0], [-1.0]], np.float32), "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    return write(root, m, {"input_kind": "features", "id2label": {"0": "y"}})
