"""LRP as modified gradients (lrp-attn, lrp-cp): known answers and a PyTorch reference.

- On models whose path is linear, or ReLU with max pooling (the bundled word-CNN), LRP's
  rules reduce to the gradient: relevance == grad x input, exactly.
- On small BERT-, GPT-2- and Llama-style blocks written in torch and exported to ONNX, our
  modified-gradient graph equals a torch reference in which the same rules are written as
  detach tricks (lxt's efficient form): std.detach() in norms, y = f(x) passed back as
  f(x)/x, products of two activations with half the gradient to each side, and for CP-LRP
  the attention weights detached.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.gradient_graph.build import gradient_of
from blackbox_sal.surgery.lrp_rules import EPS, RULE_SETS
from blackbox_sal.surgery.names import RULES_KEY, RULES_NOTE_KEY
from blackbox_sal.vocabulary.errors import UnavailableError

REPO = Path(__file__).resolve().parents[1]
CNN = REPO / "models" / "sentiment-cnn"


# -- known answers -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lrp-attn", "lrp-cp"])
def test_linear_model_lrp_is_grad_x_input(tmp_path: Path, method: str) -> None:
    """logits = (sum_s E_s) W: the epsilon rule of a linear map is input x gradient, and the
    relevances sum to f(x) - f(0) = f(x) (no bias): a conservation gap of zero."""
    emb, w = tiny.table(6), np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "m", tiny.linear_sum(emb, w)))
    lrp = explain(model, tiny.TEXT, ExplainConfig(method=method, backend="graph", target=1))
    gxi = explain(model, tiny.TEXT, ExplainConfig(method="grad-x-input", backend="graph", target=1))
    scores = np.array([t.score for t in lrp.tokens])
    np.testing.assert_allclose(scores, [t.score for t in gxi.tokens], rtol=1e-6, atol=1e-7)
    ids = model.tokenizer.encode(tiny.TEXT).ids
    np.testing.assert_allclose(scores, emb[ids] @ w[:, 1], rtol=1e-5)
    assert lrp.convergence_delta is not None and abs(lrp.convergence_delta) < 1e-5
    assert lrp.provenance.gradient_passes == 1


def test_relu_cnn_lrp_is_grad_x_input() -> None:
    """The bundled word-CNN (Conv, ReLU, max over time, linear): the identity rule of ReLU
    and winner-take-all max pooling are its gradient, so LRP == grad x input."""
    model = load_model(CNN)
    text = "a gorgeous, witty and touching film, though the plot drags"
    for method in ("lrp-attn", "lrp-cp"):
        lrp = explain(model, text, ExplainConfig(method=method, backend="graph"))
        gxi = explain(model, text, ExplainConfig(method="grad-x-input", backend="graph"))
        np.testing.assert_allclose([t.score for t in lrp.tokens], [t.score for t in gxi.tokens],
                                   rtol=1e-5, atol=1e-6)
        assert not any("no LRP rule" in n for n in lrp.notes), lrp.notes


def test_tanh_cnn_identity_rule_closed_form(tmp_path: Path) -> None:
    """conv -> tanh -> sum -> linear: the identity rule passes tanh's relevance as tanh(c)/c,
    so relevance_i = sum over filters k, times t of x_i . K_k[t-i] * W[k, c] tanh(c_kt)/c_kt:
    here computed by hand in numpy."""
    rng = np.random.default_rng(3)
    emb, w = tiny.table(4), rng.normal(0, 0.5, (3, 2)).astype(np.float32)
    onnx_model = tiny.conv_tanh(emb, w, kernel=3)
    model = load_model(tiny.write_model_dir(tmp_path / "m", onnx_model))
    e = explain(model, tiny.TEXT, ExplainConfig(method="lrp-attn", backend="graph", target=0))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    k, kb = inits["K"].astype(np.float64), inits["kb"].astype(np.float64)
    x = emb[model.tokenizer.encode(tiny.TEXT).ids].astype(np.float64)  # [S, D]
    s = len(x)
    padded = np.concatenate([np.zeros((1, 4)), x, np.zeros((1, 4))])
    c = np.array([[np.sum(k[f] * padded[t:t + 3].T) + kb[f] for t in range(s)] for f in range(3)])  # [F, S]
    ratio = np.tanh(c) / np.where(c < 0, c - EPS, c + EPS)
    g_c = w[:, 0, None] * ratio  # the modified gradient at c [F, S]
    grad = np.zeros_like(padded)
    for f in range(3):
        for t in range(s):
            grad[t:t + 3] += g_c[f, t] * k[f].T
    want = (x * grad[1:-1]).sum(axis=1)
    np.testing.assert_allclose([t.score for t in e.tokens], want, rtol=1e-4, atol=1e-6)
    # conservation: relevances sum to f(x) minus what the biases took
    assert e.convergence_delta == pytest.approx(want.sum() - e.target_value, abs=1e-4)


def test_finite_differences_refused(tmp_path: Path) -> None:
    emb, w = tiny.table(6), np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "m", tiny.linear_sum(emb, w)))
    with pytest.raises(UnavailableError, match="backend graph"):
        explain(model, tiny.TEXT, ExplainConfig(method="lrp-attn", backend="fd"))


def test_rule_set_in_cache_key(tmp_path: Path) -> None:
    from blackbox_sal.gradient_graph.store import cache_key

    body = tiny.linear_sum(tiny.table(6), np.ones((6, 2), np.float32))
    keys = {cache_key(body, "logits", name) for name in RULE_SETS}
    assert len(keys) == len(RULE_SETS)


# -- the PyTorch reference -----------------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional
D, HEADS, FF, CLASSES = 16, 2, 32, 3


def _identity(fn: Any, z: Any, rules: str) -> Any:
    """y = fn(z); under LRP its gradient is y / (z + eps sign z) (the identity rule)."""
    y = fn(z)
    if rules == "plain":
        return y
    ratio = y / torch.where(z < 0, z - EPS, z + EPS)
    return y.detach() + ratio.detach() * (z - z.detach())


def _half(p: Any, rules: str) -> Any:
    """The uniform rule: the product's value, half the gradient to each factor."""
    return p if rules == "plain" else p.detach() + 0.5 * (p - p.detach())


