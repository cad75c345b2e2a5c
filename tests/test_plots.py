"""The evaluation plots explain themselves: read back from SVG (matplotlib writes every text
as a comment beside its glyphs), each has its axis labels, legend or colour bar, the palette's
colours, and what it hid. Needs matplotlib (the plot extra); skipped without it."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from blackbox_sal.evaluation.global_analysis import WordImportance, WordStat, word_importance_plot
from blackbox_sal.evaluation.sanity import _layer_label
from blackbox_sal.render import palette

pytest.importorskip("matplotlib")


def texts(svg: Path) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<!-- (.*?) -->", svg.read_text("utf-8"), re.S)]


def fills(svg: Path) -> set[str]:
    return set(re.findall(r"fill: (#[0-9a-f]{6})", svg.read_text("utf-8")))


def test_word_importance_separates_the_classes_and_says_what_it_hid(tmp_path: Path) -> None:
    result = WordImportance(
        "m", "ig", "predicted", 10, 3, (WordStat("good", 4, 1.0, 0.1), WordStat("bad", 3, -1.0, 0.2)),
        (("fresh", (WordStat("good", 4, 1.0, 0.1), WordStat("dull", 3, -0.5, 0.2))),
         ("rotten", (WordStat("bad", 3, 0.9, 0.1), WordStat("fine", 5, -0.25, 0.05)))), rare=7)
    out = texts(word_importance_plot(result, tmp_path / "w.svg"))
    for title in ("texts predicted fresh: most for fresh (2 words)", "texts predicted fresh: most against fresh",
                  "texts predicted rotten: most for rotten (2 words)", "texts predicted rotten: most against rotten",
                  "mean ig score for fresh", "mean ig score for rotten",
                  "words seen fewer than 3 times are hidden: 7 of 9 words"):
        assert title in out, title
    # each word once, on its own side, with its count: the rotten panel reads 'bad' for rotten
    assert sorted(t for t in out if "(" in t and t.split(" (")[0] in {"good", "dull", "bad", "fine"}) == [
        "bad (3)", "dull (3)", "fine (5)", "good (4)"]
    assert {palette.hex_of(palette.FOR), palette.hex_of(palette.AGAINST)} <= fills(tmp_path / "w.svg")


def test_word_importance_for_one_target_is_one_row(tmp_path: Path) -> None:
    result = WordImportance("m", "saliency", "fresh", 4, 2, (WordStat("good", 4, 1.0, 0.0),),
                            (("fresh", (WordStat("good", 4, 1.0, 0.0),)),), rare=0)
    out = texts(word_importance_plot(result, tmp_path / "w.svg"))
    assert "all 4 texts: most for fresh (1 words)" in out and "mean saliency score for fresh" in out
    assert not any(t.startswith("texts predicted") for t in out)


@pytest.mark.parametrize(("randomized", "label"), [
    ("Gemm head.weight, head.bias", "head"),
    ("Conv convs.2.weight, convs.2.bias", "convs.2"),
    ("embedding table", "embedding table"),
    ("MatMul encoder.layer.5.attention.self.query.weight", "...on.self.query"),
])
def test_sanity_ticks_name_the_layer_within_their_width(randomized: str, label: str) -> None:
    assert _layer_label(randomized) == label and len(label) <= 16


def test_the_cli_draws_sanity_and_swaps_with_labelled_axes(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in
                            ["a dull, lifeless film", "an absolute masterpiece", "boring and flat"]))
    run = [sys.executable, "-m", "blackbox_sal"]
    r = subprocess.run([*run, "sanity", str(data), "--method", "grad-x-input", "--method", "saliency",
                        "--no-backends", "--agreement-texts", "1", "--plot", str(tmp_path / "s.svg"), "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = texts(tmp_path / "s.svg")
    assert {"the model", "head", "convs.2", "convs.1", "convs.0", "embedding table", "grad-x-input", "saliency",
            "method", "mean Spearman with the original scores"} <= {line for t in out for line in t.split("\n")}
    assert not any("..." in t for t in out)  # no tick cut short
    r = subprocess.run([*run, "swaps", "a dull film with a fine cast", "--top", "2", "--plot",
                        str(tmp_path / "w.svg"), "-q"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = texts(tmp_path / "w.svg")
    assert any(t.startswith("first-order estimate (E_v - E_x_i) . grad_i") for t in out)
    assert any(t.startswith("actual change in f (the model re-run)") for t in out)
    assert "estimate = actual" in out and "prediction kept" in out
    assert any(t.startswith("dull -> ") for t in out)  # the largest swaps are named
    assert np.isin([palette.hex_of(palette.FOR)], sorted(fills(tmp_path / "w.svg"))).all()
