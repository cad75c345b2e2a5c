"""Exact Shapley values and the sampling methods (kernel-shap, permutation, lime) against known
answers: a linear model's contributions, the Shapley axioms, exact enumeration, convergence,
and the engine's packed runs against one row at a time."""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import permutations
from math import factorial
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny
from onnx import TensorProto, helper, numpy_helper
from scipy.stats import spearmanr
from test_shipped import pipeline
from work import sync

from blackbox_sal.api.explaining import explain, explain_many
from blackbox_sal.cli import main
from blackbox_sal.evaluation.faithfulness import faithfulness, faithfulness_dict, faithfulness_table, shapley_agreement
from blackbox_sal.evaluation.sanity import sanity
from blackbox_sal.gradients.backend import ValuesOnly
from blackbox_sal.methods import METHODS
from blackbox_sal.methods.attribution import Attribution, Problem
from blackbox_sal.methods.coalitions import players
from blackbox_sal.methods.owen import hierarchy, term_count
from blackbox_sal.methods.shapley import MAX_PLAYERS, all_masks, shapley_from_table
from blackbox_sal.model.files import default_model_path
from blackbox_sal.model.loading import load_model
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.render.json import render_json
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import UsageError
from blackbox_sal.vocabulary.scores import ClassScore

Scalar = Callable[[np.ndarray], np.ndarray]
SHAPLEY_METHODS = ("shapley", "kernel-shap", "permutation")
SAMPLED = ("kernel-shap", "permutation", "lime")


def run(f: Scalar, x: np.ndarray, base: np.ndarray | None = None, word_ids: np.ndarray | None = None,
        pieces: tuple[str, ...] | None = None, **cfg: object) -> Attribution:
    """A method on numpy f (points [N, S, D] -> [N]) at x, through a values-only backend."""
    x = np.asarray(x, np.float32)
    base = np.zeros_like(x) if base is None else np.asarray(base, np.float32)
    config = ExplainConfig(**cfg).validated()  # type: ignore[arg-type]
    problem = Problem(ValuesOnly(ClassScore(0), None), x, base, np.zeros(len(x), bool), float(f(x[None])[0]),
                      np.ones(len(x)), config, None, 64, None, word_ids, pieces)
    return sync(METHODS[config.method].run(problem), f)


def brute_force_shapley(v: Callable[[frozenset[int]], float], n: int) -> np.ndarray:
    """Shapley values as the mean marginal contribution over all n! orders (n small)."""
    phi = np.zeros(n)
    for order in permutations(range(n)):
        before: set[int] = set()
        for i in order:
            phi[i] += v(frozenset(before | {i})) - v(frozenset(before))
            before.add(i)
    return phi / factorial(n)


RNG = np.random.default_rng(11)
A, B = RNG.normal(0, 1, (3, 5)), RNG.normal(0, 1, 5)
X = RNG.normal(0, 1, (6, 3)).astype(np.float32)


def nonlinear(points: np.ndarray) -> np.ndarray:
    """A model of 1..n tokens with interactions of every order (a tanh of a sum over tokens;
    pairwise-only games are solved exactly by paired KernelSHAP, so they would prove little)."""
    p = points.astype(np.float64)
    h = np.tanh(p @ A + B).sum(axis=1)
    return np.asarray(2 * np.tanh(0.3 * h @ np.arange(1, 6)) + np.tanh(p[:, 0] @ A[:, 0]) * h[:, 1], np.float64)


def values_of(f: Scalar, x: np.ndarray, base: np.ndarray) -> Callable[[frozenset[int]], float]:
    def v(present: frozenset[int]) -> float:
        point = np.array([x[k] if k in present else base[k] for k in range(len(x))], np.float32)
        return float(f(point[None])[0])
    return v


