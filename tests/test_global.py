"""Global analysis (the paper's 5.2 and 5.3) against known answers: a linear bag-of-words
model's surrogate agrees 100%, a linear softmax model's class Jacobians are its weights, an
additive token model's per-word importance is each word's own fixed score; and (heavy) the
reference numbers of models/bow-mlp and models/digits-mlp."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal import ExplainConfig, load_model
from blackbox_sal.evaluation.global_analysis import (
    average_gradient,
    best_threshold,
    class_jacobians,
    class_jacobians_dict,
    class_jacobians_plot,
    class_jacobians_table,
    global_bow,
    global_bow_dict,
    global_bow_plot,
    global_bow_table,
    jacobian_correlation,
    logistic_threshold,
    word_importance,
    word_importance_dict,
    word_importance_plot,
    word_importance_table,
)
from blackbox_sal.jobs.datasets import BadRow, Columns, Row, read_rows
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.scores import Margin

MODELS = Path(__file__).resolve().parent.parent / "models"
CACHE = MODELS / ".cache"


def linear_features(path: Path, weights: np.ndarray, bias: np.ndarray, kind: str, scale: float = 1.0,
                    extra: dict[str, object] | None = None) -> Path:
    """A feature model folder: logits = (features / scale) @ weights + bias, input [batch, F]."""
    f, c = weights.shape
    nodes = [helper.make_node("Div", ["features", "scale"], ["scaled"]),
             helper.make_node("MatMul", ["scaled", "W"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", f])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", c])],
        [numpy_helper.from_array(weights.astype(np.float32), "W"), numpy_helper.from_array(bias.astype(np.float32),
                                                                                           "b"),
         numpy_helper.from_array(np.array(scale, np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path / "model.onnx"))
    config: dict[str, object] = {"input_kind": kind, "id2label": {str(k): f"c{k}" for k in range(c)}, **(extra or {})}
    if kind == "bag-of-words":
        tiny.tokenizer().save(str(path / "tokenizer.json"))
    (path / "config.json").write_text(json.dumps(config))
    return path


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(tiny.WORDS, size=int(rng.integers(2, 7)))) for _ in range(n)]


@pytest.fixture(scope="module")
def bow_weights() -> np.ndarray:
    return np.random.default_rng(3).normal(0, 1.0, (len(tiny.VOCAB), 2))


def test_a_linear_bag_of_words_surrogate_agrees_100_percent(tmp_path: Path, bow_weights: np.ndarray) -> None:
    """logits = x W + c: g = W[:, 1] - W[:, 0] everywhere, so x . g is the margin less the bias
    difference: b = 0 agrees fully without a bias; with one, the fitted and rate-matched b do."""
    texts = random_texts(60)
    model = load_model(linear_features(tmp_path / "plain", bow_weights, np.zeros(2), "bag-of-words"))
    result = global_bow(model, texts, top=3)
    g = bow_weights[:, 1] - bow_weights[:, 0]
    np.testing.assert_allclose(result.g, g, rtol=1e-5, atol=1e-6)
    assert result.gradient.objective == "logit[c1] - logit[c0]" and result.gradient.backend == "graph"
    order = np.argsort(g)
    names = model.features.names if model.features else ()
    assert [w for w, _ in result.top_positive] == [names[j] for j in order[::-1][:3]]
    assert [w for w, _ in result.top_negative] == [names[j] for j in order[:3]]
    assert result.surrogate("zero").agreement == 1.0
    assert result.surrogate("zero").accuracy is None and result.model_accuracy is None
    biased = load_model(linear_features(tmp_path / "biased", bow_weights, np.array([0.0, 0.7]), "bag-of-words"))
    r2 = global_bow(biased, texts)
    assert r2.surrogate("fit_threshold").agreement == 1.0 and r2.surrogate("match_rate").agreement == 1.0
    assert r2.surrogate("fit_threshold").fitted_on.endswith("(in-sample: optimistic)")
    assert r2.surrogate("fit_logistic").agreement >= 0.95
    # the same with labels and a separate fit split, from dataset rows; a bad row is skipped
    rows: list[Row | BadRow] = [Row(k, t, label="c1" if k % 2 else "c0") for k, t in enumerate(texts)]
    rows.append(BadRow(len(rows), "not a JSON object"))
    r3 = global_bow(biased, rows, fit_rows=random_texts(40, seed=1))
    assert r3.n_fit == 40 and r3.n_labelled == 60 and r3.model_accuracy is not None
    assert r3.gradient.skipped == (("60", "not a JSON object"),)
    assert all(s.accuracy is not None for s in r3.surrogates)
    assert "the 40 fit rows" in r3.surrogate("fit_threshold").fitted_on
    table = global_bow_table(r3)
    assert "linear surrogate: predict c1 when x . g + b > 0" in table and "1 row(s) skipped" in table
    assert json.loads(json.dumps(global_bow_dict(r3)))["surrogate"]["zero"]["agreement_with_model"] <= 1.0


def test_average_gradient_objectives(tmp_path: Path, bow_weights: np.ndarray) -> None:
    weights = np.concatenate([bow_weights, bow_weights[:, :1] * 0.5], axis=1)  # three classes
    model = load_model(linear_features(tmp_path / "three", weights, np.zeros(3), "bag-of-words"))
    texts = random_texts(10)
    with pytest.raises(UsageError, match="3 classes: say which class"):
        average_gradient(model, texts)
    by_target = average_gradient(model, texts, config=ExplainConfig(target="c2"))
    np.testing.assert_allclose(by_target.g, weights[:, 2], rtol=1e-5, atol=1e-6)
    margin = average_gradient(model, texts, Margin(2, 1))
    np.testing.assert_allclose(margin.g, weights[:, 2] - weights[:, 1], rtol=1e-5, atol=1e-6)
    assert margin.objective == "logit[c2] - logit[c1]" and margin.n == 10
    by_fd = average_gradient(model, texts[:2], Margin(2, 1), ExplainConfig(backend="fd"))
    assert by_fd.backend == "fd"
    np.testing.assert_allclose(by_fd.g, weights[:, 2] - weights[:, 1], rtol=1e-3, atol=1e-4)
    with pytest.raises(UsageError, match="needs a feature model"):
        average_gradient(load_model(tiny.write_model_dir(tmp_path / "tok", tiny.linear_sum(
            tiny.table(4), np.ones((4, 2), np.float32)))), texts)


def test_surrogate_thresholds() -> None:
    s = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    assert best_threshold(s, s > 0.7) == pytest.approx(0.75)
    assert best_threshold(s, np.ones(5, bool)) == pytest.approx(-3.0)  # below all: every row positive
    rng = np.random.default_rng(0)
    z = rng.normal(size=2000)
    y = rng.random(2000) < 1 / (1 + np.exp(-(3 * z - 1.5)))  # P(y) = sigmoid(3 z - 1.5): threshold 0.5
    t = logistic_threshold(z, y)
    assert t is not None and t == pytest.approx(0.5, abs=0.1)
    assert logistic_threshold(z, np.zeros(2000, bool)) is None


def digits_like(path: Path, seed: int = 5, extra: dict[str, object] | None = None) -> tuple[TextModel, np.ndarray]:
    """A linear softmax model on 16 'pixels' (4x4, 0..16), divided by 16 inside: logits = x W / 16 + b."""
    weights = np.random.default_rng(seed).normal(0, 1.0, (16, 4))
    folder = linear_features(path, weights, np.array([0.1, -0.2, 0.3, 0.0]), "features", scale=16.0,
                             extra={"image_shape": [4, 4], **(extra or {})})
    return load_model(folder), weights


def test_a_linear_softmax_models_class_jacobians_are_its_weights(tmp_path: Path) -> None:
    """d logit_c / d x = W[:, c] / 16 at every input, so both averages equal it, each class
    correlates 1 with the weights (raw and centered), and a margin's average gradient is the
    weight difference / 16."""
    model, weights = digits_like(tmp_path / "lin")
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 17, (30, 16))
    labels = rng.integers(0, 4, 30)
    rows = [Row(k, ",".join(str(v) for v in p), label=f"c{y}") for k, (p, y) in enumerate(zip(pixels, labels,
                                                                                              strict=True))]
    every = class_jacobians(model, rows)
    np.testing.assert_allclose(every.jacobian, weights.T / 16, rtol=1e-5, atol=1e-7)
    assert every.counts == (30,) * 4 and every.image_shape == (4, 4) and every.own_by is None
    own = class_jacobians(model, rows, over="own")
    np.testing.assert_allclose(own.jacobian, weights.T / 16, rtol=1e-5, atol=1e-7)
    assert own.own_by == "label" and own.counts == tuple(int(v) for v in np.bincount(labels, minlength=4))
    by_prediction = class_jacobians(model, [r.text for r in rows], over="own")
    assert by_prediction.own_by == "prediction" and sum(by_prediction.counts) == 30
    corr = jacobian_correlation(every, weights.T)
    assert corr.raw == pytest.approx((1.0,) * 4) and corr.centered == pytest.approx((1.0,) * 4)
    assert corr.raw_mean == pytest.approx(1.0)
    margin = average_gradient(model, [r.text for r in rows[:5]], Margin(1, 0))
    np.testing.assert_allclose(margin.g, (weights[:, 1] - weights[:, 0]) / 16, rtol=1e-5, atol=1e-7)
    table = class_jacobians_table(every, corr)
    assert "mean over classes: pearson 1.0000, centered 1.0000" in table
    assert json.loads(json.dumps(class_jacobians_dict(every)))["image_shape"] == [4, 4]
    with pytest.raises(UsageError, match="over must be all or own"):
        class_jacobians(model, rows, over="mine")


def test_the_shipped_digits_logreg_jacobian_is_its_weights_over_16() -> None:
    model = load_model(MODELS / "digits-logreg")
    proto = onnx.load(str(MODELS / "digits-logreg" / "model.onnx"))
    coef = next(numpy_helper.to_array(t) for t in proto.graph.initializer if numpy_helper.to_array(t).size == 640)
    coef = coef if coef.shape == (10, 64) else coef.T
    pixels = np.random.default_rng(2).integers(0, 17, (12, 64))
    result = class_jacobians(model, [",".join(str(v) for v in p) for p in pixels])
    np.testing.assert_allclose(result.jacobian, coef / 16, rtol=1e-5, atol=1e-7)
    assert result.image_shape == (8, 8)


def additive_model(tmp_path: Path) -> tuple[TextModel, np.ndarray, np.ndarray]:
    """f = sum_s tanh(E_s . w): each token's grad x input is (1 - tanh^2(E.w)) E.w, and its IG
    score from the zero PAD row is tanh(E.w): each word's own, whatever the text."""
    emb = tiny.table(6, seed=3)
    w = np.random.default_rng(4).normal(0, 0.8, (6,)).astype(np.float32)
    return load_model(tiny.write_model_dir(tmp_path / "additive", tiny.regression(emb, w))), emb, w


