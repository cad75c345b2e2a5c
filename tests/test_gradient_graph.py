"""Exported gradient graphs: exact gradients, checked against closed forms and finite differences."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import helper
from work import on_model

from blackbox_sal import ExplainConfig, TextModel, default_model_path, explain, load_model
from blackbox_sal.gradient_graph import store as graph_mod
from blackbox_sal.gradient_graph.build import build_gradient as build_model_gradient
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.store import gradient_session
from blackbox_sal.gradients.finite_differences import FiniteDifferences
from blackbox_sal.gradients.graph_backend import GraphBackend
from blackbox_sal.surgery.names import ALPHA, ANCHOR, DELTA, GRAD, ROW
from blackbox_sal.vocabulary.differences import step_scale
from blackbox_sal.vocabulary.errors import ModelError, UnavailableError
from blackbox_sal.vocabulary.runs import Seq, T, Work
from blackbox_sal.vocabulary.scores import ClassScore

D, H = 6, 7
RNG = np.random.default_rng(11)
TABLE = tiny.table(D)
W1, B1, W2 = tiny.mlp_weights(D, H, 3, seed=11)
TEXT = tiny.TEXT


def ids_of(text: str, cls: bool = False) -> np.ndarray:
    return np.array(tiny.tokenizer(with_cls=cls).encode(text).ids)


@dataclass(frozen=True)
class Aim:
    """One explained scalar of a loaded model over one token sequence."""

    model: TextModel
    ids: np.ndarray
    f: ClassScore

    @property
    def seq(self) -> Seq:
        return Seq(self.ids, np.zeros_like(self.ids))


def objective(model: TextModel, text: str, target: int = 0, score: str = "logit", ids: np.ndarray | None = None) -> Aim:
    ids = ids_of(text, cls=False) if ids is None else ids
    n_classes = model.forward(model.embed(ids)[None], ids, np.zeros_like(ids)).shape[1]
    return Aim(model, ids, ClassScore(target, score, n_classes))


def fd_backend(a: Aim) -> FiniteDifferences:
    return FiniteDifferences(a.f, a.seq, step_scale(a.model.embed(a.ids), 1.0), richardson=True)


def graph_backend(a: Aim) -> GraphBackend:
    return GraphBackend(a.f, a.seq, a.f.n_classes)


def on(a: Aim, work: Work[T], batch: int = 64) -> T:
    return on_model(a.model, work, batch)


def run_gradient(model: TextModel, graph: GradientSession, points: np.ndarray, ids: np.ndarray,
                 types: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return graph.gradient(model, points, ids, types, weights).astype(np.float64)


@pytest.fixture(scope="module")
def mlp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_model_dir(tmp_path_factory.mktemp("gmlp"), tiny.tanh_mlp(TABLE, W1, B1, W2), ["a", "b", "c"])


def test_mlp_graph_equals_closed_form(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    session = gradient_session(model)
    ids = ids_of(TEXT)
    x = model.embed(ids)
    points = np.stack([x, 0.5 * x, x + 0.1]).astype(np.float32)
    for c in range(3):
        w = np.zeros((3, 3))
        w[:, c] = 1
        grad = run_gradient(model, session, points, ids, np.zeros_like(ids), w)
        for p in range(3):
            np.testing.assert_allclose(grad[p], tiny.tanh_mlp_grad(points[p], W1, B1, W2, c), rtol=1e-5, atol=1e-6)
    # a margin is one run: weights +1/-1
    w = np.tile([1.0, -1.0, 0.0], (1, 1))
    margin = run_gradient(model, session, x[None], ids, np.zeros_like(ids), w)[0]
    want = tiny.tanh_mlp_grad(x, W1, B1, W2, 0) - tiny.tanh_mlp_grad(x, W1, B1, W2, 1)
    np.testing.assert_allclose(margin, want, rtol=1e-5, atol=1e-6)


def test_graph_interface(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    g = build_model_gradient(model)
    assert [i.name for i in g.graph.input] == ["inputs_embeds", "attention_mask", "target_weights"]
    assert [o.name for o in g.graph.output] == ["logits", GRAD]
    assert {op.domain for op in g.opset_import} <= {"", "ai.onnx"}
    assert not any(n.op_type == "Gather" and n.input[0] == "table" for n in g.graph.node)


@pytest.mark.parametrize("score", ["probability", "log-probability"])
def test_softmax_scores_by_chain_rule(mlp_dir: Path, score: str) -> None:
    model = load_model(mlp_dir)
    f = objective(model, TEXT, target=2, score=score)
    x = model.embed(f.ids)
    graph = on(f, graph_backend(f).gradient(x[None]))[0]
    z = np.tanh(x.astype(np.float64) @ W1 + B1).sum(0) @ W2
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    grads = np.stack([tiny.tanh_mlp_grad(x, W1, B1, W2, c) for c in range(3)])  # [C, S, D]
    dlogp = grads[2] - np.tensordot(p, grads, axes=1)  # d log p_2 / dx
    want = dlogp if score == "log-probability" else p[2] * dlogp
    np.testing.assert_allclose(graph, want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("text", ["good", "the plot", "the film was good and the plot great"])
def test_conv_with_dynamic_length_matches_finite_differences(tmp_path: Path, text: str) -> None:
    """Our stride-1 Conv rule (ConvTranspose with the forward pads) at lengths 1, 2 and 8."""
    d = tiny.write_model_dir(tmp_path / "conv", tiny.conv_tanh(TABLE, RNG.normal(size=(4, 2)).astype(np.float32)))
    model = load_model(d)
    f = objective(model, text, target=1)
    x = model.embed(f.ids)
    points = (x[None] * np.array([1.0, 0.6, 0.2])[:, None, None]).astype(np.float32)
    graph = on(f, graph_backend(f).gradient(points), batch=2)  # batches of 2 and 1
    np.testing.assert_allclose(graph, on(f, fd_backend(f).gradient(points)), rtol=1e-3, atol=1e-4)


def test_default_cnn_ig_is_complete_with_the_graph() -> None:
    """Exact gradients make IG's completeness delta much smaller than finite differences do
    on the max-pooling CNN (what is left is quadrature error at the kinks)."""
    model = load_model(default_model_path())
    text = "An absolute masterpiece, I loved every minute of it."
    by_graph = explain(model, text, ExplainConfig(method="ig", backend="graph"))
    by_fd = explain(model, text, ExplainConfig(method="ig", backend="fd"))
    gap = by_graph.target_value - by_graph.baseline_value  # type: ignore[operator]
    assert abs(by_graph.convergence_delta) < 2e-3 * abs(gap)  # type: ignore[arg-type]
    assert abs(by_graph.convergence_delta) < abs(by_fd.convergence_delta) / 5  # type: ignore[arg-type]
    top = max(by_graph.tokens, key=lambda t: t.score)
    assert top.text == "masterpiece" == max(by_fd.tokens, key=lambda t: t.score).text


def test_bert_like_graph_matches_finite_differences(tmp_path: Path) -> None:
    """Position ids from Shape(input_ids), token types, LayerNorm, masked pooling."""
    rng = np.random.default_rng(0)
    m = tiny.bert_like(TABLE, rng.normal(size=(32, D)).astype(np.float32), rng.normal(size=(2, D)).astype(np.float32),
                       rng.normal(size=(D, 2)).astype(np.float32))
    # the rules' maths, checked on the CPU: on CUDA the float32 finite differences are noisier
    # (its reductions run in another order), and the graph is checked there by verify() on load
    model = load_model(tiny.write_model_dir(tmp_path / "bert", m, with_cls=True), device="cpu")
    for text in ("good", TEXT):
        ids = ids_of(text, cls=True)
        f = objective(model, text, target=1, ids=ids)
        x = model.embed(ids)[None]
        graph = on(f, graph_backend(f).gradient(x))
        fd = on(f, fd_backend(f).gradient(x))
        np.testing.assert_allclose(graph, fd, rtol=1e-3, atol=1e-4)  # float32 FD round-off


def test_padded_batches_match_single_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    m = tiny.bert_like(TABLE, rng.normal(size=(32, D)).astype(np.float32), rng.normal(size=(2, D)).astype(np.float32),
                       rng.normal(size=(D, 2)).astype(np.float32))
    model = load_model(tiny.write_model_dir(tmp_path / "bert2", m))
    session = gradient_session(model)
    lengths = [2, 5, 9]
    rows = [rng.integers(5, len(tiny.VOCAB), n) for n in lengths]
    s = max(lengths)
    ids = np.zeros((3, s), np.int64)
    mask = np.zeros((3, s), np.int64)
    for k, r in enumerate(rows):
        ids[k, : len(r)], mask[k, : len(r)] = r, 1
    points = model.table[ids]
    feeds = {ANCHOR: points, DELTA: points, ROW: np.arange(3), ALPHA: np.zeros(3, np.float32), "input_ids": ids,
             "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
             "target_weights": np.tile([0.0, 1.0], (3, 1)).astype(np.float32)}
    assert session.path_form
    batched = session.session.run([GRAD], feeds)[0]
    for k, r in enumerate(rows):
        single = run_gradient(model, session, model.table[r][None], r, np.zeros_like(r), np.array([[0.0, 1.0]]))[0]
        np.testing.assert_allclose(batched[k, : len(r)], single, rtol=1e-5, atol=1e-6)
        assert np.all(batched[k, len(r) :] == 0)  # padded tokens are masked out of the pooling


def test_graph_ig_equals_fd_ig(mlp_dir: Path) -> None:
    model = load_model(mlp_dir)
    by_graph = explain(model, TEXT, ExplainConfig(method="ig", backend="graph", steps=16))
    by_fd = explain(model, TEXT, ExplainConfig(method="ig", backend="fd", steps=16, richardson=True))
    assert by_graph.backend == "graph" and by_fd.backend == "fd"
    np.testing.assert_allclose([t.score for t in by_graph.tokens], [t.score for t in by_fd.tokens], atol=1e-5)
    assert by_graph.settings["gradient_passes"] == 16
    assert by_graph.settings["forward_passes"] == 2  # the prediction and f(baseline)


def test_cache_reuse_and_invalidation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLACKBOX_SAL_CACHE", str(tmp_path / "cache"))
    d = tiny.write_model_dir(tmp_path / "m", tiny.tanh_mlp(TABLE, W1, B1, W2))
    gradient_session(load_model(d))
    cached = list((tmp_path / "cache").glob("grad-*.onnx"))
    assert len(cached) == 1

    def no_build(*args: object) -> None:
        raise AssertionError("built again instead of using the cache")

    monkeypatch.setattr(graph_mod, "build_gradient", no_build)
    gradient_session(load_model(d))  # from the cache
    tiny.write_model_dir(d, tiny.tanh_mlp(TABLE, W1 * 2, B1, W2))  # the model changes
    with pytest.raises((AssertionError, ModelError), match="built again"):
        gradient_session(load_model(d))


def test_shipped_gradient_model_is_used_and_checked(tmp_path: Path) -> None:
    d = tiny.write_model_dir(tmp_path / "ship", tiny.tanh_mlp(TABLE, W1, B1, W2),
                             config={"gradient_model": "grad.onnx"})
    good = build_model_gradient(load_model(d, verify=False))
    onnx.save(good, str(d / "grad.onnx"))
    e = explain(load_model(d), TEXT, ExplainConfig(method="grad-x-input", backend="graph"))
    assert e.backend == "graph"
    # a wrong graph (gradient doubled) is refused by the finite-difference check
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    for node in bad.graph.node:
        node.output[:] = ["grad_raw" if o == GRAD else o for o in node.output]
    bad.graph.initializer.append(onnx.numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    bad.graph.node.append(helper.make_node("Mul", ["grad_raw", "two"], [GRAD]))
    onnx.save(bad, str(d / "grad.onnx"))
    with pytest.raises(ModelError, match="disagrees with finite differences"):
        gradient_session(load_model(d))


def test_strided_conv_graph_over_odd_and_even_lengths(tmp_path: Path) -> None:
    model = load_model(tiny.write_model_dir(tmp_path / "strided", tiny.strided_cnn(TABLE, W2[:4])))
    for text in ("good", "a good film", "not a good film", "a good film , not a bad one"):
        f = objective(model, text)
        x = model.embed(f.ids)[None]
        blocks = np.random.default_rng(0).normal(size=x.shape)
        grad = on(f, graph_backend(f).gradient(x))
        np.testing.assert_allclose(np.einsum("psd,psd->ps", grad, blocks),
                                   on(f, fd_backend(f).path_jvp(x[0], blocks[0], np.zeros(1))), rtol=1e-3, atol=1e-5)


def test_model_without_a_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BLACKBOX_SAL_CACHE", str(tmp_path / "cache"))
    d = tiny.write_model_dir(tmp_path / "sine", tiny.unsupported_op(TABLE, W1[:, :3].copy()))
    with pytest.raises(UnavailableError, match="no gradient rule for operator 'Atan'"):
        explain(load_model(d), TEXT, ExplainConfig(method="grad-x-input", backend="graph"))

    def no_build(*args: object) -> None:
        raise AssertionError("tried to build again")

    monkeypatch.setattr(graph_mod, "build_gradient", no_build)  # the failure is remembered
    e = explain(load_model(d), TEXT, ExplainConfig(method="grad-x-input"))  # auto
    assert e.backend == "fd"
    assert any(n.startswith("finite differences were used") and "'Atan'" in n for n in e.notes)


def test_cli_grad_command(tmp_path: Path, mlp_dir: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "g.onnx"
    r = subprocess.run([sys.executable, "-m", "blackbox_sal", "grad", str(mlp_dir), "-o", str(out)],
                       capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "verified against finite differences" in r.stdout
    g = onnx.load(str(out))
    assert [o.name for o in g.graph.output][-1] == GRAD


def test_single_regression_output(tmp_path: Path) -> None:
    """A [batch] output: the graph takes weights [batch, 1]; f = sum_s tanh(x_s . w)."""
    w = RNG.normal(size=D).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "reg", tiny.regression(TABLE, w)))
    e = explain(model, TEXT, ExplainConfig(method="grad-x-input", backend="graph"))
    x = TABLE[ids_of(TEXT)].astype(np.float64)
    z = x @ w
    assert e.backend == "graph" and e.prediction.scores == pytest.approx([np.tanh(z).sum()], rel=1e-5)
    np.testing.assert_allclose([t.score for t in e.tokens], (1 - np.tanh(z) ** 2) * z, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("segment", [1, 2, 5, 7])
def test_probe_in_segments_sees_what_one_piece_sees(tmp_path: Path, segment: int) -> None:
    """A big graph is probed a segment of nodes at a time (onnxruntime's session start grows
    faster than linearly with the outputs a probe asks for): same shapes, dtypes, constants and
    small integer tensors as one run, on the bundled CNN and a BERT-like graph."""
    from blackbox_sal.gradient_graph.build import probe_feeds
    from blackbox_sal.model.probe import probe
    from blackbox_sal.surgery.gradient import forward_part

    bert = tmp_path / "bert"
    tiny.write_model_dir(bert, tiny.bert_like(TABLE, RNG.normal(size=(32, D)).astype(np.float32),
                                              RNG.normal(size=(2, D)).astype(np.float32),
                                              RNG.normal(size=(D, 3)).astype(np.float32)))
    for model in (load_model(default_model_path()), load_model(bert)):
        assert model.body is not None
        forward = forward_part(model.body, model.output)
        feeds = probe_feeds(model)
        whole, parts = probe(forward, feeds, segment=10**9), probe(forward, feeds, segment=segment)
        assert len(forward.graph.node) > segment
        assert whole.shapes == parts.shapes and whole.dtypes == parts.dtypes
        assert whole.values.keys() == parts.values.keys() and whole.small_ints.keys() == parts.small_ints.keys()
        for name, value in whole.values.items():
            np.testing.assert_array_equal(value, parts.values[name])
        for name, arrays in whole.small_ints.items():
            for a, b in zip(arrays, parts.small_ints[name], strict=True):
                np.testing.assert_array_equal(a, b)


def test_a_graph_over_the_node_limit_is_explained_by_finite_differences(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    from blackbox_sal.gradient_graph import build

    monkeypatch.setattr(build, "MAX_GRAPH_NODES", 3)
    monkeypatch.setenv("BLACKBOX_SAL_CACHE", str(tmp_path))
    model = load_model(default_model_path())
    with pytest.raises(ModelError, match="nodes; gradient graphs are built for at most 3"):
        build_model_gradient(model)
    e = explain(model, TEXT, ExplainConfig(method="saliency"))
    assert e.backend == "fd" and any("finite differences" in n for n in e.notes)
