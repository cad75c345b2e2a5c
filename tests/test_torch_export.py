"""Opt-in (``pytest -m heavy``, needs the [torch] extra): export_torch writes a model directory
whose shipped gradient graph equals torch autograd, for dynamic batch sizes and lengths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.gradient_graph.store import gradient_session

pytestmark = pytest.mark.heavy
torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
nn = torch.nn
D = 16


class StridedCNN(nn.Module):  # a stride-2 convolution: no gradient graph from the ONNX file alone
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(D, 8, 3, padding=1, stride=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x.transpose(1, 2))).mean(2))


class TinyBert(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=32, hidden_size=D, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=64)
        self.bert = BertModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(D, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.bert(inputs_embeds=x, attention_mask=mask).last_hidden_state[:, 0])


@pytest.mark.parametrize("kind", ["cnn", "bert"])
def test_exported_gradient_graph_equals_autograd(tmp_path: Path, kind: str) -> None:
    from blackbox_sal.gradient_graph.torch_export import export_torch

    if kind == "bert":
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    module = StridedCNN() if kind == "cnn" else TinyBert()
    table = tiny.table(D)
    tiny.tokenizer(with_cls=True).save(str(tmp_path / "tokenizer.json"))
    folder = export_torch(module, table, tmp_path / "tokenizer.json", tmp_path / kind, labels=["a", "b", "c"],
                          max_length=64)
    model = load_model(folder)
    session = gradient_session(model)  # the shipped graph, verified against finite differences
    assert model.config.gradient_model == "grad.onnx"
    rng = np.random.default_rng(1)
    for batch, length in ((1, 5), (3, 9), (2, 20)):
        ids = rng.integers(4, table.shape[0], length)
        points = (table[ids][None] + rng.normal(0, 0.1, (batch, length, D))).astype(np.float32)
        weights = rng.normal(size=(batch, 3))
        grad = session.gradient(model, points, ids, np.zeros_like(ids), weights).astype(np.float64)
        x = torch.from_numpy(points).requires_grad_(True)
        out = module(x, torch.ones(batch, length, dtype=torch.long))
        (want,) = torch.autograd.grad((out * torch.from_numpy(weights).float()).sum(), x)
        np.testing.assert_allclose(grad, want.numpy(), rtol=1e-4, atol=1e-6)
    e = explain(model, tiny.TEXT, ExplainConfig(method="ig", backend="graph", steps=16))
    assert e.backend == "graph"
    assert abs(e.convergence_delta or 0.0) < 1e-3 * max(1.0, abs(e.target_value - (e.baseline_value or 0.0)))
