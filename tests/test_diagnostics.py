"""Diagnostics that speak up: special tokens dominating the scores, IG that has not converged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.evaluation.diagnostics import (
    SPECIAL_NOTE_START,
    diagnose,
    ig_unconverged,
    special_share,
    special_tokens_note,
    with_diagnostics,
)
from blackbox_sal.text.words import Span


def test_special_share_and_its_note() -> None:
    assert special_share([1.0, -1.0, 2.0], [True, False, False]) == pytest.approx(0.25)
    assert special_share([1.0, 2.0], [False, False]) is None
    assert special_share([0.0, 0.0], [True, False]) is None
    assert special_share([3.0, np.nan, 1.0], [True, False, False]) == pytest.approx(0.75)  # nan counts as 0
    spans = [Span("[CLS]", 0, 0, 2.0, True), Span("good", 0, 4, 0.5, False), Span("[SEP]", 4, 4, -1.0, True)]
    (note,) = special_tokens_note(spans)
    assert note.startswith(f"{SPECIAL_NOTE_START} ([CLS], [SEP]) hold 86%")
    assert special_tokens_note(spans[:2], threshold=0.9) == ()
    half = [Span("[CLS]", 0, 0, 1.0, True), Span("good", 0, 4, 1.0, False)]
    assert special_tokens_note(half) == ()  # "above 50%": exactly half says nothing


def test_ig_unconverged_follows_the_notes_rule() -> None:
    assert ig_unconverged(0.06, 1.0, 0.0) and not ig_unconverged(0.04, 1.0, 0.0)
    assert not ig_unconverged(None, 1.0, 0.0) and not ig_unconverged(0.5, 1.0, None)


def test_explanations_get_the_notes(tmp_path: Path) -> None:
    """Saliency on a model whose gradient is the same for every token ([CLS] and [SEP]
    included) gives special tokens 2 of 4 rows' mass at the two-word text: not above half;
    a one-word text puts 2 of 3 on them. IG's delta note points to --steps auto."""
    emb = tiny.table(4, seed=1)
    w = np.random.default_rng(2).normal(size=(4, 2)).astype(np.float32)
    model = load_model(tiny.write_model_dir(tmp_path / "m", tiny.linear_sum(emb, w), ["neg", "pos"], with_cls=True))
    two = explain(model, "good film", ExplainConfig(method="saliency"))
    assert diagnose(two) == () and not any(n.startswith("special tokens") for n in two.notes)
    one = explain(model, "good", ExplainConfig(method="saliency"))  # every explanation runs the check itself
    assert one.notes[-1].startswith("special tokens ([CLS], [SEP]) hold 67%")
    assert with_diagnostics(one) == one  # said once
    quad = load_model(tiny.write_model_dir(tmp_path / "q", tiny.quadratic(emb, w), ["neg", "pos"]))
    coarse = explain(quad, "good film bad", ExplainConfig(method="ig", steps=1, quadrature="riemann-left"))
    assert ig_unconverged(coarse.convergence_delta, coarse.target_value, coarse.baseline_value)
    assert any(n.startswith("integrated gradients have not converged") and "--steps auto" in n for n in coarse.notes)
