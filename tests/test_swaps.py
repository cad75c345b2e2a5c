"""The one-hot view: substitution estimates (E_v - E_x) . grad_i are exact on a linear model,
ranked over the whole vocabulary the same whatever the chunk, never propose special tokens,
and track the re-run changes on the bundled CNN."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny

from blackbox_sal import ExplainConfig, default_model_path, load_model
from blackbox_sal.evaluation.swaps import special_ids, swaps, swaps_dict, swaps_table, top_candidates
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.errors import UsageError

TEXT = "the film was good and the plot was bad"


@pytest.fixture(scope="module")
def linear(tmp_path_factory: pytest.TempPathFactory) -> tuple[TextModel, np.ndarray, np.ndarray]:
    """logits = (sum_s E_s) W: swapping token i for v changes logit c by (E_v - E_x_i) . W[:, c] exactly."""
    emb = tiny.table(8, seed=11)
    w = np.random.default_rng(12).normal(0, 1.0, (8, 2)).astype(np.float32)
    folder = tiny.write_model_dir(tmp_path_factory.mktemp("lin") / "m", tiny.linear_sum(emb, w), ["neg", "pos"],
                                  with_cls=True)
    return load_model(folder), emb, w


def test_estimates_are_exact_on_a_linear_model(linear: tuple[TextModel, np.ndarray, np.ndarray]) -> None:
    model, emb, w = linear
    result = swaps(model, TEXT, ExplainConfig(target="pos"), top=4)
    ids = model.tokenizer.encode(TEXT).ids
    specials = {tiny.VOCAB[s] for s in tiny.SPECIALS}
    assert set(special_ids(model).tolist()) == specials
    assert [p.token for p in result.positions] == TEXT.split()  # [CLS] and [SEP] are not swapped
    assert result.candidates == len(tiny.VOCAB) - len(specials) - 1
    for p in result.positions:
        est_all = (emb.astype(np.float64) - emb[ids[p.index]]) @ w[:, 1]
        allowed = [v for v in range(len(tiny.VOCAB)) if v not in specials and v != p.id]
        want = sorted(allowed, key=lambda v: (-abs(est_all[v]), v))[:4]  # both directions: |estimate|
        assert [s.id for s in p.substitutions] == want
        for s in p.substitutions:
            assert s.estimate == pytest.approx(est_all[s.id], rel=1e-6, abs=1e-6)
            assert s.actual == pytest.approx(s.estimate, rel=1e-4, abs=1e-5)  # linear: first order is exact
    assert result.correlation == pytest.approx(1.0, abs=1e-6) and result.sign_agreement == 1.0
    up = swaps(model, TEXT, ExplainConfig(target="pos"), top=3, direction="increase")
    down = swaps(model, TEXT, ExplainConfig(target="pos"), top=3, direction="decrease")
    for p_up, p_down in zip(up.positions, down.positions, strict=True):
        ups, downs = [s.estimate for s in p_up.substitutions], [s.estimate for s in p_down.substitutions]
        assert ups == sorted(ups, reverse=True) and downs == sorted(downs)
        assert ups[0] >= downs[0]
    flips = sum(s.prediction.index != result.prediction.index for _, s in result.substitutions)
    assert result.flips == flips
    table = swaps_table(result)
    assert "top 4 per token by |estimate|" in table and "substitutions checked" in table
    assert json.loads(json.dumps(swaps_dict(result)))["positions"][0]["text"] == "the"


def test_the_vocabulary_is_ranked_the_same_in_chunks() -> None:
    rng = np.random.default_rng(0)
    table = rng.normal(size=(1000, 16)).astype(np.float32)
    grad = rng.normal(size=(5, 16)).astype(np.float32)
    current = np.array([3, 10, 999, 0, 512])
    excluded = np.array([0, 1, 2, 700])
    for direction in ("both", "increase", "decrease"):
        whole = top_candidates(grad, current, table, excluded, 7, direction, chunk=5000)
        chunked = top_candidates(grad, current, table, excluded, 7, direction, chunk=3)
        np.testing.assert_array_equal(whole[0], chunked[0])
        np.testing.assert_allclose(whole[1], chunked[1])
        assert not np.isin(whole[0], excluded).any()
        assert not (whole[0] == current[:, None]).any()
        est = np.einsum("pvd,pd->pv", table.astype(np.float64)[None] - table[current][:, None], grad)
        key = np.abs(est) if direction == "both" else est if direction == "increase" else -est
        key[:, excluded] = -np.inf
        key[np.arange(5), current] = -np.inf
        np.testing.assert_array_equal(whole[0], np.argsort(-key, axis=1, kind="stable")[:, :7])
        np.testing.assert_allclose(whole[1], np.take_along_axis(est, whole[0], axis=1), rtol=1e-9)


def test_estimates_track_re_runs_on_the_default_cnn() -> None:
    """On the word CNN (ReLU, max over time) the first-order estimates are not exact, but they
    rank the swaps: estimated and actual changes correlate, and their signs agree."""
    model = load_model(default_model_path())
    result = swaps(model, "The plot is thin, but the acting is wonderful.", top=3)
    assert result.prediction.label == "rotten" and len(result.positions) == 11
    assert len(result.substitutions) == 33
    assert result.correlation is not None and result.correlation > 0.6
    assert result.sign_agreement is not None and result.sign_agreement >= 0.8
    assert all(s.token not in ("[PAD]", "[UNK]") for _, s in result.substitutions)
    assert result.positions[9].text == "wonderful" and result.positions[9].substitutions[0].estimate > 0


def test_swaps_refuse_what_they_cannot_do(tmp_path: Path, linear: tuple[TextModel, np.ndarray, np.ndarray]) -> None:
    model, _, _ = linear
    with pytest.raises(UsageError, match="direction must be"):
        swaps(model, TEXT, direction="sideways")
    with pytest.raises(UsageError, match="top must be"):
        swaps(model, TEXT, top=0)
    bow = load_model(Path(__file__).resolve().parent.parent / "models" / "bow-mlp")
    with pytest.raises(UsageError, match="bag-of-words model"):
        swaps(bow, "a fine film")
