"""The command line end to end, as a user runs it (a subprocess per call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tiny

POSITIVE = "An absolute masterpiece, I loved every minute of it."
NEGATIVE = "This was dull and a complete waste of time."
SENTIMENT_WORDS = {"masterpiece", "loved", "absolute", "dull", "waste", "boring"}


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blackbox_sal", *args], capture_output=True, text=True,
                          input=stdin, timeout=300, env={**os.environ, **(env or {})})


def top3(doc: dict[str, Any]) -> set[str]:
    ranked = sorted(doc["tokens"], key=lambda t: t["score"], reverse=True)
    return {t["text"].lower() for t in ranked[:3]}


@pytest.mark.parametrize("text,label", [(POSITIVE, "fresh"), (NEGATIVE, "rotten")])
def test_default_model_explains_clear_reviews(text: str, label: str) -> None:
    r = cli("explain", text, "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["prediction"]["label"] == label and doc["target"]["label"] == label
    assert top3(doc) & SENTIMENT_WORDS, doc["tokens"]
    assert doc["method"] == "ig" and doc["backend"] == "graph" and doc["schema_version"] == 2
    gap = doc["target_value"] - doc["baseline_value"]
    assert abs(doc["convergence_delta"]) < 0.01 * abs(gap)
    assert sum(t["score"] for t in doc["tokens"]) == pytest.approx(gap + doc["convergence_delta"], abs=1e-6)
    for t in doc["tokens"]:
        assert text[t["start"] : t["end"]] == t["text"]


def test_default_is_ig_with_a_heatmap_table() -> None:
    r = cli("explain", POSITIVE, env={"NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    assert "method ig (sum) | backend graph" in r.stdout
    assert "prediction: fresh" in r.stdout and "completeness delta" in r.stdout
    assert "\033[" not in r.stdout  # no colour into a pipe
    assert "masterpiece" in r.stdout


@pytest.mark.parametrize("method", ["saliency", "grad-x-input", "smoothgrad", "occlusion"])
def test_every_method_runs_from_the_cli(method: str) -> None:
    r = cli("explain", "a dull film", "--method", method, "--format", "json", "--samples", "2", "-q")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["method"] == method and len(doc["tokens"]) == 3
    assert r.stderr == ""


def test_words_html_and_output_file(tmp_path: Path) -> None:
    out = tmp_path / "x.html"
    r = cli("explain", "<script>alert(1)</script> great", "--format", "html", "--output", str(out), "--words")
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert "<script" not in page and "&lt;" in page and "alert" in page
    assert page.startswith("<!DOCTYPE html>") and "http" not in page


def test_steps_auto_reports_the_nodes_it_settled_on() -> None:
    r = cli("explain", POSITIVE, "--steps", "auto", "--tolerance", "0.001", "--format", "json", "-q")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    settings = doc["settings"]
    assert settings["steps_auto"] is True and settings["tolerance"] == 0.001
    assert settings["quadrature"] == "clenshaw-curtis" and settings["steps"] in (9, 17, 33, 65, 129, 257)
    assert settings["gradient_passes"] == settings["steps"]  # nested: no node is evaluated twice
    assert abs(doc["convergence_delta"]) <= 0.001 * sum(abs(t["score"]) for t in doc["tokens"])
    text = cli("explain", POSITIVE, "--steps", "auto", "--tolerance", "0.001", "-q", env={"NO_COLOR": "1"})
    assert f"({settings['steps']} nodes, steps auto)" in text.stdout


def test_stdin_and_target_index() -> None:
    r = cli("explain", "-", "--target", "0", "--format", "json", "--method", "occlusion", stdin=POSITIVE)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["target"] == {"index": 0, "label": "rotten"}


def test_saliency_announces_its_cost() -> None:
    r = cli("explain", "a dull film", "--method", "saliency", "--backend", "fd")
    assert "2 x 1 points x 3 tokens x 64 dims = 384 forward passes" in r.stderr


@pytest.mark.parametrize("args,code,message", [
    (["explain", ""], 2, "the text is empty"),
    (["explain", "good", "--target", "positive"], 2, "unknown target label 'positive'"),
    (["explain", "good", "--steps", "0"], 2, "steps must be an integer from 1 to 1,024"),
    (["explain", "good", "--steps", "many"], 2, "expected a number of nodes or 'auto'"),
    (["explain", "good", "--steps", "auto", "--quadrature", "trapezoid"], 2, "does not combine"),
    (["explain", "good", "--steps", "auto", "--tolerance", "0"], 2, "tolerance must be in (0, 1)"),
    (["explain", "good", "--baseline", "mask"], 2, "no MASK token"),
    (["explain", "good " * 600], 2, "the model takes at most 512"),
    (["explain", "good", "--model", "/no/such/dir"], 3, "model not found"),
    (["explain", "good", "--method", "shap"], 2, "invalid choice"),
    (["explain", "good", "--baseline", os.fsdecode(b"\xff")], 2, "baseline is not valid Unicode"),
    (["explain", "good", "--direction", os.devnull], 2, "direction must be 1 to"),
])
def test_bad_input_gives_one_clear_line_and_its_exit_code(args: list[str], code: int, message: str) -> None:
    r = cli(*args)
    assert r.returncode == code, (r.stdout, r.stderr)
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_an_empty_npy_direction_is_one_line(tmp_path: Path) -> None:
    """numpy raises EOFError on an empty .npy: it was a traceback."""
    (tmp_path / "d.npy").write_bytes(b"")
    r = cli("explain", "good", "--direction", str(tmp_path / "d.npy"))
    assert r.returncode == 2 and "cannot read a direction from" in r.stderr and "Traceback" not in r.stderr


def test_bad_models_exit_3(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "model.onnx").write_bytes(b"\x00\x01not an onnx file" * 50)
    tiny.tokenizer().save(str(garbage / "tokenizer.json"))
    nolookup = tiny.write_model_dir(tmp_path / "nolookup", tiny.no_lookup(4))
    for path, message in ((garbage, "not a readable ONNX model"), (nolookup, "no word-embedding lookup")):
        r = cli("explain", "good", "--model", str(path))
        assert r.returncode == 3 and message in r.stderr and "Traceback" not in r.stderr


def test_unwritable_output_file(tmp_path: Path) -> None:
    r = cli("explain", "good", "--method", "occlusion", "--output", str(tmp_path / "no" / "dir.txt"))
    assert r.returncode == 2 and "cannot write" in r.stderr


def test_help_lists_exit_codes() -> None:
    r = cli("explain", "--help")
    assert r.returncode == 0 and "exit codes" in r.stdout and "--baseline" in r.stdout


def test_device_cuda_without_a_gpu_exits_4() -> None:
    from blackbox_sal.model.session import cuda_available

    if cuda_available():
        pytest.skip("this machine has a usable GPU")
    r = cli("explain", "good", "--device", "cuda")
    assert r.returncode == 4 and "no usable CUDA GPU" in r.stderr and "Traceback" not in r.stderr
