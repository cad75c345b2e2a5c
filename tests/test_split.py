"""Splitting at the embedding lookup: split == original on real inputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny

from blackbox_sal.errors import ModelError
from blackbox_sal.graph.split import EMBEDS, split_embedding

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
