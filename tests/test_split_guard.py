"""A split that misses a path never answers in silence (issue 21).

Two halves. The 8-bit lookup forms reach the general loader explained as the ORIGINAL file
computes them (pyfrspell's Gather of an int8 table, then a Transpose of the int8 values, then
DequantizeLinear, once gave all-zero gradients: the body re-quantized the embeddings), or are
refused in one line. And the load-time guard: a model whose explained output reads the ids a
second way the split cannot cut (a one-hot product beside the lookup) is refused, where it
used to be explained with the lookup's part alone; a normal model passes, at the cost of one
extra row of the file and one of the split model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnx import TensorProto, helper

from blackbox_sal.api.explaining import explain
from blackbox_sal.model import loading
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.session import run
from blackbox_sal.surgery.names import EMBEDS
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import ModelError
from blackbox_sal.vocabulary.result import Explanation

D, C = 4, 3
V = len(tiny.VOCAB)
RNG = np.random.default_rng(2127)
T = tiny.table(D, seed=3)
W = RNG.normal(0, 1.0, (D, C)).astype(np.float32)
U = RNG.normal(0, 1.0, (V, C)).astype(np.float32)  # the one-hot path's weights
SCALE = 0.01
Q = np.clip(np.round(T / SCALE), -127, 127).astype(np.int8)
TQ = Q.astype(np.float32) * np.float32(SCALE)  # the table the int8 file holds, in float
PAD = tiny.VOCAB["[PAD]"]
TEXT = tiny.TEXT


def _scores(e: Explanation) -> np.ndarray:
    return np.array([t.score for t in e.tokens])


def _ids(text: str = TEXT) -> np.ndarray:
    return np.array([tiny.VOCAB[w] for w in text.split()], np.int64)


def _run(m: onnx.ModelProto, ids: np.ndarray) -> np.ndarray:
    """The ORIGINAL file run on ids [n, S] -> float64 [n, C]."""
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], {"input_ids": ids})[0], np.float64)


def _model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    return tiny._model(nodes, inits, [tiny._ids_input()], C)


def _int8(form: str, ort_names: bool) -> onnx.ModelProto:
    """logits = mean_s tanh(E_s) W, E = the int8 table's rows dequantized. ``form``: "transpose"
    (pyfrspell's: Gather(Tq) -> Transpose [B, D, S] -> DequantizeLinear), "dq" (Gather(Tq) ->
    DequantizeLinear), "mmi" (quantize_dynamic's: the 8-bit lookup feeds a MatMulInteger by
    1.5 I). ``ort_names``: the parameters named as onnxruntime names them (X_quantized,
    X_scale, X_zero_point), else plainly."""
    q, s, z = ("T_quantized", "T_scale", "T_zero_point") if ort_names else ("emb_q", "emb_s", "emb_z")
    inits: dict[str, np.ndarray] = {q: Q, s: np.array(SCALE, np.float32), z: np.array(0, np.int8), "W": W}
    nodes = [helper.make_node("Gather", [q, "input_ids"], ["Eq"])]
    seq = 1
    if form == "transpose":
        nodes += [helper.make_node("Transpose", ["Eq"], ["Et"], perm=[0, 2, 1]),
                  helper.make_node("DequantizeLinear", ["Et", s, z], ["E"])]
        seq = 2
    elif form == "dq":
        nodes.append(helper.make_node("DequantizeLinear", ["Eq", s, z], ["E"]))
    else:
        inits.update({"W2_quantized": np.eye(D, dtype=np.int8) * np.int8(30),
                      "W2_scale": np.array(0.05, np.float32), "W2_zero_point": np.array(0, np.int8)})
        nodes += [helper.make_node("MatMulInteger", ["Eq", "W2_quantized", z, "W2_zero_point"], ["Mi"]),
                  helper.make_node("Cast", ["Mi"], ["Mf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [s, "W2_scale"], ["sc"]),
                  helper.make_node("Mul", ["Mf", "sc"], ["E"])]
    nodes += [helper.make_node("Tanh", ["E"], ["H"]),
              helper.make_node("ReduceMean", ["H"], ["P"], axes=[seq], keepdims=0),
              helper.make_node("MatMul", ["P", "W"], ["logits"])]
    return _model(nodes, inits)


@pytest.mark.parametrize(("form", "ort_names"), [("transpose", True), ("transpose", False), ("dq", True),
                                                 ("dq", False)])
def test_an_int8_lookup_dequantized_after_it_is_explained_as_the_file_computes(
        tmp_path: Path, form: str, ort_names: bool) -> None:
    m = _int8(form, ort_names)
    model = load_model(tiny.write_model_dir(tmp_path / "m", m))
    assert "(an 8-bit table, dequantized)" in model.origin
    np.testing.assert_array_equal(model.table, TQ)
    assert {i.name for i in model.session.get_inputs()} == {EMBEDS}  # no re-quantization of the embeddings
    ids, target = _ids(), 2
    e = TQ[ids].astype(np.float64)
    # the closed form is the file's function: mean_s tanh(E_s) W on the file's own ids
    np.testing.assert_allclose(np.tanh(e).mean(axis=0) @ W, _run(m, ids[None])[0], rtol=1e-5, atol=1e-6)
    # grad x input == the closed form (before the fix: all zeros for the transposed form)
    grad = (1 - np.tanh(e) ** 2) * W[:, target] / len(ids)
    got = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=target))
    np.testing.assert_allclose(_scores(got), (e * grad).sum(axis=1), rtol=1e-5, atol=1e-6)
    assert np.abs(_scores(got)).min() > 1e-3
    # occlusion == the ORIGINAL file with each token replaced by the pad token, in turn
    occluded = np.repeat(ids[None], len(ids), axis=0)
    occluded[np.arange(len(ids)), np.arange(len(ids))] = PAD
    want = _run(m, ids[None])[0, target] - _run(m, occluded)[:, target]
    got = explain(model, TEXT, ExplainConfig(method="occlusion", target=target))
    np.testing.assert_allclose(_scores(got), want, rtol=1e-5, atol=1e-6)


def test_an_int8_lookup_read_by_a_matmulinteger_is_explained_by_the_file_or_refused(tmp_path: Path) -> None:
    """quantize_dynamic's form: occlusion is the file's; gradients of the graph are refused in
    one line (integer operators); without onnxruntime's parameter names the lookup is refused."""
    m = _int8("mmi", True)
    model = load_model(tiny.write_model_dir(tmp_path / "ort", m))
    ids, target = _ids(), 0
    occluded = np.repeat(ids[None], len(ids), axis=0)
    occluded[np.arange(len(ids)), np.arange(len(ids))] = PAD
    want = _run(m, ids[None])[0, target] - _run(m, occluded)[:, target]
    got = explain(model, TEXT, ExplainConfig(method="occlusion", target=target))
    np.testing.assert_allclose(_scores(got), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="integer ops have no gradients: use --backend fd") as info:
        explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=target))
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="no word-embedding lookup found .*8-bit, without a DequantizeLinear"):
        load_model(tiny.write_model_dir(tmp_path / "plain", _int8("mmi", False)))


