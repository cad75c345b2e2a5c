"""Splitting at the embedding lookup: split == original on real inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny

from blackbox_sal.surgery.names import EMBEDS
from blackbox_sal.surgery.split import split_embedding
from blackbox_sal.vocabulary.errors import ModelError

D = 8


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: v for k, v in feeds.items() if k in names})[0]


def bert() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    return tiny.bert_like(tiny.table(D), rng.normal(size=(32, D)).astype(np.float32),
                          rng.normal(size=(2, D)).astype(np.float32),
                          rng.normal(size=(D, 3)).astype(np.float32))


@pytest.mark.parametrize("batch,seq", [(1, 1), (1, 7), (3, 12)])
def test_bert_like_split_equals_original(batch: int, seq: int) -> None:
    original = bert()
    split = split_embedding(original)
    assert split.needs_ids  # Shape(input_ids) still feeds the position ids
    assert split.table.shape == (len(tiny.VOCAB), D)
    rng = np.random.default_rng(seq)
    ids = rng.integers(0, len(tiny.VOCAB), (batch, seq))
    mask = np.ones((batch, seq), np.int64)
    mask[:, seq // 2 + 1 :] = 0 if batch > 1 else 1  # padded rows too
    types = rng.integers(0, 2, (batch, seq))
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    want = run(original, feeds)
    got = run(split.body, {**feeds, EMBEDS: split.table[ids]})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_split_is_pure_and_drops_the_lookup() -> None:
    original = bert()
    before = original.SerializeToString()
    split = split_embedding(original)
    assert original.SerializeToString() == before
    ops = [n.op_type for n in split.body.graph.node]
    assert [n.op_type for n in original.graph.node].count("Gather") == 4
    assert ops.count("Gather") == 3  # shape, position and type lookups stay
    assert "table" not in {t.name for t in split.body.graph.initializer}
    assert split.body.graph.input[0].name == EMBEDS


def test_lookup_behind_a_cast_and_ids_no_longer_needed() -> None:
    rng = np.random.default_rng(2)
    original = tiny.tanh_mlp(tiny.table(D), rng.normal(size=(D, 5)).astype(np.float32),
                             rng.normal(size=5).astype(np.float32),
                             rng.normal(size=(5, 2)).astype(np.float32), cast_ids=True)
    split = split_embedding(original)
    assert not split.needs_ids
    assert [i.name for i in split.body.graph.input] == [EMBEDS, "attention_mask"]
    assert "Cast" in [n.op_type for n in original.graph.node[:1]]
    ids = rng.integers(0, len(tiny.VOCAB), (2, 6))
    mask = np.ones_like(ids)
    np.testing.assert_allclose(run(split.body, {EMBEDS: split.table[ids], "attention_mask": mask}),
                               run(original, {"input_ids": ids, "attention_mask": mask}), rtol=1e-6)


def test_no_lookup_is_one_clear_error() -> None:
    with pytest.raises(ModelError, match="no word-embedding lookup found.*inputs_embeds"):
        split_embedding(tiny.no_lookup(D))


def test_missing_ids_input() -> None:
    with pytest.raises(ModelError, match="no 'token_ids' input"):
        split_embedding(bert(), "token_ids")


def _check_split(original: onnx.ModelProto, needs_ids: bool, shapes: tuple[tuple[int, int], ...] = ((1, 1), (2, 5))
                 ) -> np.ndarray:
    split = split_embedding(original)
    assert split.needs_ids == needs_ids
    rng = np.random.default_rng(3)
    for batch, seq in shapes:
        ids = rng.integers(0, len(tiny.VOCAB), (batch, seq))
        feeds = {"input_ids": ids}
        np.testing.assert_allclose(run(split.body, {**feeds, EMBEDS: split.table[ids]}), run(original, feeds),
                                   rtol=1e-5, atol=1e-6)
    return split.table


def _head(src: str) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """E [B, S, D] -> tanh -> mean over tokens -> logits [B, 3]."""
    from onnx import helper

    nodes = [helper.make_node("Tanh", [src], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"])]
    return nodes, {"W": np.random.default_rng(5).normal(size=(D, 3)).astype(np.float32)}


def test_lookup_behind_cast_and_flatten_with_the_ids_reshaped_back() -> None:
    from onnx import TensorProto, helper

    head, inits = _head("E")
    nodes = [helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
             helper.make_node("Flatten", ["ids32"], ["flat"], axis=0),               # [1, B*S]
             helper.make_node("Gather", ["table", "flat"], ["G"]),                   # [1, B*S, D]
             helper.make_node("Shape", ["input_ids"], ["bs"]),
             helper.make_node("Concat", ["bs", "d"], ["bsd"], axis=0),
             helper.make_node("Reshape", ["G", "bsd"], ["E"]), *head]
    _check_split(tiny._model(nodes, {"table": tiny.table(D), "d": np.array([D], np.int64), **inits},
                             [tiny._ids_input()], 3), needs_ids=True)


def test_lookup_behind_unsqueeze_and_squeeze() -> None:
    from onnx import helper

    head, inits = _head("E")
    axes = np.array([2], np.int64)
    nodes = [helper.make_node("Unsqueeze", ["input_ids", "axes"], ["u"]),            # [B, S, 1]
             helper.make_node("Squeeze", ["u", "axes"], ["sq"]),
             helper.make_node("Gather", ["table", "sq"], ["E"]), *head]
    _check_split(tiny._model(nodes, {"table": tiny.table(D), "axes": axes, **inits}, [tiny._ids_input()], 3),
                 needs_ids=False)


def test_table_tied_to_an_lm_head_stays_for_the_head() -> None:
    from onnx import helper

    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("Tanh", ["E"], ["h"]),
             helper.make_node("Gather", ["h", "last"], ["hl"], axis=1),                 # [B, D]
             helper.make_node("Transpose", ["table"], ["tt"], perm=[1, 0]),
             helper.make_node("MatMul", ["hl", "tt"], ["logits"])]                      # [B, V]
    original = tiny._model(nodes, {"table": tiny.table(D), "last": np.array(-1, np.int64)},
                           [tiny._ids_input()], len(tiny.VOCAB))
    _check_split(original, needs_ids=False)
    body = split_embedding(original).body
    assert "table" in {t.name for t in body.graph.initializer}  # the head keeps its weights
    assert [n.op_type for n in body.graph.node].count("Gather") == 1  # only the last-token pick


@pytest.mark.parametrize("layout", ["gather-then-dequantize", "dequantize-then-gather"])
def test_quantized_tables_are_dequantized(layout: str) -> None:
    from onnx import helper

    head, inits = _head("E")
    table = tiny.table(D)
    if layout == "gather-then-dequantize":  # onnxruntime quantize_dynamic: per-tensor uint8
        scale = np.float32(np.abs(table).max() / 127)
        q = np.clip(np.round(table / scale) + 128, 0, 255).astype(np.uint8)
        params = {"q": q, "scale": np.array(scale, np.float32), "zp": np.array(128, np.uint8)}
        nodes = [helper.make_node("Gather", ["q", "input_ids"], ["Eq"]),
                 helper.make_node("DequantizeLinear", ["Eq", "scale", "zp"], ["E"])]
        want = (q.astype(np.float32) - 128) * scale
    else:  # per-column int8 scales, dequantized before the lookup
        scale = (np.abs(table).max(0) / 127).astype(np.float32)
        q = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
        params = {"q": q, "scale": scale, "zp": np.zeros(D, np.int8)}
        nodes = [helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["T"], axis=1),
                 helper.make_node("Gather", ["T", "input_ids"], ["E"])]
        want = q.astype(np.float32) * scale
    original = tiny._model([*nodes, *head], {**params, **inits}, [tiny._ids_input()], 3)
    got = _check_split(original, needs_ids=False)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert split_embedding(original).quantized_table


def test_an_unusable_table_is_named_in_the_error() -> None:
    from onnx import helper

    nodes = [helper.make_node("Gather", ["q", "input_ids"], ["E"]),
             helper.make_node("Cast", ["E"], ["Ef"], to=onnx.TensorProto.FLOAT), *_head("Ef")[0]]
    m = tiny._model(nodes, {"q": np.zeros((len(tiny.VOCAB), D), np.int32), **_head("Ef")[1]}, [tiny._ids_input()], 3)
    with pytest.raises(ModelError, match="rejected: Gather 'E' on 'q': the table is int32, not float"):
        split_embedding(m)
