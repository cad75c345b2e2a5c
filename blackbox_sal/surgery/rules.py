"""The reverse-mode rules: one function per operator, from the adjoints of a node's outputs
to the adjoints of the inputs that are differentiated (g is the adjoint of the output y;
unbroadcast() sums g back to an operand's shape)::

    Add/Sub        unb(g), unb(+-g)            MatMul A@B   g@B^T, A^T@g (unb over batch axes)
    Mul            unb(g*b), unb(g*a)          Gemm         the same with the trans flags
    Div            unb(g/b), unb(-g*y/b)       Softmax      y*(g - sum(g*y))
    Tanh, Sigmoid, Exp, Sqrt, Erf, Gelu, Relu, Pow (constant exponent), Log, Reciprocal ...
    LayerNormalization   inv_std * (gs - mean(gs) - xhat*mean(gs*xhat)),  gs = g*scale,
                         with mean and inv_std taken from the forward node's own outputs
    Conv                 ConvTranspose(g, W) with the forward pads (strided: the longest
                         output_padding, cut to x's extent): no static length needed
    Reshape-likes        Reshape(g, Shape(x));  Transpose: inverse perm;  Concat: Split;
    Split: Concat;  Slice: Pad;  Gather (scalar or 1-D indices): one-hot;  Where, Expand,
    Clip, CumSum, ReduceSum/Mean/Max/Min/L2, Identity, Cast, Dropout

A rule is ``(builder, facts, node, output adjoints, wanted inputs) -> input adjoints``; a
missing rule or an unsupported attribute raises ModelError naming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.builder import Builder, unbroadcast, unbroadcast_shapes, zero_like
from blackbox_sal.surgery.facts import Facts
from blackbox_sal.surgery.index import attr_float, attr_int, attr_ints, attr_str, has_attr, input_at
from blackbox_sal.vocabulary.errors import ModelError

Rule = Callable[[Builder, Facts, onnx.NodeProto, list[str | None], list[bool]], list[str | None]]


def _add(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    out: list[str | None] = [None] * len(n.input)
    for k, x in enumerate(n.input):
        if want[k]:
            gk = g if n.op_type != "Sub" or k == 0 else b.op("Neg", [g])
            out[k] = unbroadcast(b, f, gk, x, y)
    return out


def _mul(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    a, c = n.input[0], n.input[1]
    return [unbroadcast(b, f, b.op("Mul", [g, c]), a, y) if want[0] else None,
            unbroadcast(b, f, b.op("Mul", [g, a]), c, y) if want[1] else None]


def _div(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    a, c = n.input[0], n.input[1]
    ga = gc = None
    if want[0]:
        ga = unbroadcast(b, f, b.op("Div", [g, c]), a, y)
    if want[1]:
        gc = unbroadcast(b, f, b.op("Neg", [b.op("Div", [b.op("Mul", [g, y]), c])]), c, y)
    return [ga, gc]


def _unary(local: Callable[[Builder, Facts, str, str], str] | None) -> Rule:
    """A rule for y = h(x), elementwise: g * h'(x), h'(x) built from x and y (None: h' = 1)."""
    def rule(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
        g = gy[0]
        assert g is not None
        out: list[str | None] = [None] * len(n.input)
        if want[0]:
            out[0] = g if local is None else b.op("Mul", [g, local(b, f, n.input[0], n.output[0])])
        return out
    return rule


def _one(b: Builder, f: Facts, like: str) -> str:
    return b.scalar(1.0, f.rank(like), f.dtypes[like])


UNARY: dict[str, Callable[[Builder, Facts, str, str], str] | None] = {
    "Identity": None,
    "Cast": None,
    "Dropout": None,
    "Exp": lambda b, f, x, y: y,
    "Tanh": lambda b, f, x, y: b.op("Sub", [_one(b, f, y), b.op("Mul", [y, y])]),
    "Sigmoid": lambda b, f, x, y: b.op("Mul", [y, b.op("Sub", [_one(b, f, y), y])]),
    "Sqrt": lambda b, f, x, y: b.op("Div", [b.scalar(0.5, f.rank(y), f.dtypes[y]), y]),
    "Log": lambda b, f, x, y: b.op("Reciprocal", [x]),
    "Reciprocal": lambda b, f, x, y: b.op("Neg", [b.op("Mul", [y, y])]),
    "Neg": lambda b, f, x, y: b.scalar(-1.0, f.rank(y), f.dtypes[y]),
    "Abs": lambda b, f, x, y: b.op("Sign", [x]),
    "Relu": lambda b, f, x, y: b.op("Cast", [b.op("Greater", [x, zero_like(b, f, x)])],
                                    to=helper.np_dtype_to_tensor_dtype(f.dtypes[y])),
    "Erf": lambda b, f, x, y: b.op("Mul", [b.scalar(2 / math.sqrt(math.pi), f.rank(x), f.dtypes[x]),
                                          b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])]),
    # softplus' = sigmoid(x); softsign' = 1 / (1 + |x|)^2
    "Softplus": lambda b, f, x, y: b.op("Sigmoid", [x]),
    "Softsign": lambda b, f, x, y: b.op("Reciprocal", [b.op("Mul", [d := b.op("Add", [_one(b, f, x),
                                                                                       b.op("Abs", [x])]), d])]),
    "Sin": lambda b, f, x, y: b.op("Cos", [x]),
    "Cos": lambda b, f, x, y: b.op("Neg", [b.op("Sin", [x])]),
}