def test_the_exact_formula_equals_the_mean_over_every_order() -> None:
    exact = run(nonlinear, X, method="shapley", players="tokens")
    expected = brute_force_shapley(values_of(nonlinear, X, np.zeros_like(X)), len(X))
    np.testing.assert_allclose(exact.scores, expected, rtol=1e-9, atol=1e-9)
    table = np.arange(8.0) ** 2  # v(c) = c^2 over 3 players: phi = known by hand
    by_hand = brute_force_shapley(lambda s: float(sum(1 << i for i in s)) ** 2, 3)
    np.testing.assert_allclose(shapley_from_table(table, 3), by_hand)
    assert all_masks(2).tolist() == [[False, False], [True, False], [False, True], [True, True]]


@pytest.mark.parametrize("method", [*SHAPLEY_METHODS])
def test_efficiency_scores_add_up_to_f_x_minus_f_baseline(method: str) -> None:
    base = np.full_like(X, 0.2)
    out = run(nonlinear, X, base, method=method, players="tokens", samples=3)
    gap = float(nonlinear(X[None])[0] - nonlinear(base[None])[0])
    assert out.scores.sum() == pytest.approx(gap, abs=1e-9)
    assert out.baseline_value == pytest.approx(float(nonlinear(base[None])[0]))
    assert abs(out.delta or 0.0) < 1e-9


def test_lime_is_not_efficient_and_says_by_how_much() -> None:
    out = run(nonlinear, X, method="lime", players="tokens", samples=20)
    gap = float(nonlinear(X[None])[0] - nonlinear(np.zeros_like(X)[None])[0])
    assert out.delta == pytest.approx(out.scores.sum() - gap, abs=1e-9)
    assert abs(out.delta or 0.0) > 1e-3


def symmetric_with_a_null_player(points: np.ndarray) -> np.ndarray:
    """Tokens 0 and 1 enter alike (through their sum), token 2 never matters, token 3 interacts."""
    p = points[:, :, 0].astype(np.float64)
    return np.asarray(np.tanh(p[:, 0] + p[:, 1]) * (1 + p[:, 3]) + p[:, 3] ** 2, np.float64)


SYM_X = np.array([[0.7], [0.7], [5.0], [-0.4]], np.float32)


def test_symmetric_players_share_and_a_null_player_gets_nothing() -> None:
    exact = run(symmetric_with_a_null_player, SYM_X, method="shapley", players="tokens").scores
    assert exact[0] == pytest.approx(exact[1], abs=1e-12) and exact[0] != 0
    assert exact[2] == 0.0
    for seed in range(3):  # every order gives a null player a zero contribution
        perm = run(symmetric_with_a_null_player, SYM_X, method="permutation", players="tokens", samples=2, seed=seed)
        assert perm.scores[2] == 0.0


def test_kernel_shap_with_a_budget_of_every_coalition_is_exact() -> None:
    exact = run(nonlinear, X, method="shapley", players="tokens")
    covered = run(nonlinear, X, method="kernel-shap", players="tokens", samples=11)  # 66 >= 2^6 - 2 = 62
    np.testing.assert_allclose(covered.scores, exact.scores, atol=1e-9)
    assert covered.errors is not None and not covered.errors.any()
    assert any("values are exact" in n for n in covered.notes)
    sampled = run(nonlinear, X, method="kernel-shap", players="tokens", samples=10)  # 60 < 62: sampled
    assert not np.allclose(sampled.scores, exact.scores, atol=1e-6)


TWELVE = np.random.default_rng(5).normal(0, 1, (12, 3)).astype(np.float32)


@pytest.mark.parametrize("method", ["kernel-shap", "permutation"])
def test_sampling_converges_to_exact_shapley(method: str) -> None:
    exact = run(nonlinear, TWELVE, method="shapley", players="tokens").scores

    def error(samples: int) -> float:
        runs = [run(nonlinear, TWELVE, method=method, players="tokens", samples=samples, seed=s).scores
                for s in range(4)]
        return float(np.mean([np.abs(r - exact).mean() for r in runs]))

    small, large = error(4), error(64)
    assert large < small / 2.5  # sqrt(16) = 4 in theory
    again = run(nonlinear, TWELVE, method=method, players="tokens", samples=8, seed=3)
    same = run(nonlinear, TWELVE, method=method, players="tokens", samples=8, seed=3)
    other = run(nonlinear, TWELVE, method=method, players="tokens", samples=8, seed=4)
    np.testing.assert_array_equal(again.scores, same.scores)
    assert not np.array_equal(again.scores, other.scores)


