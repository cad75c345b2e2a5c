"""The evaluation commands (global, eval, sanity, swaps) end to end: each command's JSON equals
what the API computes on the same rows, and bad arguments exit 2 with one message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli import cli

from blackbox_sal import ExplainConfig, default_model_path, load_model
from blackbox_sal.evaluation import faithfulness as fa
from blackbox_sal.evaluation import global_analysis as ga
from blackbox_sal.evaluation.sanity import sanity, sanity_dict
from blackbox_sal.evaluation.swaps import swaps, swaps_dict
from blackbox_sal.jobs.datasets import Row

MODELS = Path(__file__).resolve().parent.parent / "models"
REVIEWS = [("a dull, lifeless film and a waste of time", "rotten"),
           ("an absolute masterpiece, moving and funny", "fresh"),
           ("the plot is thin but the acting is wonderful", "fresh"),
           ("boring, flat and far too long", "rotten"),
           ("a smart, refreshing and riveting story", "fresh"),
           ("pretentious and plodding from start to end", "rotten")]


def jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def close(got: Any, want: Any, rel: float) -> None:
    """JSON trees equal, numbers to ``rel`` (0 on the CPU: the same code in another process; on
    CUDA, cuDNN picks its algorithms per process, so the last digits may differ)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (got, want)
        for k in want:
            close(got[k], want[k], rel)
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (got, want)
        for a, b in zip(got, want, strict=True):
            close(a, b, rel)
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, rel=rel, abs=rel * 1e-3)
    else:
        assert got == want


REL = 1e-4 if load_model(default_model_path()).device == "cuda" else 0.0


def run_json(*args: str) -> Any:
    r = cli(*args, "--format", "json", "-q")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_global_bag_of_words_equals_the_api(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "d.jsonl", [{"text": t, "label": y} for t, y in REVIEWS * 3])
    got = run_json("global", str(data), "--model", str(MODELS / "bow-mlp"), "--label-column", "label", "--top", "4")
    rows = [Row(k, t, label=y) for k, (t, y) in enumerate(REVIEWS * 3)]
    ref = ga.global_bow_dict(ga.global_bow(load_model(MODELS / "bow-mlp"), rows, top=4))
    close(got, json.loads(json.dumps(ref)), REL)


def test_global_digits_with_compare_equals_the_api(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 17, (12, 64))
    data = tmp_path / "d.csv"
    data.write_text(",".join(f"p{i}" for i in range(64)) + ",label\n" +
                    "".join(",".join(map(str, p)) + f",{k % 10}\n" for k, p in enumerate(pixels)))
    got = run_json("global", str(data), "--model", str(MODELS / "digits-mlp"), "--label-column", "label",
                   "--compare", str(MODELS / "digits-logreg"))
    texts = [",".join(map(str, p)) for p in pixels]
    mlp = ga.class_jacobians(load_model(MODELS / "digits-mlp"), texts)
    logreg = ga.class_jacobians(load_model(MODELS / "digits-logreg"), texts)
    np.testing.assert_allclose(got["jacobian"], mlp.jacobian, rtol=max(REL, 1e-6))
    corr = ga.jacobian_correlation(mlp, logreg)
    assert got["compare"]["model"] == logreg.model
    assert got["compare"]["raw"]["mean"] == pytest.approx(corr.raw_mean, rel=max(REL, 1e-9))


def test_global_text_model_is_word_importance(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "d.jsonl", [{"text": t} for t, _ in REVIEWS * 2])
    got = run_json("global", str(data), "--method", "grad-x-input", "--min-count", "2", "--top", "5")
    ref = ga.word_importance(load_model(default_model_path()), [t for t, _ in REVIEWS * 2],
                             ExplainConfig(method="grad-x-input"), min_count=2, top=5)
    close(got, json.loads(json.dumps(ga.word_importance_dict(ref, 5))), REL)


def without_times(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: without_times(v) for k, v in d.items() if "seconds" not in k}
    if isinstance(d, list):
        return [without_times(v) for v in d]
    return d


def test_eval_equals_the_api(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "d.jsonl", [{"text": t} for t, _ in REVIEWS])
    got = run_json("eval", str(data), "--method", "ig", "--method", "occlusion", "--random", "--curve-points", "5")
    ref = fa.faithfulness(load_model(default_model_path()), [t for t, _ in REVIEWS],
                          [ExplainConfig(method="ig"), ExplainConfig(method="occlusion"), "random"], curve_points=5)
    close(without_times(got), without_times(json.loads(json.dumps(fa.faithfulness_dict(ref)))), REL)
    assert [m["name"] for m in got["methods"]] == ["ig", "occlusion", "random"]


def test_sanity_equals_the_api(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "d.jsonl", [{"text": t} for t, _ in REVIEWS[:3]])
    got = run_json("sanity", str(data), "--method", "grad-x-input", "--stages", "2", "--no-backends")
    ref = sanity(load_model(default_model_path()), [t for t, _ in REVIEWS[:3]],
                 [ExplainConfig(method="grad-x-input")], stages=2, backends=False)
    close(got, json.loads(json.dumps(sanity_dict(ref))), REL)
    assert [s["stage"] for s in got["stages"]] == [1, 2]


def test_swaps_equals_the_api() -> None:
    got = run_json("swaps", "a dull film with a fine cast", "--top", "2", "--toward", "increase")
    ref = swaps(load_model(default_model_path()), "a dull film with a fine cast", top=2, direction="increase")
    close(got, json.loads(json.dumps(swaps_dict(ref))), REL)


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "DATA", "--bins", "a,b"], "--bins takes fractions"),
    (["eval", "DATA", "--bins", "0,2"], "bins are fractions"),
    (["sanity", "DATA", "--stages", "x"], "--stages takes a number"),
    (["global", "DATA", "--fit", "DATA"], "--fit is for bag-of-words models"),
    (["global", "missing.jsonl"], "missing.jsonl"),
    (["eval", "DATA", "--limit", "0"], "--limit must be"),
    (["swaps", "a fine film", "--top", "0"], "top must be"),
])
def test_bad_arguments_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    data = jsonl(tmp_path / "d.jsonl", [{"text": t} for t, _ in REVIEWS[:2]])
    r = cli(*[str(data) if a == "DATA" else a for a in args], "-q")
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_datasets_with_nothing_usable_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    wrong = jsonl(tmp_path / "wrong.jsonl", [{"txt": "a fine film"}])
    digits = tmp_path / "d.csv"
    digits.write_text(",".join(f"p{i}" for i in range(64)) + ",label\n" + ",".join(["1"] * 64) + ",3\n")
    for args, message in ((["eval", str(empty)], "has no rows"),
                          (["global", str(wrong)], "no row of"),
                          (["sanity", str(wrong)], "no text in column 'text'"),
                          (["global", str(digits), "--model", str(MODELS / "digits-mlp")], "--label-column")):
        r = cli(*args, "-q")
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
