"""Quantized models: onnxruntime's quantize_dynamic applied to a tiny model, explained by
finite differences with the wider step, said so in the output; no gradient graph."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import tiny

from blackbox_sal import ExplainConfig, explain, load_model
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradients.finite_differences import QUANTIZED_STEP
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.vocabulary.errors import UnavailableError

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
    before = hashlib.sha256((int8 / "model.onnx").read_bytes()).hexdigest()
    run = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(int8), "--format", "json",
                          "--method", "occlusion", tiny.TEXT], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["backend"] == "none"
    run = subprocess.run([sys.executable, "-m", "blackbox_sal", "explain", "--model", str(int8), "--backend", "graph",
                          tiny.TEXT], capture_output=True, text=True)
    assert run.returncode == 4 and "quantized" in run.stderr and "Traceback" not in run.stderr
    # the model file was left as it was
    assert hashlib.sha256((int8 / "model.onnx").read_bytes()).hexdigest() == before


def test_float_twin_has_exact_gradients_of_the_deployed_weights(pair: tuple[Path, Path]) -> None:
    from blackbox_sal.vocabulary.errors import UsageError

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


@pytest.fixture(scope="module", params=[False, True], ids=["per-tensor", "per-channel"])
def qdq(pair: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """The fp32 model after onnxruntime's quantize_static in the QDQ format: weights as
    DequantizeLinear of int8 constants, activations as QuantizeLinear -> DequantizeLinear."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.feeds = iter([{"input_ids": rng.integers(5, 15, (1, 6)), "attention_mask": np.ones((1, 6), np.int64)}
                               for _ in range(16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    fp32, _ = pair
    out = tmp_path_factory.mktemp("qdq")
    quantize_static(str(fp32 / "model.onnx"), str(out / "model.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["MatMul", "Gather", "Add", "Tanh"], per_channel=request.param)
    for name in ("tokenizer.json", "config.json"):
        (out / name).write_bytes((fp32 / name).read_bytes())
    return out


def test_qdq_float_twin_has_the_closed_form_gradient_of_the_dequantized_weights(qdq: Path) -> None:
    from onnx import numpy_helper

    from blackbox_sal.gradient_graph.store import gradient_session
    from blackbox_sal.text.tokenization import tokenize

    proto = onnx.load(str(qdq / "model.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    model = load_model(qdq)
    assert "QuantizeLinear" in model.quantized
    by_fd = explain(model, tiny.TEXT, ExplainConfig(method="grad-x-input"))
    assert by_fd.backend == "fd" and "with static quantization every method is rough" in by_fd.notes[0]

    twin = load_model(qdq, dequantize=True)
    assert twin.quantized == () and "QuantizeLinear" in twin.twin_of
    ints = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in proto.graph.initializer}
    w1, b1, w2 = ((ints[f"{n}_quantized"] - ints[f"{n}_zero_point"]) * ints[f"{n}_scale"] for n in ("W1", "b1", "W2"))
    tokens = tokenize(twin.tokenizer, tiny.TEXT, twin.max_length, 10_000)
    x = twin.embed(tokens.ids)
    table = (ints["table_quantized"] - ints["table_zero_point"]) * ints["table_scale"]
    np.testing.assert_allclose(x, table[tokens.ids], rtol=1e-6)  # the lookup reads the dequantized table
    for c in range(3):
        w = np.zeros((1, 3))
        w[0, c] = 1.0
        grad = _grad(twin, gradient_session(twin), x[None], tokens.ids, tokens.type_ids, w)[0]
        np.testing.assert_allclose(grad, tiny.tanh_mlp_grad(x, w1, b1, w2, c), rtol=1e-4, atol=1e-6)
    logits = twin.run(x[None], tokens.ids, tokens.type_ids, 1)[0]
    np.testing.assert_allclose(logits, np.tanh(x.astype(np.float64) @ w1 + b1).sum(0) @ w2, rtol=1e-5, atol=1e-6)
    e = explain(twin, tiny.TEXT, ExplainConfig(method="ig", steps=16))
    assert e.backend == "graph" and e.notes[0].startswith("explained the float twin")


def test_qdq_constant_dequantized_along_its_axis() -> None:
    """DequantizeLinear(q [3, 4], scale [3], zero [3], axis=0) == (q - zero[:, None]) * scale[:, None]."""
    from onnx import TensorProto, helper, numpy_helper

    from blackbox_sal.surgery.dequantize import float_twin

    q = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    scale, zero = np.array([0.5, 2.0, 0.25], np.float32), np.array([1, -2, 0], np.int8)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s", "z"], ["w"], axis=0),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zero, "z")])
    twin, replaced = float_twin(helper.make_model(graph))
    assert replaced == 1 and [n.op_type for n in twin.graph.node] == ["MatMul"]
    w = {t.name: numpy_helper.to_array(t) for t in twin.graph.initializer}["w"]
    np.testing.assert_array_equal(w, (q.astype(np.float32) - zero[:, None]) * scale[:, None])


def nbits_matmul(bits: int, zero_points: str, bias: bool, k: int = 40, n: int = 6) -> onnx.ModelProto:
    """One com.microsoft MatMulNBits, Y [2, 3, n] = A [2, 3, k] @ W, random codes in blocks of 16
    (k not a multiple of it), zero points absent, packed uint8 or float, with or without bias."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(bits)
    block = 16
    blocks = -(-k // block)
    inits = [numpy_helper.from_array(rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8), "B"),
             numpy_helper.from_array(rng.uniform(0.01, 0.1, n * blocks).astype(np.float32), "S")]
    inputs = ["A", "B", "S", ""]
    if zero_points == "packed":
        inits.append(numpy_helper.from_array(rng.integers(0, 256, n * -(-blocks * bits // 8), dtype=np.uint8), "Z"))
        inputs[3] = "Z"
    elif zero_points == "float":
        inits.append(numpy_helper.from_array(rng.uniform(0, 2**bits - 1, n * blocks).astype(np.float32), "Z"))
        inputs[3] = "Z"
    if bias:
        inputs += ["", "bias"]
        inits.append(numpy_helper.from_array(rng.normal(0, 1, n).astype(np.float32), "bias"))
    while not inputs[-1]:
        inputs.pop()
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [2, 3, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3, n])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


@pytest.mark.parametrize("bits,zero_points", [(2, "none"), (2, "packed"), (2, "float"), (4, "none"), (4, "packed"),
                                              (4, "float"), (8, "none"), (8, "packed")])
@pytest.mark.parametrize("bias", [False, True])
def test_matmul_nbits_twin_equals_onnxruntimes_kernel(bits: int, zero_points: str, bias: bool) -> None:
    """onnxruntime's own MatMulNBits kernel is the reference for the unpacking: low bits first,
    blocks along K, default zero point 2^(bits-1), packed or float zero points, bias."""
    import onnxruntime as ort

    from blackbox_sal.surgery.dequantize import float_twin

    model = nbits_matmul(bits, zero_points, bias)
    twin, replaced = float_twin(model)
    assert replaced == 1 and "MatMulNBits" not in {n.op_type for n in twin.graph.node}
    a = np.random.default_rng(0).normal(0, 1, (2, 3, 40)).astype(np.float32)
    want, got = (ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
                 for m in (model, twin))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * float(np.abs(want).max()))


def quantize_4bit(w: np.ndarray, block: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W [K, N] -> MatMulNBits' (codes [N, blocks, block / 2], scales [N * blocks], packed zero
    points [N * ceil(blocks / 2)]): asymmetric 4-bit codes per block along K, low nibble first."""
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((blocks * block, n), np.float32)
    padded[:k] = w
    wb = padded.T.reshape(n, blocks, block)
    lo, hi = np.minimum(wb.min(-1), 0), np.maximum(wb.max(-1), 0)
    scale = np.maximum((hi - lo) / 15, 1e-8).astype(np.float32)
    zero = np.clip(np.round(-lo / scale), 0, 15).astype(np.uint8)
    codes = np.clip(np.round(wb / scale[..., None]) + zero[..., None], 0, 15).astype(np.uint8)
    zeros = np.zeros((n, blocks + blocks % 2), np.uint8)
    zeros[:, :blocks] = zero
    return (codes[..., 0::2] | (codes[..., 1::2] << 4), scale.reshape(-1),
            (zeros[:, 0::2] | (zeros[:, 1::2] << 4)).reshape(-1))


@pytest.fixture(scope="module")
def nbits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tanh MLP at width 32 with both MatMuls as 4-bit MatMulNBits (blocks of 16), as
    onnxruntime's MatMulNBitsQuantizer writes them."""
    from onnx import helper, numpy_helper

    w1, b1, w2 = tiny.mlp_weights(32, 64, 3, seed=3)
    proto = tiny.tanh_mlp(tiny.table(32), w1, b1, w2)
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    nodes = []
    for node in proto.graph.node:
        if node.op_type == "MatMul":
            w = node.input[1]
            codes, scales, zeros = quantize_4bit(weights[w])
            proto.graph.initializer.extend([numpy_helper.from_array(codes, f"{w}_Q4"),
                                            numpy_helper.from_array(scales, f"{w}_scales"),
                                            numpy_helper.from_array(zeros, f"{w}_zero_points")])
            node = helper.make_node("MatMulNBits", [node.input[0], f"{w}_Q4", f"{w}_scales", f"{w}_zero_points"],
                                    list(node.output), domain="com.microsoft", K=weights[w].shape[0],
                                    N=weights[w].shape[1], bits=4, block_size=16)
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    kept = [t for t in proto.graph.initializer if t.name not in ("W1", "W2")]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return tiny.write_model_dir(tmp_path_factory.mktemp("nbits") / "q4", proto)


def test_weight_only_model_loads_as_the_same_float_function_with_exact_gradients(nbits_dir: Path) -> None:
    from onnx import numpy_helper

    proto = onnx.load(str(nbits_dir / "model.onnx"))
    assert [n.op_type for n in proto.graph.node].count("MatMulNBits") == 2
    model = load_model(nbits_dir)  # checked against the file: the same function
    assert model.quantized == () and model.weight_only == ("MatMulNBits",)
    e = explain(model, tiny.TEXT, ExplainConfig(method="grad-x-input"))
    assert e.backend == "graph" and e.notes[0].startswith("the model's low-bit weights (MatMulNBits)")
    # the closed form on the dequantized weights the loaded graph holds
    assert model.body is not None
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.body.graph.initializer}
    w1, w2 = inits["W1_Q4__dequantized"], inits["W2_Q4__dequantized"]
    from blackbox_sal.text.tokenization import tokenize

    tokens = tokenize(model.tokenizer, tiny.TEXT, model.max_length, 10_000)
    x = model.embed(tokens.ids)
    want = (tiny.tanh_mlp_grad(x, w1, inits["b1"], w2, e.target.index) * x).sum(-1)
    np.testing.assert_allclose([t.score for t in e.tokens], want, rtol=1e-4, atol=1e-6)


def test_weight_only_with_integer_compute_stays_quantized(nbits_dir: Path, tmp_path: Path) -> None:
    """accuracy_level 4 quantizes the activations inside the kernel: not the same function as
    the twin, so the model is explained as quantized (finite differences), as before."""
    from onnx import helper

    proto = onnx.load(str(nbits_dir / "model.onnx"))
    for n in proto.graph.node:
        if n.op_type == "MatMulNBits":
            n.attribute.append(helper.make_attribute("accuracy_level", 4))
    (tmp_path / "m").mkdir()
    onnx.save(proto, str(tmp_path / "m" / "model.onnx"))
    (tmp_path / "m" / "tokenizer.json").write_bytes((nbits_dir / "tokenizer.json").read_bytes())
    model = load_model(tmp_path / "m")
    assert model.quantized == ("MatMulNBits",) and model.weight_only == ()
    assert explain(model, tiny.TEXT, ExplainConfig(method="occlusion")).tokens


def _grad(model: TextModel, graph: GradientSession, points: np.ndarray, ids: np.ndarray, types: np.ndarray,
          weights: np.ndarray) -> np.ndarray:
    return graph.gradient(model, points, ids, types, weights).astype(np.float64)
