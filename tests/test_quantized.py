"""Quantized models: onnxruntime's quantize_dynamic applied to a tiny model, explained by
finite differences with the wider step, said so in the output; no gradient graph."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.errors import UnavailableError
from blackbox_sal.gradients.finite_differences import QUANTIZED_STEP

D, H = 8, 16


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = tmp_path_factory.mktemp("quant")
    w1, b1, w2 = tiny.mlp_weights(D, H, 3, seed=3)
    fp32 = tiny.write_model_dir(root / "fp32", tiny.tanh_mlp(tiny.table(D), w1, b1, w2), ["a", "b", "c"])
    int8 = root / "int8"
    int8.mkdir()
    quantize_dynamic(str(fp32 / "model.onnx"), str(int8 / "model.onnx"), weight_type=QuantType.QUInt8,
                     op_types_to_quantize=["MatMul", "Gather"])
    for name in ("tokenizer.json", "config.json"):
        (int8 / name).write_bytes((fp32 / name).read_bytes())
    return fp32, int8


def test_quantized_model_is_recognised_and_explained_by_finite_differences(pair: tuple[Path, Path]) -> None:
    fp32, int8 = pair
    model = load_model(int8)  # split after the 8-bit table's DequantizeLinear, checked against the original
    assert "MatMulInteger" in model.quantized and "8-bit table" in model.origin
    assert not load_model(fp32).quantized
    e = explain(model, tiny.TEXT, ExplainConfig(method="ig", steps=8))
    assert e.backend == "fd"
    assert e.settings["fd_step"] == QUANTIZED_STEP
    assert any(n.startswith("the model is quantized (") and "MatMulInteger" in n for n in e.notes)
    assert not any("gradient rule" in n for n in e.notes)  # no graph was attempted
    # the int8 model is close to the fp32 one: attributions rank the tokens alike
    ref = explain(load_model(fp32), tiny.TEXT, ExplainConfig(method="ig", steps=8, target=e.target.index))
    rho = np.corrcoef(np.argsort(np.argsort([t.score for t in e.tokens])),
                      np.argsort(np.argsort([t.score for t in ref.tokens])))[0, 1]
    assert rho > 0.5
    with pytest.raises(UnavailableError, match="quantized.*use --backend fd"):
        explain(model, tiny.TEXT, ExplainConfig(method="ig", backend="graph"))


def test_cli_on_a_quantized_model(pair: tuple[Path, Path]) -> None:
    _, int8 = pair
    run = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(int8), "--format", "json",
                          "--method", "occlusion", tiny.TEXT], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["backend"] == "none"
    run = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(int8), "--backend", "graph",
                          tiny.TEXT], capture_output=True, text=True)
    assert run.returncode == 4 and "quantized" in run.stderr and "Traceback" not in run.stderr
    assert onnx.load(str(int8 / "model.onnx")).graph.node  # the model file was left as it was


def test_float_twin_has_exact_gradients_of_the_deployed_weights(pair: tuple[Path, Path]) -> None:
    from blackbox_sal.errors import UsageError

    fp32, int8 = pair
    twin = load_model(int8, dequantize=True)
    assert twin.quantized == () and "MatMulInteger" in twin.twin_of
    e = explain(twin, tiny.TEXT, ExplainConfig(method="ig", steps=16))
    assert e.backend == "graph" and abs(e.convergence_delta or 0) < 1e-4
    assert e.notes[0].startswith("explained the float twin of a quantized model")
    fd = explain(twin, tiny.TEXT, ExplainConfig(method="grad-x-input", backend="fd", richardson=True))
    graph = explain(twin, tiny.TEXT, ExplainConfig(method="grad-x-input", backend="graph"))
    np.testing.assert_allclose([t.score for t in graph.tokens], [t.score for t in fd.tokens], rtol=1e-3, atol=1e-5)
    # the twin is the fp32 model up to the 8-bit rounding of its weights
    ref = explain(load_model(fp32), tiny.TEXT, ExplainConfig(method="grad-x-input", target=graph.target.index))
    np.testing.assert_allclose([t.score for t in graph.tokens], [t.score for t in ref.tokens], rtol=0.1, atol=0.05)
    with pytest.raises(UsageError, match="no integer operators"):
        load_model(fp32, dequantize=True)
