"""Models as third parties ship them: each failure class of issue 10 on a small model built
here, and the answer the fix must give (closed forms, or the same model exported plainly)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal import ExplainConfig, explain, explain_similarity, load_model
from blackbox_sal.gradient_graph import store
from blackbox_sal.surgery.split import split_embedding
from blackbox_sal.vocabulary.errors import ModelError, UnavailableError, UsageError

D = 6
TABLE = tiny.table(D, seed=21)
W1, B1, W2 = tiny.mlp_weights(D, 5, 3, seed=21)
TEXT = tiny.TEXT


def graph_model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], inputs: list[onnx.ValueInfoProto],
                outputs: list[onnx.ValueInfoProto], opset: int = 17) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "shipped", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def ids_input(name: str = "input_ids", dims: list[str | int | None] | None = None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.INT64, dims or ["batch", "seq"])


def mlp_head(source: str) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """logits = (sum_s tanh(source_s W1 + b1)) W2: the tiny MLP after a lookup named ``source``."""
    nodes = [helper.make_node("MatMul", [source, "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h"]), helper.make_node("ReduceSum", ["h", "axes1"], ["pooled"],
                                                                       keepdims=0),
             helper.make_node("MatMul", ["pooled", "W2"], ["logits"])]
    return nodes, {"W1": W1, "b1": B1, "W2": W2, "axes1": np.array([1], np.int64)}


LOGITS = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])


def closed_form(text: str, target: int) -> np.ndarray:
    x = TABLE[tiny.tokenizer().encode(text).ids]
    return (tiny.tanh_mlp_grad(x, W1, B1, W2, target) * x).sum(-1)


def test_an_int8_table_turned_into_floats_by_cast_and_a_per_row_scale(tmp_path: Path) -> None:
    """The table is int8 [V, D] -> Cast -> Mul by a scale [V, 1] before the Gather: folded at
    load (its 8-bit origin said), explained exactly on the dequantized table."""
    scale = (np.abs(TABLE).max(1, keepdims=True) / 127 + 1e-6).astype(np.float32)
    q = np.round(TABLE / scale).astype(np.int8)
    head, inits = mlp_head("E")
    nodes = [helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["qf", "scale"],
                                                                                             ["table"]),
             helper.make_node("Gather", ["table", "input_ids"], ["E"]), *head]
    m = graph_model(nodes, {"q": q, "scale": scale, **inits}, [ids_input()], [LOGITS])
    split = split_embedding(m)
    np.testing.assert_allclose(split.table, q.astype(np.float32) * scale, rtol=1e-7)
    assert split.quantized_table and split.table_ops == ("Cast", "Mul")
    model = load_model(tiny.write_model_dir(tmp_path / "int8", m))
    assert "8-bit table" in model.origin
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph"))
    x = (q.astype(np.float32) * scale)[tiny.tokenizer().encode(TEXT).ids]
    np.testing.assert_allclose([t.score for t in e.tokens],
                               (tiny.tanh_mlp_grad(x, W1, B1, W2, e.target.index) * x).sum(-1), rtol=1e-4, atol=1e-6)


def test_every_rejected_lookup_is_named(tmp_path: Path) -> None:
    head, inits = mlp_head("E")
    nodes = [helper.make_node("Concat", ["t1", "t2"], ["table"], axis=0),  # a table Concat builds: not folded
             helper.make_node("Gather", ["table", "input_ids"], ["E"]), *head]
    m = graph_model(nodes, {"t1": TABLE[:7], "t2": TABLE[7:], **inits}, [ids_input()], [LOGITS])
    with pytest.raises(ModelError, match=r"rejected: Gather 'E' on 'table': 'table' comes from a Concat"):
        split_embedding(m)


def test_keras_negative_index_wrap_before_the_lookup(tmp_path: Path) -> None:
    """tf2onnx writes Keras's where(ids < 0, ids + V, ids) as Less, Not, Cast, Mul, Add."""
    v = np.array(len(tiny.VOCAB), np.int64)
    head, inits = mlp_head("E")
    nodes = [helper.make_node("Less", ["input_ids", "zero"], ["neg"]), helper.make_node("Cast", ["neg"], ["negi"],
                                                                                         to=TensorProto.INT64),
             helper.make_node("Mul", ["negi", "V"], ["wrap"]), helper.make_node("Add", ["input_ids", "wrap"], ["idx"]),
             helper.make_node("Gather", ["table", "idx"], ["E"]), *head]
    m = graph_model(nodes, {"table": TABLE, "zero": np.array(0, np.int64), "V": v, **inits}, [ids_input()], [LOGITS])
    e = explain(load_model(tiny.write_model_dir(tmp_path / "keras", m)), TEXT, ExplainConfig(method="grad-x-input"))
    assert e.backend == "graph"
    np.testing.assert_allclose([t.score for t in e.tokens], closed_form(TEXT, e.target.index), rtol=1e-4, atol=1e-6)


