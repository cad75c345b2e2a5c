"""Ids that feed several lookups (issue 21): every lookup the explained output reads is split.

The synthetic gate reads the ids twice, ``logits = mean_s(T1[ids_s] * sigmoid(T2[ids_s])) W``:
split at T1 alone, the gate's path from a token to the output was never perturbed nor
differentiated. Every score is checked against the ORIGINAL file: occlusion against the file
run with the token replaced by the pad token, grad x input against the closed form, IG by
completeness against the file run on the baseline ids. A RoBERTa-like model whose position ids
are computed from the ids, and a model whose second lookup only feeds an output that is not
explained, are left as they were; a second lookup that cannot be joined is refused.
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
from blackbox_sal.surgery.channels import Channel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import ModelError
from blackbox_sal.vocabulary.result import Explanation

D, C = 4, 3
RNG = np.random.default_rng(2126)
T1 = tiny.table(D, seed=11)
T2 = RNG.normal(0, 1.0, (len(tiny.VOCAB), D)).astype(np.float32)
W = RNG.normal(0, 0.8, (D, C)).astype(np.float32)
POS = RNG.normal(0, 0.5, (40, D)).astype(np.float32)
TEXT = "the film was good and the plot great"
PAD = tiny.VOCAB["[PAD]"]
NOTE = ("the ids feed 2 lookups ('T1', 'T2') that the output reads: both are split; scores are their sum, "
        "per-table scores in channels")


def _scores(e: Explanation) -> np.ndarray:
    return np.array([t.score for t in e.tokens])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1 / (1 + np.exp(-x.astype(np.float64))))


def _gate(shape: str = "plain", aux: bool = False) -> onnx.ModelProto:
    """logits = mean_s(T1[ids_s] * sigmoid(T2[ids_s])) W. ``shape``: "plain" (both lookups read
    the ids), "flat" (both read Reshape(ids, [-1]), the embeddings reshaped back), "8-bit" (T2
    stored in int8, a DequantizeLinear after its lookup), "arithmetic" (T2 read at ids + 1),
    "bias" (the gate is a per-token scalar from a 1-D table). With ``aux`` the gate is not in
    logits but a second output ``gate`` [batch, seq, D] of its own."""
    nodes = []
    inits: dict[str, np.ndarray] = {"T1": T1, "W": W, "seq_axis": np.array([1], np.int64)}
    ids = "input_ids"
    if shape == "flat":
        nodes += [helper.make_node("Reshape", ["input_ids", "minus_one"], ["flat_ids"]),
                  helper.make_node("Shape", ["input_ids"], ["ids_shape"]),
                  helper.make_node("Concat", ["ids_shape", "dim"], ["e_shape"], axis=0)]
        inits.update({"minus_one": np.array([-1], np.int64), "dim": np.array([D], np.int64)})
        ids = "flat_ids"
    nodes.append(helper.make_node("Gather", ["T1", ids], ["E1_raw" if shape == "flat" else "E1"]))
    if shape == "arithmetic":
        nodes.append(helper.make_node("Add", [ids, "one"], ["shifted"]))
        inits["one"] = np.array(1, np.int64)
        nodes.append(helper.make_node("Gather", ["T2", "shifted"], ["E2"]))
    elif shape == "8-bit":
        nodes += [helper.make_node("Gather", ["T2_quantized", ids], ["E2_q"]),
                  helper.make_node("DequantizeLinear", ["E2_q", "T2_scale", "T2_zero"], ["E2"])]
    elif shape == "bias":
        nodes += [helper.make_node("Gather", ["T2_bias", ids], ["b"]),
                  helper.make_node("Unsqueeze", ["b", "last"], ["E2"])]
        inits["last"] = np.array([-1], np.int64)
    else:
        nodes.append(helper.make_node("Gather", ["T2", ids], ["E2_raw" if shape == "flat" else "E2"]))
    if shape == "flat":
        nodes += [helper.make_node("Reshape", ["E1_raw", "e_shape"], ["E1"]),
                  helper.make_node("Reshape", ["E2_raw", "e_shape"], ["E2"])]
    nodes.append(helper.make_node("Sigmoid", ["E2"], ["gate"]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])]
    if aux:
        nodes.append(helper.make_node("ReduceMean", ["E1"], ["pooled"], keepdims=0, axes=[1]))
        outputs.append(helper.make_tensor_value_info("gate", TensorProto.FLOAT, ["batch", "seq", D]))
    else:
        nodes += [helper.make_node("Mul", ["E1", "gate"], ["h"]),
                  helper.make_node("ReduceMean", ["h"], ["pooled"], keepdims=0, axes=[1])]
    nodes.append(helper.make_node("MatMul", ["pooled", "W"], ["logits"]))
    if shape == "8-bit":
        inits.update({"T2_quantized": _Q2, "T2_scale": np.array(_SCALE, np.float32),
                      "T2_zero": np.array(0, np.int8)})
    elif shape == "bias":
        inits["T2_bias"] = T2[:, 0].copy()
    else:
        inits["T2"] = T2
    graph = helper.make_graph(nodes, "gate", [tiny._ids_input()], outputs,
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


_SCALE = 0.02
_Q2 = np.clip(np.round(T2 / _SCALE), -127, 127).astype(np.int8)


def _t2(shape: str) -> np.ndarray:
    """The gate's table as the file holds it, in float."""
    return _Q2.astype(np.float32) * np.float32(_SCALE) if shape == "8-bit" else T2


