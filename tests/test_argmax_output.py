"""A model whose only output is an ArgMax: the float scores it reads are exposed and explained
(:func:`blackbox_sal.model.outputs.expose_argmax_scores`), checked against finite differences of
the ORIGINAL file's tensor (the file run with that tensor added as an output, one table row
scaled at a time: every token of the test text is a different word, so scaling its row moves
that token's embedding alone, and d/dt f(e_s (1 + t)) at 0 is grad-x-input's score of token s)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.vocabulary.errors import ModelError

D, L = 6, 4
TABLE = tiny.table(D, seed=5)
W = np.random.default_rng(7).normal(0, 0.8, (D, L)).astype(np.float32)
B = np.random.default_rng(8).normal(0, 0.3, (L,)).astype(np.float32)
TEXT = "the film was good"
IDS = np.array([[tiny.VOCAB[w] for w in TEXT.split()]], np.int64)


def _model(nodes: list[onnx.NodeProto], out_type: int = TensorProto.INT64,
           out_shape: list[str | int] | None = None) -> onnx.ModelProto:
    inits = {"table": TABLE, "W": W, "b": B, "axes": np.array([1], np.int64), "axes2": np.array([2], np.int64)}
    graph = helper.make_graph(nodes, "argmax", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                                              ["batch", "seq"])],
                              [helper.make_tensor_value_info("answer", out_type, out_shape or ["batch", "seq"])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _scores_nodes() -> list[onnx.NodeProto]:
    """scores [batch, seq, L] = tanh(E W + b) * 3."""
    return [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
            helper.make_node("MatMul", ["E", "W"], ["h"]),
            helper.make_node("Add", ["h", "b"], ["hb"]),
            helper.make_node("Tanh", ["hb"], ["t"]),
            helper.make_node("Add", ["t", "t"], ["t2"]),
            helper.make_node("Add", ["t2", "t"], ["scores"])]


def tagger() -> onnx.ModelProto:
    """A tagger returning only Cast(ArgMax(scores, axis=-1)) [batch, seq]."""
    return _model([*_scores_nodes(), helper.make_node("ArgMax", ["scores"], ["k"], axis=-1, keepdims=0),
                   helper.make_node("Cast", ["k"], ["answer"], to=TensorProto.INT64)])


def tagger_labels_first() -> onnx.ModelProto:
    """The same scores laid out [batch, L, seq], its ArgMax over axis 1 (the labels)."""
    return _model([*_scores_nodes(), helper.make_node("Transpose", ["scores"], ["by_label"], perm=[0, 2, 1]),
                   helper.make_node("ArgMax", ["by_label"], ["answer"], axis=1, keepdims=0)])


def classifier() -> onnx.ModelProto:
    """A classifier returning only Squeeze(ArgMax(logits [batch, L], keepdims=1)) [batch]."""
    return _model([*_scores_nodes(), helper.make_node("ReduceSum", ["scores", "axes"], ["logits"], keepdims=0),
                   helper.make_node("ArgMax", ["logits"], ["k"], axis=1, keepdims=1),
                   helper.make_node("Squeeze", ["k", "axes"], ["answer"])], out_shape=["batch"])


def _file_fd(model: onnx.ModelProto, tensor: str, pick: tuple[int, ...], h: float = 1e-3) -> np.ndarray:
    """d/dt of ``tensor[pick]`` of the original file as each token's table row is scaled by 1 + t
    (central differences; the file run with ``tensor`` added as an output)."""
    out = []
    for s in range(IDS.shape[1]):
        values = []
        for sign in (1.0, -1.0):
            m = onnx.ModelProto()
            m.CopyFrom(model)
            m.graph.output.append(onnx.ValueInfoProto(name=tensor))
            table = TABLE.astype(np.float64).copy()
            table[IDS[0, s]] *= 1.0 + sign * h
            init = next(i for i in m.graph.initializer if i.name == "table")
            init.CopyFrom(numpy_helper.from_array(table.astype(np.float32), "table"))
            session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            values.append(float(session.run([tensor], {"input_ids": IDS})[0][pick]))
        out.append((values[0] - values[1]) / (2 * h))
    return np.array(out)


def _folder(tmp_path: Path, model: onnx.ModelProto) -> Path:
    return tiny.write_model_dir(tmp_path / "m", model)


@pytest.mark.parametrize("build, tensor, transposed", [(tagger, "scores", False),
                                                      (tagger_labels_first, "by_label", True)])
def test_a_tagger_returning_only_argmax_explains_its_scores(tmp_path: Path, build: object, tensor: str,
                                                            transposed: bool) -> None:
    original = build()  # type: ignore[operator]
    model = load_model(_folder(tmp_path, original))
    assert model.task == "per-token"
    note = next(n for n in model.notes if "returns only ArgMax" in n)
    assert f"ArgMax({tensor!r}) (output 'answer')" in note and f"its scores {tensor!r} are explained" in note
    assert ("moved last" in note) == transposed
    for pos in range(IDS.shape[1]):
        e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", at=pos))
        label = e.target.index
        file_scores = ort.InferenceSession(_with_output(original, tensor).SerializeToString(),
                                           providers=["CPUExecutionProvider"]).run([tensor], {"input_ids": IDS})[0]
        at = (0, label, pos) if transposed else (0, pos, label)
        assert label == int(np.argmax(file_scores[0, :, pos] if transposed else file_scores[0, pos]))
        assert e.target_value == pytest.approx(float(file_scores[at]), rel=1e-5)
        want = _file_fd(original, tensor, at)
        got = np.array([t.score for t in e.tokens])
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
        assert np.abs(want).max() > 0.05  # the scores move: a test that can fail


def test_a_classifier_returning_only_argmax_explains_its_logits(tmp_path: Path) -> None:
    original = classifier()
    names = ["w", "x", "y", "z"]
    model = load_model(tiny.write_model_dir(tmp_path / "m", original, labels=names))  # config.json's id2label
    assert model.task == "classification" and model.output == "logits"
    assert any("returns only ArgMax('logits') (output 'answer')" in n for n in model.notes)
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph"))
    logits = ort.InferenceSession(_with_output(original, "logits").SerializeToString(),
                                  providers=["CPUExecutionProvider"]).run(["logits"], {"input_ids": IDS})[0]
    assert e.target.index == int(np.argmax(logits[0])) and e.target.label == names[e.target.index]
    want = _file_fd(original, "logits", (0, e.target.index))
    np.testing.assert_allclose([t.score for t in e.tokens], want, rtol=2e-3, atol=2e-3 * np.abs(want).max())


def test_model_output_names_the_tensor_an_argmax_reads(tmp_path: Path) -> None:
    """--model-output may name the scores under an ArgMax, even where a float output exists."""
    m = classifier()
    m.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", "seq", L]))
    folder = _folder(tmp_path, m)
    assert load_model(folder, output="logits").output == "logits"
    with pytest.raises(ModelError, match="no output 'hb'"):  # not read by an ArgMax: not exposed
        load_model(folder, output="hb")


def _with_output(model: onnx.ModelProto, tensor: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(onnx.ValueInfoProto(name=tensor))
    return m


def test_an_argmax_over_integers_is_still_refused(tmp_path: Path) -> None:
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("Cast", ["E"], ["Ei"], to=TensorProto.INT32),
             helper.make_node("ArgMax", ["Ei"], ["answer"], axis=-1, keepdims=0)]
    with pytest.raises(ModelError, match="'answer' \\(an int64 output\\) is not a prediction"):
        load_model(_folder(tmp_path, _model(nodes)))


def test_an_argmax_over_an_input_copy_is_still_refused(tmp_path: Path) -> None:
    """ArgMax(Unsqueeze(Cast(ids))): its float tensor is a copy of the ids, no prediction (the
    model's other output, an int64 copy of its embeddings, gives the split its lookup)."""
    nodes = [helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["f", "axes2"], ["fu"]),
             helper.make_node("ArgMax", ["fu"], ["answer"], axis=-1, keepdims=0),
             helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("Cast", ["E"], ["rounded"], to=TensorProto.INT64)]
    m = _model(nodes)
    m.graph.output.append(helper.make_tensor_value_info("rounded", TensorProto.INT64, ["batch", "seq", D]))
    with pytest.raises(ModelError, match="'answer' \\(an int64 output\\) is not a prediction") as refused:
        load_model(_folder(tmp_path, m))
    assert "returns only ArgMax" not in str(refused.value)