def _one_hot(extra: bool = True) -> onnx.ModelProto:
    """logits = mean_s tanh(T[ids_s]) W + mean_s U[ids_s]: the second term reads the ids as a
    one-hot product (OneHot(ids) @ U), which the split at T cannot cut; without ``extra`` the
    first term alone (a normal model)."""
    nodes = [helper.make_node("Gather", ["T", "input_ids"], ["E"]),
             helper.make_node("Tanh", ["E"], ["H"]),
             helper.make_node("ReduceMean", ["H"], ["P"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["P", "W"], ["L1" if extra else "logits"])]
    inits: dict[str, np.ndarray] = {"T": T, "W": W}
    if extra:
        nodes += [helper.make_node("OneHot", ["input_ids", "depth", "values"], ["O"]),
                  helper.make_node("MatMul", ["O", "U"], ["OU"]),
                  helper.make_node("ReduceMean", ["OU"], ["L2"], axes=[1], keepdims=0),
                  helper.make_node("Add", ["L1", "L2"], ["logits"])]
        inits.update({"U": U, "depth": np.array(V, np.int64), "values": np.array([0.0, 1.0], np.float32)})
    return _model(nodes, inits)


def test_a_path_from_the_ids_the_split_cannot_cut_is_refused(tmp_path: Path) -> None:
    folder = tiny.write_model_dir(tmp_path / "m", _one_hot())
    with pytest.raises(ModelError) as info:
        load_model(folder)
    said = str(info.value)
    assert said.startswith("the split misses a path from the tokens to output 'logits': on a probe sentence, token ")
    assert said.endswith("which scores of the embeddings would leave out: report it")
    assert "\n" not in said and info.value.exit_code == 3
    # what it would have answered: the lookup's part alone, the one-hot part left out
    partial = load_model(folder, verify=False)
    ids, target = _ids(), 1
    e = T[ids].astype(np.float64)
    lookup_only = (e * (1 - np.tanh(e) ** 2) * W[:, target] / len(ids)).sum(axis=1)
    got = explain(partial, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=target))
    np.testing.assert_allclose(_scores(got), lookup_only, rtol=1e-5, atol=1e-6)
    m = _one_hot()
    occluded = np.repeat(ids[None], len(ids), axis=0)
    occluded[np.arange(len(ids)), np.arange(len(ids))] = PAD
    file_occlusion = _run(m, ids[None])[0, target] - _run(m, occluded)[:, target]
    got = explain(partial, TEXT, ExplainConfig(method="occlusion", target=target))
    assert np.abs(_scores(got) - file_occlusion).max() > 0.05  # wrong against the file: hence the refusal