def _gelu(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """y = x Phi(x): dy/dx = Phi(x) + x phi(x) = (1 + erf(s) + (2/sqrt(pi)) s exp(-s^2)) / 2, s = x/sqrt(2),
    in few passes over the tensor: the 2/sqrt(pi) rides in the exponent, the 1/2 on g."""
    if attr_str(n, "approximate", "none") != "none":
        raise ModelError("no gradient rule for Gelu(approximate='tanh')")
    g, x = gy[0], n.input[0]
    assert g is not None
    r, dt = f.rank(x), f.dtypes[x]
    s = b.op("Mul", [x, b.scalar(1 / math.sqrt(2), r, dt)])
    q = b.op("Exp", [b.op("Sub", [b.scalar(math.log(2 / math.sqrt(math.pi)), r, dt), b.op("Mul", [s, s])])])
    v = b.op("Add", [b.op("Erf", [s]), b.op("Mul", [s, q])])
    half = b.op("Mul", [g, b.scalar(0.5, f.rank(n.output[0]), dt)])
    return [b.op("Add", [b.op("Mul", [half, v]), half])]


def _leaky_relu(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x = gy[0], n.input[0]
    assert g is not None
    alpha = attr_float(n, "alpha", 0.01)
    return [b.op("Where", [b.op("Greater", [x, zero_like(b, f, x)]), g,
                           b.op("Mul", [g, b.scalar(alpha, f.rank(x), f.dtypes[x])])])]


def _pow(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x, e, y = gy[0], n.input[0], n.input[1], n.output[0]
    assert g is not None
    if want[1]:
        raise ModelError("no gradient rule for Pow with a differentiated exponent")
    r, dt = f.rank(y), f.dtypes[x]
    if e in f.values and f.values[e].size == 1:
        p = float(f.values[e].reshape(()))
        slope = (b.op("Mul", [x, b.scalar(2.0, r, dt)]) if p == 2.0 else
                 b.op("Mul", [b.scalar(p, r, dt), b.op("Pow", [x, b.scalar(p - 1.0, r, dt)])]))
    else:
        exp = e if f.dtypes[e] == dt else b.op("Cast", [e], to=helper.np_dtype_to_tensor_dtype(dt))
        slope = b.op("Mul", [exp, b.op("Pow", [x, b.op("Sub", [exp, b.scalar(1.0, f.rank(e), dt)])])])
    return [unbroadcast(b, f, b.op("Mul", [g, slope]), x, y), None]


def _swap_last(b: Builder, r: int, x: str) -> str:
    return b.op("Transpose", [x], perm=[*range(r - 2), r - 1, r - 2])


def _matmul(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    a, c = n.input[0], n.input[1]
    sa, sc, sy = list(f.shapes[a]), list(f.shapes[c]), list(f.shapes[y])
    a2, c2 = a, c
    if f.rank(a) == 1:  # a vector is a [1, K] matrix whose row axis the output drops
        a2, g = b.unsqueeze(a, [0]), b.unsqueeze(g, [len(sy[0]) - 1])
        sa, sy = [(1, *s) for s in sa], [(*s[:-1], 1, s[-1]) for s in sy]
    if f.rank(c) == 1:  # a [K, 1] matrix whose column axis the output drops
        c2, g = b.unsqueeze(c, [1]), b.unsqueeze(g, [len(sy[0])])
        sc, sy = [(*s, 1) for s in sc], [(*s, 1) for s in sy]
    out: list[str | None] = [None, None]
    if want[0]:
        shapes = [s[:-2] + s_a[-2:] for s, s_a in zip(sy, sa, strict=True)]
        ga = unbroadcast_shapes(b, b.op("MatMul", [g, _swap_last(b, len(sc[0]), c2)]), shapes, sa)
        out[0] = ga if a2 == a else b.op("Reshape", [ga, b.shape(a)])
    if want[1]:
        shapes = [s[:-2] + s_c[-2:] for s, s_c in zip(sy, sc, strict=True)]
        gc = unbroadcast_shapes(b, b.op("MatMul", [_swap_last(b, len(sa[0]), a2), g]), shapes, sc)
        out[1] = gc if c2 == c else b.op("Reshape", [gc, b.shape(c)])
    return out


def _gemm(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    a, c = n.input[0], n.input[1]
    alpha, beta = attr_float(n, "alpha", 1.0), attr_float(n, "beta", 1.0)
    ta, tb = attr_int(n, "transA", 0), attr_int(n, "transB", 0)
    out: list[str | None] = [None] * len(n.input)
    if want[0]:  # dA = alpha g op(B)^T, transposed back when A was
        out[0] = (b.op("Gemm", [g, c], alpha=alpha, transB=1 - tb) if not ta else
                  b.op("Gemm", [c, g], alpha=alpha, transA=tb, transB=1))
    if want[1]:  # dB = alpha op(A)^T g, transposed back when B was
        out[1] = (b.op("Gemm", [a, g], alpha=alpha, transA=1 - ta) if not tb else
                  b.op("Gemm", [g, a], alpha=alpha, transA=1, transB=ta))
    if len(want) > 2 and want[2]:
        gc = g if beta == 1.0 else b.op("Mul", [g, b.scalar(beta, 2, f.dtypes[y])])
        out[2] = unbroadcast(b, f, gc, n.input[2], y)
    return out


def _softmax(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    axis = attr_int(n, "axis", -1) % f.rank(y)
    if n.op_type == "LogSoftmax":
        s = b.reduce("ReduceSum", g, [axis], keepdims=True)
        return [b.op("Sub", [g, b.op("Mul", [b.op("Exp", [y]), s])])]
    t = b.op("Mul", [g, y])
    s = b.reduce("ReduceSum", t, [axis], keepdims=True)
    return [b.op("Sub", [t, b.op("Mul", [y, s])])]


def _layer_norm(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x = gy[0], n.input[0]
    assert g is not None
    if any(want[1:]):
        raise ModelError("no gradient rule for LayerNormalization with a differentiated scale or bias")
    r = f.rank(x)
    axis = attr_int(n, "axis", -1) % r
    axes = list(range(axis, r))
    while len(n.output) < 3:  # the forward node hands out its mean and 1/std: ask for them
        n.output.append("")
    for k in (1, 2):
        if not n.output[k]:
            n.output[k] = b.fresh("ln_stat")
    mean, inv = n.output[1], n.output[2]
    xhat = b.op("Mul", [b.op("Sub", [x, mean]), inv])
    gs = b.op("Mul", [g, n.input[1]])
    m1 = b.reduce("ReduceMean", gs, axes, keepdims=True)
    m2 = b.reduce("ReduceMean", b.op("Mul", [gs, xhat]), axes, keepdims=True)
    return [b.op("Mul", [inv, b.op("Sub", [b.op("Sub", [gs, m1]), b.op("Mul", [xhat, m2])])])]


def _conv(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x = gy[0], n.input[0]
    assert g is not None
    if any(want[1:]):
        raise ModelError("no gradient rule for Conv with differentiated weights")
    spatial = f.rank(x) - 2
    strides = attr_ints(n, "strides", [1] * spatial) or []
    auto_pad = attr_str(n, "auto_pad", "NOTSET")
    pads = attr_ints(n, "pads", [0] * 2 * spatial) or []
    dil = attr_ints(n, "dilations", [1] * spatial) or []
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):  # stride 1: the padding is (k - 1) d whatever the length
        if any(s != 1 for s in strides):
            raise ModelError("no gradient rule for a strided Conv with auto_pad SAME_* (its padding depends on "
                             "the length)")
        kernel = f.shapes[n.input[1]][0][2:]
        total = [(k - 1) * d for k, d in zip(kernel, dil, strict=True)]
        begin = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        pads = begin + [t - s for t, s in zip(total, begin, strict=True)]
    elif auto_pad not in ("NOTSET", "VALID"):
        raise ModelError(f"no gradient rule for Conv with auto_pad {auto_pad}")
    attrs: dict[str, object] = {"pads": pads, "dilations": dil, "group": attr_int(n, "group", 1)}
    if all(s == 1 for s in strides):  # the transposed convolution has exactly x's extent
        return [b.op("ConvTranspose", [g, n.input[1]], **attrs)]
    # strided: the transpose is one remainder short for some lengths, which depends on the
    # length; take the longest (the positions before it do not change) and cut it to x's extent
    attrs.update(strides=strides, output_padding=[s - 1 for s in strides])
    full = b.op("ConvTranspose", [g, n.input[1]], **attrs)
    ends = b.op("Slice", [b.shape(x), b.ints([2]), b.ints([2 + spatial])])
    return [b.op("Slice", [full, b.ints([0] * spatial), ends, b.ints(list(range(2, 2 + spatial)))])]


def _reshape(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x = gy[0], n.input[0]
    assert g is not None
    return [b.op("Reshape", [g, b.shape(x)])] + [None] * (len(n.input) - 1)


def _transpose(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g = gy[0]
    assert g is not None
    perm = attr_ints(n, "perm", list(range(f.rank(n.input[0])))[::-1]) or []
    return [b.op("Transpose", [g], perm=[int(k) for k in np.argsort(perm)])]


def _expand(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g = gy[0]
    assert g is not None
    return [unbroadcast(b, f, g, n.input[0], n.output[0]), None]


def _concat(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    axis = attr_int(n, "axis", 0) % f.rank(y)
    sizes = [f.dim(x, axis) for x in n.input]
    if all(s is not None for s in sizes):
        split = b.ints([int(s) for s in sizes if s is not None])
    else:
        split = b.op("Concat", [b.op("Slice", [b.shape(x), b.ints([axis]), b.ints([axis + 1])])
                                for x in n.input], axis=0)
    parts = b.ops("Split", [g, split], len(n.input), axis=axis)
    return [p if w else None for p, w in zip(parts, want, strict=True)]


def _split(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    x = n.input[0]
    axis = attr_int(n, "axis", 0) % f.rank(x)
    parts = [g if g is not None else b.op("ConstantOfShape", [b.shape(o)],
                                          value=numpy_helper.from_array(np.zeros(1, f.dtypes[o])))
             for g, o in zip(gy, n.output, strict=True)]
    return [b.op("Concat", parts, axis=axis)] + [None] * (len(n.input) - 1)


def _slice(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """The adjoint pads g back to x's shape: before = the normalised start, after = the
    extent minus the normalised end, per sliced axis; numbers where bounds and extents are
    known, else computed at run time from the bound tensors."""
    g, x = gy[0], n.input[0]
    assert g is not None
    r = f.rank(x)
    axes_v = f.known(input_at(n, 3)) if input_at(n, 3) else None
    steps_v = f.known(input_at(n, 4)) if input_at(n, 4) else None
    if (input_at(n, 3) and axes_v is None) or (input_at(n, 4) and steps_v is None):
        raise ModelError("no gradient rule for Slice with axes or steps computed at run time")
    if steps_v is not None and any(int(v) != 1 for v in steps_v.reshape(-1)):
        raise ModelError("no gradient rule for Slice with steps other than 1")
    starts_v, ends_v = f.known(n.input[1]), f.known(n.input[2])
    k = f.shapes[n.input[1]][0][0]
    axes = [int(v) % r for v in axes_v.reshape(-1)] if axes_v is not None else list(range(k))
    lengths = [f.dim(x, a) for a in axes]
    rest = [None] * (len(n.input) - 1)
    if starts_v is not None and ends_v is not None and all(v is not None for v in lengths):
        widths = [0] * (2 * r)
        for axis, start, end, length in zip(axes, starts_v.reshape(-1), ends_v.reshape(-1), lengths, strict=True):
            assert length is not None
            s0 = min(max(int(start) + length if start < 0 else int(start), 0), length)
            e0 = min(max(int(end) + length if end < 0 else int(end), s0), length)
            widths[axis], widths[r + axis] = s0, length - e0
        return [b.op("Pad", [g, b.ints(widths)]), *rest]
    dims = b.op("Gather", [b.shape(x), b.ints(axes)])
    zero = b.ints([0] * len(axes))

    def normalised(bound: str, low: str) -> str:
        v = b.op("Cast", [bound], to=onnx.TensorProto.INT64)
        v = b.op("Where", [b.op("Less", [v, zero]), b.op("Add", [v, dims]), v])
        return b.op("Max", [b.op("Min", [v, dims]), low])

    start = normalised(n.input[1], zero)
    end = normalised(n.input[2], start)
    pads = b.op("ScatterElements", [b.ints([0] * (2 * r)), b.ints(axes + [r + a for a in axes]),
                                    b.op("Concat", [start, b.op("Sub", [dims, end])], axis=0)], axis=0)
    return [b.op("Pad", [g, pads]), *rest]


def _gather(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x, idx = gy[0], n.input[0], n.input[1]
    assert g is not None
    r, dt = f.rank(x), f.dtypes[x]
    axis = attr_int(n, "axis", 0) % r
    k = f.rank(idx)
    if k > 1:
        raise ModelError("no gradient rule for Gather with indices of rank > 1")
    dim = b.op("Slice", [b.shape(x), b.ints([axis]), b.ints([axis + 1])])
    known = f.values.get(idx)
    index = b.op("Cast", [idx], to=onnx.TensorProto.INT64)
    if known is None or (known < 0).any():
        index = b.op("Where", [b.op("Less", [index, b.ints([0])]), b.op("Add", [index, dim]), index])
    positions = b.op("Range", [b.const(np.array(0, np.int64)), b.op("Squeeze", [dim, b.ints([0])]),
                               b.const(np.array(1, np.int64))])
    # one-hot [dim] (scalar index) or [n, dim] (1-D indices)
    hot = b.op("Cast", [b.op("Equal", [b.unsqueeze(index, [k]), positions])],
               to=helper.np_dtype_to_tensor_dtype(dt))
    if k == 0:
        shape = [1] * r
        shape[axis] = -1
        return [b.op("Mul", [b.unsqueeze(g, [axis]), b.op("Reshape", [hot, b.ints(shape)])]), None]
    # move the gathered axis last, contract it with the one-hot, move it back
    perm = [*range(axis), *range(axis + 1, r), axis]
    moved = b.op("MatMul", [b.op("Transpose", [g], perm=perm), hot])
    return [b.op("Transpose", [moved], perm=[int(v) for v in np.argsort(perm)]), None]


def _where(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, c, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    zero = zero_like(b, f, y)
    out: list[str | None] = [None, None, None]
    if want[1]:
        out[1] = unbroadcast(b, f, b.op("Where", [c, g, zero]), n.input[1], y)
    if want[2]:
        out[2] = unbroadcast(b, f, b.op("Where", [c, zero, g]), n.input[2], y)
    return out


def _clip(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """g where min <= x <= max (the bounds are optional inputs, or attributes before opset 11)."""
    g, x = gy[0], n.input[0]
    assert g is not None
    if any(want[1:]):
        raise ModelError("no gradient rule for Clip with differentiated bounds")
    inside = None
    for k, (op, attr) in enumerate((("GreaterOrEqual", "min"), ("LessOrEqual", "max")), start=1):
        bound = input_at(n, k) or None
        if bound is None and has_attr(n, attr):
            bound = b.const(np.array(attr_float(n, attr, 0.0), f.dtypes[x]))
        if bound is not None:
            test = b.op(op, [x, bound])
            inside = test if inside is None else b.op("And", [inside, test])
    out = g if inside is None else b.op("Where", [inside, g, zero_like(b, f, x)])
    return [out] + [None] * (len(n.input) - 1)


def _cumsum(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """The adjoint of a running sum is the running sum in the other direction."""
    g = gy[0]
    assert g is not None
    reverse = attr_int(n, "reverse", 0)
    exclusive = attr_int(n, "exclusive", 0)
    return [b.op("CumSum", [g, n.input[1]], reverse=1 - reverse, exclusive=exclusive), None]


def _reduce_axes(b: Builder, f: Facts, n: onnx.NodeProto) -> tuple[list[int], bool]:
    x = n.input[0]
    r = f.rank(x)
    axes_attr = attr_ints(n, "axes")
    if axes_attr is not None:
        axes = axes_attr
    elif input_at(n, 1):
        if input_at(n, 1) not in f.values:
            raise ModelError(f"no gradient rule for {n.op_type} over axes computed at run time")
        axes = [int(a) for a in f.values[input_at(n, 1)].reshape(-1)]
    else:
        axes = []
    if not axes:
        if attr_int(n, "noop_with_empty_axes", 0):
            raise ModelError(f"no gradient rule for {n.op_type} with noop_with_empty_axes")
        axes = list(range(r))
    return sorted(a % r for a in axes), bool(attr_int(n, "keepdims", 1))


def _reduce(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    axes, keep = _reduce_axes(b, f, n)
    r = f.rank(x)
    if not keep:
        g, y = b.unsqueeze(g, axes), b.unsqueeze(y, axes)
    if n.op_type == "ReduceMean":
        counts = {int(np.prod([s[a] for a in axes])) for s in f.shapes[x]}
        if len(counts) == 1:
            g = b.op("Mul", [g, b.scalar(1.0 / max(counts.pop(), 1), r, f.dtypes[x])])
        else:
            count = b.reduce("ReduceProd", b.op("Gather", [b.shape(x), b.ints(axes)]), [0], keepdims=False)
            g = b.op("Div", [g, b.op("Cast", [count], to=helper.np_dtype_to_tensor_dtype(f.dtypes[x]))])
    if n.op_type == "ReduceL2":  # y = sqrt(sum x^2): dx = g x / y
        return [b.op("Mul", [x, b.op("Div", [g, y])])] + [None] * (len(n.input) - 1)
    if n.op_type in ("ReduceMax", "ReduceMin"):  # the gradient goes to the extremal entries
        return [b.op("Where", [b.op("Equal", [x, y]), g, zero_like(b, f, x)])] + [None] * (len(n.input) - 1)
    return [b.op("Expand", [g, b.shape(x)])] + [None] * (len(n.input) - 1)


def _extremum(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """Max / Min of several inputs (broadcast): g goes to the inputs equal to the result."""
    g, y = gy[0], n.output[0]
    assert g is not None
    out: list[str | None] = [None] * len(n.input)
    for k, x in enumerate(n.input):
        if want[k]:
            on = b.op("Cast", [b.op("Equal", [x, y])], to=helper.np_dtype_to_tensor_dtype(f.dtypes[y]))
            out[k] = unbroadcast(b, f, b.op("Mul", [g, on]), x, y)
    return out


def _mean(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    part = b.op("Mul", [g, b.scalar(1.0 / len(n.input), f.rank(y), f.dtypes[y])])
    return [unbroadcast(b, f, part, x, y) if w else None for x, w in zip(n.input, want, strict=True)]


def _global_pool(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """GlobalAveragePool / GlobalMaxPool: y [N, C, 1...] over the spatial axes of x [N, C, ...]."""
    g, x, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    spatial = list(range(2, f.rank(x)))
    if n.op_type == "GlobalMaxPool":
        on = b.op("Cast", [b.op("Equal", [x, y])], to=helper.np_dtype_to_tensor_dtype(f.dtypes[x]))
        return [b.op("Mul", [on, g])]
    counts = {int(np.prod([s[a] for a in spatial])) for s in f.shapes[x]}
    if len(counts) == 1:
        scaled = b.op("Mul", [g, b.scalar(1.0 / max(counts.pop(), 1), f.rank(x), f.dtypes[x])])
    else:
        count = b.reduce("ReduceProd", b.op("Gather", [b.shape(x), b.ints(spatial)]), [0], keepdims=False)
        scaled = b.op("Div", [g, b.op("Cast", [count], to=helper.np_dtype_to_tensor_dtype(f.dtypes[x]))])
    return [b.op("Expand", [scaled, b.shape(x)])]


def _prelu(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x, slope, y = gy[0], n.input[0], n.input[1], n.output[0]
    assert g is not None
    if want[1]:
        raise ModelError("no gradient rule for PRelu with a differentiated slope")
    return [unbroadcast(b, f, b.op("Where", [b.op("Greater", [x, zero_like(b, f, x)]), g,
                                              b.op("Mul", [g, slope])]), x, y), None]


def _elu(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """y = x (x > 0), alpha (e^x - 1) else: y' = 1, or y + alpha."""
    g, x, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    alpha = b.scalar(attr_float(n, "alpha", 1.0), f.rank(x), f.dtypes[x])
    return [b.op("Where", [b.op("Greater", [x, zero_like(b, f, x)]), g, b.op("Mul", [g, b.op("Add", [y, alpha])])])]


def _hard_sigmoid(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """y = clip(alpha x + beta, 0, 1): y' = alpha inside (0, 1), else 0."""
    g, x, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    r, dt = f.rank(x), f.dtypes[x]
    inside = b.op("And", [b.op("Greater", [y, zero_like(b, f, y)]), b.op("Less", [y, _one(b, f, y)])])
    return [b.op("Where", [inside, b.op("Mul", [g, b.scalar(attr_float(n, "alpha", 0.2), r, dt)]),
                           zero_like(b, f, x)])]


def _einsum(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """Two operands, each subscript letter once per term, no ellipsis: the adjoint of one
    operand is the einsum of g with the other, its subscripts as the output."""
    g = gy[0]
    assert g is not None
    equation = attr_str(n, "equation", "").replace(" ", "")
    if "->" not in equation or "." in equation or len(n.input) != 2:
        raise ModelError(f"no gradient rule for Einsum {equation!r} (two operands, an explicit output, no ellipsis)")
    terms, result = equation.split("->")
    first, second = terms.split(",")
    if any(len(set(t)) != len(t) for t in (first, second, result)) or not set(first) <= set(second + result) \
            or not set(second) <= set(first + result):
        raise ModelError(f"no gradient rule for Einsum {equation!r} (a letter summed within one operand)")
    out: list[str | None] = [None, None]
    if want[0]:
        out[0] = b.op("Einsum", [g, n.input[1]], equation=f"{result},{second}->{first}")
    if want[1]:
        out[1] = b.op("Einsum", [n.input[0], g], equation=f"{first},{result}->{second}")
    return out


def _reduce_extra(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """ReduceSumSquare (2 x g) and ReduceLogSumExp (g softmax(x)) over the reduced axes."""
    g, x, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    axes, keep = _reduce_axes(b, f, n)
    if not keep:
        g, y = b.unsqueeze(g, axes), b.unsqueeze(y, axes)
    spread = b.op("Expand", [g, b.shape(x)])
    if n.op_type == "ReduceSumSquare":
        local = b.op("Mul", [x, b.scalar(2.0, f.rank(x), f.dtypes[x])])
    else:
        local = b.op("Exp", [b.op("Sub", [x, y])])
    return [b.op("Mul", [spread, local])] + [None] * (len(n.input) - 1)


def _ml_floats(n: onnx.NodeProto, name: str) -> np.ndarray:
    for a in n.attribute:
        if a.name == name:
            return np.array(list(a.floats), np.float32)
    return np.zeros(0, np.float32)


def _linear_classifier(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None],
                       want: list[bool]) -> list[str | None]:
    """ONNX-ML LinearClassifier: scores Z = post(X W^T + b) for W [C, F]; post NONE, LOGISTIC
    (elementwise sigmoid) or SOFTMAX over the classes. The label output carries no gradient."""
    g, x = gy[1] if len(gy) > 1 else None, n.input[0]
    if g is None:
        return [None]
    post = attr_str(n, "post_transform", "NONE")
    weights = _ml_floats(n, "coefficients")
    width = f.shapes[x][0][-1]
    if weights.size % max(width, 1) or post not in ("NONE", "LOGISTIC", "SOFTMAX"):
        raise ModelError(f"no gradient rule for LinearClassifier with post_transform {post} or "
                         f"{weights.size} coefficients for {width} features")
    w = b.const(weights.reshape(-1, width))  # [C, F]
    z = n.output[1]
    if post == "LOGISTIC":  # dz/draw = z (1 - z)
        g = b.op("Mul", [g, b.op("Mul", [z, b.op("Sub", [_one(b, f, z), z])])])
    elif post == "SOFTMAX":
        t = b.op("Mul", [g, z])
        g = b.op("Sub", [t, b.op("Mul", [z, b.reduce("ReduceSum", t, [1], keepdims=True)])])
    return [b.op("MatMul", [g, w])]


def _normalizer(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """ONNX-ML Normalizer, per row: L2 y = x / |x|: dx = (g - y (g . y)) / |x|; L1 y = x / sum|x|:
    dx = (g - sign(x) (g . y)) / sum|x| (an all-zero row, which it leaves zero, gets a gradient of 0)."""
    g, x, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    norm = attr_str(n, "norm", "MAX")
    if norm not in ("L1", "L2"):
        raise ModelError(f"no gradient rule for Normalizer with norm {norm}")
    raw = b.reduce("ReduceL2" if norm == "L2" else "ReduceL1", x, [1], keepdims=True)
    size = b.op("Max", [raw, b.scalar(1e-30, 2, f.dtypes[x])])
    dot = b.reduce("ReduceSum", b.op("Mul", [g, y]), [1], keepdims=True)
    along = y if norm == "L2" else b.op("Sign", [x])
    nonzero = b.op("Cast", [b.op("Greater", [raw, b.scalar(0.0, 2, f.dtypes[x])])],
                   to=helper.np_dtype_to_tensor_dtype(f.dtypes[x]))  # an all-zero row: gradient 0, not g / 1e-30
    return [b.op("Mul", [b.op("Div", [b.op("Sub", [g, b.op("Mul", [along, dot])]), size]), nonzero])]


#: operators left to finite differences, and why (measured or read off the operator)
LEFT_TO_FINITE_DIFFERENCES = {
    "LSTM": "a recurrent layer's adjoint runs its recurrence backwards, which standard ONNX can only spell as a "
            "Loop of its own; finite differences on the Keras LSTM agree with tf.GradientTape to 7e-5",
    "GRU": "as LSTM: a recurrence backwards, left to finite differences",
    "RNN": "as LSTM: a recurrence backwards, left to finite differences",
    "Loop": "a loop's adjoint is a second loop run backwards over stored iterations; finite differences on "
            "the Keras LSTM export (a Loop) agree with tf.GradientTape to 7e-5",
    "Scan": "as Loop",
    "If": "a branch taken on data",
    "TopK": "a selection whose indices change with the input",
    "MaxPool": "windowed maxima: left to finite differences (text models pool globally: GlobalMaxPool, ReduceMax)",
}


RULES: dict[str, Rule] = {
    **{op: _unary(local) for op, local in UNARY.items()},
    "Add": _add, "Sub": _add, "Sum": _add, "Mul": _mul, "Div": _div, "Pow": _pow,
    "Gelu": _gelu, "LeakyRelu": _leaky_relu,
    "MatMul": _matmul, "Gemm": _gemm, "Softmax": _softmax, "LogSoftmax": _softmax,
    "LayerNormalization": _layer_norm, "Conv": _conv,
    "Reshape": _reshape, "Flatten": _reshape, "Squeeze": _reshape, "Unsqueeze": _reshape,
    "Transpose": _transpose, "Expand": _expand, "Concat": _concat, "Split": _split, "Slice": _slice,
    "Gather": _gather, "Where": _where,
    "ReduceSum": _reduce, "ReduceMean": _reduce, "ReduceMax": _reduce, "ReduceMin": _reduce, "ReduceL2": _reduce,
    "Clip": _clip, "CumSum": _cumsum,
    "Max": _extremum, "Min": _extremum, "Mean": _mean,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool,
    "PRelu": _prelu, "Elu": _elu, "HardSigmoid": _hard_sigmoid, "Einsum": _einsum,
    "ReduceSumSquare": _reduce_extra, "ReduceLogSumExp": _reduce_extra,
    "LinearClassifier": _linear_classifier, "Normalizer": _normalizer,
}