@pytest.mark.parametrize("method", SAMPLED)
def test_standard_errors_match_the_spread_over_seeds(method: str) -> None:
    """The reported standard error predicts how far estimates from other seeds scatter."""
    runs = [run(nonlinear, TWELVE, method=method, players="tokens", samples=40, seed=s) for s in range(12)]
    spread = np.stack([r.scores for r in runs]).std(axis=0, ddof=1)
    reported = np.mean([r.errors for r in runs if r.errors is not None], axis=0)
    ratio = float(np.median(reported / spread))
    assert 0.6 < ratio < 1.6


def linear(weights: np.ndarray) -> Scalar:
    def f(points: np.ndarray) -> np.ndarray:
        return np.asarray(points[:, :, 0].astype(np.float64) @ weights, np.float64)
    return f


def test_lime_recovers_a_linear_models_ranking() -> None:
    weights = np.array([3.0, -2.0, 0.5, 1.5, -0.7, 2.2, 0.1, -1.1])
    x = np.ones((8, 1), np.float32)
    out = run(linear(weights), x, method="lime", players="tokens", samples=50)
    assert spearmanr(out.scores, weights)[0] == pytest.approx(1.0)
    np.testing.assert_allclose(out.scores, weights, rtol=0.1)  # ridge shrinks them a little


def test_words_are_players_and_their_value_is_split_over_their_tokens() -> None:
    words = np.array([0, 0, 1, 2, 2, 2])
    by_words = run(nonlinear, X, word_ids=words, method="shapley")
    word_x = values_of(nonlinear, X, np.zeros_like(X))
    members = [[0, 1], [2], [3, 4, 5]]
    expected = brute_force_shapley(lambda s: word_x(frozenset(k for w in s for k in members[w])), 3)
    np.testing.assert_allclose([by_words.scores[m].sum() for m in members], expected, atol=1e-9)
    assert by_words.scores[0] == by_words.scores[1] and by_words.scores[3] == by_words.scores[5]
    by_tokens = run(nonlinear, X, word_ids=words, method="shapley", players="tokens")
    assert not np.allclose(by_tokens.scores, by_words.scores)
    pair = run(nonlinear, X, word_ids=np.array([0, 1, -1, 0, 0, 1]), method="shapley")  # a (text, choice) pair
    pair_members = [[0], [1], [2], [3, 4], [5]]  # word 0 of each text is its own player; -1 plays alone
    expected = brute_force_shapley(lambda s: word_x(frozenset(k for w in s for k in pair_members[w])), 5)
    np.testing.assert_allclose([pair.scores[m].sum() for m in pair_members], expected, atol=1e-9)


def test_too_many_players_for_exact_values_points_to_the_sampling_methods() -> None:
    x = np.ones((MAX_PLAYERS + 1, 1), np.float32)
    with pytest.raises(UsageError, match="kernel-shap or permutation"):
        run(linear(np.ones(MAX_PLAYERS + 1)), x, method="shapley")
    assert run(linear(np.ones(MAX_PLAYERS + 1)), x, method="permutation").scores == pytest.approx(
        np.ones(MAX_PLAYERS + 1))
    wide = np.ones((101, 1), np.float32)
    for method in SAMPLED:  # 10,000 x 101 rows: refused before any is built
        with pytest.raises(UsageError, match="asks for 1,010,000 model rows over 101 tokens; at most 1,000,000"):
            run(linear(np.ones(101)), wide, method=method, players="tokens", samples=10_000)
    with pytest.raises(UsageError, match=r"unknown players 'sentences' \(choose from: tokens, words\)"):
        ExplainConfig(method="lime", players="sentences").validated()