def test_a_table_computed_at_run_time_is_refused(tmp_path: Path) -> None:
    """A second lookup of the ids in a table computed from the input has no rows to split."""
    nodes = [helper.make_node("Gather", ["T", "input_ids"], ["E"]),
             helper.make_node("ReduceMean", ["E"], ["m"], axes=[0, 1, 2], keepdims=0),
             helper.make_node("Mul", ["T", "m"], ["T2"]),
             helper.make_node("Gather", ["T2", "input_ids"], ["E2"]),
             helper.make_node("Add", ["E", "E2"], ["S"]),
             helper.make_node("ReduceMean", ["S"], ["P"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["P", "W"], ["logits"])]
    with pytest.raises(ModelError, match="cannot be split beside the first") as info:
        load_model(tiny.write_model_dir(tmp_path / "m", _model(nodes, {"T": T, "W": W})))
    assert "\n" not in str(info.value)


def _rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows of every session run the loader makes, recorded as it makes them."""
    rows: list[int] = []

    def counted(session: Any, names: list[str], feeds: dict[str, np.ndarray], *args: Any) -> Any:
        rows.append(int(next(iter(feeds.values())).shape[0]))
        return run(session, names, feeds, *args)

    monkeypatch.setattr(loading, "run", counted)
    return rows


def test_a_normal_model_passes_at_the_cost_of_two_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny.write_model_dir(tmp_path / "m", _one_hot(extra=False))
    rows = _rows(monkeypatch)
    model = load_model(folder)
    with_guard = list(rows)
    assert "checked against the file on a probe sentence: max difference 0" in model.origin
    ids, _, mask = model.probe()
    assert loading._swap(ids, mask, model.pad_id) is not None  # the guard compared a swapped token
    rows.clear()
    monkeypatch.setattr(loading, "_check_paths", lambda *args: None)
    load_model(folder)
    assert sum(with_guard) - sum(rows) == 2  # one row of the file, one of the split model
    assert len(with_guard) - len(rows) == 2


def test_the_swapped_token_is_an_ordinary_one() -> None:
    """Not the first or last real position (special tokens), not the pad, not the largest id
    (an end-of-text marker some models find by ArgMax); None when no two such tokens differ."""
    assert loading._swap(np.array([2, 7, 7, 9, 13, 3]), None, 0) == (1, 9)
    assert loading._swap(np.array([2, 13, 7, 9, 3, 0, 0]), np.array([1, 1, 1, 1, 1, 0, 0]), 0) == (2, 9)
    assert loading._swap(np.array([2, 7, 0, 7, 3]), None, 0) is None
    assert loading._swap(np.array([2, 7, 3]), None, 0) is None


def test_an_output_with_no_gradient_from_the_embeddings_is_refused(tmp_path: Path) -> None:
    """logits = mean_s round(4 tanh(T[ids_s])) W: the split is exact and moves with the tokens as
    the file does, but every gradient is zero (what the 8-bit Transpose form gave before its
    lookup was made float): refused, naming the operator."""
    nodes = [helper.make_node("Gather", ["T", "input_ids"], ["E"]),
             helper.make_node("Tanh", ["E"], ["H"]),
             helper.make_node("Mul", ["H", "four"], ["H4"]),
             helper.make_node("Round", ["H4"], ["R"]),
             helper.make_node("ReduceMean", ["R"], ["P"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["P", "W"], ["logits"])]
    m = _model(nodes, {"T": T, "W": W, "four": np.array(4.0, np.float32)})
    with pytest.raises(ModelError) as info:
        load_model(tiny.write_model_dir(tmp_path / "m", m))
    said = str(info.value)
    assert said.startswith("the split model's output 'logits' moves with the tokens (by ")
    assert "every path from them passes Round, so gradients would be all zero" in said
    assert "\n" not in said and info.value.exit_code == 3


def test_the_re_quantized_transposed_lookup_had_no_gradient(tmp_path: Path) -> None:
    """The body the plain split makes of pyfrspell's form (the embeddings re-quantized, then
    Transpose, DequantizeLinear) is what the gradient check stops: its path passes a
    QuantizeLinear; the float lookup the loader now makes has a gradient path."""
    from blackbox_sal.surgery.dequantize import float_lookups
    from blackbox_sal.surgery.split import split_embedding

    m = _int8("transpose", True)
    assert loading._gradient_blocked(split_embedding(m).body, "logits") == "QuantizeLinear"
    assert loading._gradient_blocked(split_embedding(float_lookups(m)).body, "logits") is None
    assert loading._gradient_blocked(split_embedding(_one_hot(extra=False)).body, "logits") is None


def test_a_transposed_int8_gate_is_joined_under_its_name_in_the_file(tmp_path: Path) -> None:
    """logits = mean_s(T[ids_s] * sigmoid(G[ids_s])) W, G stored in int8 and read in the
    transposed form: its lookup is made float, joined as a channel named after the file's
    8-bit table, and grad x input is the closed form through both tables."""
    nodes = [helper.make_node("Gather", ["T", "input_ids"], ["E1"]),
             helper.make_node("Gather", ["G_quantized", "input_ids"], ["Gq"]),
             helper.make_node("Transpose", ["Gq"], ["Gt"], perm=[0, 2, 1]),
             helper.make_node("DequantizeLinear", ["Gt", "G_scale", "G_zero_point"], ["Gf"]),
             helper.make_node("Transpose", ["Gf"], ["E2"], perm=[0, 2, 1]),
             helper.make_node("Sigmoid", ["E2"], ["gate"]),
             helper.make_node("Mul", ["E1", "gate"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["P"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["P", "W"], ["logits"])]
    g = RNG.normal(0, 1.0, (V, D)).astype(np.float32)
    gq = np.clip(np.round(g / 0.02), -127, 127).astype(np.int8)
    m = _model(nodes, {"T": T * 3, "W": W, "G_quantized": gq, "G_scale": np.array(0.02, np.float32),
                       "G_zero_point": np.array(0, np.int8)})
    model = load_model(tiny.write_model_dir(tmp_path / "m", m))
    assert [c.name for c in model.channels] == ["tokens", "G_quantized"]
    gf = gq.astype(np.float32) * np.float32(0.02)
    np.testing.assert_array_equal(model.table, np.concatenate([T * 3, gf], axis=1))
    ids, target = _ids(), 0
    e1, e2 = (T * 3)[ids].astype(np.float64), gf[ids].astype(np.float64)
    s = 1 / (1 + np.exp(-e2))
    g1, g2 = s * W[:, target] / len(ids), e1 * s * (1 - s) * W[:, target] / len(ids)
    np.testing.assert_allclose((e1 * s).mean(axis=0) @ W, _run(m, ids[None])[0], rtol=1e-5, atol=1e-6)
    got = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=target))
    np.testing.assert_allclose(_scores(got), (e1 * g1 + e2 * g2).sum(axis=1), rtol=1e-5, atol=1e-6)
    assert np.abs((e2 * g2).sum(axis=1)).max() > 0.02  # the gate's part
