"""The fan form of gradient graphs (surgery.fan, gradient_graph.fan) and the engine's use of it:
the forward pass once per point, the backward once per seed row, the same numbers as the plain
graph row by row."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper

import blackbox_sal.engine.runner as runner_module
from blackbox_sal.api.explaining import PerTokenQuestion, explanation, runner
from blackbox_sal.api.per_token import explain_tokens
from blackbox_sal.engine.drive import drive_one
from blackbox_sal.engine.runner import Runner
from blackbox_sal.gradient_graph import fan as fan_module
from blackbox_sal.gradient_graph.fan import fan_session
from blackbox_sal.gradient_graph.session import FanSession
from blackbox_sal.gradient_graph.store import cache_dir, gradient_session
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.surgery import fan as surgery_fan
from blackbox_sal.surgery.fan import backward_nodes, batch_axis
from blackbox_sal.surgery.names import GRAD
from blackbox_sal.targets.per_token import find_targets
from blackbox_sal.text.tokenization import tokenize
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import ModelError
from blackbox_sal.vocabulary.runs import ArrayPoints, Forward, Gradient, PathJvp, Request, Seq

TAGGER = Path(__file__).resolve().parents[1] / "models" / "tiny-tagger"
TAGGER_TEXT = ("ada lovelace met alan turing in london and grace hopper visited new york . marie curie went to paris "
               "with ada and alan . it rained in oslo today .")
RNG = np.random.default_rng(7)
D, H, C = 6, 5, 3
TABLE = tiny.table(D)
W1 = RNG.normal(size=(D, H)).astype(np.float32)
B1 = RNG.normal(size=(H,)).astype(np.float32)
W2 = RNG.normal(size=(H, C)).astype(np.float32)
TEXT = "the film was good and the plot great"


def ids_of(text: str) -> np.ndarray:
    return np.array([tiny.VOCAB[w] for w in text.split()], np.int64)


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    return load_model(tiny.write_model_dir(tmp_path_factory.mktemp("fan_mlp"), tiny.tanh_mlp(TABLE, W1, B1, W2)))


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    rng = np.random.default_rng(3)
    pos = rng.normal(0, 0.5, (16, D)).astype(np.float32)
    types = rng.normal(0, 0.5, (2, D)).astype(np.float32)
    w = rng.normal(size=(D, C)).astype(np.float32)
    return load_model(tiny.write_model_dir(tmp_path_factory.mktemp("fan_bert"), tiny.bert_like(TABLE, pos, types, w)))


def merged_batch(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """logits = sum_s tanh(E_s) W with the tanh on a [B*S, D] view (batch merged with the
    sequence, as [B*H, S, d] attention exports merge it with the heads)."""
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["E"]),
        helper.make_node("Reshape", ["E", "flat"], ["F"]),
        helper.make_node("Tanh", ["F"], ["T"]),
        helper.make_node("Shape", ["E"], ["E_shape"]),
        helper.make_node("Reshape", ["T", "E_shape"], ["T3"]),
        helper.make_node("ReduceSum", ["T3", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
    ]
    inits = {"table": emb, "W": w, "flat": np.array([-1, emb.shape[1]], np.int64), "axes": np.array([1], np.int64)}
    return tiny._model(nodes, inits, [tiny._ids_input()], w.shape[1])


def test_batch_axis_is_the_axis_that_went_from_one_to_two() -> None:
    assert batch_axis("x", (1, 5, 16), (2, 5, 16)) == 0
    assert batch_axis("x", (5, 1, 16), (5, 2, 16)) == 1
    assert batch_axis("positions", (1, 5, 16), (1, 5, 16)) is None
    with pytest.raises(ModelError, match="merged with another axis"):
        batch_axis("heads", (4, 5, 8), (8, 5, 8))  # [B*H, S, d]
    with pytest.raises(ModelError, match="changes rank"):
        batch_axis("x", (5,), (2, 5))


def test_backward_nodes_are_those_that_depend_on_the_seed() -> None:
    g = helper.make_graph([
        helper.make_node("Tanh", ["x"], ["t"]),
        helper.make_node("Mul", ["t", "target_weights"], ["g1"]),
        helper.make_node("Sub", ["one", "t"], ["u"]),  # a rule's node reading forward tensors only
        helper.make_node("Mul", ["g1", "u"], ["grad"]),
    ], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "target_weights", "one")],
        [helper.make_tensor_value_info("grad", TensorProto.FLOAT, None)])
    assert backward_nodes(g) == [False, True, False, True]
    assert surgery_fan.crossing(helper.make_model(g)) == ["t", "u"]


def fan_and_plain(model: TextModel, points: np.ndarray, ids: np.ndarray, fan_rows: np.ndarray,
                  weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fan form's gradient at (points [P], ids [P, S]) for seed rows fan_rows, and the plain
    graph's at the same points repeated row by row."""
    fan = fan_session(model)
    assert fan is not None
    types = np.zeros_like(ids)
    got = fan.gradient(model, points, ids, types, None, fan_rows, weights)
    want = gradient_session(model).gradient(model, points[fan_rows], ids[fan_rows], types[fan_rows], weights)
    return got.astype(np.float64), want.astype(np.float64)