def encoder(mask_kind: str = "int", length: int | str = "seq", batch: int | str = "batch") -> onnx.ModelProto:
    """A feature-extraction export: last_hidden_state [batch, seq, 40] = tanh(E W + b), its
    only output; the mask is int [batch, seq], additive float [batch, 1, 1, seq], or none."""
    rng = np.random.default_rng(4)
    w, b = rng.normal(0, 0.5, (D, 40)).astype(np.float32), rng.normal(0, 0.1, 40).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]), helper.make_node("MatMul", ["E", "W"], ["h0"]),
             helper.make_node("Add", ["h0", "b"], ["h1"]), helper.make_node("Tanh", ["h1"], ["last_hidden_state"])]
    inputs = [ids_input(dims=[batch, length])]
    if mask_kind == "int":
        inputs.append(ids_input("attention_mask", [batch, length]))
    elif mask_kind == "additive":
        inputs.append(helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, [batch, 1, 1, length]))
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [batch, length, 40])
    m = graph_model(nodes, {"table": TABLE, "W": w, "b": b}, inputs, [out])
    if mask_kind != "none":  # the mask is read (as a model would): masked positions add nothing downstream
        m.graph.node.append(helper.make_node("Identity", ["attention_mask"], ["mask_seen"]))
    return m


def states(text: str) -> np.ndarray:
    m = encoder()
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    x = TABLE[tiny.tokenizer(with_cls=True).encode(text).ids].astype(np.float64)
    return np.tanh(x @ inits["W"] + inits["b"])


def test_a_feature_extraction_export_is_pooled_as_its_folder_says(tmp_path: Path) -> None:
    d = tiny.write_model_dir(tmp_path / "enc", encoder(), with_cls=True)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True,
                                                             "pooling_mode_cls_token": False}))
    model = load_model(d)
    assert model.task == "embedding" and "mean pooling, L2-normalised" in (model.pooling or "")
    a, b = "the film was good", "great plot and awful film"
    sim = explain_similarity(model, a, b, ExplainConfig(method="ig", steps=32))
    ea, eb = states(a).mean(0), states(b).mean(0)
    assert sim.cosine == pytest.approx(ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb), rel=1e-5)
    assert sim.texts[0].backend == "graph" and abs(sim.texts[0].convergence_delta or 0) < 1e-4
    with pytest.raises(UsageError, match="sentence embedding .40 values.: say what to explain"):
        explain(model, a)
    dim = explain(model, a, ExplainConfig(method="grad-x-input", target=7))  # one dimension of the embedding
    direction = np.zeros(40)
    direction[7] = 1.0
    along = explain(model, a, ExplainConfig(method="grad-x-input", direction=tuple(direction)))
    np.testing.assert_allclose([t.score for t in along.tokens], [t.score for t in dim.tokens], rtol=1e-6, atol=1e-9)
    assert along.target_value == pytest.approx(ea[7] / np.linalg.norm(ea), rel=1e-5)
    direction[7] = 1e39  # finite in float64, infinite as the float32 weights it becomes: refused, not null scores
    with pytest.raises(UsageError, match="within float32's range"):
        explain(model, a, ExplainConfig(method="grad-x-input", direction=tuple(direction)))
    cls = load_model(d, pooling="cls", normalize=False)  # asked: the first token's state, as it is
    e = explain(cls, a, ExplainConfig(method="grad-x-input", target=3))
    assert e.target_value == pytest.approx(states(a)[0, 3], rel=1e-5)