def test_word_importance_of_an_additive_model_is_each_words_own_score(tmp_path: Path) -> None:
    model, emb, w = additive_model(tmp_path)
    texts = [*random_texts(25, seed=7), ""]  # the empty text is skipped, with its reason
    z = emb.astype(np.float64) @ w
    counts = {word: sum(t.split().count(word) for t in texts) for word in tiny.WORDS}
    for method, own in (("grad-x-input", (1 - np.tanh(z) ** 2) * z), ("ig", np.tanh(z))):
        result = word_importance(model, texts, ExplainConfig(method=method, steps=64), min_count=1, top=4)
        assert result.n == 25 and result.skipped == (("25", "the text is empty"),)
        stats = {s.word: s for s in result.words}
        assert set(stats) == {word for word, n in counts.items() if n}
        for word, s in stats.items():
            assert s.count == counts[word]
            assert s.mean == pytest.approx(own[tiny.VOCAB[word]], rel=1e-4, abs=1e-6)
            assert s.std == pytest.approx(0.0, abs=1e-6)
        means = [s.mean for s in result.words]
        assert means == sorted(means, reverse=True)
        assert result.top()[0] == result.words[0] and result.bottom()[0] == result.words[-1]
        assert [label for label, _ in result.by_class] == ["0"]
    coarse = word_importance(model, texts, ExplainConfig(method="ig", steps=1, quadrature="riemann-left"))
    ((first, count),) = coarse.notes  # one kind of note (its numbers differ per text), counted over texts
    assert first.startswith("integrated gradients have not converged") and count == 25
    frequent = word_importance(model, texts, ExplainConfig(method="grad-x-input"), min_count=10)
    assert all(s.count >= 10 for s in frequent.words)
    table = word_importance_table(frequent)
    assert "word importance of additive: grad-x-input scores of each text's predicted class" in table
    assert json.loads(json.dumps(word_importance_dict(frequent)))["min_count"] == 10