def test_fan_form_equals_the_closed_form_and_the_plain_graph(mlp: TextModel) -> None:
    ids = np.stack([ids_of(TEXT), ids_of("the plot was awful and the film bad")])
    points = np.stack([mlp.embed(ids[0]), 0.5 * mlp.embed(ids[1])]).astype(np.float32)
    fan_rows = np.array([1, 0, 0, 1, 1, 0, 1], np.int64)
    weights = np.eye(C)[np.arange(7) % C]
    got, want = fan_and_plain(mlp, points, ids, fan_rows, weights)
    assert got.shape == (7, 8, D)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for r, p in enumerate(fan_rows):
        np.testing.assert_allclose(got[r], tiny.tanh_mlp_grad(points[p], W1, B1, W2, r % C), rtol=1e-5, atol=1e-6)


def test_fan_form_of_a_graph_whose_backward_measures_shapes(bert: TextModel) -> None:
    """LayerNorm, positions from Shape(input_ids), a mask: the reverse rules' Shape nodes measure
    the gathered tensors (R rows), not the forward's (P rows)."""
    proto = fan_module.build_fan(bert, _path_form(bert))
    assert any(n.name.startswith("bbs_fan_measure") for n in proto.graph.node)
    ids = np.stack([ids_of(TEXT), ids_of("good and bad and great the plot was")])
    points = (bert.embed(ids) + RNG.normal(0, 0.1, (2, 8, D))).astype(np.float32)
    fan_rows = np.array([0, 1, 1, 0, 1], np.int64)
    got, want = fan_and_plain(bert, points, ids, fan_rows, RNG.normal(size=(5, C)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _path_form(model: TextModel) -> onnx.ModelProto:
    from blackbox_sal.gradient_graph.store import graph_source
    from blackbox_sal.surgery.path import path_model

    gradient_session(model)
    source = graph_source(model)
    assert source is not None
    return path_model(onnx.load_from_string(source))


class Spy:
    """Counts the fan runs and the points and seed rows of each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.runs: list[tuple[int, int]] = []
        original = Runner._fan_run

        def spy(runner: Runner, fan: FanSession, group: Any, owner: np.ndarray, row: np.ndarray,
                point: np.ndarray) -> np.ndarray:
            self.runs.append((len(np.unique(point)), len(point)))
            return original(runner, fan, group, owner, row, point)

        monkeypatch.setattr(Runner, "_fan_run", spy)


def no_fan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "fan_session", lambda model, rules="gradient": None)


def class_jacobian_and_paths(model: TextModel) -> list[Request]:
    """A class Jacobian (one point, one row per class, in one request), and three path
    requests over the same anchor and direction (separate arrays with the same bytes) at the
    same alphas with different seeds, and one at another point."""
    ids = ids_of(TEXT)
    seq = Seq(ids, np.zeros_like(ids))
    x = model.embed(ids).astype(np.float32)
    alphas = np.array([0.25, 0.5, 1.0])
    paths: list[Request] = [PathJvp(seq, np.zeros_like(x), x.copy(), alphas, np.tile(np.eye(C)[c], (3, 1)))
                            for c in range(C)]
    other = PathJvp(seq, np.zeros_like(x), 0.5 * x, alphas, np.tile(np.eye(C)[0], (3, 1)))
    return [Gradient(seq, ArrayPoints(np.repeat(x[None], C, 0)), np.eye(C)), *paths, other]


def test_engine_runs_repeated_points_through_the_fan_form(mlp: TextModel, monkeypatch: pytest.MonkeyPatch) -> None:
    requests = class_jacobian_and_paths(mlp)
    spy = Spy(monkeypatch)
    got = Runner(mlp, rows=64).execute(requests)
    assert sorted(spy.runs) == [(1, 3), (6, 12)]  # the Jacobian: 1 point; the paths: 3 + 3 points
    with monkeypatch.context() as m:
        no_fan(m)
        want = Runner(mlp, rows=64).execute(requests)
    assert len(spy.runs) == 2
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
    x = mlp.embed(ids_of(TEXT)).astype(np.float64)
    for c in range(C):  # the Jacobian's rows, and one path row: against the closed form
        np.testing.assert_allclose(got[0][c], tiny.tanh_mlp_grad(x, W1, B1, W2, c), rtol=1e-5, atol=1e-6)
        want_jvp = (tiny.tanh_mlp_grad(0.5 * x, W1, B1, W2, c) * x).sum(-1)
        np.testing.assert_allclose(got[1 + c][1], want_jvp, rtol=1e-5, atol=1e-6)


def test_groups_with_few_repeats_run_the_plain_graph(mlp: TextModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fan form's gathers cost more than the forward passes a few repeats save: a group whose
    distinct points exceed FAN_SHARE of its rows runs as before."""
    paths = class_jacobian_and_paths(mlp)[1:]
    spy = Spy(monkeypatch)
    Runner(mlp, rows=64).execute([paths[0], paths[3]])  # 6 rows, 6 points
    Runner(mlp, rows=64).execute([paths[0], paths[1], paths[3]])  # 9 rows, 6 points
    assert spy.runs == []
    Runner(mlp, rows=64).execute(paths)  # 12 rows, 6 points
    assert spy.runs == [(6, 12)]
    spy.runs.clear()  # 21 rows in runs of 4: [a a a a] [a a b b] [b b b b] [c c c c] [c c d e] [f]: the last
    requests = [*paths, *class_jacobian_and_paths(mlp)[1:4]]  # two mostly distinct, plain
    got = Runner(mlp, rows=4).execute(requests)
    assert spy.runs == [(1, 4), (2, 4), (1, 4), (1, 4)]
    no_fan(monkeypatch)
    for g, w in zip(got, Runner(mlp, rows=4).execute(requests), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


def test_small_runs_hold_few_points(mlp: TextModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are ordered by point before they are cut into runs: 3 requests x 3 alphas in runs
    of 4 rows hold at most 2 points each, not 4 (the last row, alone, runs the plain graph)."""
    requests = class_jacobian_and_paths(mlp)[1:4]
    spy = Spy(monkeypatch)
    got = Runner(mlp, rows=4).execute(requests)
    assert spy.runs == [(2, 4), (2, 4)]
    no_fan(monkeypatch)
    for g, w in zip(got, Runner(mlp, rows=4).execute(requests), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def tagger() -> TextModel:
    return load_model(TAGGER)


@pytest.mark.parametrize("method", ["grad-x-input", "ig"])
def test_per_token_targets_fanned_equal_separate_explanations(tagger: TextModel, method: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = ExplainConfig(method=method, steps=16, progress=False).validated()
    spy = Spy(monkeypatch)
    packed = explain_tokens(tagger, TAGGER_TEXT, cfg)
    k = len(packed.targets)
    assert k == 10
    forward_rows = sum(p for p, _ in spy.runs)
    assert sum(r for _, r in spy.runs) == k * (1 if method == "grad-x-input" else 16)
    assert forward_rows <= (1 if method == "grad-x-input" else 16 + len(spy.runs))  # once per point (and run)
    tokens = tokenize(tagger.tokenizer, TAGGER_TEXT, None, cfg.max_chars)
    ids, _, _ = tagger.pad(tokens.ids, tokens.type_ids)
    scores = tagger.forward(tagger.embed(ids)[None], ids, tokens.type_ids)[0].reshape(len(ids), -1)
    targets = find_targets(scores, tokens, tagger.labels, None, None, None)
    for row, target in zip(packed.matrix, targets, strict=True):
        alone = drive_one(explanation(tagger, tokens, cfg, PerTokenQuestion(tokens, target)), runner(tagger, cfg))
        want = np.array([t.score for t in alone.tokens])
        np.testing.assert_allclose(row, want, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(want))))


def test_a_fan_form_that_fails_its_check_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fan form whose gradient is off by 0.1 % is refused by the check, the reason cached, and
    the engine answers with the plain graph."""
    model = load_model(tiny.write_model_dir(tmp_path / "m", tiny.tanh_mlp(TABLE, W1 * 1.5, B1, W2)))
    made = surgery_fan.fan_model

    def off(proto: onnx.ModelProto, axes: Any) -> onnx.ModelProto:
        out = made(proto, axes)
        last = next(n for n in out.graph.node if GRAD in n.output)
        last.output[0] = "bbs_grad_exact"
        out.graph.initializer.append(onnx.numpy_helper.from_array(np.array(1.001, np.float32), "bbs_off"))
        out.graph.node.append(helper.make_node("Mul", ["bbs_grad_exact", "bbs_off"], [GRAD]))
        return out

    monkeypatch.setattr(surgery_fan, "fan_model", off)
    assert fan_session(model) is None
    reasons = [p.read_text() for p in cache_dir().glob("fan-*.failed")]
    assert any("differs from the plain graph's by 0.001" in r for r in reasons)
    requests = class_jacobian_and_paths(model)
    spy = Spy(monkeypatch)
    got = Runner(model, rows=64).execute(requests)
    assert spy.runs == []
    x = model.embed(ids_of(TEXT)).astype(np.float64)
    for c in range(C):
        np.testing.assert_allclose(got[0][c], tiny.tanh_mlp_grad(x, W1 * 1.5, B1, W2, c), rtol=1e-5, atol=1e-6)


def test_a_batch_merged_with_another_axis_refuses_the_fan_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    w = RNG.normal(size=(D, C)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "merged", merged_batch(TABLE, w)))
    with caplog.at_level("INFO", logger="blackbox_sal"):
        assert fan_session(model) is None
    assert "merged with another axis" in caplog.text
    requests = class_jacobian_and_paths(model)
    got = Runner(model, rows=64).execute(requests)
    x = model.embed(ids_of(TEXT)).astype(np.float64)
    for c in range(C):  # d/dx sum_s tanh(x_s) W[:, c] = (1 - tanh(x)^2) W[:, c]
        np.testing.assert_allclose(got[0][c], (1 - np.tanh(x) ** 2) * w[:, c], rtol=1e-5, atol=1e-6)


def test_forward_requests_that_repeat_rows_run_once(mlp: TextModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """k targets' predictions ask for the same rows: one run of the distinct rows, each request
    its own copy of the outputs; rows that differ by one number, or over other ids, still run."""
    ids = ids_of(TEXT)
    seq = Seq(ids, np.zeros_like(ids))
    x = mlp.embed(ids).astype(np.float32)
    nudged = x.copy()
    nudged[3, 2] += 1e-3
    other = Seq(ids[::-1].copy(), np.zeros_like(ids))
    requests: list[Request] = [Forward(seq, ArrayPoints(np.stack([x, 0 * x]))) for _ in range(4)]
    requests += [Forward(seq, ArrayPoints(np.stack([nudged, 0 * x]))),
                 Forward(other, ArrayPoints(np.stack([x, 0 * x])))]
    rows: list[int] = []
    original = Runner._forward

    def counted(runner: Runner, group: list[Request], pieces: Any) -> np.ndarray:
        out = original(runner, group, pieces)
        rows.append(len(out))
        return out

    monkeypatch.setattr(Runner, "_forward", counted)
    got = Runner(mlp, rows=64).execute(requests)
    assert rows == [6]  # 2 rows x 3 distinct requests
    want = [mlp.forward(cast(ArrayPoints, r.points).array, cast(Seq, r.seq).ids, cast(Seq, r.seq).type_ids)
            for r in requests]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    got[0][0, 0] = 99.0  # each its own array
    assert got[1][0, 0] != 99.0
    assert not np.array_equal(got[4], got[0]) and not np.array_equal(got[5], got[0])


def test_a_fan_form_that_cannot_be_built_leaves_the_plain_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A failure the surgery did not foresee is logged (asking for a report) and cached; the
    engine answers with the plain graph, as without the fan form."""
    model = load_model(tiny.write_model_dir(tmp_path / "m", tiny.tanh_mlp(TABLE, W1, B1 * 2, W2)))

    def broken(*_: Any) -> dict[str, int | None]:
        raise IndexError("list index out of range")

    monkeypatch.setattr(fan_module, "batch_axes", broken)
    with caplog.at_level("WARNING", logger="blackbox_sal"):
        assert fan_session(model) is None
    assert "building the fan form failed (IndexError: list index out of range); please report it" in caplog.text
    got = Runner(model, rows=64).execute(class_jacobian_and_paths(model))
    x = model.embed(ids_of(TEXT)).astype(np.float64)
    for c in range(C):
        np.testing.assert_allclose(got[0][c], tiny.tanh_mlp_grad(x, W1, B1 * 2, W2, c), rtol=1e-5, atol=1e-6)


def test_fan_form_reduces_per_token_derivatives_in_the_graph(bert: TextModel) -> None:
    """On a GPU the path form's token_jvp output [R, S] is fetched instead of grad [R, S, D]:
    the fan form's equals the host's float64 reduction of its gradient (run here on the CPU)."""
    fan = fan_session(bert)
    assert fan is not None
    on_device = FanSession(fan.session, reduce_on_device=True)
    ids = ids_of(TEXT)
    x = bert.embed(ids).astype(np.float32)
    anchors, deltas = np.stack([0 * x, x]), np.stack([x, -0.5 * x]).astype(np.float32)
    rows, alphas = np.array([1, 0, 0]), np.array([0.3, 0.6, 1.0], np.float32)
    ints = np.stack([ids] * 3), np.zeros((3, len(ids)), np.int64)
    fan_rows, weights = np.array([2, 0, 1, 1, 2, 0]), RNG.normal(size=(6, C))
    host = fan.path_jvp(bert, anchors, deltas, rows, alphas, *ints, None, fan_rows, weights)
    device = on_device.path_jvp(bert, anchors, deltas, rows, alphas, *ints, None, fan_rows, weights)
    assert host.shape == device.shape == (6, len(ids))
    np.testing.assert_allclose(device, host, rtol=1e-5, atol=1e-6 * float(np.abs(host).max()))
    plain = gradient_session(bert).path_jvp(bert, anchors, deltas, rows[fan_rows], alphas[fan_rows], ints[0][fan_rows],
                                            ints[1][fan_rows], weights)
    np.testing.assert_allclose(host, plain, rtol=1e-5, atol=1e-6 * float(np.abs(plain).max()))