def test_fixed_shapes_and_an_additive_mask_are_padded_and_give_the_dynamic_answer(tmp_path: Path) -> None:
    """The same encoder exported for [1, 12] with an additive float mask: texts are padded to
    12 under the mask, rows run one at a time, and the scores equal the dynamic export's."""
    dynamic = load_model(tiny.write_model_dir(tmp_path / "dyn", encoder(), with_cls=True), pooling="mean")
    fixed = load_model(tiny.write_model_dir(tmp_path / "fix", encoder("additive", 12, 1), with_cls=True),
                       pooling="mean")
    assert fixed.fixed_length == 12 and fixed.fixed_batch == 1 and fixed.mask_rank == 4
    for cfg in (ExplainConfig(method="ig", steps=8, target=2), ExplainConfig(method="occlusion", target=2)):
        a, b = explain(dynamic, "the film was good", cfg), explain(fixed, "the film was good", cfg)
        assert b.backend == a.backend and len(b.tokens) == len(a.tokens) == 6  # [CLS] 4 words [SEP]; no padding
        np.testing.assert_allclose([t.score for t in b.tokens], [t.score for t in a.tokens], rtol=1e-5, atol=1e-7)
        assert any("takes exactly 12 tokens" in n for n in b.notes) and b.settings["batch_size"] == 1
    with pytest.raises(Exception, match="takes at most 12"):
        explain(fixed, " ".join(["good"] * 20), ExplainConfig(target=2))


def test_stale_static_shapes_in_value_info_are_cleared(tmp_path: Path) -> None:
    """value_info left from a [1, 4] export on a tensor only shape arithmetic reads: the model
    runs at any size as shipped, but onnxruntime would fold the gradient graph's Shape of it
    into [1, 4, 5] (checked: without the clearing this fails at run time)."""
    m = tiny.tanh_mlp(TABLE, W1, B1, W2)
    for name, dims in (("hm", [1, 4, 5]),):
        m.graph.value_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
    model = load_model(tiny.write_model_dir(tmp_path / "stale", m))
    e = explain(model, TEXT, ExplainConfig(method="ig", steps=16, backend="graph"))
    by_fd = explain(model, TEXT, ExplainConfig(method="ig", steps=16, backend="fd", richardson=True))
    np.testing.assert_allclose([t.score for t in e.tokens], [t.score for t in by_fd.tokens], rtol=1e-4, atol=1e-6)


