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
    assert np.corrcoef(*ranks)[0, 1] > 0.5
    encoder = load_model(built("minilm-encoder", "build_minilm.py"))
    assert encoder.session.get_outputs()[0].shape[-1] == 384
