"""The edge profile for real (issue 12, item 5): a fresh virtual environment with only
onnxruntime (the CPU build), numpy and tokenizers from the package index, each with
``--no-deps``, and this checkout with ``pip install --no-deps``, explains a prepared copy of the
bundled default model exactly as the full install explains the original; the install stays
within 200 MB. It needs the package index: it skips, saying why, where pip cannot install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import tokenizers

from blackbox_sal import default_model_path, load_model, prepare

CHECKOUT = Path(__file__).resolve().parents[1]
TEXT = "An absolute masterpiece, I loved every minute of it."
#: the goal for the edge install (site-packages, pip's own files included)
MAX_BYTES = 200 * 1000**2


def _pip(python: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    # few retries and a short timeout: without the index the test skips in seconds, not minutes
    return subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--retries", "1", "--timeout", "20", "--no-deps", *args],
                          capture_output=True, text=True, timeout=timeout)


def _last_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (r.stderr + r.stdout).splitlines() if line.strip() and "WARNING: Location" not in line]
    return lines[-1][:300] if lines else f"exit {r.returncode}"


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _explain(command: list[str], model: Path | None) -> dict[str, object]:
    """The JSON explanation of TEXT by ``model`` (None: the bundled default, as a new user runs it)."""
    where = [] if model is None else ["--model", str(model)]
    r = subprocess.run([*command, "explain", TEXT, *where, "--format", "json", "-q"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr
    doc: dict[str, object] = json.loads(r.stdout)
    return doc


def test_an_edge_install_explains_a_prepared_folder_as_the_full_install(tmp_path: Path) -> None:
    if not (CHECKOUT / "pyproject.toml").is_file():
        pytest.skip("needs the source checkout (pyproject.toml) to install from")
    venv = tmp_path / "edge"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    # the versions this interpreter runs, so that both sides compute with the same kernels
    pins = [f"onnxruntime=={onnxruntime.__version__}", f"numpy=={np.__version__}",
            f"tokenizers=={tokenizers.__version__}"]
    r = _pip(python, *pins)
    if r.returncode != 0:
        pytest.skip(f"pip cannot install the edge packages here ({' '.join(pins)}): {_last_line(r)}")
    r = _pip(python, str(CHECKOUT))
    if r.returncode != 0:
        pytest.skip(f"pip cannot install this checkout here (its build backend comes from the index): "
                    f"{_last_line(r)}")
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
                            capture_output=True, text=True, timeout=60, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)} - {"pip", "setuptools", "wheel"}
    assert names == {"onnxruntime", "numpy", "tokenizers", "blackbox-sal"}
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    assert _size(site) <= MAX_BYTES, f"the edge install takes {_size(site) / 1e6:.0f} MB"

    folder = prepare(load_model(default_model_path()), tmp_path / "prepared")  # where onnx is installed
    edge_cli = [str(python), "-m", "blackbox_sal"]
    full_cli = [sys.executable, "-m", "blackbox_sal"]
    full = _explain(full_cli, default_model_path())
    _same(_explain(edge_cli, folder), full)
    # the edge profile's first command, no --model: the bundled default model ships prepared
    # (models/sentiment-cnn/prepared, packaged as blackbox_sal/default_model/prepared)
    _same(_explain(edge_cli, None), _explain(full_cli, None))

    # no onnx there, and an unprepared folder is refused with the way out
    r = subprocess.run([*edge_cli, "explain", "good", "--model", str(default_model_path())],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert "it loads prepared folders only (blackbox-sal grad MODEL --folder OUT where onnx is installed)" in r.stderr
    r = subprocess.run([str(python), "-c", "import onnx"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0


def _same(edge: dict[str, object], full: dict[str, object]) -> None:
    """The two explanations agree: scores and values to 1e-6, everything else exactly."""
    edge_tokens, full_tokens = edge.pop("tokens"), full.pop("tokens")
    assert isinstance(edge_tokens, list) and isinstance(full_tokens, list)
    np.testing.assert_allclose([t.pop("score") for t in edge_tokens], [t.pop("score") for t in full_tokens],
                               rtol=0, atol=1e-6)
    assert edge_tokens == full_tokens
    for doc in (edge, full):  # values to 1e-6, the rest exactly
        for key in ("target_value", "baseline_value", "convergence_delta"):
            value = doc.pop(key)
            assert isinstance(value, float)
            doc[key] = round(value, 6)
        prediction = doc["prediction"]
        assert isinstance(prediction, dict)
        prediction["scores"] = [round(v, 6) for v in prediction["scores"]]
        for top in prediction["top"]:
            top["value"] = round(top["value"], 6)
    assert edge == full


def test_the_shipped_prepared_default_model_is_the_default_model() -> None:
    """models/sentiment-cnn/prepared (models/prepare_default.py) is the default model's current
    split, table and a verified gradient graph: a retrained model with a stale copy fails here."""
    import onnxruntime as ort

    from blackbox_sal import ExplainConfig, explain

    original = load_model(default_model_path())
    shipped = default_model_path() / "prepared"
    assert original.body is not None
    assert (shipped / "model.onnx").read_bytes() == original.body.SerializeToString()
    np.testing.assert_array_equal(np.load(shipped / "embeddings.npy"), original.table)
    assert (shipped / "tokenizer.json").read_bytes() == (default_model_path() / "tokenizer.json").read_bytes()
    prepared = load_model(shipped)
    assert prepared.config.prepared is not None and prepared.name == original.name
    config = ExplainConfig(method="ig", backend="graph")
    a, b = explain(original, TEXT, config), explain(prepared, TEXT, config)  # the shipped graph, verified
    np.testing.assert_allclose([t.score for t in a.tokens], [t.score for t in b.tokens], rtol=0, atol=1e-6)
    assert a.target == b.target and abs(a.target_value - b.target_value) < 1e-6
    # the shipped gradient graph is an ONNX model onnxruntime runs on its own
    assert "grad" in {o.name for o in ort.InferenceSession(str(shipped / "grad.onnx")).get_outputs()}


def test_without_onnx_the_default_model_is_its_prepared_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    full = default_model_path()
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnx" else real(name, *a))
    assert default_model_path() == full / "prepared"