def _ids(text: str = TEXT) -> np.ndarray:
    return np.array([tiny.VOCAB[w] for w in text.split()], np.int64)


def _run(m: onnx.ModelProto, ids: np.ndarray, output: str = "logits") -> np.ndarray:
    """The ORIGINAL file run on ids [n, S] -> float64 [n, ...]."""
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run([output], {"input_ids": ids})[0], np.float64)


@pytest.mark.parametrize("shape", ["plain", "flat", "8-bit"])
def test_both_lookups_are_split_and_every_method_sees_the_gate(tmp_path: Path, shape: str) -> None:
    m = _gate(shape)
    model = load_model(tiny.write_model_dir(tmp_path / shape, m))
    name = "T2_quantized" if shape == "8-bit" else "T2"  # a channel is named after its table in the file
    note = NOTE.replace("'T2'", repr(name))
    assert model.channels == (Channel("tokens", "input_ids", 0, D), Channel(name, "input_ids", D, 2 * D))
    assert note in model.notes
    # no lookup reads the ids any more (the flat export's Shape(input_ids) still does)
    kept = {"input_ids"} if shape == "flat" else set()
    assert {i.name for i in model.session.get_inputs()} == {"inputs_embeds"} | kept
    t2 = _t2(shape)
    np.testing.assert_array_equal(model.table, np.concatenate([T1, t2], axis=1))
    ids = _ids()
    target = 1

    # occlusion == the ORIGINAL file with each token replaced by the pad token, in turn
    occluded = np.repeat(ids[None], len(ids), axis=0)
    occluded[np.arange(len(ids)), np.arange(len(ids))] = PAD
    want = _run(m, ids[None])[0, target] - _run(m, occluded)[:, target]
    e = explain(model, TEXT, ExplainConfig(method="occlusion", target=target))
    np.testing.assert_allclose(_scores(e), want, rtol=1e-5, atol=1e-6)

    # grad x input == the closed form, through both tables, per table too
    e1, e2 = T1[ids].astype(np.float64), t2[ids].astype(np.float64)
    s = _sigmoid(e2)
    g1 = s * W[:, target] / len(ids)
    g2 = e1 * s * (1 - s) * W[:, target] / len(ids)
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=target))
    np.testing.assert_allclose(_scores(e), (e1 * g1 + e2 * g2).sum(axis=1), rtol=1e-5, atol=1e-6)
    assert e.channels is not None
    np.testing.assert_allclose(e.channels[0].scores, (e1 * g1).sum(axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(e.channels[1].scores, (e2 * g2).sum(axis=1), rtol=1e-5, atol=1e-6)
    assert np.abs((e2 * g2).sum(axis=1)).max() > 0.02  # the gate's part: what the split at T1 alone left out
    assert note in e.notes

    # IG is complete against the ORIGINAL file on the baseline's ids (every token the pad)
    e = explain(model, TEXT, ExplainConfig(method="ig", backend="graph", steps=64, target=target))
    f_x, f_base = _run(m, ids[None])[0, target], _run(m, np.full((1, len(ids)), PAD))[0, target]
    assert abs(e.baseline_value - f_base) < 1e-6
    assert abs(_scores(e).sum() - (f_x - f_base)) < 1e-4 * max(1.0, abs(f_x - f_base))


def test_finite_differences_and_a_prepared_folder_see_the_gate_too(tmp_path: Path) -> None:
    """The finite-difference backend perturbs both tables' rows (grad x input == the graph's), and
    a prepared folder (the edge install's inputs_embeds and joined table) explains the same."""
    from blackbox_sal.gradient_graph.store import prepare

    model = load_model(tiny.write_model_dir(tmp_path / "gate", _gate()))
    graph = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=2))
    fd = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="fd", target=2))
    np.testing.assert_allclose(_scores(fd), _scores(graph), rtol=1e-3, atol=1e-5)
    ready = load_model(prepare(model, tmp_path / "prepared"))
    assert ready.channels == model.channels
    again = explain(ready, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=2))
    np.testing.assert_allclose(_scores(again), _scores(graph), rtol=1e-6, atol=1e-8)
    assert again.channels == graph.channels


