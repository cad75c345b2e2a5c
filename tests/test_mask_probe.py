"""The mask probe's second rule: a model that reads its padding whatever the mask.

arabic-name-romanizer's encoder (PyPI) runs a bidirectional GRU over every position, padding
included, and applies its boolean ``src_mask`` (True on the padding) only when it pools the
states: the outputs at the real tokens change with the padding under either polarity, so the
padding probe cannot tell them apart. The synthetic exports below have that shape (a GRU
running backwards from the last position, then a mean pooled under the mask); the loader must
find the polarity from the unpadded sentence (the wrong polarity hides every token from the
pooled output), and its explanations must be the file's own function, fed as the package
feeds it. A mask that the model does not use at all is still refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal.api.explaining import explain
from blackbox_sal.model.loading import load_model
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import ModelError

D, H, C = 6, 5, 3
TEXT = "the film was good and the plot great"
RNG = np.random.default_rng(7)
TABLE = tiny.table(D, seed=7)
W = RNG.normal(0, 0.6, (1, 3 * H, D)).astype(np.float32)
R = RNG.normal(0, 0.6, (1, 3 * H, H)).astype(np.float32)
B = RNG.normal(0, 0.3, (1, 6 * H)).astype(np.float32)
W2 = RNG.normal(0, 0.8, (H, C)).astype(np.float32)


def _gru_model(mask: str, embeds: bool = False) -> onnx.ModelProto:
    """ids 'src' -> table -> a GRU run backwards (it reads the padding first) -> a mean of its
    states pooled under ``mask``: "bool-padding" (True on the padding, Not before the
    pooling), "int-tokens" (1 on the tokens), or "unused" (an input the graph never reads;
    plain mean) -> logits [B, C]. embeds: the lookup's output is the input "E" instead."""
    inits: dict[str, np.ndarray] = {"W": W, "R": R, "B": B, "W2": W2, "neg1": np.array([-1], np.int64),
                                    "one": np.array([1], np.int64), "eps": np.array(1e-9, np.float32)}
    inputs = []
    nodes = []
    if embeds:
        inputs.append(helper.make_tensor_value_info("E", TensorProto.FLOAT, ["batch", "seq", D]))
    else:
        inits["table"] = TABLE
        inputs.append(helper.make_tensor_value_info("src", TensorProto.INT64, ["batch", "seq"]))
        nodes.append(helper.make_node("Gather", ["table", "src"], ["E"]))
    mask_type = TensorProto.BOOL if mask == "bool-padding" else TensorProto.INT64
    inputs.append(helper.make_tensor_value_info("src_mask", mask_type, ["batch", "seq"]))
    nodes += [helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0, 2]),
              helper.make_node("GRU", ["Et", "W", "R", "B"], ["Y"], hidden_size=H, direction="reverse",
                               linear_before_reset=1),
              helper.make_node("Squeeze", ["Y", "one"], ["Ys"]),  # [seq, batch, H]
              helper.make_node("Transpose", ["Ys"], ["states"], perm=[1, 0, 2])]
    if mask == "bool-padding":
        nodes += [helper.make_node("Not", ["src_mask"], ["keep"]),
                  helper.make_node("Cast", ["keep"], ["mf"], to=TensorProto.FLOAT)]
    elif mask == "int-tokens":
        nodes.append(helper.make_node("Cast", ["src_mask"], ["mf"], to=TensorProto.FLOAT))
    else:  # the mask is never read: every position counts
        nodes += [helper.make_node("Shape", ["src"] if not embeds else ["E"], ["shape"], end=2),
                  helper.make_node("ConstantOfShape", ["shape"], ["mf"],
                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))]
    nodes += [helper.make_node("Unsqueeze", ["mf", "neg1"], ["m3"]),
              helper.make_node("Mul", ["states", "m3"], ["masked"]),
              helper.make_node("ReduceSum", ["masked", "one"], ["total"], keepdims=0),
              helper.make_node("ReduceSum", ["mf", "one"], ["count"], keepdims=1),
              helper.make_node("Add", ["count", "eps"], ["count_e"]),
              helper.make_node("Div", ["total", "count_e"], ["pooled"]),
              helper.make_node("MatMul", ["pooled", "W2"], ["logits"])]
    graph = helper.make_graph(nodes, "reads-its-padding", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _ids() -> np.ndarray:
    return np.array([tiny.VOCAB[w] for w in TEXT.split()], np.int64)


def _own_mask(mask: str, n: int) -> np.ndarray:
    """The package's own feed for an unpadded text: nothing is padding."""
    return np.zeros((1, n), bool) if mask == "bool-padding" else np.ones((1, n), np.int64)


def test_the_padding_probe_alone_cannot_tell_this_model(tmp_path: Path) -> None:
    """The premise: with the sentence padded, the real positions' outputs change with what the
    padding holds under either polarity (the GRU reads it first), so the first rule is silent."""
    session = ort.InferenceSession(_gru_model("bool-padding").SerializeToString(), providers=["CPUExecutionProvider"])
    ids = _ids()
    pad, junk = np.r_[ids, [0, 0, 0]][None], np.r_[ids, [5, 9, 12]][None]
    for padding in (np.r_[np.zeros(len(ids)), np.ones(3)].astype(bool)[None],
                    np.r_[np.ones(len(ids)), np.zeros(3)].astype(bool)[None]):
        a = session.run(["logits"], {"src": pad, "src_mask": padding})[0]
        b = session.run(["logits"], {"src": junk, "src_mask": padding})[0]
        assert np.max(np.abs(a - b)) > 1e-3


@pytest.mark.parametrize("mask,on", [("bool-padding", "1/True on the padding"), ("int-tokens", "1/True on the tokens")])
def test_the_unpadded_probe_finds_the_polarity(tmp_path: Path, mask: str, on: str) -> None:
    model = load_model(tiny.write_model_dir(tmp_path / mask, _gru_model(mask)), device="cpu")
    note = model.notes[0]
    assert f"mask 'src_mask' ({on}, found by a probe: the model reads its padding whatever the mask" in note, note
    assert "hides every token from output 'logits'" in note
    # the explained value and occlusion are the file's own function, fed as the package feeds it
    session = ort.InferenceSession(_gru_model(mask).SerializeToString(), providers=["CPUExecutionProvider"])
    ids = _ids()

    def f(tokens: np.ndarray) -> float:
        return float(session.run(["logits"], {"src": tokens[None], "src_mask": _own_mask(mask, len(tokens))})[0][0, 2])

    result = explain(model, TEXT, ExplainConfig(method="occlusion", target=2))
    assert result.target_value == pytest.approx(f(ids), rel=1e-5)
    for k, token in enumerate(result.tokens):
        occluded = ids.copy()
        occluded[k] = tiny.VOCAB["[PAD]"]
        assert token.score == pytest.approx(f(ids) - f(occluded), abs=1e-5)
    assert max(abs(t.score) for t in result.tokens) > 1e-3


def test_grad_x_input_matches_finite_differences_of_the_file(tmp_path: Path) -> None:
    """grad x input (finite differences: a GRU has no reverse rule) against central
    differences of the file's own graph with the lookup's output as its input."""
    model = load_model(tiny.write_model_dir(tmp_path / "gru", _gru_model("bool-padding")), device="cpu")
    result = explain(model, TEXT, ExplainConfig(method="grad-x-input", reduce="sum", target=0))
    session = ort.InferenceSession(_gru_model("bool-padding", embeds=True).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = TABLE[_ids()][None].astype(np.float64)
    feeds = {"src_mask": _own_mask("bool-padding", x.shape[1])}

    def f(e: np.ndarray) -> float:
        return float(session.run(["logits"], {"E": e.astype(np.float32), **feeds})[0][0, 0])

    h = 1e-2
    want = []
    for i in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, i] = x[:, i] * h
        want.append((f(x + step) - f(x - step)) / (2 * h))
    got = np.array([t.score for t in result.tokens])
    np.testing.assert_allclose(got, want, rtol=5e-3, atol=5e-4)
    assert np.max(np.abs(want)) > 1e-2


def test_a_mask_the_model_never_reads_is_still_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="neither 1 on the tokens nor 1 on the padding"):
        load_model(tiny.write_model_dir(tmp_path / "unused", _gru_model("unused")), device="cpu")
