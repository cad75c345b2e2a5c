"""A second id channel (issue 21): characters and their classes, each through its own lookup.

The synthetic export reads ``chars`` and ``kinds`` ([batch, seq] each), looks them up in two
tables, joins the embeddings and runs a tanh MLP averaged over the positions; its gradient is
known in closed form. config.json's ``"channels"`` says how a token's kind follows from the
token. Every score is checked against the ORIGINAL file (fed its own two inputs), by closed
form and by finite differences that perturb each lookup's rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal.api.explaining import explain
from blackbox_sal.model.loading import load_model
from blackbox_sal.render.json import to_dict
from blackbox_sal.surgery.channels import Channel
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import ModelError

D1, D2, H, C = 6, 3, 5, 3
RNG = np.random.default_rng(2121)
T1 = tiny.table(D1, seed=7)
T2 = RNG.normal(0, 0.7, (4, D2)).astype(np.float32)
W1 = RNG.normal(0, 0.6, (D1 + D2, H)).astype(np.float32)
B1 = RNG.normal(0, 0.2, H).astype(np.float32)
W2 = RNG.normal(0, 0.8, (H, C)).astype(np.float32)
#: each word's kind: function words 1, good words 2, bad words 3, the rest the default 0
KINDS = {"the": 1, "was": 1, "and": 1, "good": 2, "great": 2, "bad": 3, "awful": 3}
TEXT = "the film was good and the plot great"
CHANNELS = {"kinds": {"input": "kinds", "map": KINDS, "default": 0}}


def _export(embeds: bool = False, table2: np.ndarray = T2, packed: bool = False, mask: bool = False) -> onnx.ModelProto:
    """logits = mean_s tanh([T1[chars_s], T2[kinds_s]] W1 + b1) W2; with ``embeds`` the two
    lookups' outputs are the inputs E1, E2 (for finite differences of the same graph); with
    ``packed`` both channels come in one input [1, 2, seq], as attacut-sc's do; with ``mask`` a
    boolean input ``pad`` (True on the padding) keeps the padding out of the mean."""
    if packed:
        inputs = [helper.make_tensor_value_info("input", TensorProto.INT64, [1, 2, "seq_len"])]
        nodes = [helper.make_node("Gather", ["input", "zero"], ["chars"], axis=1),
                 helper.make_node("Gather", ["input", "one"], ["kinds"], axis=1),
                 helper.make_node("Gather", ["T1", "chars"], ["E1"]),
                 helper.make_node("Gather", ["T2", "kinds"], ["E2"])]
    elif embeds:
        inputs = [helper.make_tensor_value_info("E1", TensorProto.FLOAT, ["batch", "seq", D1]),
                  helper.make_tensor_value_info("E2", TensorProto.FLOAT, ["batch", "seq", D2])]
        nodes = []
    else:
        inputs = [helper.make_tensor_value_info("chars", TensorProto.INT64, ["batch", "seq"]),
                  helper.make_tensor_value_info("kinds", TensorProto.INT64, ["batch", "seq"])]
        nodes = [helper.make_node("Gather", ["T1", "chars"], ["E1"]),
                 helper.make_node("Gather", ["T2", "kinds"], ["E2"])]
    nodes += [helper.make_node("Concat", ["E1", "E2"], ["E"], axis=-1),
              helper.make_node("MatMul", ["E", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
              helper.make_node("Tanh", ["h1"], ["h"])]
    inits = {"W1": W1, "b1": B1, "W2": W2}
    if mask:
        inputs.append(helper.make_tensor_value_info("pad", TensorProto.BOOL, ["batch", "seq"]))
        nodes += [helper.make_node("Not", ["pad"], ["keep"]), helper.make_node("Cast", ["keep"], ["kf"], to=1),
                  helper.make_node("Unsqueeze", ["kf", "last"], ["k3"]), helper.make_node("Mul", ["h", "k3"], ["hk"]),
                  helper.make_node("ReduceSum", ["hk", "seq_axis"], ["total"], keepdims=0),
                  helper.make_node("ReduceSum", ["kf", "seq_axis"], ["count"], keepdims=1),
                  helper.make_node("Div", ["total", "count"], ["pooled"])]
        inits.update({"last": np.array([-1], np.int64), "seq_axis": np.array([1], np.int64)})
    else:
        nodes.append(helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0))
    nodes.append(helper.make_node("MatMul", ["pooled", "W2"], ["logits"]))
    if not embeds:
        inits.update({"T1": T1, "T2": table2})
    if packed:
        inits.update({"zero": np.array(0, np.int64), "one": np.array(1, np.int64)})
    graph = helper.make_graph(nodes, "chars-and-kinds", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", C])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _folder(tmp_path: Path, config: dict[str, object] | None = None, name: str = "two") -> Path:
    return tiny.write_model_dir(tmp_path / name, _export(), config={"channels": CHANNELS} if config is None else config)


def _ids() -> np.ndarray:
    return np.array([tiny.VOCAB[w] for w in TEXT.split()], np.int64)


def _kinds(ids: np.ndarray) -> np.ndarray:
    words = {i: w for w, i in tiny.VOCAB.items()}
    return np.array([KINDS.get(words[int(i)], 0) for i in ids], np.int64)


def _run(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["logits"], feeds)[0], np.float64)


def _closed_gradient(e: np.ndarray, c: int) -> np.ndarray:
    """d logits_c / d E [S, D1 + D2] at the joined embeddings e [S, D1 + D2]."""
    h = np.tanh(e.astype(np.float64) @ W1 + B1)
    return ((1 - h ** 2) * W2[:, c]) @ W1.T / len(e)


def test_the_channels_are_found_and_the_split_equals_the_original(tmp_path: Path) -> None:
    model = load_model(_folder(tmp_path))
    assert model.channels == (Channel("tokens", "chars", 0, D1), Channel("kinds", "kinds", D1, D1 + D2))
    assert model.notes[0] == ("the model's inputs, found from the graph: ids 'chars', channel 'kinds' (input 'kinds', "
                              "its ids from the tokens as config.json says)")
    assert {i.name for i in model.session.get_inputs()} == {"inputs_embeds"}  # the kinds come from the ids
    ids = _ids()
    np.testing.assert_array_equal(model.table, np.concatenate([T1, T2[_kinds(np.arange(len(tiny.VOCAB)))]], axis=1))
    got = model.forward(model.embed(ids)[None], ids, np.zeros_like(ids))
    want = _run(_export(), {"chars": ids[None], "kinds": _kinds(ids)[None]})
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_mask_is_probed_with_the_channel_fed_from_the_ids(tmp_path: Path) -> None:
    """The mask's polarity probe runs the file itself: the channel's input is fed map[ids] there."""
    folder = tiny.write_model_dir(tmp_path / "masked", _export(mask=True), config={"channels": CHANNELS})
    model = load_model(folder)
    assert model.notes[0] == ("the model's inputs, found from the graph: ids 'chars', mask 'pad' (1/True on the "
                              "padding, found by a probe), channel 'kinds' (input 'kinds', its ids from the tokens as "
                              "config.json says)")
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=1))
    ids = _ids()
    x = np.concatenate([T1[ids], T2[_kinds(ids)]], axis=1)
    assert e.channels is not None
    np.testing.assert_allclose(e.channels[1].scores, (x * _closed_gradient(x, 1))[:, D1:].sum(axis=1), atol=1e-6)


@pytest.mark.parametrize("backend", ["graph", "fd"])
def test_grad_x_input_per_channel_matches_the_original_perturbed_at_each_lookup(tmp_path: Path, backend: str) -> None:
    model = load_model(_folder(tmp_path))
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend=backend, target=1))
    assert e.backend == backend and e.channels is not None
    tokens, kinds = (np.array(c.scores) for c in e.channels)
    assert [(c.name, c.input) for c in e.channels] == [("tokens", "chars"), ("kinds", "kinds")]
    ids = _ids()
    x = np.concatenate([T1[ids], T2[_kinds(ids)]], axis=1)
    grad = _closed_gradient(x, 1)
    tol = 1e-6 if backend == "graph" else 1e-4
    np.testing.assert_allclose(tokens, (x * grad)[:, :D1].sum(axis=1), atol=tol)
    np.testing.assert_allclose(kinds, (x * grad)[:, D1:].sum(axis=1), atol=tol)
    # the channels add up to each position's score
    np.testing.assert_allclose(tokens + kinds, [s.score for s in e.tokens], atol=tol)
    # finite differences of the original file: row i of the first lookup scaled by (1 + h)
    h = 1e-3
    original = _export(embeds=True)
    e1, e2 = T1[ids][None].astype(np.float64), T2[_kinds(ids)][None].astype(np.float64)

    def f(a: np.ndarray, b: np.ndarray) -> float:
        return float(_run(original, {"E1": a.astype(np.float32), "E2": b.astype(np.float32)})[0, 1])

    for i in range(len(ids)):
        up, down = e1.copy(), e1.copy()
        up[0, i] *= 1 + h
        down[0, i] *= 1 - h
        assert tokens[i] == pytest.approx((f(up, e2) - f(down, e2)) / (2 * h), abs=2e-4)
    # the second lookup: its table's row k scaled in the file moves every position of kind k
    for k in (1, 2):
        up_t, down_t = T2.copy(), T2.copy()
        up_t[k] *= 1 + h
        down_t[k] *= 1 - h
        feeds = {"chars": ids[None], "kinds": _kinds(ids)[None]}
        fd = (_run(_export(table2=up_t), feeds)[0, 1] - _run(_export(table2=down_t), feeds)[0, 1]) / (2 * h)
        assert kinds[_kinds(ids) == k].sum() == pytest.approx(fd, abs=2e-4)


@pytest.mark.parametrize("backend", ["graph", "fd"])
def test_ig_moves_both_channels_from_their_baselines_and_is_complete(tmp_path: Path, backend: str) -> None:
    model = load_model(_folder(tmp_path))
    e = explain(model, TEXT, ExplainConfig(method="ig", backend=backend, target=0, steps=32, baseline="pad"))
    assert e.channels is not None
    tokens, kinds = (np.array(c.scores) for c in e.channels)
    ids = _ids()
    pad = np.zeros_like(ids)  # [PAD] is id 0, and its kind the default 0: both channels' baselines
    f_x = _run(_export(), {"chars": ids[None], "kinds": _kinds(ids)[None]})[0, 0]
    f_base = _run(_export(), {"chars": pad[None], "kinds": _kinds(pad)[None]})[0, 0]
    assert e.baseline_value == pytest.approx(f_base, abs=1e-6)
    tol = 1e-5 if backend == "graph" else 1e-3
    assert tokens.sum() + kinds.sum() == pytest.approx(f_x - f_base, abs=tol)  # completeness over both channels
    np.testing.assert_allclose(tokens + kinds, [s.score for s in e.tokens], atol=tol)
    # against the closed form on the same 32 Gauss-Legendre nodes
    from blackbox_sal.methods.quadrature import QUADRATURES
    x = np.concatenate([T1[ids], T2[_kinds(ids)]], axis=1).astype(np.float64)
    base = np.concatenate([T1[pad], T2[_kinds(pad)]], axis=1).astype(np.float64)
    nodes, weights = QUADRATURES["gauss-legendre"](32)
    avg = sum(w * _closed_gradient(base + a * (x - base), 0) for a, w in zip(nodes, weights, strict=True))
    np.testing.assert_allclose(tokens, ((x - base) * avg)[:, :D1].sum(axis=1), atol=tol)
    np.testing.assert_allclose(kinds, ((x - base) * avg)[:, D1:].sum(axis=1), atol=tol)
    assert abs(kinds).sum() > 0.05  # the second channel carries weight: the test could tell it apart


def test_saliency_per_channel_is_the_norm_of_each_channels_gradient(tmp_path: Path) -> None:
    model = load_model(_folder(tmp_path))
    e = explain(model, TEXT, ExplainConfig(method="saliency", backend="graph", target=2))
    assert e.channels is not None
    ids = _ids()
    grad = _closed_gradient(np.concatenate([T1[ids], T2[_kinds(ids)]], axis=1), 2)
    np.testing.assert_allclose(e.channels[0].scores, np.linalg.norm(grad[:, :D1], axis=1), rtol=1e-5)
    np.testing.assert_allclose(e.channels[1].scores, np.linalg.norm(grad[:, D1:], axis=1), rtol=1e-5)
    assert "combine (l2) into it" in e.notes[-1] or any("combine (l2) into it" in n for n in e.notes)


def test_other_methods_give_totals_with_a_note(tmp_path: Path) -> None:
    """Occlusion of a position replaces both its channels by the pad token's: checked on the file."""
    model = load_model(_folder(tmp_path))
    e = explain(model, TEXT, ExplainConfig(method="occlusion", target=0))
    assert e.channels is None
    assert any(n.startswith("the model reads 2 id channels (tokens ('chars'), kinds ('kinds')): each score is the "
                            "position's total") for n in e.notes)
    ids = _ids()
    f_x = _run(_export(), {"chars": ids[None], "kinds": _kinds(ids)[None]})[0, 0]
    cut = ids.copy()
    cut[3] = 0
    f_cut = _run(_export(), {"chars": cut[None], "kinds": _kinds(cut)[None]})[0, 0]
    assert e.tokens[3].score == pytest.approx(f_x - f_cut, abs=1e-6)


