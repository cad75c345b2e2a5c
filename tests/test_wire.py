"""The onnx-free check of a prepared folder's ONNX files (blackbox_sal.model.wire): the untrusted
-input rules of issue 9 hold on an edge install too.

Every crafted model of tests/crafted.py that the onnx path refuses for its tensors, external data
or operator domains is put in a prepared folder and must be refused there too (the domain cases
with the onnx path's very message); valid models are walked to the same counts as onnx's own
walk; hand-made bytes probe what protobuf would take differently (unknown fields, fields given
twice, groups, truncation, invalid UTF-8, nesting far past protobuf's limit); and a seeded fuzz
of mutated prepared files, run with onnx unimportable, ends every run in exit 0 or 3.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import crafted
import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal import default_model_path, load_model
from blackbox_sal.gradient_graph.store import prepare
from blackbox_sal.model import external_data, files, wire
from blackbox_sal.vocabulary.errors import ModelError

CASES = {**crafted.LEAKS, **crafted.EXTERNAL_ENTRIES, **crafted.TENSORS, **crafted.DOMAINS,
         "function-sparse-constant-inline": crafted.function_sparse_constant_inline}
BLOCK = {"format": 1, "by": "test", "output": "logits", "task": "classification", "origin": "given",
         "pooling": None, "quantized": [], "twin_of": [], "weight_only": [], "fixed_length": None,
         "fixed_batch": None, "pad_id": 0}


def as_prepared(folder: Path) -> Path:
    """The crafted folder with a prepared block in its config.json (and a table beside it)."""
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "prepared": BLOCK}))
    np.save(folder / "embeddings.npy", crafted.TABLE)
    return folder


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_crafted_model_is_refused_in_a_prepared_folder(tmp_path: Path, case: str) -> None:
    if case in crafted.POSIX_ONLY and not hasattr(__import__("os"), "symlink"):
        pytest.skip("needs POSIX links")
    crafted.leak_file(tmp_path)
    folder = CASES[case](tmp_path)
    onnx_message = None
    if case in crafted.DOMAINS:
        with pytest.raises(ModelError) as original:
            load_model(folder)
        onnx_message = str(original.value)
    with pytest.raises(ModelError) as refused:
        load_model(as_prepared(folder))
    if onnx_message is not None:  # the same allow-list, the same words, the same places
        assert str(refused.value) == onnx_message
    elif "sparse" in case:
        assert "sparse tensor" in str(refused.value)
    else:
        assert "model.onnx" in str(refused.value)


def _function_and_subgraph_model() -> onnx.ModelProto:
    """A valid model with a local function, an If with subgraphs and a Constant in each."""
    m = crafted.with_b1_from_function(helper.make_node("Constant", [], ["b1"], value=numpy_helper.from_array(
        crafted.B1, "b1")))
    then = helper.make_graph([helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(crafted.B1, "c"))],
                             "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [crafted.H])])
    els = helper.make_graph([helper.make_node("Constant", [], ["c"], value_floats=[0.0] * crafted.H)], "else", [],
                            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [crafted.H])])
    m.graph.node.insert(0, helper.make_node("If", ["cond"], ["unused"], then_branch=then, else_branch=els))
    m.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    return m


@pytest.mark.parametrize("build", [
    lambda: onnx.load(str(default_model_path() / "model.onnx")),
    lambda: tiny.bert_like(tiny.table(6), tiny.table(6, 1)[:12], tiny.table(6, 2)[:2], np.ones((6, 3), np.float32)),
    _function_and_subgraph_model,
])
def test_the_walk_finds_what_onnx_finds(build: object) -> None:
    model = build()  # type: ignore[operator]
    found = wire.check_model(model.SerializeToString(), "m", files.ALLOWED_DOMAINS)
    walked = external_data.walk(model)
    assert (found.nodes, found.tensors, found.graphs, found.functions) == (
        len(walked.nodes), len(walked.tensors), len(walked.graphs), len(model.functions))
    domains = {(str(d), w) for d, w in walked.domains} | {(n.domain, w) for n, w in walked.nodes}
    assert set(found.domains) == domains
    want = sum(wire.nbytes(t.data_type, int(np.prod(t.dims))) or t.ByteSize() for t, _ in walked.tensors)
    assert found.tensor_bytes == want


# --- hand-made bytes --------------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        if n < 0x80:
            return bytes(out + bytes([n]))
        out.append(n & 0x7F | 0x80)
        n >>= 7


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def length_delimited(number: int, body: bytes) -> bytes:
    return tag(number, 2) + varint(len(body)) + body


GOOD = crafted.embeds_model().SerializeToString()


@pytest.mark.parametrize(("data", "message"), [
    (b"", "the file is empty"),
    (GOOD[:-1], "truncated"),
    (GOOD + tag(99, 0) + varint(1), "field 99 in a Model message"),
    (GOOD + length_delimited(7, b""), "Model.graph is given twice"),
    (GOOD + tag(5, 2) + varint(1) + b"\x01", "Model.model_version has the wrong wire type"),
    (GOOD + tag(2, 3), "wire type 3"),
    (GOOD + tag(5, 0) + b"\xff" * 11, "varint over 10 bytes"),
    (GOOD + length_delimited(2, b"\xff\xfe"), "Model.producer_name is not valid UTF-8"),
    (GOOD + tag(6, 2) + varint(2**40) + b"x", "a length runs past its message"),
    (length_delimited(8, length_delimited(1, b"")), "it has no graph"),
    (length_delimited(7, b""), "its graph is empty"),
])
def test_malformed_bytes_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        wire.check_model(data, "'model.onnx'", files.ALLOWED_DOMAINS)


def nested(depth: int) -> bytes:
    """A model whose graph holds an If whose then_branch holds an If ... ``depth`` deep."""
    graph = length_delimited(1, length_delimited(4, b"Identity"))  # a graph with one node
    for _ in range(depth):
        attribute = length_delimited(1, b"then_branch") + length_delimited(6, graph)
        node = length_delimited(4, b"If") + length_delimited(5, attribute)
        graph = length_delimited(1, node)
    return length_delimited(7, graph)


def test_nesting_past_protobufs_limit_is_refused_without_recursion() -> None:
    assert wire.check_model(nested(30), "m").graphs == 31  # 3 messages a level: 91 deep, within the limit
    for depth in (40, 20_000):  # far past Python's recursion limit too
        start = time.monotonic()
        with pytest.raises(ModelError, match="nested more than 100 deep"):
            wire.check_model(nested(depth), "m")
        assert time.monotonic() - start < 5


def test_the_field_budget_and_the_size_cap_bound_the_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_FIELDS", 20)
    with pytest.raises(ModelError, match="more than 20 fields"):
        wire.check_model(GOOD, "m")
    monkeypatch.undo()
    monkeypatch.setattr(wire, "MAX_TENSOR_BYTES", 100)
    with pytest.raises(ModelError, match="over the"):
        wire.check_model(GOOD, "m")


def test_tensors_whose_data_does_not_match_are_refused() -> None:
    def refused(tensor: TensorProto, message: str) -> None:
        m = crafted.embeds_model()
        m.graph.initializer.append(tensor)
        with pytest.raises(ModelError, match=message):
            wire.check_model(m.SerializeToString(), "m")

    t = numpy_helper.from_array(np.ones(3, np.float32), "t")
    t.dims[:] = [2**40, 2**40]
    refused(t, "over the 4 GiB limit")
    t = numpy_helper.from_array(np.ones(3, np.float32), "t")
    t.data_type = 99
    refused(t, "unknown element type 99")
    t = helper.make_tensor("t", TensorProto.FLOAT, [3], [1.0, 2.0, 3.0])
    t.int64_data.append(1)
    refused(t, r"wrong field \(float_data, int64_data\)")
    t = numpy_helper.from_array(np.ones(3, np.float32), "t")
    t.float_data.append(1.0)
    refused(t, "holds its data twice")
    t = numpy_helper.from_array(np.ones(3, np.float32), "t")
    entry = t.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    refused(t, "keeps its data in an external file")
    ok = crafted.embeds_model()
    strings = ok.graph.initializer.add()
    strings.name, strings.data_type = "s", TensorProto.STRING
    strings.dims.append(2)
    strings.string_data.extend([b"a", b"\xff"])  # bytes, not text: need not be UTF-8
    ok.graph.initializer.append(helper.make_tensor("i", TensorProto.INT64, [3], [1, -2, 2**40]))
    ok.graph.initializer.append(helper.make_tensor("e", TensorProto.FLOAT, [0, 4], []))
    wire.check_model(ok.SerializeToString(), "m")  # typed, string and empty tensors are fine


# --- fuzz ------------------------------------------------------------------------------------


def test_mutated_prepared_files_never_crash_without_onnx(tmp_path: Path) -> None:
    """60 copies of a prepared folder with model.onnx or grad.onnx byte-flipped or truncated
    (seeded), explained with onnx unimportable: every run ends in exit 0 or 3, no traceback."""
    good = prepare(load_model(tiny.write_model_dir(tmp_path / "mlp", crafted.mlp(), labels=crafted.LABELS)),
                   tmp_path / "good")
    rng = np.random.default_rng(12)
    calls = []
    for i in range(60):
        folder = tmp_path / f"m{i:03d}"
        shutil.copytree(good, folder)
        target = folder / ("grad.onnx" if i % 3 == 2 else "model.onnx")
        data = bytearray(target.read_bytes())
        if rng.random() < 0.25:
            del data[int(rng.integers(0, len(data))):]
        else:
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[pos] ^= int(rng.integers(1, 256))
        target.write_bytes(bytes(data))
        method = "grad-x-input" if target.name == "grad.onnx" else ["occlusion", "grad-x-input"][i % 2]
        calls.append((crafted.explain_args(folder, method, "-q"), tmp_path))
    start = time.monotonic()
    results = crafted.drive(calls, tmp_path / "results.json", prelude="import sys; sys.modules['onnx'] = None")
    assert time.monotonic() - start < 60
    bad = [(c[0], r) for c, r in zip(calls, results, strict=True)
           if r["rc"] not in (0, 3) or "Traceback" in r["stderr"]]
    assert not bad, bad[:3]
    assert {r["rc"] for r in results} == {0, 3}