def _layer_norm(ln: Any, x: Any, rules: str) -> Any:
    if rules == "plain":
        return ln(x)
    mean = x.mean(-1, keepdim=True)
    std = torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + ln.eps)
    return (x - mean) / std.detach() * ln.weight + ln.bias


def _rms_norm(x: Any, weight: Any, rules: str) -> Any:
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
    return x * (scale if rules == "plain" else scale.detach()) * weight


def _gelu_tanh(z: Any) -> Any:  # GPT-2's gelu_new, written out
    return 0.5 * z * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (z + 0.044715 * torch.pow(z, 3.0))))


def _silu(z: Any) -> Any:  # written out as the exporters see it in Llama's MLP
    return z * torch.sigmoid(z)


class Block(nn.Module):  # type: ignore[misc,name-defined]
    """One transformer encoder/decoder in the style of ``arch`` (bert: post-LN, exact GELU,
    [CLS] pooler with tanh; gpt2: pre-LN, tanh-GELU, causal, last position; llama: RMSNorm,
    SwiGLU, causal, last position). forward(x [B, S, D], mask [B, S]) -> logits [B, C]."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        torch.manual_seed({"bert": 0, "gpt2": 1, "llama": 2}[arch])
        self.arch, self.rules = arch, "plain"
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=arch != "llama") for _ in range(4))
        self.up, self.down = nn.Linear(D, FF, bias=arch != "llama"), nn.Linear(FF, D, bias=arch != "llama")
        self.gate = nn.Linear(D, FF, bias=False)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(D), nn.LayerNorm(D), nn.LayerNorm(D)
        self.w1, self.w2, self.w3 = (nn.Parameter(1 + 0.1 * torch.randn(D)) for _ in range(3))
        self.pool, self.head = nn.Linear(D, D), nn.Linear(D, CLASSES)
        for p in self.parameters():
            p.data.mul_(2.0)  # larger weights: the rules' differences well above float noise

    def norm(self, k: int, x: Any) -> Any:
        if self.arch == "llama":
            return _rms_norm(x, (self.w1, self.w2, self.w3)[k], self.rules)
        return _layer_norm((self.ln1, self.ln2, self.ln3)[k], x, self.rules)

    def attention(self, h: Any, mask: Any) -> Any:
        b, s, _ = h.shape

        def heads(t: Any) -> Any:
            return t.reshape(b, s, HEADS, D // HEADS).transpose(1, 2)

        q, k, v = heads(self.q(h)), heads(self.k(h)), heads(self.v(h))
        scores = _half(q @ k.transpose(-1, -2), self.rules) / math.sqrt(D // HEADS)
        bias = (1.0 - mask[:, None, None, :].to(h.dtype)) * -1e4
        if self.arch != "bert":
            bias = bias + torch.triu(torch.full((s, s), -1e4), diagonal=1)
        weights = torch.softmax(scores + bias, dim=-1)
        if self.rules == "cp":
            out = weights.detach() @ v
        else:
            out = _half(weights @ v, self.rules)
        return self.o(out.transpose(1, 2).reshape(b, s, D))

    def mlp(self, h: Any) -> Any:
        if self.arch == "llama":
            return self.down(_half(_identity(_silu, self.gate(h), self.rules) * self.up(h), self.rules))
        act = (lambda z: F.gelu(z)) if self.arch == "bert" else _gelu_tanh
        return self.down(_identity(act, self.up(h), self.rules))

    def forward(self, x: Any, mask: Any) -> Any:
        if self.arch == "bert":
            h = self.norm(0, x)
            h = self.norm(1, h + self.attention(h, mask))
            h = self.norm(2, h + self.mlp(h))
            return self.head(_identity(torch.tanh, self.pool(h[:, 0]), self.rules))
        h = x + self.attention(self.norm(0, x), mask)
        h = h + self.mlp(self.norm(1, h))
        return self.head(self.norm(2, h)[:, -1])


_EXPORTS: dict[tuple[str, bool], onnx.ModelProto] = {}


def _export(arch: str, dynamo: bool, tmp: Path) -> onnx.ModelProto:
    """The plain block exported with inputs_embeds, attention_mask -> logits (cached per session)."""
    if (arch, dynamo) not in _EXPORTS:
        block = Block(arch).eval()
        x, mask = torch.randn(2, 5, D), torch.ones(2, 5, dtype=torch.long)
        path = tmp / f"{arch}-{dynamo}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if dynamo:
                batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=2, max=64)
                torch.onnx.export(block, (x, mask), str(path), dynamo=True, opset_version=18,
                                  input_names=["inputs_embeds", "attention_mask"], output_names=["logits"],
                                  dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}))
            else:
                torch.onnx.export(block, (x, mask), str(path), dynamo=False, opset_version=17,
                                  input_names=["inputs_embeds", "attention_mask"], output_names=["logits"],
                                  dynamic_axes={"inputs_embeds": {0: "batch", 1: "seq"},
                                                "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}})
        _EXPORTS[arch, dynamo] = onnx.load(str(path))
    return _EXPORTS[arch, dynamo]


def _feeds(batch: int, length: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, length), np.int64)
    mask[0, -1] = 0  # one padded position: the mask's path too
    return {"inputs_embeds": rng.normal(0, 1, (batch, length, D)).astype(np.float32), "attention_mask": mask}


def _onnx_relevance(body: onnx.ModelProto, rules: str, feeds: dict[str, np.ndarray],
                    weights: np.ndarray) -> tuple[np.ndarray, onnx.ModelProto]:
    graph = gradient_of(body, "logits", [_feeds(2, 5, 10), _feeds(3, 7, 11)], RULE_SETS[rules])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    (grad,) = session.run(["grad"], {**feeds, "target_weights": weights})
    return feeds["inputs_embeds"] * grad, graph


def _torch_relevance(arch: str, rules: str, feeds: dict[str, np.ndarray], weights: np.ndarray) -> np.ndarray:
    block = Block(arch).eval()
    block.rules = {"lrp-attn": "attn", "lrp-cp": "cp", "gradient": "plain"}[rules]
    x = torch.tensor(feeds["inputs_embeds"], requires_grad=True)
    (block(x, torch.tensor(feeds["attention_mask"])) * torch.tensor(weights)).sum().backward()
    return (x * x.grad).detach().numpy()


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
@pytest.mark.parametrize("rules", ["lrp-attn", "lrp-cp", "gradient"])
def test_matches_torch_reference(tmp_path_factory: pytest.TempPathFactory, arch: str, rules: str) -> None:
    """Legacy exporter, opset 17: our rules on the ONNX graph == the torch reference (and the
    plain gradient == autograd, the control)."""
    body = _export(arch, False, tmp_path_factory.mktemp("lrp"))
    feeds = _feeds(2, 6, 1)
    weights = np.random.default_rng(2).normal(size=(2, CLASSES)).astype(np.float32)
    ours, graph = _onnx_relevance(body, rules, feeds, weights)
    want = _torch_relevance(arch, rules, feeds, weights)
    np.testing.assert_allclose(ours, want, rtol=2e-4, atol=2e-5 * float(np.abs(want).max()))
    if rules != "gradient":
        meta = {p.key: p.value for p in graph.metadata_props}
        assert meta[RULES_KEY] == rules and meta[RULES_NOTE_KEY] == "", meta
        plain, _ = _onnx_relevance(body, "gradient", feeds, weights)
        assert np.abs(plain - ours).max() > 1e-2 * np.abs(ours).max()  # the rules do change the answer


@pytest.mark.heavy
@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_matches_torch_reference_dynamo(tmp_path_factory: pytest.TempPathFactory, arch: str) -> None:
    body = _export(arch, True, tmp_path_factory.mktemp("lrp"))
    feeds = _feeds(2, 6, 1)
    weights = np.random.default_rng(2).normal(size=(2, CLASSES)).astype(np.float32)
    for rules in ("lrp-attn", "lrp-cp"):
        ours, _ = _onnx_relevance(body, rules, feeds, weights)
        want = _torch_relevance(arch, rules, feeds, weights)
        np.testing.assert_allclose(ours, want, rtol=2e-4, atol=2e-5 * float(np.abs(want).max()))


def test_fallback_named(tmp_path: Path) -> None:
    """An Exp on the path (no LRP rule, not linear): the graph says it kept its gradient,
    and the explanation carries the note."""
    emb, w = tiny.table(4), np.random.default_rng(1).normal(size=(4, 2)).astype(np.float32)
    body = tiny.regression(emb, w[:, 0])
    for node in body.graph.node:
        if node.op_type == "Tanh":
            node.op_type = "Exp"
    folder = tiny.write_model_dir(tmp_path / "m", body)
    (folder / "config.json").write_text(json.dumps({"task": "regression"}))
    model = load_model(folder)
    e = explain(model, "the film was good", ExplainConfig(method="lrp-attn", backend="graph"))
    assert any("no LRP rule for Exp (1 node)" in n for n in e.notes), e.notes


def test_prepared_folder_refused(tmp_path: Path) -> None:
    """A prepared folder keeps no ONNX body to build a rule set's graph from: one clear error."""
    from blackbox_sal.gradient_graph.store import prepare
    from blackbox_sal.vocabulary.errors import ModelError

    folder = prepare(load_model(CNN), tmp_path / "prepared")
    with pytest.raises(ModelError, match="explain the original model folder"):
        explain(load_model(folder), "a witty film", ExplainConfig(method="lrp-cp"))