def test_json_carries_the_channels(tmp_path: Path) -> None:
    model = load_model(_folder(tmp_path))
    out = to_dict(explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph")))
    schema = json.loads((Path(to_dict.__code__.co_filename).parent / "explanation.schema.json").read_text())
    jsonschema.validate(out, schema, cls=jsonschema.Draft202012Validator)
    broken = {**out, "channels": [{**out["channels"][0], "score": 1}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)
    assert [c["name"] for c in out["channels"]] == ["tokens", "kinds"]
    assert all(len(c["scores"]) == len(out["tokens"]) for c in out["channels"])
    sums = np.add(out["channels"][0]["scores"], out["channels"][1]["scores"])
    np.testing.assert_allclose(sums, [t["score"] for t in out["tokens"]], atol=1e-6)


def test_a_map_file_in_the_folder_does_what_the_map_does(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"channels": {"kinds": {"input": "kinds", "file": "kinds.json", "default": 0}}})
    (folder / "kinds.json").write_text(json.dumps(KINDS))
    inline = explain(load_model(_folder(tmp_path, name="inline")), TEXT, ExplainConfig(method="grad-x-input"))
    from_file = explain(load_model(folder), TEXT, ExplainConfig(method="grad-x-input"))
    assert from_file.channels == inline.channels


def test_without_the_config_form_two_lookups_are_refused_naming_it(tmp_path: Path) -> None:
    """Two lookups as large as the vocabulary: which is the ids is not the graph's to say. (A
    table of at most 16 rows under an anonymous name is taken for token types, as BERT's.)"""
    wide = np.resize(T2, (len(tiny.VOCAB), D2))
    folder = tiny.write_model_dir(tmp_path / "wide", _export(table2=wide))
    with pytest.raises(ModelError, match=r"two inputs feed their own embedding lookups \('chars' \(15 rows\), "
                                         r"'kinds' \(15 rows\)\).*\"channels\": \{\"NAME\": \{\"input\""):
        load_model(folder)


def test_a_small_second_table_without_the_form_is_refused_naming_it(tmp_path: Path) -> None:
    """Without "channels", a lookup of 4 rows under a plain name is not taken for token types
    (fed zeros, the model would predict something else): more rows than BERT's 2 segments."""
    with pytest.raises(ModelError, match=r"input 'kinds' feeds a lookup of 4 rows besides the ids' \('chars'\): more "
                                         r"than token types \(segments\) have.*\"channels\": \{\"NAME\".*if it is "
                                         r"token types after all, say which input is which in config.json"):
        load_model(_folder(tmp_path, {}))
    # with "inputs" saying it is token types, it is (and fed zeros)
    model = load_model(_folder(tmp_path, {"inputs": {"ids": "chars", "token_types": "kinds"}}, name="typed"))
    assert model.channels == () and model.notes[0].endswith("token types 'kinds'")


def test_channels_packed_in_one_input_are_refused_saying_so(tmp_path: Path) -> None:
    folder = tiny.write_model_dir(tmp_path / "packed", _export(packed=True))
    with pytest.raises(ModelError, match=r"input 'input' \(int64 \[1, 2, seq_len\]\) packs 2 id channels along its "
                                         r"second axis \(channel 0: a lookup of 15 rows, channel 1: a lookup of 4 "
                                         r"rows\); .*not channels packed in one input"):
        load_model(folder)


@pytest.mark.parametrize(("config", "message"), [
    ({"kinds": {"input": "kinds", "map": KINDS}}, r"'kinds' gives no id for 8 of the tokenizer's 15 tokens "
                                                  r"\('\[PAD\]', .*give a \"default\" id"),
    ({"kinds": {"input": "nope", "map": KINDS, "default": 0}}, r"input 'nope' is not an input of the model"),
    ({"kinds": {"input": "kinds", "file": "../kinds.json", "default": 0}},
     r"\.\./kinds.json is outside the model folder"),
    ({"kinds": {"input": "kinds", "file": "absent.json", "default": 0}}, r"not in the model folder"),
    ({"kinds": {"input": "kinds", "map": {"the": 9}, "default": 0}}, r"the map gives id 9, but the channel's table "
                                                                      r"has 4 rows"),
    ({"kinds": {"input": "kinds", "map": KINDS, "file": "k.json"}}, r"needs a map or a file, one of them"),
    ({"kinds": {"input": "chars", "map": KINDS, "default": 0}},
     r"^config.json channels: input 'chars' looks like the ids \(its lookup has \d+ rows, the tokenizer 15 tokens\)"),
])
def test_a_wrong_channels_form_is_one_line(tmp_path: Path, config: dict[str, object], message: str) -> None:
    (tmp_path / "kinds.json").write_text(json.dumps(KINDS))  # outside the folder
    with pytest.raises(ModelError, match=message):
        load_model(_folder(tmp_path, {"channels": config}))


def test_a_prepared_folder_keeps_the_channels(tmp_path: Path) -> None:
    """The edge install's form (inputs_embeds and the joined table) still splits the scores."""
    from blackbox_sal.gradient_graph.store import prepare

    model = load_model(_folder(tmp_path))
    ready = load_model(prepare(model, tmp_path / "prepared"))
    assert ready.channels == model.channels
    cfg = ExplainConfig(method="grad-x-input", backend="graph", target=1)
    assert explain(ready, TEXT, cfg).channels == explain(model, TEXT, cfg).channels


@pytest.mark.parametrize(("method", "reduce", "steps"), [
    ("ig", "l1", 16), ("ig", "mean", "auto"), ("ig", "sum", "auto"), ("grad-x-input", "l1", 50),
    ("grad-x-input", "mean", 50)])
def test_additive_reductions_add_up_over_the_channels(tmp_path: Path, method: str, reduce: str,
                                                      steps: int | Literal["auto"]) -> None:
    """sum, mean and l1 over all dimensions are the sums of their parts over each channel's."""
    model = load_model(_folder(tmp_path))
    e = explain(model, TEXT, ExplainConfig(method=method, reduce=reduce, steps=steps, backend="graph", target=2))
    assert e.channels is not None and e.reduce == reduce
    total = np.add(e.channels[0].scores, e.channels[1].scores)
    np.testing.assert_allclose(total, [s.score for s in e.tokens], rtol=1e-5, atol=1e-7)
    assert min(np.abs(e.channels[0].scores).max(), np.abs(e.channels[1].scores).max()) > 1e-3
