"""Opt-in (``pytest -m heavy``): real torch exports built by benchmarks/build_models.py.

BERT-style and GPT-2-style exports from transformers (legacy exporter, opset 17) and the real
all-MiniLM-L6-v2: split == original on real inputs, gradient graph == finite differences.
Skipped with a reason when the models have not been built.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from work import on_model

from blackbox_sal import load_model
from blackbox_sal.gradients.finite_differences import FiniteDifferences
from blackbox_sal.gradients.graph_backend import GraphBackend
from blackbox_sal.vocabulary.differences import step_scale
from blackbox_sal.vocabulary.runs import Seq
from blackbox_sal.vocabulary.scores import ClassScore

CACHE = Path(__file__).resolve().parent.parent / "benchmarks" / ".cache"
pytestmark = pytest.mark.heavy


@pytest.mark.parametrize("name", ["mlp", "bert", "gpt2", "minilm"])
def test_real_export_split_and_graph(name: str) -> None:
    path = CACHE / name
    if not (path / "model.onnx").is_file():
        pytest.skip(f"{path} not built: run python benchmarks/build_models.py")
    model = load_model(path)  # verifies split == original on a probe sentence
    ids = np.array(model.tokenizer.encode("the quick brown fox jumps over the lazy dog").ids)
    ids = ids[: model.max_length or len(ids)]
    types = np.zeros_like(ids)
    f, seq = ClassScore(0, "logit", 2), Seq(ids, types)
    x = model.embed(ids)[None]
    directions = np.random.default_rng(0).normal(size=x.shape).astype(np.float32)
    graph = on_model(model, GraphBackend(f, seq, f.n_classes).path_jvp(x[0], directions[0], np.zeros(1)))
    fd = on_model(model, FiniteDifferences(f, seq, step_scale(x[0], model.row_norm), richardson=True)
                  .path_jvp(x[0], directions[0], np.zeros(1)))
    np.testing.assert_allclose(graph, fd, rtol=1e-2, atol=1e-3)
