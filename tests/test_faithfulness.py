"""Faithfulness (ERASER's comprehensiveness and sufficiency, deletion and insertion curves,
leave-one-out correlation, IG completeness) against closed forms on tiny models."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal import ExplainConfig, load_model
from blackbox_sal.evaluation.faithfulness import (
    Faithfulness,
    MethodFaithfulness,
    bin_size,
    curve_size,
    faithfulness,
    faithfulness_dict,
    faithfulness_plot,
    faithfulness_table,
    removals,
    trapezoid,
)
from blackbox_sal.text.tokenization import tokenize
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.runs import Forward, Request, drive

D = 6
TABLE = tiny.table(D, seed=5)  # row 0 ([PAD]) is zero: the pad baseline removes a token's contribution
W = np.random.default_rng(5).normal(0, 1.0, (D, 2)).astype(np.float32)
TEXTS = ["the film was good and the plot great", "bad plot and awful film", "great film", "the plot was bad",
         "good good bad and the film"]


def first_token_model() -> onnx.ModelProto:
    """logits = E[first token] @ W: the model reads one position only."""
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("Gather", ["E", "zero"], ["first"], axis=1),
             helper.make_node("MatMul", ["first", "W"], ["logits"])]
    graph = helper.make_graph(
        nodes, "first_token", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(W, "W"),
         numpy_helper.from_array(np.array(0, np.int64), "zero")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", tiny.OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def row(result: Faithfulness, name: str) -> MethodFaithfulness:
    return next(m for m in result.methods if m.name == name)


def test_a_model_that_reads_one_token(tmp_path: Path) -> None:
    """The right explanation (occlusion ranks the first token first) removes exactly that
    token in every bin: comprehensiveness is f(x) - f(x without it) at every bin, the most
    any ranking can reach, and sufficiency is 0. A random ranking scores lower, and higher."""
    model = load_model(tiny.write_model_dir(tmp_path / "first", first_token_model()))
    result = faithfulness(model, TEXTS, ["occlusion", "random"], score="probability")
    drops = []
    for text in TEXTS:
        p = softmax(TABLE[tiny.VOCAB[text.split()[0]]].astype(np.float64) @ W)
        drops.append(p.max() - 0.5)  # the PAD row is zero: both logits 0, probability 1/2
    right, rand = row(result, "occlusion"), row(result, "random")
    assert right.texts == rand.texts == len(TEXTS) and right.failed == 0
    np.testing.assert_allclose(right.comprehensiveness, [np.mean(drops)] * 5, rtol=1e-5)
    np.testing.assert_allclose(right.sufficiency, 0.0, atol=1e-6)
    assert right.loo_spearman == pytest.approx(1.0) and right.loo_texts == len(TEXTS)
    assert rand.comprehensiveness_aopc is not None and right.comprehensiveness_aopc is not None
    assert rand.sufficiency_aopc is not None and right.sufficiency_aopc is not None
    assert rand.comprehensiveness_aopc < right.comprehensiveness_aopc - 0.01
    assert rand.sufficiency_aopc > right.sufficiency_aopc + 0.01
    for m in result.methods:  # AOPC is the mean over the bins
        assert m.comprehensiveness_aopc == pytest.approx(float(np.mean(m.comprehensiveness)), rel=1e-12)
        assert m.sufficiency_aopc == pytest.approx(float(np.mean(m.sufficiency)), rel=1e-12)
    assert right.backend == "none" and rand.backend is None and rand.seconds_per_text is None


def contributions(text: str, target: int) -> np.ndarray:
    """Each token's exact share of the linear model's logit: x_i . W[:, target]."""
    return TABLE[tokenize(tiny.tokenizer(), text, None).ids].astype(np.float64) @ W[:, target]


def test_curves_and_bins_of_a_linear_model_have_closed_forms(tmp_path: Path) -> None:
    """logits = sum_i x_i W, PAD row zero: removing a set R of tokens lowers the logit by the
    sum of their contributions c_i, and grad x input scores are exactly the c_i. So every bin
    and curve point, and the areas, follow from the sorted contributions."""
    model = load_model(tiny.write_model_dir(tmp_path / "linear", tiny.linear_sum(TABLE, W)))
    points = 5
    result = faithfulness(model, [*TEXTS, ""], ["grad-x-input", ExplainConfig(method="ig", steps=4), "occlusion"],
                          curve_points=points, score="logit")
    fractions = np.linspace(0, 1, points)
    assert result.fractions == pytest.approx(tuple(fractions)) and result.score == "logit"
    comp, suff, dele, ins = [], [], [], []
    for text in TEXTS:
        logits = TABLE[tokenize(tiny.tokenizer(), text, None).ids].astype(np.float64).sum(0) @ W
        c = contributions(text, int(np.argmax(logits)))
        top, n, total = np.sort(c)[::-1], len(c), c.sum()
        comp.append([top[:bin_size(b, n)].sum() for b in result.bins])
        suff.append([total - top[:bin_size(b, n)].sum() for b in result.bins])
        dele.append([total - top[:curve_size(q, n)].sum() for q in fractions])
        ins.append([top[:curve_size(q, n)].sum() for q in fractions])
    for name in ("grad-x-input", "ig", "occlusion"):  # on a linear model the three rank alike
        m = row(result, name)
        assert m.texts == len(TEXTS) and m.failures == (("the text is empty", 1),)
        np.testing.assert_allclose(m.comprehensiveness, np.mean(comp, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.sufficiency, np.mean(suff, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.deletion, np.mean(dele, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.insertion, np.mean(ins, 0), rtol=1e-5, atol=1e-6)
        assert m.deletion_area == pytest.approx(trapezoid(fractions, np.mean(dele, 0)), rel=1e-5)
        assert m.insertion_area == pytest.approx(trapezoid(fractions, np.mean(ins, 0)), rel=1e-5)
        # leave-one-out is occlusion; here all three are c_i (a repeated word ties exactly in the
        # scores, within float32 rounding in the re-runs, hence not exactly 1)
        assert m.loo_spearman is not None and m.loo_spearman > 0.99
    assert trapezoid([0, 0.5, 1], np.array([1.0, 0.0, 1.0])) == pytest.approx(0.5)
    ig, gxi = row(result, "ig"), row(result, "grad-x-input")
    assert ig.completeness_texts == len(TEXTS) and ig.completeness_max is not None and ig.completeness_max < 1e-5
    assert gxi.completeness_mean is None and gxi.completeness_texts == 0
    assert gxi.gradient_passes == 1.0 and gxi.backend == "graph" and ig.gradient_passes == 4.0
    assert gxi.seconds_per_text is not None and gxi.seconds_per_text > 0


def test_every_removal_of_a_text_is_one_forward_request() -> None:
    """One text's bins, curve points and leave-one-out copies go to the engine as one Forward
    request of embedding rows (tokens replaced by the baseline row, never re-tokenized)."""
    from types import SimpleNamespace

    tokens = tokenize(tiny.tokenizer(), TEXTS[0], None)
    fake = SimpleNamespace(pad=lambda ids, types: (ids, types, None), embed=lambda ids: TABLE[ids],
                           tokenizer=tiny.tokenizer(), table=TABLE)
    asked: list[Request] = []

    def answer(request: Request) -> np.ndarray:
        asked.append(request)
        rows = request.points.take(0, request.points.n).astype(np.float64)
        return rows.sum(1) @ W

    scores = contributions(TEXTS[0], 0)
    done = drive(removals(fake, tokens, scores, 0, (0.1, 0.5), (0.0, 0.5, 1.0), "logit"),  # type: ignore[arg-type]
                 answer)
    assert len(asked) == 1 and isinstance(asked[0], Forward)
    n = len(tokens)
    assert asked[0].n == 2 + n + 3  # x, all removed, each one removed, top 4 removed, top 1 / 4 kept (rest shared)
    top = np.sort(scores)[::-1]
    np.testing.assert_allclose(done.comprehensiveness, [top[:1].sum(), top[:4].sum()], rtol=1e-6)
    np.testing.assert_allclose(done.loo, scores, rtol=1e-5)
    np.testing.assert_allclose(done.deletion, [scores.sum(), top[4:].sum(), 0.0], atol=1e-6)


def test_rendering_and_bad_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(tiny.write_model_dir(tmp_path / "linear", tiny.linear_sum(TABLE, W)))
    result = faithfulness(model, TEXTS[:3], ["grad-x-input", "random"], curve_points=3)
    table = faithfulness_table(result)
    assert "grad-x-input" in table and "random" in table and "AOPC" in table and "probability" in table
    data = faithfulness_dict(result)
    assert json.loads(json.dumps(data))["methods"][0]["comprehensiveness_aopc"] == pytest.approx(
        result.methods[0].comprehensiveness_aopc)
    assert data["methods"][1]["settings"] is None and len(data["methods"][0]["deletion"]) == 3
    for bad in ({"bins": ()}, {"bins": (0.0, 0.5)}, {"curve_points": 1}, {"score": "logits"},
                {"baseline": "nonexistent-token"}):
        with pytest.raises(UsageError):
            faithfulness(model, TEXTS[:1], ["occlusion"], **bad)
    with pytest.raises(UsageError, match="unknown method"):
        faithfulness(model, TEXTS[:1], ["integrated-gradients"])
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UsageError, match=r'pip install "blackbox-sal\[plot\]"'):
        faithfulness_plot(result, tmp_path / "curves.png")


def test_plot_writes_the_curves(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    model = load_model(tiny.write_model_dir(tmp_path / "linear", tiny.linear_sum(TABLE, W)))
    result = faithfulness(model, TEXTS[:2], ["occlusion", "random"], curve_points=3)
    out = faithfulness_plot(result, tmp_path / "curves.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_bin_and_curve_sizes() -> None:
    assert [bin_size(b, 10) for b in (0.01, 0.05, 0.1, 0.2, 0.5)] == [1, 1, 1, 2, 5]
    assert [bin_size(b, 1) for b in (0.01, 0.5, 1.0)] == [1, 1, 1]
    assert bin_size(0.2, 12) == math.ceil(2.4)
    assert [curve_size(q, 5) for q in (0.0, 0.25, 0.5, 0.75, 1.0)] == [0, 1, 3, 4, 5]
