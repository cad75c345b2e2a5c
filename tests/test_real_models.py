"""Opt-in (``pytest -m heavy``): the real models built by models/build_minilm.py and
models/build_smollm2.py into models/.cache; each test skips with the command to run when its
model has not been built."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blackbox_sal import ExplainConfig, explain, load_model

CACHE = Path(__file__).resolve().parent.parent / "models" / ".cache"
pytestmark = pytest.mark.heavy


def built(name: str, script: str) -> Path:
    path = CACHE / name
    if not (path / "model.onnx").is_file():
        pytest.skip(f"{path} not built: run python models/{script}")
    return path


def test_smollm2_says_paris_and_its_gradient_graph_is_exact() -> None:
    model = load_model(built("smollm2-135m", "build_smollm2.py"))
    assert model.task == "next-token"
    prompt = "The capital of France is"
    graph = explain(model, prompt, ExplainConfig(method="grad-x-input", backend="graph"))
    assert graph.prediction.label == " Paris" and graph.target.label == " Paris"
    assert graph.prediction.top[1].label == " the"
    fd = explain(model, prompt, ExplainConfig(method="grad-x-input", backend="fd", richardson=True))
    np.testing.assert_allclose([t.score for t in graph.tokens], [t.score for t in fd.tokens], rtol=1e-2, atol=1e-2)
    london = explain(model, prompt, ExplainConfig(method="grad-x-input", target="London"))
    assert london.target.label == " London"


def test_smollm2_4bit_weight_only_is_explained_with_exact_gradients() -> None:
    """MatMulNBits (4-bit weights, float activations): loaded as the same function (checked
    against the file at load), gradient graph verified, graph == finite differences."""
    model = load_model(built("smollm2-135m-q4", "build_smollm2.py"))
    assert model.weight_only == ("MatMulNBits",) and model.quantized == ()
    prompt = "The capital of France is"
    graph = explain(model, prompt, ExplainConfig(method="grad-x-input", backend="graph"))
    assert graph.prediction.label == " Paris"
    assert graph.notes[0].startswith("the model's low-bit weights (MatMulNBits)")
    fd = explain(model, prompt, ExplainConfig(method="grad-x-input", backend="fd", richardson=True))
    np.testing.assert_allclose([t.score for t in graph.tokens], [t.score for t in fd.tokens], rtol=1e-2, atol=1e-2)


def test_minilm_sentiment_fp32_graph_and_int8_finite_differences() -> None:
    fp32 = load_model(built("minilm-sentiment", "build_minilm.py"))
    int8 = load_model(built("minilm-sentiment-int8", "build_minilm.py"))
    text = "A gorgeous, witty, seductive movie."
    a = explain(fp32, text, ExplainConfig(method="ig", steps=32))
    assert a.backend == "graph" and a.prediction.label == "fresh"
    assert abs(a.convergence_delta or 0) < 0.01 * abs(a.target_value - (a.baseline_value or 0))
    b = explain(int8, text, ExplainConfig(method="ig", steps=16, target="fresh"))
    assert b.backend == "fd" and any(n.startswith("the model is quantized") for n in b.notes)
    ranks = [np.argsort(np.argsort([t.score for t in e.tokens if not t.special])) for e in (a, b)]
    assert np.corrcoef(ranks[0], ranks[1])[0, 1] > 0.5
    encoder = load_model(built("minilm-encoder", "build_minilm.py"))
    assert encoder.session.get_outputs()[0].shape[-1] == 384


def test_minilm_qdq_float_twin_has_a_verified_graph_close_to_fp32() -> None:
    """quantize_static's QDQ MiniLM: finite differences by default, and a float twin whose
    gradient graph is built and verified; its IG ranks tokens like the fp32 model's."""
    fp32 = load_model(built("minilm-sentiment", "build_minilm.py"))
    qdq_dir = built("minilm-sentiment-qdq", "build_minilm.py")
    assert "QuantizeLinear" in load_model(qdq_dir).quantized
    twin = load_model(qdq_dir, dequantize=True)
    text = "The acting is wooden and the plot makes no sense."
    a = explain(fp32, text, ExplainConfig(method="ig", steps=32))
    b = explain(twin, text, ExplainConfig(method="ig", steps=32, target=a.target.index))
    assert b.backend == "graph" and abs(b.convergence_delta or 0) < 0.01 * abs(b.target_value - (b.baseline_value or 0))
    ranks = [np.argsort(np.argsort([t.score for t in e.tokens if not t.special])) for e in (a, b)]
    assert np.corrcoef(ranks[0], ranks[1])[0, 1] > 0.8


def test_real_tasks_end_to_end() -> None:
    """Generation on SmolLM2; similarity, multiple choice and a long text on MiniLM."""
    from blackbox_sal import explain_choices, explain_generation, explain_similarity

    lm = load_model(built("smollm2-135m", "build_smollm2.py"))
    g = explain_generation(lm, "The capital of France is", 2, ExplainConfig(method="grad-x-input"))
    assert g.generated[0].label == " Paris" and len(g.steps) == 2 and len(g.steps[1].tokens) == 6

    encoder = load_model(built("minilm-encoder", "build_minilm.py"))
    sim = explain_similarity(encoder, "A gorgeous, witty movie.", "A beautiful and clever film.",
                             ExplainConfig(method="ig", steps=32))
    assert 0.5 < sim.cosine < 1
    for side in sim.texts:
        assert side.backend == "graph" and abs(side.convergence_delta or 0) < 1e-3

    sentiment = load_model(built("minilm-sentiment", "build_minilm.py"))
    mc = explain_choices(sentiment, "After two hours of this film I felt",
                         ["delighted and moved.", "bored and cheated."],
                         ExplainConfig(method="grad-x-input", target="fresh"))
    assert mc.predicted == 0 and (mc.choices[0].value or 0.0) > (mc.choices[1].value or 0.0)

    review = " ".join(["The first hour is slow and the jokes fall flat, but the last act is wonderful."] * 25)
    long = explain(sentiment, review, ExplainConfig(method="grad-x-input", long="window"))
    assert long.windows is not None and len(long.windows) == 3 and long.windows[-1].end == len(review)
    assert len(long.tokens) == len(sentiment.tokenizer.encode(review).ids)