def test_a_failure_while_building_is_a_documented_error_and_remembered(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLACKBOX_SAL_CACHE", str(tmp_path / "cache"))
    d = tiny.write_model_dir(tmp_path / "m", tiny.tanh_mlp(TABLE, W1, B1, W2))
    calls = [0]

    def broken(model: object) -> onnx.ModelProto:
        calls[0] += 1
        raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code")

    monkeypatch.setattr(store, "build_gradient", broken)
    with pytest.raises(UnavailableError, match="building the gradient graph failed .RuntimeError"):
        explain(load_model(d), TEXT, ExplainConfig(method="grad-x-input", backend="graph"))
    e = explain(load_model(d), TEXT, ExplainConfig(method="grad-x-input"))  # auto: finite differences, said
    assert e.backend == "fd" and any("building the gradient graph failed" in n for n in e.notes)
    assert calls[0] == 1  # the reason was cached: not built again


def pipeline(binary: bool) -> tuple[onnx.ModelProto, dict[str, int], np.ndarray, np.ndarray]:
    """A skl2onnx-style text pipeline: string -> StringNormalizer -> Tokenizer -> TfIdfVectorizer
    (counts, made binary by Cast to bool and back) -> LinearClassifier(LOGISTIC)."""
    words = ["good", "bad", "film", "plot", "great", "awful"]
    rng = np.random.default_rng(2)
    coef = rng.normal(0, 1.0, (2, len(words))).astype(np.float32)
    intercepts = np.array([0.1, -0.2], np.float32)
    nodes = [
        helper.make_node("Reshape", ["text", "flat_shape"], ["flat"]),
        helper.make_node("StringNormalizer", ["flat"], ["normal"], case_change_action="LOWER", is_case_sensitive=0),
        helper.make_node("Tokenizer", ["normal"], ["tokens"], domain="com.microsoft", mark=0, mincharnum=1,
                         pad_value="#", tokenexp="[a-zA-Z0-9_]+"),
        helper.make_node("Flatten", ["tokens"], ["tokens_flat"]),
        helper.make_node("TfIdfVectorizer", ["tokens_flat"], ["counts"], max_gram_length=1, min_gram_length=1,
                         max_skip_count=0, mode="TF", ngram_counts=[0], ngram_indexes=list(range(len(words))),
                         pool_strings=words),
    ]
    last = "counts"
    if binary:
        nodes += [helper.make_node("Cast", ["counts"], ["present"], to=TensorProto.BOOL),
                  helper.make_node("Cast", ["present"], ["features"], to=TensorProto.FLOAT)]
        last = "features"
    nodes.append(helper.make_node("LinearClassifier", [last], ["label", "probabilities"], domain="ai.onnx.ml",
                                  classlabels_ints=[0, 1], coefficients=coef.reshape(-1).tolist(),
                                  intercepts=intercepts.tolist(), post_transform="LOGISTIC"))
    g = helper.make_graph(nodes, "pipe", [helper.make_tensor_value_info("text", TensorProto.STRING, [None, 1])],
                          [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
                           helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
                          [numpy_helper.from_array(np.array([-1], np.int64), "flat_shape")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1),
                                            helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 8
    return m, {w: k for k, w in enumerate(words)}, coef, intercepts


def test_a_scikit_learn_pipeline_is_explained_through_its_bag_of_words(tmp_path: Path) -> None:
    """Binary features: grad x input of p(class 1) at a present word is p (1 - p) w_word."""
    m, vocab, coef, intercepts = pipeline(binary=True)
    d = tmp_path / "pipe"
    d.mkdir()
    onnx.save(m, str(d / "model.onnx"))
    (d / "config.json").write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))
    model = load_model(d)
    assert model.features is not None and model.features.kind == "pipeline"
    text = "A GOOD film, a great plot; the film is good!"
    e = explain(model, text, ExplainConfig(method="grad-x-input", target="pos", backend="graph"))
    x = np.zeros(len(vocab))
    for w in ("good", "film", "great", "plot"):
        x[vocab[w]] = 1.0
    p = 1 / (1 + np.exp(-(coef[1] @ x + intercepts[1])))
    assert e.target_value == pytest.approx(p, rel=1e-5)
    scored = {(t.text.lower(), t.start): t.score for t in e.tokens}
    for word, count in (("good", 2), ("film", 2), ("great", 1), ("plot", 1)):
        share = p * (1 - p) * coef[1, vocab[word]] / count  # a word's score shared among its occurrences
        hits = [s for (w, _), s in scored.items() if w == word]
        assert len(hits) == count and hits == pytest.approx([share] * count, rel=1e-4)
    assert scored[("a", 0)] == 0.0 and scored[("the", 27)] == 0.0  # not in the vocabulary: no feature
    assert sum(t.score for t in e.tokens) == pytest.approx(float(p * (1 - p) * coef[1] @ x), rel=1e-4)
    ig = explain(model, text, ExplainConfig(method="ig", target="pos", steps=32))
    assert abs(ig.convergence_delta or 0) < 1e-4 and ig.settings["baseline"] == "zero"


def test_feature_models_bag_of_words_and_numbers() -> None:
    """The shipped bag-of-words MLP (token ids are its feature columns) and the digits
    logistic regression (logits = W x / 16 + b: grad x input of class c is W[c] x / 16)."""
    root = Path(__file__).resolve().parent.parent / "models"
    bow = load_model(root / "bow-mlp")
    e = explain(bow, "A boring, pretentious mess.", ExplainConfig(method="occlusion"))
    assert [t.text for t in e.tokens] == ["A", "boring", ",", "pretentious", "mess", "."]
    assert e.tokens[2].score == pytest.approx(e.tokens[5].score / 1, abs=1e9)  # both punctuation features exist
    digits = load_model(root / "digits-logreg")
    proto = onnx.load(str(root / "digits-logreg" / "model.onnx"))
    weights = next(numpy_helper.to_array(t) for t in proto.graph.initializer if numpy_helper.to_array(t).size == 640)
    pixels = np.arange(64) % 17
    e = explain(digits, ",".join(str(v) for v in pixels), ExplainConfig(method="grad-x-input", backend="graph"))
    w = weights if weights.shape == (64, 10) else weights.T
    np.testing.assert_allclose([t.score for t in e.tokens], w[:, e.target.index] * pixels / 16, rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="takes 64 numbers"):
        explain(digits, "1, 2, 3")
