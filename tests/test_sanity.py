"""Sanity checks: cascading randomization changes what the model's output reads and nothing
else; the substituted gradient graph is exact; backends and methods agree where they must."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal import ExplainConfig, Explanation, default_model_path, explain, load_model
from blackbox_sal.evaluation.sanity import (
    TABLE,
    Cascade,
    Sanity,
    sanity,
    sanity_dict,
    sanity_plot,
    sanity_table,
    weight_layers,
)
from blackbox_sal.gradient_graph.store import cache_dir
from blackbox_sal.vocabulary.errors import UsageError

D, H = 6, 5
EMB = tiny.table(D, seed=8)
RNG = np.random.default_rng(8)
W1 = RNG.normal(0, 0.6, (D, H)).astype(np.float32)
B1 = RNG.normal(0, 0.2, H).astype(np.float32)
W2 = RNG.normal(0, 0.6, (H, 3)).astype(np.float32)
WD = RNG.normal(0, 0.6, (H, 3)).astype(np.float32)
TEXTS = ["the film was good and the plot great", "bad plot and awful film", "the plot was bad",
         "great film and good plot"]


def dead_branch_model() -> onnx.ModelProto:
    """logits = sum_s tanh(E_s W1 + b1) W2 + 0 * (sum_s tanh(E_s W1 + b1) Wd): Wd's MatMul is
    the last weight node, so the first stage re-draws Wd, which the output ignores."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("MatMul", ["E", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Tanh", ["h1"], ["h"]),
             helper.make_node("ReduceSum", ["h", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W2"], ["main"]),
             helper.make_node("MatMul", ["pooled", "Wd"], ["dead"]),
             helper.make_node("Mul", ["dead", "zero"], ["nothing"]),
             helper.make_node("Add", ["main", "nothing"], ["logits"])]
    inits = {"table": EMB, "W1": W1, "b1": B1, "W2": W2, "Wd": WD, "zero": np.array(0.0, np.float32),
             "axes": np.array([1], np.int64)}
    graph = helper.make_graph(
        nodes, "dead_branch", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.fixture(scope="module")
def dead_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write_model_dir(tmp_path_factory.mktemp("dead"), dead_branch_model(), ["a", "b", "c"])


def test_layers_run_from_the_output_down_with_biases_beside_their_weights(dead_dir: Path) -> None:
    model = load_model(dead_dir)
    layers = weight_layers(model.body)
    assert [layer.tensors for layer in layers] == [("Wd",), ("W2",), ("W1", "b1")]
    assert [layer.op for layer in layers] == ["MatMul"] * 3
    assert layers[2].parameters == D * H + H
    cascade = Cascade(model)
    assert cascade.count == 4 and cascade.describe(4) == (TABLE, ())
    # the same draw at every stage: stage 2 keeps stage 1's Wd
    np.testing.assert_array_equal(cascade.values(1)["Wd"], cascade.values(2)["Wd"])
    drawn = cascade.values(3)["W1"]
    assert drawn.dtype == np.float32 and not np.allclose(drawn, W1)
    assert abs(drawn.mean() - W1.mean()) < 0.5 and abs(drawn.std() / W1.std() - 1) < 0.6


def test_a_layer_the_output_ignores_changes_nothing(dead_dir: Path) -> None:
    """Stage 1 re-draws the dead branch: every method's scores stay exactly as they were
    (correlation 1.0). Stage 2 re-draws the live head: they change."""
    model = load_model(dead_dir)
    methods: list[ExplainConfig | str] = [ExplainConfig(method="grad-x-input"), ExplainConfig(method="ig", steps=8),
                                          "occlusion"]
    result = sanity(model, TEXTS, methods, stages=[1, 2], backends=False)
    assert [s.stage for s in result.stages] == [1, 2] and result.stages[0].tensors == ("Wd",)
    for m in result.stages[0].methods:
        assert m.spearman == pytest.approx(1.0, abs=1e-12) and m.texts == len(TEXTS) and m.failed == 0
        assert m.spearman_abs == pytest.approx(1.0, abs=1e-12)
    for m in result.stages[1].methods:
        assert m.spearman is not None and m.spearman < 0.9
    assert result.stages[0].methods[0].backend == "graph"
    assert "substituted" in result.notes[0]


def test_the_substituted_gradient_graph_is_exact_and_not_rebuilt(dead_dir: Path) -> None:
    """At every stage the graph with re-drawn values gives what finite differences of the
    randomized model give; no new graph is built or cached for it."""
    model = load_model(dead_dir)
    explain(model, TEXTS[0], ExplainConfig(method="grad-x-input"))  # the original's graph, built once
    before = sorted(cache_dir().glob("grad-*"))
    cascade = Cascade(model, seed=3)
    for stage in range(1, cascade.count + 1):
        randomized = cascade.at(stage)
        assert randomized.graph, randomized.reason
        for text in TEXTS[:2]:
            exact = explain(randomized.model, text, ExplainConfig(method="grad-x-input", backend="graph", target=1))
            fd = explain(randomized.model, text, ExplainConfig(method="grad-x-input", backend="fd", target=1))
            np.testing.assert_allclose(scores(exact), scores(fd), rtol=2e-3, atol=1e-4)
    assert sorted(cache_dir().glob("grad-*")) == before


def scores(e: Explanation) -> np.ndarray:
    return np.array([t.score for t in e.tokens])


def test_backends_agree_on_a_smooth_model_and_identical_methods_agree(tmp_path: Path) -> None:
    """graph against finite differences on a tanh MLP: rank correlation ~1, relative
    difference ~1e-4. On a linear model with a zero baseline, IG *is* grad x input."""
    w1, b1, w2 = tiny.mlp_weights(D, 7, 3, seed=8)
    smooth = load_model(tiny.write_model_dir(tmp_path / "mlp", tiny.tanh_mlp(EMB, w1, b1, w2)))
    result = sanity(smooth, TEXTS, ["grad-x-input", ExplainConfig(method="ig", steps=6)], stages=0)
    assert result.stages == ()
    for b in result.backends:  # (a repeated word ties in one backend's scores, not quite in the other's)
        assert b.texts == len(TEXTS) and b.spearman is not None and b.spearman > 0.99
        assert b.max_relative_difference is not None and b.max_relative_difference < 1e-2
    assert [b.name for b in result.backends] == ["grad-x-input", "ig"]
    with_lrp = sanity(smooth, TEXTS[:1], ["lrp-cp", "grad-x-input"], stages=0)  # LRP's rules have no fd twin
    assert [b.name for b in with_lrp.backends] == ["grad-x-input"] and with_lrp.backends[0].reason is None
    linear = load_model(tiny.write_model_dir(tmp_path / "linear", tiny.linear_sum(EMB, W1[:, :2])))
    agree = sanity(linear, TEXTS, ["grad-x-input", ExplainConfig(method="ig", steps=3), "occlusion"], stages=0,
                   backends=False)
    assert [(a.first, a.second) for a in agree.agreement] == [("grad-x-input", "ig"), ("grad-x-input", "occlusion"),
                                                              ("ig", "occlusion")]
    for a in agree.agreement:
        assert a.spearman is not None and a.spearman > 0.99 and a.texts == len(TEXTS)


def test_randomizing_the_default_model_changes_its_attributions() -> None:
    """The bundled CNN: head, three convolutions, then the embedding table. Its grad x input
    scores lose their order as the cascade goes down."""
    model = load_model(default_model_path())
    texts = ["An absolute masterpiece, I loved every minute of it.", "A dull, lifeless remake.",
             "The plot is thin, but the acting is wonderful."]
    result = sanity(model, texts, ["grad-x-input"], backends=False)
    assert [s.randomized for s in result.stages] == [
        "Gemm head.weight, head.bias", "Conv convs.2.weight, convs.2.bias", "Conv convs.1.weight, convs.1.bias",
        "Conv convs.0.weight, convs.0.bias", TABLE]
    last = result.stages[-1].methods[0]
    assert last.texts == 3 and last.spearman is not None and last.spearman < 0.5
    assert all(s.methods[0].backend == "graph" for s in result.stages)
    check_rendering(result)


def check_rendering(result: Sanity) -> None:
    table = sanity_table(result)
    assert "cascading randomization" in table and TABLE in table and "grad-x-input" in table
    data = json.loads(json.dumps(sanity_dict(result)))
    assert [s["stage"] for s in data["stages"]] == [s.stage for s in result.stages]
    assert data["layers"][0]["tensors"] == list(result.layers[0].tensors)


def test_bad_settings(dead_dir: Path, tmp_path: Path) -> None:
    model = load_model(dead_dir)
    for bad in ({"stages": 9}, {"stages": [0]}, {"stages": True}, {"agreement_texts": 0}):
        with pytest.raises(UsageError):
            sanity(model, TEXTS[:1], ["occlusion"], **bad)
    with pytest.raises(UsageError, match="random"):
        sanity(model, TEXTS[:1], ["random"])
    result = sanity(model, [*TEXTS[:2], ""], ["occlusion"], stages=1)
    assert result.failures == (("occlusion", "the text is empty", 1),)
    assert result.notes == () and result.backends == ()
    pytest.importorskip("matplotlib")
    assert sanity_plot(result, tmp_path / "cascade.svg").read_text().lstrip().startswith("<?xml")
