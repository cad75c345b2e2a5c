"""Framework-agnostic audits (opt-in, -m heavy): every model the models/build_*.py scripts
made from Keras/TensorFlow, scikit-learn, JAX/Flax and Hugging Face optimum, explained by
blackbox-sal and compared with that framework's own input gradients (reference.npz).
Skips, with the command to run, the models that are not built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.heavy
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "models" / ".cache"
BUILT_BY = {"keras-tutorial": "build_keras.py", "keras-lstm": "build_keras.py", "keras-cnn": "build_keras.py",
            "sklearn-bow-lr": "build_sklearn.py", "sklearn-tfidf-mlp": "build_sklearn.py", "jax-cnn": "build_jax.py",
            "optimum-minilm-cls": "build_optimum.py", "optimum-minilm-encoder": "build_optimum.py"}
#: what each must reach: the largest difference from the framework's gradients, relative to the
#: largest of them (finite differences for the LSTM: its Loop has no reverse rule)
WITHIN = {"keras-lstm": 1e-3}


@pytest.mark.parametrize("name", sorted(BUILT_BY))
def test_attributions_equal_the_frameworks_own_gradients(name: str) -> None:
    folder = CACHE / name
    if not (folder / "reference.npz").is_file():
        pytest.skip(f"{folder} not built: python models/{BUILT_BY[name]} (see models/README.md)")
    r = subprocess.run([sys.executable, str(ROOT / "models" / "compare_reference.py"), str(folder)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if " text " in line]
    assert len(rows) == 5, r.stdout
    for row in rows:
        rel = float(row.split("max |diff| / max |ref| = ")[1].split(",")[0])
        assert rel <= WITHIN.get(name, 1e-5), row
        assert ("backend fd" in row) == (name == "keras-lstm"), row