@pytest.mark.heavy
@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert", "gpt2", "llama"])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_transformers_exports_recognized(tmp_path: Path, arch: str, exporter: str) -> None:
    """Tiny random transformers models (test_export_zoo's) exported by both exporters: every
    operator on the path has its LRP rule (no note of a plain-gradient fallback), and the
    rules change the answer."""
    pytest.importorskip("transformers")
    from test_export_zoo import module

    m = module(arch)
    ids = torch.randint(5, len(tiny.VOCAB), (2, 7))
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            torch.onnx.export(m, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], opset_version=17, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                            "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}})
        else:
            dims = {0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO}
            torch.onnx.export(m, (ids, torch.ones_like(ids)), str(path), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], opset_version=18, dynamo=True, dynamic_shapes=(dims, dims))
    model = load_model(tiny.write_model_dir(tmp_path / "dir", onnx.load(str(path)), with_cls=True))
    scores = {}
    for method in ("lrp-attn", "lrp-cp", "grad-x-input"):
        e = explain(model, "the film was good and the plot great", ExplainConfig(method=method, backend="graph"))
        assert not any("no LRP rule" in n for n in e.notes), e.notes
        scores[method] = np.array([t.score for t in e.tokens])
    assert np.abs(scores["lrp-attn"] - scores["grad-x-input"]).max() > 1e-3 * np.abs(scores["lrp-attn"]).max()


