"""Our reverse-mode rules, op by op: the gradient graph equals central finite differences.

Each case is a small graph over inputs_embeds [batch, seq, D] built with onnx.helper, reduced
to an output [batch, C]; the gradient of sum(w * output) is compared with central
differences taken element by element on the forward graph, at several batch sizes and
lengths (the probes that read shapes use others).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from blackbox_sal.gradient_graph.build import gradient_of as build_gradient
from blackbox_sal.surgery.names import GRAD, WEIGHTS
from blackbox_sal.vocabulary.errors import ModelError

D = 4
RNG = np.random.default_rng(5)


def _w(*shape: int) -> np.ndarray:
    return RNG.normal(0, 0.5, shape).astype(np.float32)


def _ints(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def model(nodes: list[onnx.NodeProto], inits: dict[str, np.ndarray], opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "case",
        [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(m)
    return m


def probes() -> list[dict[str, np.ndarray]]:
    return [{"inputs_embeds": RNG.normal(size=(b, s, D)).astype(np.float32)} for b, s in ((2, 5), (3, 7))]


def check(m: onnx.ModelProto, shapes: tuple[tuple[int, int], ...] = ((1, 3), (2, 6))) -> None:
    g = build_gradient(m, "y", probes())
    fwd = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    back = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, s in shapes:
        x = RNG.normal(size=(b, s, D)).astype(np.float32)
        y = fwd.run(["y"], {"inputs_embeds": x})[0]
        w = RNG.normal(size=y.shape).astype(np.float32)
        out, grad = back.run(["y", GRAD], {"inputs_embeds": x, WEIGHTS: w})
        np.testing.assert_allclose(out, y, rtol=1e-6, atol=1e-6)
        eps = 1e-2
        flat = x.reshape(-1)
        steps = np.zeros((2 * flat.size, flat.size), np.float32)
        steps[np.arange(flat.size), np.arange(flat.size)] = eps
        steps[flat.size + np.arange(flat.size), np.arange(flat.size)] = -eps
        values = np.array([float((fwd.run(["y"], {"inputs_embeds": (flat + d).reshape(x.shape)})[0] * w).sum())
                           for d in steps], np.float64)
        fd = (values[: flat.size] - values[flat.size:]) / (2 * eps)
        np.testing.assert_allclose(grad.reshape(-1), fd, rtol=2e-2, atol=2e-3)


def n(op: str, inputs: list[str], out: str, **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [out], **attrs)


def test_elementwise_chain() -> None:
    check(model([
        n("Tanh", ["inputs_embeds"], "a"), n("Sigmoid", ["inputs_embeds"], "b"), n("Mul", ["a", "b"], "c"),
        n("Exp", ["c"], "d"), n("Sqrt", ["d"], "e"), n("Add", ["e", "one"], "e1"), n("Log", ["e1"], "f"),
        n("Div", ["f", "e1"], "g"), n("Erf", ["g"], "h"), n("Pow", ["h", "three"], "i"), n("Sub", ["i", "c"], "j"),
        n("Reciprocal", ["e1"], "k"), n("Neg", ["k"], "k2"), n("Sum", ["j", "k2", "b"], "l"),
        n("LeakyRelu", ["l"], "m", alpha=0.1), n("ReduceSum", ["m", "axes1"], "y", keepdims=0),
    ], {"one": np.array(1.0, np.float32), "three": np.array(3.0, np.float32), "axes1": _ints(1)}))


def test_broadcasting_operands_both_differentiated() -> None:
    check(model([
        n("ReduceMean", ["inputs_embeds"], "mu", axes=[-1], keepdims=1),   # [B, S, 1]
        n("Sub", ["inputs_embeds", "mu"], "c"), n("Mul", ["c", "mu"], "d"),
        n("ReduceMax", ["inputs_embeds"], "mx", axes=[1], keepdims=1),     # [B, 1, D]
        n("Add", ["mx", "one"], "mx1"), n("Mul", ["mx1", "mx1"], "mx2"), n("Div", ["d", "mx2"], "e"),
        n("Add", ["e", "bias"], "f"), n("Expand", ["mu", "shape"], "g"),  # [B, S, 1] -> [B, S, D]
        n("Mul", ["f", "g"], "h"), n("ReduceSum", ["h", "axes1"], "y", keepdims=0),
    ], {"one": np.array([[[1.0]]], np.float32), "bias": _w(D), "shape": _ints(1, 1, D), "axes1": _ints(1)}))


def test_clip_and_l2_normalisation() -> None:
    """Mean pooling with a clamped count and an L2-normalised sentence embedding, as
    sentence-transformers exports it."""
    check(model([
        n("ReduceSum", ["inputs_embeds", "axes1"], "s", keepdims=0),
        n("Clip", ["s", "lo", ""], "c"), n("Clip", ["s", "", "hi"], "c2"), n("Add", ["c", "c2"], "h"),
        n("ReduceL2", ["h"], "norm", axes=[-1], keepdims=1), n("Div", ["h", "norm"], "u"),
        n("MatMul", ["u", "w"], "y"),
    ], {"axes1": _ints(1), "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32), "w": _w(D, 3)}))


@pytest.mark.parametrize("reverse,exclusive", [(0, 0), (1, 0), (0, 1)])
def test_cumsum(reverse: int, exclusive: int) -> None:
    check(model([
        n("CumSum", ["inputs_embeds", "axis1"], "c", reverse=reverse, exclusive=exclusive), n("Tanh", ["c"], "t"),
        n("MatMul", ["t", "w"], "m"), n("ReduceSum", ["m", "axis1v"], "y", keepdims=0),
    ], {"axis1": np.array(1, np.int64), "axis1v": _ints(1), "w": _w(D, 3)}))


def test_layernorm_softmax_attention() -> None:
    check(model([
        n("LayerNormalization", ["inputs_embeds", "scale", "shift"], "ln", axis=-1, epsilon=1e-5),
        n("MatMul", ["ln", "wq"], "q"), n("MatMul", ["ln", "wk"], "k"), n("MatMul", ["ln", "wv"], "v"),
        n("Transpose", ["k"], "kt", perm=[0, 2, 1]), n("MatMul", ["q", "kt"], "s"),
        n("Softmax", ["s"], "p", axis=-1), n("MatMul", ["p", "v"], "o"),
        n("LogSoftmax", ["o"], "lo", axis=-1), n("ReduceMean", ["lo"], "y", axes=[1], keepdims=0),
    ], {"scale": _w(D) + 1, "shift": _w(D), "wq": _w(D, D), "wk": _w(D, D), "wv": _w(D, D)}))


def test_shape_ops() -> None:
    check(model([
        n("Reshape", ["inputs_embeds", "split_heads"], "r"),                    # [B, S, 2, D/2]
        n("Transpose", ["r"], "t", perm=[0, 2, 3, 1]), n("Mul", ["t", "scale"], "ts"),  # [B, 2, D/2, S]
        n("Transpose", ["ts"], "t2", perm=[0, 3, 1, 2]),
        n("Reshape", ["t2", "merge"], "m"), n("Unsqueeze", ["m", "axes0"], "u"), n("Squeeze", ["u", "axes0"], "sq"),
        n("Concat", ["sq", "inputs_embeds"], "cat", axis=1),                   # [B, 2S, D]
        n("Slice", ["cat", "starts", "ends", "axes1"], "sl"),                  # [B, 2S - 2, D]
        helper.make_node("Split", ["sl", "halves"], ["s1", "s2"], axis=2),
        n("Mul", ["s1", "s1"], "s1sq"), n("Concat", ["s2", "s1sq"], "c2", axis=2),
        n("Where", ["keep", "c2", "zero"], "wh"),
        n("Gather", ["wh", "last"], "g", axis=1),                               # [B, D]
        n("Gather", ["c2", "firsts"], "g2", axis=1),                            # [B, 2, D]
        n("Flatten", ["g2"], "fl", axis=1), n("Gemm", ["fl", "wf"], "h", transB=1),
        n("Gemm", ["g", "wg", "bias"], "y0"), n("Add", ["y0", "h"], "y"),
    ], {"split_heads": _ints(0, 0, 2, D // 2), "scale": _w(1, 2, D // 2, 1), "merge": _ints(0, 0, D), "axes0": _ints(0),
        "starts": _ints(1), "ends": _ints(-1), "axes1": _ints(1), "halves": _ints(D // 2, D // 2),
        "keep": np.array([True, False, True, True]), "zero": np.array(0.0, np.float32), "last": np.array(-1, np.int64),
        "firsts": _ints(0, 1), "wf": _w(3, 2 * D), "wg": _w(D, 3), "bias": _w(3)}))


def test_slices_with_bounds_computed_at_run_time() -> None:
    """x[:, :S-1, D/2:] with S-1 and D/2 taken from Shape(x): one bound changes with the input
    (a run-time pad), the other does not (a constant pad)."""
    check(model([
        n("Shape", ["inputs_embeds"], "s"),
        n("Slice", ["s", "i2", "i3"], "d"), n("Div", ["d", "two"], "half"),          # D/2, the same for every input
        n("Slice", ["s", "i1", "i2"], "len"), n("Sub", ["len", "one"], "lm1"),       # S-1
        n("Concat", ["zero", "half"], "starts", axis=0), n("Concat", ["lm1", "big"], "ends", axis=0),
        n("Slice", ["inputs_embeds", "starts", "ends", "axes12"], "y1"),             # [B, S-1, D/2]
        n("Slice", ["inputs_embeds", "half", "big", "i2"], "y2"),                    # [B, S, D/2]
        n("Tanh", ["y1"], "t1"), n("ReduceSum", ["t1", "i1"], "r1", keepdims=0),
        n("ReduceSum", ["y2", "i1"], "r2", keepdims=0), n("Mul", ["r1", "r2"], "y"),
    ], {"i1": _ints(1), "i2": _ints(2), "i3": _ints(3), "two": _ints(2), "one": _ints(1), "zero": _ints(0),
        "big": _ints(2**62), "axes12": _ints(1, 2)}), shapes=((1, 3), (2, 6), (1, 2)))


def test_gemm_transposed_and_matmul_with_vectors() -> None:
    check(model([
        n("ReduceSum", ["inputs_embeds", "axes1"], "h", keepdims=0),        # [B, D]
        n("Transpose", ["h"], "ht"), n("Gemm", ["ht", "w"], "a", transA=1, alpha=0.5),   # [B, 3]
        n("MatMul", ["inputs_embeds", "v"], "mv"),                          # [B, S]
        n("Transpose", ["inputs_embeds"], "xt", perm=[0, 2, 1]), n("MatMul", ["u", "xt"], "um"),  # [B, S]
        n("Mul", ["mv", "um"], "p"), n("ReduceSum", ["p", "axes1"], "mu1", keepdims=1),  # [B, 1]
        n("Relu", ["a"], "ra"), n("Add", ["ra", "mu1"], "y"),
    ], {"axes1": _ints(1), "w": _w(D, 3), "v": _w(D), "u": _w(D)}))


def test_conv_stride_one_dilated_and_padded() -> None:
    check(model([
        n("Transpose", ["inputs_embeds"], "t", perm=[0, 2, 1]),
        n("Conv", ["t", "k", "kb"], "c", pads=[2, 1], dilations=[2], kernel_shape=[3]),
        n("Tanh", ["c"], "tc"), n("ReduceMax", ["tc"], "y", axes=[2], keepdims=0),
    ], {"k": _w(3, D, 3), "kb": _w(3)}))


@pytest.mark.parametrize("stride", [2, 3])
def test_strided_conv_over_every_length(stride: int) -> None:
    check(model([
        n("Transpose", ["inputs_embeds"], "t", perm=[0, 2, 1]),
        n("Conv", ["t", "k"], "c", pads=[1, 1], strides=[stride], kernel_shape=[3]),
        n("Tanh", ["c"], "tc"), n("ReduceSum", ["tc", "axes2"], "y", keepdims=0),
    ], {"k": _w(3, D, 3), "axes2": _ints(2)}), shapes=((1, 3), (2, 6), (1, 8), (2, 9), (1, 10)))


def test_gelu_op_of_opset_20() -> None:
    check(model([n("Gelu", ["inputs_embeds"], "g"), n("ReduceSum", ["g", "axes1"], "y", keepdims=0)],
                {"axes1": _ints(1)}, opset=20))


def test_output_independent_of_the_input_gives_zeros() -> None:
    m = model([n("Shape", ["inputs_embeds"], "s"), n("Cast", ["s"], "f", to=TensorProto.FLOAT),
               n("Unsqueeze", ["f", "axes0"], "y")], {"axes0": _ints(0)})
    check(m)


def test_unsupported_operator_is_named() -> None:
    m = model([n("Atan", ["inputs_embeds"], "s"), n("ReduceSum", ["s", "axes1"], "y", keepdims=0)],
              {"axes1": _ints(1)})
    with pytest.raises(ModelError, match="no gradient rule for operator 'Atan'"):
        build_gradient(m, "y", probes())


def test_old_opsets_are_refused() -> None:
    m = model([n("ReduceSum", ["inputs_embeds"], "y", axes=[1], keepdims=0)], {}, opset=11)
    with pytest.raises(ModelError, match="opset 11"):
        build_gradient(m, "y", probes())


@pytest.mark.parametrize("spelling", ["x*(1+erf)*0.5", "(x*0.5)*(1+erf)", "erf(x*c) read twice"])
def test_exported_gelu_patterns(spelling: str) -> None:
    """The torch exporter's spelled-out GELU is differentiated as one Gelu (when nothing else
    reads its intermediates) or op by op (when something does): same gradient either way."""
    nodes = [n("MatMul", ["inputs_embeds", "w"], "x")]
    if spelling == "x*(1+erf)*0.5":
        nodes += [n("Div", ["x", "sqrt2"], "u"), n("Erf", ["u"], "e"), n("Add", ["e", "one"], "a"),
                  n("Mul", ["x", "a"], "m"), n("Mul", ["m", "half"], "g")]
    elif spelling == "(x*0.5)*(1+erf)":
        nodes += [n("Mul", ["isqrt2", "x"], "u"), n("Erf", ["u"], "e"), n("Add", ["one", "e"], "a"),
                  n("Mul", ["x", "half"], "h"), n("Mul", ["h", "a"], "g")]
    else:
        nodes += [n("Mul", ["x", "isqrt2"], "u"), n("Erf", ["u"], "e"), n("Add", ["e", "one"], "a"),
                  n("Mul", ["x", "a"], "m"), n("Mul", ["m", "half"], "g0"), n("Add", ["g0", "e"], "g")]
    nodes += [n("ReduceSum", ["g", "axes1"], "y", keepdims=0)]
    m = model(nodes, {"w": _w(D, D), "sqrt2": np.array(np.sqrt(2), np.float32), "one": np.array(1.0, np.float32),
                      "half": np.array(0.5, np.float32), "isqrt2": np.array(1 / np.sqrt(2), np.float32),
                      "axes1": _ints(1)})
    check(m)
    adjoint = [node for node in build_gradient(m, "y", probes()).graph.node if node.name.startswith("bbs_")]
    reads = {i for node in adjoint for i in node.input}
    # folded: the adjoint reads x only, so onnxruntime can still fuse the forward pattern
    assert bool(reads & {"u", "e", "a", "m", "h"}) == (spelling == "erf(x*c) read twice")


def test_rules_added_for_exports_seen_in_the_wild() -> None:
    """Max/Min/Mean (variadic, broadcast), the smooth activations, PRelu, Elu, HardSigmoid."""
    check(model([
        n("Max", ["inputs_embeds", "lo"], "mx"), n("Min", ["mx", "hi"], "mn"),               # a clamp written out
        n("Softplus", ["mn"], "sp"), n("Softsign", ["inputs_embeds"], "ss"), n("Sin", ["ss"], "si"),
        n("Cos", ["sp"], "co"), n("Mean", ["si", "co", "inputs_embeds"], "me"),
        n("PRelu", ["me", "slope"], "pr"), n("Elu", ["pr"], "el", alpha=0.7),
        n("HardSigmoid", ["el"], "hs", alpha=0.3, beta=0.4), n("Max", ["hs", "el", "ss"], "m3"),
        n("ReduceSum", ["m3", "axes1"], "y", keepdims=0),
    ], {"lo": np.array(-0.6, np.float32), "hi": _w(D), "slope": np.array([0.2], np.float32), "axes1": _ints(1)}))


def test_global_pools_and_same_padding() -> None:
    """Keras's Conv1D(padding="same") comes out of jax2onnx and tf2onnx as auto_pad SAME_*;
    GlobalMaxPool / GlobalAveragePool pool over the length."""
    for auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        check(model([
            n("Transpose", ["inputs_embeds"], "t", perm=[0, 2, 1]),
            n("Conv", ["t", "k", "kb"], "c", auto_pad=auto_pad, kernel_shape=[4]),
            n("Tanh", ["c"], "tc"), n("GlobalMaxPool", ["tc"], "gm"), n("GlobalAveragePool", ["tc"], "ga"),
            n("Add", ["gm", "ga"], "g"), n("Squeeze", ["g", "axes2"], "y"),
        ], {"k": _w(3, D, 4), "kb": _w(3), "axes2": _ints(2)}), shapes=((1, 3), (2, 6), (1, 1)))


def test_einsum_and_log_sum_exp() -> None:
    check(model([
        n("Einsum", ["inputs_embeds", "w"], "e", equation="bsd,dk->bsk"),
        n("Einsum", ["e", "inputs_embeds"], "a", equation="bsk,bsd->bkd"),
        n("ReduceLogSumExp", ["a"], "l", axes=[2], keepdims=0), n("ReduceSumSquare", ["e"], "q", axes=[1], keepdims=0),
        n("Add", ["l", "q"], "y"),
    ], {"w": _w(D, 3)}))


def test_a_loop_reading_a_differentiated_tensor_is_refused_by_name() -> None:
    """A Loop body that reads the embeddings from the outer scope: its outputs depend on them,
    so the reverse pass must not take the loop for a constant (a silent zero gradient)."""
    body = helper.make_graph(
        [n("Identity", ["cond_in"], "cond_out"), n("Add", ["acc_in", "inputs_embeds"], "acc_out")], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])
    m = model([helper.make_node("Loop", ["trips", "", "zero"], ["acc"], body=body),
               n("ReduceSum", ["acc", "axes1"], "y", keepdims=0)],
              {"trips": np.array(2, np.int64), "zero": np.zeros((1, 1, D), np.float32), "axes1": _ints(1)})
    with pytest.raises(ModelError, match="no gradient rule for operator 'Loop'.*run backwards"):
        build_gradient(m, "y", probes())


@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_onnx_ml_normalizer(norm: str) -> None:
    """A scikit-learn pipeline's Normalizer (ONNX-ML, per row of [N, C]): its reverse rule
    against finite differences, and against its closed form at one point, where the row's
    norm is 5 (L2) or 7 (L1): dx = (g - y (g . y)) / |x|, with sign(x) for y under L1."""
    graph = helper.make_graph(
        [n("ReduceSum", ["inputs_embeds", "axes1"], "s", keepdims=0),
         helper.make_node("Normalizer", ["s"], ["u"], domain="ai.onnx.ml", norm=norm), n("MatMul", ["u", "w"], "y")],
        "case", [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, ["batch", "sequence", D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        [numpy_helper.from_array(_ints(1), "axes1"), numpy_helper.from_array(_w(D, 3), "w")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)],
                          ir_version=9)
    onnx.checker.check_model(m)
    check(m)
    g = build_gradient(m, "y", probes())
    back = ort.InferenceSession(g.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.array([[[3.0, -4.0, 0.0, 0.0]]], np.float32)  # one token: s = x
    seed = np.array([[1.0, 0.0, 0.0]], np.float32)
    (grad,) = back.run([GRAD], {"inputs_embeds": x, WEIGHTS: seed})
    w = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "w"))[:, 0].astype(np.float64)
    v = x[0, 0].astype(np.float64)
    size = np.sqrt((v * v).sum()) if norm == "L2" else np.abs(v).sum()
    y = v / size
    along = y if norm == "L2" else np.sign(v)
    np.testing.assert_allclose(grad[0, 0], (w - along * (w @ y)) / size, rtol=1e-5, atol=1e-6)
    (zero,) = back.run([GRAD], {"inputs_embeds": np.zeros_like(x), WEIGHTS: seed})
    assert zero.tolist() == np.zeros_like(x).tolist()  # an all-zero row stays zero: its gradient is 0
