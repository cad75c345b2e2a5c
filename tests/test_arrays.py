"""The array API (blackbox_sal.attribute): equals the text-level API on the same ids, a padded
batch equals its rows one at a time, and a tiny model gives its closed form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny

import blackbox_sal as bs
from blackbox_sal import ExplainConfig, attribute, default_model_path, explain, load_model
from blackbox_sal.vocabulary.errors import TooLongError, UsageError

TEXTS = ["An absolute masterpiece, I loved every minute of it.", "a dull, tedious mess", "fine"]


@pytest.fixture(scope="module")
def model() -> bs.TextModel:
    return load_model(default_model_path())


def _ids(model: bs.TextModel, text: str) -> np.ndarray:
    return np.array(model.tokenizer.encode(text).ids, np.int64)


@pytest.mark.parametrize("method", ["ig", "grad-x-input", "saliency", "occlusion"])
def test_the_array_api_equals_the_text_api_on_the_same_ids(model: bs.TextModel, method: str) -> None:
    cfg = ExplainConfig(method=method, backend="graph")
    text = TEXTS[0]
    want = explain(model, text, cfg)
    got = attribute(model, ids=_ids(model, text), config=cfg)
    assert got.scores.shape == (1, len(want.tokens))
    np.testing.assert_allclose(got.scores[0], [t.score for t in want.tokens], rtol=0, atol=1e-9)
    assert got.target.tolist() == [want.target.index] and got.target_value[0] == pytest.approx(want.target_value)
    assert got.method == method and got.reduce == want.reduce and got.backend == want.backend
    if want.convergence_delta is None:
        assert np.isnan(got.delta[0]) and np.isnan(got.baseline_value[0])
    else:
        assert got.delta[0] == pytest.approx(want.convergence_delta, abs=1e-9)
        assert got.baseline_value[0] == pytest.approx(want.baseline_value)


def test_a_padded_batch_equals_its_rows_one_at_a_time(model: bs.TextModel) -> None:
    """Three texts of different lengths, padded with 0 and masked, explained for one target and
    for one target per row; the embeddings path gives the same as the ids path."""
    rows = [_ids(model, t) for t in TEXTS]
    width = max(map(len, rows))
    ids = np.zeros((len(rows), width), np.int64)
    for k, r in enumerate(rows):
        ids[k, :len(r)] = r
    mask = ids != 0
    cfg = ExplainConfig(method="ig", backend="graph", steps=16)
    targets: list[int | str] = ["fresh", "rotten", 1]
    batch = attribute(model, ids=ids, mask=mask, target=targets, config=cfg)
    for k, (r, target) in enumerate(zip(rows, targets, strict=True)):
        alone = attribute(model, ids=r, target=target, config=cfg)
        np.testing.assert_allclose(batch.scores[k, :len(r)], alone.scores[0], rtol=1e-6, atol=1e-6)
        assert (batch.scores[k, len(r):] == 0).all()  # padding is not input
        np.testing.assert_allclose(batch.delta[k], alone.delta[0], atol=1e-6)
        np.testing.assert_allclose(batch.target_value[k], alone.target_value[0], rtol=1e-6)
    assert batch.target.tolist() == [1, 0, 1]
    by_embeddings = attribute(model, embeddings=model.table[ids], mask=mask, target=["fresh", "rotten", 1],
                              config=cfg)
    np.testing.assert_allclose(by_embeddings.scores, batch.scores, rtol=0, atol=1e-9)
    # completeness, row by row: the scores add up to f(x) - f(x') up to the reported delta
    np.testing.assert_allclose(batch.scores.sum(1) - (batch.target_value - batch.baseline_value), batch.delta,
                               atol=1e-9)


def test_a_quadratic_model_gives_its_closed_form(tmp_path: Path) -> None:
    """logits_c = sum_s (x_s . W_c)^2: grad x input (sum) of token s is 2 (x_s . W_c)^2; [CLS]
    and [SEP] count as tokens here too (grad x input uses no baseline)."""
    table, w = tiny.table(8), np.random.default_rng(3).normal(0, 0.5, (8, 3)).astype(np.float32)
    folder = tiny.write_model_dir(tmp_path / "q", tiny.quadratic(table, w), with_cls=True)
    m = load_model(folder)
    ids = np.array([[tiny.VOCAB["[CLS]"], tiny.VOCAB[tiny.WORDS[0]], tiny.VOCAB[tiny.WORDS[3]], tiny.VOCAB["[SEP]"]],
                    [tiny.VOCAB["[CLS]"], tiny.VOCAB[tiny.WORDS[5]], tiny.VOCAB[tiny.WORDS[1]], tiny.VOCAB["[SEP]"]]])
    got = attribute(m, ids=ids, target=2, method="grad-x-input", config=ExplainConfig(backend="graph"))
    x = table[ids].astype(np.float64)
    np.testing.assert_allclose(got.scores, 2 * (x @ w[:, 2].astype(np.float64)) ** 2, rtol=1e-5, atol=1e-7)
    # IG keeps [CLS]/[SEP] as their own baseline: they score 0, and completeness holds
    ig = attribute(m, ids=ids, target=2, method="ig", config=ExplainConfig(backend="graph", baseline="zero"))
    assert (ig.scores[:, [0, 3]] == 0).all()
    np.testing.assert_allclose(ig.delta, 0, atol=1e-4)


def test_bad_arrays_are_one_clear_error(model: bs.TextModel) -> None:
    with pytest.raises(UsageError, match="give ids"):
        attribute(model)
    with pytest.raises(UsageError, match="ids must be integers"):
        attribute(model, ids=np.zeros((2, 3), np.float32))
    with pytest.raises(UsageError, match="ids must lie in 0.."):
        attribute(model, ids=[[1, 10**6]])
    with pytest.raises(UsageError, match=r"embeddings must be \[batch, seq, 64\]"):
        attribute(model, embeddings=np.zeros((1, 3, 5), np.float32))
    with pytest.raises(UsageError, match="2 targets for 1 rows"):
        attribute(model, ids=[[5, 6]], target=[0, 1])
    with pytest.raises(UsageError, match=r"mask must be integers \(or booleans\) \[1, 2\]; got float64 \[1, 3\]"):
        attribute(model, ids=[[5, 6]], mask=np.ones((1, 3)))
    with pytest.raises(UsageError, match="row 0: target index 7 is out of range"):
        attribute(model, ids=[[5, 6]], target=7)
    with pytest.raises(TooLongError):
        attribute(model, ids=np.ones((1, 600), np.int64))
