"""The gradient graph's check against finite differences on a model with kinks
(:mod:`blackbox_sal.gradient_graph.verify`): a direction where finite differences at three step
sizes disagree is inconclusive, not a failure; a wrong graph still fails where they can judge."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import helper, numpy_helper

from blackbox_sal import load_model
from blackbox_sal.gradient_graph.build import build_gradient
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.verify import LADDER, VERIFY_RTOL, Direction, judge, verify, ways
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.surgery.names import GRAD
from blackbox_sal.vocabulary.errors import ModelError

D, H, C = 8, 1024, 3


def kinked_cnn(seed: int = 0) -> onnx.ModelProto:
    """attacut-c's shape in small: Conv (1024 channels, kernel 3) -> ReLU -> max over time ->
    linear. Piecewise linear with a kink wherever a channel crosses zero or the max changes
    position: with 1024 channels, kinks lie within the check's step in many directions."""
    rng = np.random.default_rng(seed)
    table = rng.normal(0, 1.0, (len(tiny.VOCAB), D)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("Transpose", ["E"], ["Et"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["Et", "K", "kb"], ["c"], pads=[1, 1], kernel_shape=[3]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMax", ["r"], ["pooled"], axes=[2], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"])]
    inits = {"table": table, "K": rng.normal(0, 1.0, (H, D, 3)).astype(np.float32),
             "kb": np.zeros(H, np.float32), "W": rng.normal(0, 1.0, (H, C)).astype(np.float32)}
    return tiny._model(nodes, inits, [tiny._ids_input()], C)


@pytest.fixture(scope="module")
def kinked(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextModel, onnx.ModelProto]:
    model = load_model(tiny.write_model_dir(tmp_path_factory.mktemp("kinks") / "m", kinked_cnn()))
    return model, build_gradient(model)


def test_a_correct_graph_refused_before_passes_now(kinked: tuple[TextModel, onnx.ModelProto]) -> None:
    model, proto = kinked
    directions = verify(model, GradientSession.create(proto.SerializeToString(), model))
    assert len(directions) == 12
    # the former rule (Richardson on h and h/2 in every direction, at most 2 of 12 off) refused it
    assert sum(d.central > VERIFY_RTOL for d in directions) > len(directions) // 6
    conclusive = [d for d in directions if d.conclusive]
    assert len(conclusive) >= 6 and sum(not d.agrees for d in conclusive) <= 1, directions
    assert any(not d.conclusive for d in directions)  # and kinks did sit within the step


@pytest.mark.parametrize("factor", [1.1, 0.97])
def test_a_wrong_graph_still_fails(kinked: tuple[TextModel, onnx.ModelProto], factor: float) -> None:
    """The same graph with its gradient scaled (a seed off by 10 %, or by 3 %)."""
    model, good = kinked
    bad = onnx.ModelProto()
    bad.CopyFrom(good)
    for node in bad.graph.node:
        node.output[:] = ["grad_raw" if o == GRAD else o for o in node.output]
    bad.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "factor"))
    bad.graph.node.append(helper.make_node("Mul", ["grad_raw", "factor"], [GRAD]))
    with pytest.raises(ModelError, match="disagrees with finite differences on cpu in \\d+ of \\d+ directions they "
                                         "can judge"):
        verify(model, GradientSession.create(bad.SerializeToString(), model))


def test_a_smooth_model_is_judged_in_every_direction(tmp_path: Path) -> None:
    table = tiny.table(D)
    w = np.random.default_rng(1).normal(0, 0.5, (4, C)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "smooth", tiny.conv_tanh(table, w)))
    directions = verify(model, GradientSession.create(build_gradient(model).SerializeToString(), model))
    assert all(d.conclusive and d.agrees for d in directions)
    assert all(d.central <= VERIFY_RTOL for d in directions)  # as the former rule judged it


def test_ways_on_closed_forms() -> None:
    """A quadratic: every way is stable, the central one exact. A kink at distance d on the
    forward side, inside the ladder: forward unstable, backward stable at the left slope."""
    steps = 1e-2 * LADDER
    def f(t: np.ndarray | float) -> np.ndarray:  # a closed form, f'(0) = 3
        return np.asarray(3.0 * t + 5.0 * np.square(t))

    est, spread = ways(np.array([f(0.0)]), f(steps)[None], f(-steps)[None], steps)
    assert est[0, 0] == pytest.approx(3.0, abs=1e-12) and np.all(spread[0] < 0.2)
    d = 0.6e-2  # between the two largest steps: slope 3 left of d, 1 right of it

    def g(t: np.ndarray) -> np.ndarray:
        return np.where(t < d, 3.0 * t, 3.0 * d + (t - d))

    est, spread = ways(np.array([0.0]), g(steps)[None], g(-steps)[None], steps)
    # forward at 1e-2: (3d + (1e-2 - d)) / 1e-2 = 2.2, then 3 and 3; central 2.6, then 3 and 3
    assert spread[0, 1] == pytest.approx(0.8) and spread[0, 0] == pytest.approx(0.4)
    assert spread[0, 2] == pytest.approx(0.0, abs=1e-12) and est[0, 2] == pytest.approx(3.0)


def test_the_verdict() -> None:
    good, off, unsure = Direction(1e-4, True), Direction(0.05, True), Direction(0.05, False)
    judge((good,) * 12, "cpu")
    judge((good,) * 6 + (unsure,) * 6, "cpu")  # half conclusive, all agreeing: passes
    judge((good,) * 10 + (off,) * 2, "cpu")  # at most one in six may miss (a kink at the point itself)
    with pytest.raises(ModelError, match="in 3 of 12 directions they can judge"):
        judge((good,) * 9 + (off,) * 3, "cpu")
    with pytest.raises(ModelError, match="cannot be checked on cpu: finite differences at three step sizes "
                                         "disagree in 7 of 12 directions"):
        judge((good,) * 5 + (unsure,) * 7, "cpu")