def test_the_output_that_does_not_read_the_second_lookup_leaves_it_alone(tmp_path: Path) -> None:
    m = _gate(aux=True)
    model = load_model(tiny.write_model_dir(tmp_path / "aux", m))
    assert model.channels == () and not any("lookups" in n for n in model.notes)
    np.testing.assert_array_equal(model.table, T1)
    ids = _ids()
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=2))
    e1 = T1[ids].astype(np.float64)
    np.testing.assert_allclose(_scores(e), e1 @ W[:, 2] / len(ids), rtol=1e-5, atol=1e-6)
    # asked to explain the gate output itself (mean-pooled), the same file joins its lookup; the
    # split's first table (T1, as large) is then the one the output does not read
    gated = load_model(tiny.write_model_dir(tmp_path / "aux2", m), output="gate", pooling="mean")
    assert [c.name for c in gated.channels] == ["tokens", "T2"]
    assert ("the ids feed 2 lookups ('T1', 'T2'); the output reads 'T2', not 'T1' (the largest, split first): both "
            "are split; scores are their sum, per-table scores in channels ('T1''s are zero)") in gated.notes
    e = explain(gated, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=0))
    e2 = T2[ids, 0].astype(np.float64)
    s = _sigmoid(e2)
    np.testing.assert_allclose(_scores(e), e2 * s * (1 - s) / len(ids), rtol=1e-5, atol=1e-7)
    assert e.channels is not None
    np.testing.assert_allclose(e.channels[0].scores, 0.0, atol=1e-9)


@pytest.mark.parametrize(("shape", "why"), [
    ("arithmetic", "also Gather 'E2' on 'T2' through index arithmetic (Add), which the output 'logits' reads"),
    ("bias", "also Gather 'b' on 'T2_bias', which the output 'logits' reads but which cannot be split beside the "
             "first (the table has 1 dimensions, not 2)"),
])
def test_a_second_lookup_that_cannot_be_joined_is_refused(tmp_path: Path, shape: str, why: str) -> None:
    with pytest.raises(ModelError, match="the ids feed the lookup 'T1' and also") as info:
        load_model(tiny.write_model_dir(tmp_path / shape, _gate(shape)))
    assert why in str(info.value)
    assert "explaining the first alone would leave out part of what each token does" in str(info.value)


def _roberta_like() -> onnx.ModelProto:
    """logits = mean_s(T1[ids_s] + POS[p_s]) W with RoBERTa's position ids computed from the ids:
    p = cumsum(ids != pad) * (ids != pad) + pad."""
    nodes = [
        helper.make_node("Gather", ["T1", "input_ids"], ["E1"]),
        helper.make_node("Equal", ["input_ids", "pad"], ["is_pad"]),
        helper.make_node("Not", ["is_pad"], ["real"]),
        helper.make_node("Cast", ["real"], ["real_i"], to=TensorProto.INT64),
        helper.make_node("CumSum", ["real_i", "one_axis"], ["count"]),
        helper.make_node("Mul", ["count", "real_i"], ["counted"]),
        helper.make_node("Add", ["counted", "pad"], ["positions"]),
        helper.make_node("Gather", ["POS", "positions"], ["P"]),
        helper.make_node("Add", ["E1", "P"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["pooled"], keepdims=0, axes=[1]),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    inits = {"T1": T1, "POS": POS, "W": W, "pad": np.array(PAD, np.int64), "one_axis": np.array(1, np.int64)}
    return tiny._model(nodes, inits, [tiny._ids_input()], C)


def test_position_ids_computed_from_the_ids_are_not_a_second_table(tmp_path: Path) -> None:
    m = _roberta_like()
    model = load_model(tiny.write_model_dir(tmp_path / "roberta", m))
    assert model.channels == () and not any("lookups" in n for n in model.notes)
    np.testing.assert_array_equal(model.table, T1)
    ids = _ids()
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=0))
    np.testing.assert_allclose(_scores(e), T1[ids].astype(np.float64) @ W[:, 0] / len(ids), rtol=1e-5, atol=1e-6)
    # and the split still computes the file: positions come from the ids it still reads
    got = model.forward(model.embed(ids)[None], ids, np.zeros_like(ids))
    np.testing.assert_allclose(got, _run(m, ids[None]), rtol=1e-6, atol=1e-6)