def test_plots_are_written_or_ask_for_the_plot_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     bow_weights: np.ndarray) -> None:
    model, weights = digits_like(tmp_path / "lin")
    jac = class_jacobians(model, ["1 " * 16, "5 " * 16])
    bow = global_bow(load_model(linear_features(tmp_path / "bow", bow_weights, np.zeros(2), "bag-of-words")),
                     random_texts(8))
    additive, _, _ = additive_model(tmp_path)
    words = word_importance(additive, random_texts(5), ExplainConfig(method="grad-x-input"), min_count=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(UsageError, match=r'pip install "blackbox-sal\[plot\]"'):
        global_bow_plot(bow, tmp_path / "bow.png")
    monkeypatch.undo()
    pytest.importorskip("matplotlib")
    assert class_jacobians_plot(jac, tmp_path / "jac.png", beside=[("weights", weights.T)]).stat().st_size > 1000
    assert global_bow_plot(bow, tmp_path / "bow.svg").read_text().lstrip().startswith("<?xml")
    assert word_importance_plot(words, tmp_path / "words.png").stat().st_size > 1000
    with pytest.raises(UsageError, match=r"\.png or \.svg"):
        global_bow_plot(bow, tmp_path / "bow.pdf")
    one = class_jacobians(model, ["1 " * 16])
    with pytest.raises(UsageError, match="shape"):
        class_jacobians_plot(one, tmp_path / "x.png", beside=[("wrong", np.zeros((2, 2)))])


# --------------------------------------------------------------------------- heavy: the references


def _need(path: Path, script: str) -> None:
    if not path.exists():
        pytest.skip(f"{path} is missing: run python models/{script}")


@pytest.mark.heavy
def test_bow_mlp_reproduces_its_reference() -> None:
    """The paper's 5.2 on models/bow-mlp over the 2,550 test snippets, b fitted on the training
    split, against reference.json (torch autograd)."""
    test, train = CACHE / "rotten-tomatoes" / "test.jsonl", CACHE / "rotten-tomatoes" / "train.jsonl"
    _need(train, "train_bow_mlp.py")
    reference = json.loads((MODELS / "bow-mlp" / "reference.json").read_text())
    arrays = np.load(MODELS / "bow-mlp" / "reference_arrays.npz")
    columns = Columns(text="text", label="label")
    result = global_bow(load_model(MODELS / "bow-mlp"), read_rows(test, columns), fit_rows=read_rows(train, columns))
    assert result.gradient.n == reference["n_test"] and not result.gradient.skipped
    np.testing.assert_allclose(result.g, arrays["g_logit_diff"], rtol=1e-4, atol=1e-5)
    for side in ("positive", "negative"):
        ours = result.top_positive if side == "positive" else result.top_negative
        assert [w for w, _ in ours] == [w for w, _ in reference["top_words"][side]]
        assert [v for _, v in ours] == pytest.approx([v for _, v in reference["top_words"][side]], abs=1e-4)
    for rule, want in reference["surrogate"].items():
        got = result.surrogate(rule)
        assert got.agreement == pytest.approx(want["agreement_with_model"], abs=1e-4), rule
        assert got.accuracy == pytest.approx(want["accuracy_on_labels"], abs=1e-4), rule
        assert got.positive_rate == pytest.approx(want["positive_rate"], abs=1e-4), rule
        assert got.b == pytest.approx(want["b"], abs=2e-3), rule
    assert result.model_accuracy == pytest.approx(reference["test_accuracy"], abs=1e-4)
    assert result.positive_rate_model == pytest.approx(reference["test_positive_rate_model"], abs=1e-4)


@pytest.mark.heavy
def test_digits_mlp_reproduces_its_reference() -> None:
    """The paper's 5.3 on models/digits-mlp over the 360 test images against reference.json."""
    data = CACHE / "digits" / "test.csv"
    _need(data, "train_digits.py")
    reference = json.loads((MODELS / "digits-mlp" / "reference.json").read_text())
    arrays = np.load(MODELS / "digits-mlp" / "reference_arrays.npz")
    columns = Columns(features=tuple(f"p{i}" for i in range(64)), label="label")
    mlp, logreg = load_model(MODELS / "digits-mlp"), load_model(MODELS / "digits-logreg")
    weights = class_jacobians(logreg, read_rows(data, columns))
    np.testing.assert_allclose(weights.jacobian, arrays["logreg_weights"] / 16, rtol=1e-5, atol=1e-7)
    for over, key in (("all", "J_all"), ("own", "J_own")):
        result = class_jacobians(mlp, read_rows(data, columns), over=over)
        assert result.n == 360
        np.testing.assert_allclose(result.jacobian, arrays[key], rtol=1e-4, atol=1e-6)
        corr = jacobian_correlation(result, weights)
        want = reference[f"pearson_{key}_vs_logreg_weights"]
        assert corr.raw == pytest.approx(want["raw"]["per_class"], abs=1e-4)
        assert corr.raw_mean == pytest.approx(want["raw"]["mean"], abs=1e-4)
        assert corr.centered == pytest.approx(want["centered"]["per_class"], abs=1e-4)
        assert corr.centered_mean == pytest.approx(want["centered"]["mean"], abs=1e-4)