def test_cp_keeps_a_classifiers_softmax(tmp_path: Path) -> None:
    """CP-LRP holds attention weights constant, not every Softmax: a model whose output is
    softmax(tanh(sum_s E_s) W) gets the same relevances under both rule sets, none zero."""
    from onnx import TensorProto, helper, numpy_helper

    emb, w = tiny.table(4), np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("ReduceSum", ["E", "axes"], ["s"], keepdims=0),
             helper.make_node("Tanh", ["s"], ["t"]),
             helper.make_node("MatMul", ["t", "W"], ["z"]),
             helper.make_node("Softmax", ["z"], ["logits"], axis=-1)]
    graph = helper.make_graph(
        nodes, "softmax_head", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(emb, "table"), numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(np.array([1], np.int64), "axes")])
    body = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model = load_model(tiny.write_model_dir(tmp_path / "m", body))
    attn, cp = (np.array([t.score for t in explain(model, tiny.TEXT, ExplainConfig(method=m, target=0)).tokens])
                for m in ("lrp-attn", "lrp-cp"))
    np.testing.assert_allclose(cp, attn, rtol=1e-6)
    assert np.abs(cp).min() > 0


@pytest.mark.parametrize("method", ["lrp-attn", "lrp-cp"])
def test_json_matches_the_schema(method: str) -> None:
    """The JSON of an LRP explanation (method name, convergence_delta without a baseline) is valid."""
    jsonschema = pytest.importorskip("jsonschema")
    from blackbox_sal.render.json import render_json

    schema = json.loads((REPO / "blackbox_sal" / "render" / "explanation.schema.json").read_text())
    data = json.loads(render_json(explain(load_model(CNN), "a witty film", ExplainConfig(method=method))))
    jsonschema.validate(data, schema)
    assert data["method"] == method and "baseline_value" not in data
    assert data["convergence_delta"] == pytest.approx(sum(t["score"] for t in data["tokens"]) - data["target_value"],
                                                      abs=1e-4)