#: text2tashkeel's wheel, where benchmarks/third_party.py caches it
WHEELS = Path(__file__).resolve().parents[1] / "models" / ".cache" / "third-party" / "wheels" / "text2tashkeel"


def _ensemble(tmp_path: Path, outputs: list[tuple[str, int]]) -> tuple[Path, onnx.ModelProto]:
    """text2tashkeel's rawi_ensemble.int8.onnx (two int8 LSTM networks, each with its own lookup
    of the ids, whose ArgMaxes meet in a Where) with ``outputs`` (name, element type) as its
    outputs; skipped without the wheel."""
    import zipfile

    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels:
        pytest.skip(f"no text2tashkeel wheel under {WHEELS} (python benchmarks/third_party.py downloads it)")
    folder = tmp_path / "ensemble"
    folder.mkdir()
    with zipfile.ZipFile(wheels[0]) as z:
        m = onnx.load_from_string(z.read("text2tashkeel/models/rawi_ensemble.int8.onnx"))
        (folder / "rawi_v2.vocab.json").write_bytes(z.read("text2tashkeel/models/rawi_v2.vocab.json"))
    if any(name == "both" for name, _ in outputs):
        m.graph.node.append(helper.make_node("Concat", ["g_output", "v_value"], ["both"], axis=-1))
    del m.graph.output[:]
    m.graph.output.extend(helper.make_tensor_value_info(n, t, ["b", "s", "c"][:2 if t == TensorProto.INT64 else 3])
                          for n, t in outputs)
    onnx.save(m, str(folder / "model.onnx"))
    return folder, m


@pytest.mark.heavy
def test_the_real_ensemble_joins_its_two_int8_lookups(tmp_path: Path) -> None:
    """A float output that reads both networks joins both 8-bit, re-quantized lookups: occlusion
    equals the file run with each character replaced, and the split equals the file exactly."""
    import json

    folder, m = _ensemble(tmp_path, [("both", TensorProto.FLOAT)])
    model = load_model(folder, pooling="mean")
    assert [c.name for c in model.channels] == ["tokens", "v_embedding.weight_quantized"]
    assert "max difference 0," in model.origin
    text, other = "السلام عليكم", "ا"
    vocab = json.loads((folder / "rawi_v2.vocab.json").read_text())["char_to_idx"]
    ids = np.array([vocab[c] for c in text], np.int64)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])

    def f(row: np.ndarray) -> float:
        return float(session.run(["both"], {"input": row[None]})[0][0, :, 0].mean())

    want = []
    for k in range(len(ids)):
        row = ids.copy()
        row[k] = vocab[other]
        want.append(f(ids) - f(row))
    e = explain(model, text, ExplainConfig(method="occlusion", baseline=other, target=0))
    np.testing.assert_allclose(_scores(e), want, atol=1e-5)
    assert np.abs(want).max() > 1.0


@pytest.mark.heavy
def test_the_real_ensemble_value_scores_beside_its_integer_output(tmp_path: Path) -> None:
    """The value network's scores kept beside the integer output: the gate's lookup (as large,
    split first) stays in the file, and the value network's is joined; before, every score was 0."""
    import json

    folder, m = _ensemble(tmp_path, [("gated_cls", TensorProto.INT64), ("v_value", TensorProto.FLOAT)])
    model = load_model(folder)
    assert model.output != "gated_cls"
    assert [c.name for c in model.channels] == ["tokens", "v_embedding.weight_quantized"]
    text, other = "السلام عليكم", "ا"
    vocab = json.loads((folder / "rawi_v2.vocab.json").read_text())["char_to_idx"]
    ids = np.array([vocab[c] for c in text], np.int64)
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    e = explain(model, text, ExplainConfig(method="occlusion", baseline=other, at=2))
    label = int(np.argmax(session.run(["v_value"], {"input": ids[None]})[0][0, 2]))

    def f(row: np.ndarray) -> float:
        return float(session.run(["v_value"], {"input": row[None]})[0][0, 2, label])

    want = []
    for k in range(len(ids)):
        row = ids.copy()
        row[k] = vocab[other]
        want.append(f(ids) - f(row))
    np.testing.assert_allclose(_scores(e), want, atol=1e-4)
    assert np.abs(want).max() > 1.0