def test_tokens_equal_to_their_baseline_are_not_players() -> None:
    x = np.array([[1.0], [0.0], [2.0]], np.float32)  # the middle one equals the zero baseline
    problem = Problem(ValuesOnly(ClassScore(0), None), x, np.zeros_like(x), np.zeros(3, bool), 0.0, np.ones(3),
                      ExplainConfig(players="tokens"), None)
    assert [m.tolist() for m in players(problem).members] == [[0], [2]]
    out = run(linear(np.array([1.0, 5.0, -1.0])), x, method="shapley", players="tokens")
    assert out.scores.tolist() == [1.0, 0.0, -2.0]


# --- on ONNX models, through the engine ---------------------------------------------------------

DIM = 6
TABLE = tiny.table(DIM, seed=2)
W = np.random.default_rng(8).normal(0, 1, (DIM, 2)).astype(np.float32)
TEXTS = ["the film was good", "bad plot and awful film", "great", "the plot was bad and the film was great"]


@pytest.fixture(scope="module")
def linear_model(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    path = tmp_path_factory.mktemp("linear")
    return load_model(tiny.write_model_dir(path, tiny.linear_sum(TABLE, W), ["neg", "pos"]))


@pytest.fixture(scope="module")
def mlp_model(tmp_path_factory: pytest.TempPathFactory) -> TextModel:
    rng = np.random.default_rng(9)
    w1, b1, w2 = (rng.normal(0, 0.7, (DIM, 8)).astype(np.float32), rng.normal(0, 0.3, 8).astype(np.float32),
                  rng.normal(0, 0.7, (8, 2)).astype(np.float32))
    path = tmp_path_factory.mktemp("mlp")
    return load_model(tiny.write_model_dir(path, tiny.tanh_mlp(TABLE, w1, b1, w2), ["neg", "pos"], with_cls=True))


@pytest.mark.parametrize("baseline", ["pad", "mask"])
def test_exact_shapley_of_a_linear_model_is_its_contributions(linear_model: TextModel, baseline: str) -> None:
    """logits = sum_s E_s W: word i's Shapley value is (x_i - x'_i) . W[:, c] exactly."""
    text = "the film was good and the plot great"
    e = explain(linear_model, text, ExplainConfig(method="shapley", target="pos", baseline=baseline))
    ids = [tiny.VOCAB[w] for w in text.split()]
    base = TABLE[tiny.VOCAB["[PAD]" if baseline == "pad" else "[MASK]"]]
    expected = (TABLE[ids] - base) @ W[:, 1]
    np.testing.assert_allclose([t.score for t in e.tokens], expected, rtol=1e-5, atol=1e-6)
    assert e.backend == "none" and e.settings["forward_passes"] == 2**8  # 2^8 - 2 coalitions + x and x'
    assert e.settings["players"] == "words" and e.token_errors is None


@pytest.mark.parametrize("method", [*SHAPLEY_METHODS, "lime"])
def test_packed_runs_equal_one_text_and_one_row_at_a_time(mlp_model: TextModel, method: str) -> None:
    cfg = ExplainConfig(method=method, samples=6, words=True)
    packed = list(explain_many(mlp_model, TEXTS, cfg))
    for text, together in zip(TEXTS, packed, strict=True):
        assert not isinstance(together, Exception)
        alone = explain(mlp_model, text, ExplainConfig(method=method, samples=6, words=True, batch_size=1))
        np.testing.assert_allclose([t.score for t in together.tokens], [t.score for t in alone.tokens],
                                   rtol=1e-5, atol=1e-6)
        assert together.tokens[0].special and together.tokens[0].score == 0.0  # [CLS] is never a player
        if method in SHAPLEY_METHODS:
            assert sum(t.score for t in together.tokens) == pytest.approx(
                together.target_value - (together.baseline_value or 0.0), abs=1e-5)


def test_json_carries_a_standard_error_per_token_and_word(mlp_model: TextModel) -> None:
    e = explain(mlp_model, "the film was good but the plot bad", ExplainConfig(method="permutation", words=True))
    data = json.loads(render_json(e))
    assert [t["std_error"] for t in data["tokens"]] == pytest.approx(list(e.token_errors or ()))
    assert data["tokens"][0]["std_error"] == 0.0  # [CLS]
    assert all(t["std_error"] > 0 for t in data["tokens"][1:-1])
    assert [w["std_error"] for w in data["words"]] == pytest.approx(list(e.word_errors or ()))
    assert data["settings"]["players"] == "words" and data["settings"]["samples"] == 10
    plain = json.loads(render_json(explain(mlp_model, "the film", ExplainConfig(method="occlusion"))))
    assert "std_error" not in plain["tokens"][1]


def test_models_left_to_finite_differences_need_no_gradient(tmp_path: Path) -> None:
    """An op without a gradient rule: the sampling methods run forward passes only."""
    model = load_model(tiny.write_model_dir(tmp_path / "atan", tiny.unsupported_op(TABLE, W), ["neg", "pos"]))
    text = "the film was good"
    e = explain(model, text, ExplainConfig(method="shapley", target="pos"))
    ids = [tiny.VOCAB[w] for w in text.split()]
    expected = np.arctan(TABLE[ids].astype(np.float64)) @ W[:, 1]  # additive over tokens: its contributions
    np.testing.assert_allclose([t.score for t in e.tokens], expected, rtol=1e-5, atol=1e-6)
    k = explain(model, text, ExplainConfig(method="kernel-shap", target="pos", samples=2))
    assert k.backend == "none" and len(k.tokens) == 4


def test_a_string_input_pipeline_gets_exact_shapley_values(tmp_path: Path) -> None:
    """A scikit-learn pipeline (string in, probabilities out): the players are its present
    features; exact values from the logistic regression by hand."""
    m, vocab, coef, intercepts = pipeline(binary=True)
    d = tmp_path / "pipe"
    d.mkdir()
    onnx.save(m, str(d / "model.onnx"))
    (d / "config.json").write_text(json.dumps({"id2label": {"0": "neg", "1": "pos"}}))
    model = load_model(d)
    text = "a good film with a great plot"
    present = [vocab[w] for w in ("good", "film", "great", "plot")]

    def v(s: frozenset[int]) -> float:
        z = sum(float(coef[1, present[k]]) for k in s)
        return float(1 / (1 + np.exp(-(z + intercepts[1]))))

    expected = brute_force_shapley(v, 4)
    for method, tol in (("shapley", 1e-6), ("kernel-shap", 1e-6), ("permutation", 0.05)):
        e = explain(model, text, ExplainConfig(method=method, target="pos", samples=8))
        scored = {t.text: t.score for t in e.tokens}
        got = [scored[w] for w in ("good", "film", "great", "plot")]
        np.testing.assert_allclose(got, expected, atol=tol)
        assert scored["a"] == 0.0 and sum(got) == pytest.approx(v(frozenset(range(4))) - v(frozenset()), abs=1e-6)


def test_cli_refuses_exact_shapley_on_a_long_text_with_exit_2(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = tiny.write_model_dir(tmp_path / "lin", tiny.linear_sum(TABLE, W), ["neg", "pos"])
    text = " ".join(["good"] * (MAX_PLAYERS + 1))
    assert main(["explain", text, "--model", str(folder), "--method", "shapley", "-q"]) == 2
    err = capsys.readouterr().err
    assert "at most 14 words" in err and "kernel-shap or permutation" in err and "Traceback" not in err
    assert main(["explain", text, "--model", str(folder), "--method", "permutation", "-q", "--samples", "2",
                 "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["settings"]["forward_passes"] == 2 + 2 * MAX_PLAYERS  # x, x', two orders of n - 1 rows


def bias_only(classes: int = 2) -> onnx.ModelProto:
    """logits = sum_s E_s W + b, to check the bias never reaches a player."""
    axes = np.array([1], np.int64)
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["E"]),
             helper.make_node("ReduceSum", ["E", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes, "biased", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(W, "W"),
         numpy_helper.from_array(np.array([5.0, -3.0], np.float32), "b"), numpy_helper.from_array(axes, "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_bias_is_nobodys_contribution(tmp_path: Path) -> None:
    model = load_model(tiny.write_model_dir(tmp_path / "bias", bias_only(), ["neg", "pos"]))
    e = explain(model, "good film", ExplainConfig(method="shapley", target="neg"))
    expected = TABLE[[tiny.VOCAB["good"], tiny.VOCAB["film"]]] @ W[:, 0]
    np.testing.assert_allclose([t.score for t in e.tokens], expected, rtol=1e-5, atol=1e-6)
    assert e.baseline_value == pytest.approx(5.0)


# --- evaluation: eval's agreement with exact Shapley, and sanity ---------------------------------


def test_eval_measures_agreement_with_exact_shapley(linear_model: TextModel) -> None:
    """On a linear model occlusion *is* exact Shapley (an additive game), so both agree with
    the reference perfectly; texts over the limit are left out of the comparison."""
    texts = ["the film was good", "bad plot", "great film and good plot", "the plot was bad and the film was great"]
    result = faithfulness(linear_model, texts, ["shapley", "occlusion", "kernel-shap", "random"], shapley_tokens=5,
                          top_k=2)
    rows = {m.name: m for m in result.methods}
    for name in ("shapley", "occlusion", "kernel-shap"):
        assert rows[name].shapley_texts == 3  # the 9-word text is over the limit
        assert rows[name].shapley_spearman == pytest.approx(1.0) and rows[name].shapley_top_k == pytest.approx(1.0)
    assert rows["random"].shapley_texts == 3 and (rows["random"].shapley_spearman or 0) < 0.9
    assert rows["shapley"].completeness_max is not None and rows["shapley"].completeness_max < 1e-5
    table = faithfulness_table(result)
    assert "exact-Shapley Spearman (<= 5 tokens)" in table and "exact-Shapley top-2 overlap" in table
    data = faithfulness_dict(result)
    assert data["shapley_tokens"] == 5 and data["methods"][0]["shapley_spearman"] == pytest.approx(1.0)
    off = faithfulness(linear_model, texts[:1], ["occlusion"], shapley_tokens=0)
    assert off.methods[0].shapley_texts == 0 and "exact-Shapley" not in faithfulness_table(off)
    with pytest.raises(UsageError, match="shapley_tokens must be an integer from 0 to 14"):
        faithfulness(linear_model, texts, ["occlusion"], shapley_tokens=15)


def test_shapley_agreement_by_hand() -> None:
    rho, top = shapley_agreement(np.array([3.0, 1.0, 2.0, 0.0]), np.array([0.3, 0.2, 0.1, 0.0]), 2)
    assert rho == pytest.approx(0.8) and top == 0.5  # tops {0, 2} and {0, 1}


def test_sanity_randomizing_the_default_model_changes_the_sampled_attributions() -> None:
    """The sampling methods draw the same coalitions at every stage (one seed), so what changes
    is the model: by the embedding table their order is gone; on the model itself they agree
    with exact Shapley values."""
    model = load_model(default_model_path())
    texts = ["A dull, lifeless remake.", "The plot is thin, but the acting is wonderful."]
    result = sanity(model, texts, ["shapley", "kernel-shap", "permutation", "lime"], stages=[5], backends=False)
    last = result.stages[-1]
    assert last.randomized == "embedding table"
    for m in last.methods:
        assert m.texts == 2 and m.failed == 0 and m.spearman is not None and m.spearman < 0.5
    for a in result.agreement:
        if a.first == "shapley":
            assert a.spearman is not None and a.spearman > 0.9


# --- Owen values ------------------------------------------------------------------------------


def test_the_hierarchy_follows_the_punctuation() -> None:
    x = np.ones((8, 1), np.float32)
    problem = Problem(ValuesOnly(ClassScore(0), None), x, np.zeros_like(x), np.zeros(8, bool), 0.0, np.ones(8),
                      ExplainConfig(players="tokens"), None)
    who = players(problem)
    assert hierarchy(who, ("a", "b", ",", "c", ".", "d", "e", "!")) == [[[0, 1, 2], [3, 4]], [[5, 6, 7]]]
    assert hierarchy(who, None) == [[list(range(8))]]
    assert term_count([[[0, 1, 2], [3, 4]], [[5, 6, 7]]]) == 2 * 2 * 4 * 3 + 2 * 2 * 2 * 2 + 2 * 1 * 4 * 3


def test_owen_with_one_clause_or_one_word_per_clause_is_shapley() -> None:
    exact = run(nonlinear, X, method="shapley", players="tokens").scores
    one_clause = run(nonlinear, X, pieces=("a", "b", "c", "d", "e", "f"), method="owen", players="tokens")
    np.testing.assert_allclose(one_clause.scores, exact, atol=1e-12)
    singletons = run(nonlinear, X, pieces=("a,", "b,", "c,", "d,", "e,", "f"), method="owen", players="tokens")
    np.testing.assert_allclose(singletons.scores, exact, atol=1e-12)


def test_owen_groups_play_a_shapley_game_and_the_total_is_efficient() -> None:
    """Two sentences of two clauses: each clause's total is the Shapley value of the clause in
    the game of clauses within its sentence, the sentences' totals that of the sentences."""
    pieces = ("a", ",", "b", ".", "c", ",")
    tree = [[[0, 1], [2, 3]], [[4, 5]]]  # sentence 2 is one clause
    out = run(nonlinear, X, pieces=pieces, method="owen", players="tokens")
    v = values_of(nonlinear, X, np.zeros_like(X))
    gap = v(frozenset(range(6))) - v(frozenset())
    assert out.scores.sum() == pytest.approx(gap, abs=1e-9) and abs(out.delta or 0) < 1e-9
    sentences = [[0, 1, 2, 3], [4, 5]]
    by_sentence = brute_force_shapley(lambda s: v(frozenset(k for j in s for k in sentences[j])), 2)
    np.testing.assert_allclose([out.scores[m].sum() for m in sentences], by_sentence, atol=1e-9)
    # within sentence 1 (sentence 2 absent or present with equal weight 1/2): clauses' Shapley values
    within = np.zeros(2)
    for other in (frozenset(), frozenset(sentences[1])):
        def clause_game(s: frozenset[int], o: frozenset[int] = other) -> float:
            return v(o | frozenset(k for j in s for k in tree[0][j]))
        within += 0.5 * brute_force_shapley(clause_game, 2)
    np.testing.assert_allclose([out.scores[tree[0][0]].sum(), out.scores[tree[0][1]].sum()], within, atol=1e-9)


def test_owen_of_a_linear_model_is_its_contributions_and_long_clauses_are_refused(linear_model: TextModel) -> None:
    text = "the film was good , the plot bad . great film and good plot !"
    e = explain(linear_model, text, ExplainConfig(method="owen", target="pos"))
    ids = [tiny.VOCAB.get(w, tiny.VOCAB["[UNK]"]) for w in text.split()]
    expected = (TABLE[ids] - TABLE[tiny.VOCAB["[PAD]"]]) @ W[:, 1]
    np.testing.assert_allclose([t.score for t in e.tokens], expected, rtol=1e-5, atol=1e-6)
    assert any("15 words in 2 sentence(s) of 3 clause(s)" in n for n in e.notes)
    assert e.settings["forward_passes"] < 2**10  # exact Shapley values would need 2^15
    with pytest.raises(UsageError, match="longest clause has 15 words sum 245,760 terms"):
        explain(linear_model, " ".join(["good"] * 15), ExplainConfig(method="owen"))
