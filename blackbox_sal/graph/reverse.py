"""Reverse-mode differentiation of an ONNX graph with respect to one input: our own rules.

Only what an input gradient needs is emitted. A node is differentiated when it lies on a path
from the input to the output; weights, masks and shape arithmetic get no adjoints at all.

Shapes are read from **probe runs**: the forward graph runs on two small inputs of different
batch and length with every intermediate tensor fetched, so each tensor's rank, dtype and
which of its axes are static are known exactly. Broadcasting is then undone with a static
``ReduceSum`` (no run-time ``Shape``/``Equal``/``NonZero`` bookkeeping, no host sync on CUDA),
and a tensor computed from constants only is a known value (Slice bounds, Gather indices).

Rules (g is the adjoint of the output y; unb() sums g back to an operand's shape)::

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

Anything else on the differentiated path raises ModelError naming the operator, and the
caller falls back to finite differences.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from blackbox_sal.errors import ModelError

#: ops whose outputs carry no gradient even when a float input is differentiated
NON_DIFFERENTIABLE = {
    "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round",
    "ConstantOfShape", "Range", "OneHot", "EyeLike", "RandomNormalLike", "RandomUniformLike",
    "Bernoulli", "Multinomial",
}
_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
MIN_OPSET = 13
_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class Facts:
    """What the probe runs saw: per tensor one shape per probe, its dtype, the value of
    tensors computed from constants alone, and small integer tensors per probe."""

    shapes: Mapping[str, tuple[tuple[int, ...], ...]]
    dtypes: Mapping[str, np.dtype]
    values: Mapping[str, np.ndarray]
    #: small integer tensors as each probe saw them (shape arithmetic, slice bounds)
    small_ints: Mapping[str, tuple[np.ndarray, ...]] = field(default_factory=dict)

    def known(self, name: str) -> np.ndarray | None:
        """The tensor's value when it cannot change with the input: computed from constants,
        or a small integer tensor every probe (different batch and length) saw the same."""
        if name in self.values:
            return self.values[name]
        seen = self.small_ints.get(name)
        if seen and all(v.shape == seen[0].shape and (v == seen[0]).all() for v in seen[1:]):
            return seen[0]
        return None

    def rank(self, name: str) -> int:
        return len(self.shapes[name][0])

    def dim(self, name: str, axis: int) -> int | None:
        """The axis' extent when it is the same in every probe, else None (dynamic)."""
        sizes = {s[axis] for s in self.shapes[name]}
        return sizes.pop() if len(sizes) == 1 else None

    def is_float(self, name: str) -> bool:
        return name in self.dtypes and self.dtypes[name].type in _FLOATS


def probe(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]]) -> Facts:
    """Run ``model`` on each feed with every intermediate tensor fetched (no optimisation,
    CPU, one thread) and collect shapes, dtypes and constant values."""
    graph = model.graph
    constant = {t.name for t in graph.initializer}
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if ((node.op_type not in _RANDOM and node.input and all(i in constant for i in node.input if i))
                or node.op_type == "Constant"):
            constant.update(o for o in node.output if o)
    names = [o for n in graph.node for o in n.output if o]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        fetched = [o.name for o in session.get_outputs()]
        runs = [dict(zip(fetched, session.run(fetched, dict(f)), strict=True)) for f in feeds]
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ModelError(f"the forward graph cannot be probed for shapes: {exc}") from exc
    shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
    dtypes: dict[str, np.dtype] = {}
    small: dict[str, tuple[np.ndarray, ...]] = {}
    for name, value in values.items():
        shapes[name] = (value.shape,) * len(runs)
        dtypes[name] = value.dtype
    for f in feeds:
        for name, value in f.items():
            shapes[name] = (*shapes.get(name, ()), np.asarray(value).shape)
            dtypes[name] = np.asarray(value).dtype
    for name in fetched:
        arrays = [np.asarray(r[name]) for r in runs]
        shapes[name] = tuple(a.shape for a in arrays)
        dtypes[name] = arrays[0].dtype
        if name in constant:
            values[name] = arrays[0]
        elif arrays[0].dtype.kind in "iu" and all(a.size <= 16 for a in arrays):
            small[name] = tuple(arrays)
    return Facts(shapes, dtypes, values, MappingProxyType(small))


class Builder:
    """Emits the adjoint nodes, for the model's opset."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._consts: dict[tuple[bytes, str, tuple[int, ...]], str] = {}

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"bbs_{stem}_{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], **attrs: object) -> str:
        return self.ops(op_type, inputs, 1, **attrs)[0]

    def ops(self, op_type: str, inputs: Sequence[str], n_out: int, **attrs: object) -> list[str]:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=outs[0], **attrs))  # type: ignore[arg-type]
        return outs

    def const(self, value: np.ndarray) -> str:
        value = np.ascontiguousarray(value)
        key = (value.tobytes(), value.dtype.str, value.shape)
        if key not in self._consts:
            name = self.fresh("const")
            self.initializers.append(numpy_helper.from_array(value, name))
            self._consts[key] = name
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        return self.const(np.array(list(values), np.int64))

    def scalar(self, value: float, rank: int, dtype: np.dtype) -> str:
        """A single value shaped [1]*rank: onnxruntime broadcasts those fast."""
        return self.const(np.full([1] * rank, value, dtype))

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool) -> str:
        axes = sorted(axes)
        if (op_type == "ReduceSum" and self.opset >= 13) or self.opset >= 18:
            return self.op(op_type, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.op(op_type, [x], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", [x, self.ints(sorted(axes))])

    def shape(self, x: str) -> str:
        return self.op("Shape", [x])


Rule = Callable[[Builder, Facts, onnx.NodeProto, list[str | None], list[bool]], list[str | None]]


def reverse(model: onnx.ModelProto, wrt: str, output: str, seed: str, grad: str,
            facts: Facts) -> onnx.ModelProto:
    """``model`` plus the nodes computing ``grad`` = d(sum(seed * output))/d(wrt).

    ``seed`` must be a tensor the graph provides (an input, or a node output the caller
    added) with ``output``'s shape. Outputs of the result: ``output`` and ``grad``. Pure.
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelError(f"opset {opset} is older than {MIN_OPSET}: no gradient graph (re-export with a newer opset)")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    active = {wrt}
    for node in graph.node:
        if node.op_type not in NON_DIFFERENTIABLE and any(i in active for i in node.input):
            active.update(o for o in node.output if o and facts.is_float(o))
    needed = {output}
    differentiated: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed and o in active for o in node.output):
            differentiated.append(node)
            needed.update(i for i in node.input if i in active)
    differentiated = _fold_gelus(graph, facts, differentiated)
    b = Builder(opset)
    adjoints: dict[str, list[str]] = {output: [seed]}
    for node in differentiated:  # reverse topological order
        grads = [_collect(b, adjoints, o) if o in active else None for o in node.output]
        if all(g is None for g in grads):
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise ModelError(f"no gradient rule for operator {node.op_type!r} (node {node.name or node.output[0]!r}); "
                             "finite differences work for any model")
        want = [bool(i) and i in active and i in needed for i in node.input]
        for name, g in zip(node.input, rule(b, facts, node, grads, want), strict=False):
            if g is not None and name in active:
                adjoints.setdefault(name, []).append(g)
    g_wrt = _collect(b, adjoints, wrt)
    if g_wrt is None:  # the output does not depend on the input
        g_wrt = b.op("ConstantOfShape", [b.shape(wrt)],
                     value=numpy_helper.from_array(np.zeros(1, facts.dtypes[wrt])))
    b.nodes.append(helper.make_node("Identity", [g_wrt], [grad], name=grad))
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    kept = [o for o in graph.output if o.name == output]
    wrt_info = next(i for i in graph.input if i.name == wrt)
    grad_info = onnx.ValueInfoProto()
    grad_info.CopyFrom(wrt_info)
    grad_info.name = grad
    del graph.output[:]
    graph.output.extend([*kept, grad_info])
    return result


def _collect(b: Builder, adjoints: dict[str, list[str]], name: str) -> str | None:
    parts = adjoints.get(name)
    if not parts:
        return None
    if len(parts) > 1:
        adjoints[name] = [b.op("Sum", parts)]
    return adjoints[name][0]


# ---------------------------------------------------------------- helpers used by the rules

def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _input(node: onnx.NodeProto, k: int) -> str:
    return node.input[k] if len(node.input) > k else ""


def _unbroadcast_shapes(b: Builder, g: str, g_shapes: Sequence[tuple[int, ...]],
                        x_shapes: Sequence[tuple[int, ...]]) -> str:
    """Sum g (with shapes g_shapes, one per probe) down to the operand's shapes x_shapes."""
    lead = len(g_shapes[0]) - len(x_shapes[0])
    axes = []
    for k in range(len(x_shapes[0])):
        xs = [s[k] for s in x_shapes]
        gs = [s[lead + k] for s in g_shapes]
        if xs == gs:
            continue
        if all(v == 1 for v in xs):
            axes.append(lead + k)
        else:
            raise ModelError("broadcasting that changes with the input shape: no gradient graph")
    if axes:
        g = b.reduce("ReduceSum", g, axes, keepdims=True)
    if lead > 0:
        g = b.reduce("ReduceSum", g, range(lead), keepdims=False)
    return g


def _unb(b: Builder, f: Facts, g: str, x: str, y: str) -> str:
    return _unbroadcast_shapes(b, g, f.shapes[y], f.shapes[x])


def _zero(b: Builder, f: Facts, like: str) -> str:
    return b.scalar(0.0, f.rank(like), f.dtypes[like])


# ---------------------------------------------------------------- the rules

def _add(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    out: list[str | None] = [None] * len(n.input)
    for k, x in enumerate(n.input):
        if want[k]:
            gk = g if n.op_type != "Sub" or k == 0 else b.op("Neg", [g])
            out[k] = _unb(b, f, gk, x, y)
    return out


def _mul(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    a, c = n.input[0], n.input[1]
    return [_unb(b, f, b.op("Mul", [g, c]), a, y) if want[0] else None,
            _unb(b, f, b.op("Mul", [g, a]), c, y) if want[1] else None]


def _div(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    a, c = n.input[0], n.input[1]
    ga = gc = None
    if want[0]:
        ga = _unb(b, f, b.op("Div", [g, c]), a, y)
    if want[1]:
        gc = _unb(b, f, b.op("Neg", [b.op("Div", [b.op("Mul", [g, y]), c])]), c, y)
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
    "Relu": lambda b, f, x, y: b.op("Cast", [b.op("Greater", [x, _zero(b, f, x)])],
                                    to=helper.np_dtype_to_tensor_dtype(f.dtypes[y])),
    "Erf": lambda b, f, x, y: b.op("Mul", [b.scalar(2 / math.sqrt(math.pi), f.rank(x), f.dtypes[x]),
                                          b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])]),
}


def _gelu(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """y = x Phi(x): dy/dx = Phi(x) + x phi(x) = (1 + erf(s) + (2/sqrt(pi)) s exp(-s^2)) / 2, s = x/sqrt(2),
    in few passes over the tensor: the 2/sqrt(pi) rides in the exponent, the 1/2 on g."""
    if _attr(n, "approximate", b"none") not in (b"none", "none"):
        raise ModelError("no gradient rule for Gelu(approximate='tanh')")
    g, x = gy[0], n.input[0]
    assert g is not None
    r, dt = f.rank(x), f.dtypes[x]
    s = b.op("Mul", [x, b.scalar(1 / math.sqrt(2), r, dt)])
    q = b.op("Exp", [b.op("Sub", [b.scalar(math.log(2 / math.sqrt(math.pi)), r, dt), b.op("Mul", [s, s])])])
    v = b.op("Add", [b.op("Erf", [s]), b.op("Mul", [s, q])])
    half = b.op("Mul", [g, b.scalar(0.5, f.rank(n.output[0]), dt)])
    return [b.op("Add", [b.op("Mul", [half, v]), half])]


def _fold_gelus(graph: onnx.GraphProto, f: Facts, nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Replace, in the list of nodes to differentiate, each exact GELU spelled out by the torch
    exporter, ``0.5 * x * (1 + erf(x / sqrt(2)))`` (Div or Mul by the constant, either order of
    the products), by one Gelu node: its adjoint then reads only x, which leaves the forward
    pattern whole for onnxruntime's own Gelu fusion, and costs fewer passes over the tensor."""
    producer = {o: node for node in graph.node for o in node.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            users.setdefault(i, []).append(node)

    def const(name: str, want: float) -> bool:
        v = f.values.get(name)
        return v is not None and v.size == 1 and abs(float(v.reshape(())) - want) < 1e-4 * abs(want)

    def other(node: onnx.NodeProto, name: str) -> str | None:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(node.input) == 2 and len(rest) == 1 else None

    def only_user(name: str, op: str) -> onnx.NodeProto | None:
        u = users.get(name, [])
        return u[0] if len(u) == 1 and u[0].op_type == op and name not in graph_outputs else None

    def scaled(node: onnx.NodeProto) -> str | None:  # x of x / sqrt(2) or x * (1 / sqrt(2))
        if node.op_type == "Div" and const(node.input[1], math.sqrt(2)):
            return node.input[0]
        if node.op_type == "Mul":
            for a, c in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                if const(c, 1 / math.sqrt(2)):
                    return a
        return None

    graph_outputs = {o.name for o in graph.output}
    folded: dict[str, tuple[str, list[onnx.NodeProto]]] = {}  # y -> (x, pattern nodes)
    for erf in (n for n in nodes if n.op_type == "Erf"):
        scale = producer.get(erf.input[0])
        if scale is None or only_user(erf.input[0], "Erf") is None:
            continue
        x = scaled(scale)
        if x is None:
            continue
        add = only_user(erf.output[0], "Add")
        if add is None or not const(other(add, erf.output[0]) or "", 1.0):
            continue
        prod = only_user(add.output[0], "Mul")
        if prod is None:
            continue
        left = other(prod, add.output[0])
        if left == x:  # (x * (1 + erf)) * 0.5
            last = only_user(prod.output[0], "Mul")
            if last is None or not const(other(last, prod.output[0]) or "", 0.5):
                continue
            pattern = [scale, erf, add, prod, last]
        else:  # (x * 0.5) * (1 + erf)
            half = producer.get(left or "")
            if half is None or half.op_type != "Mul" or x not in half.input or not const(other(half, x) or "", 0.5) \
                    or len(users.get(half.output[0], [])) != 1:
                continue
            last, pattern = prod, [scale, erf, add, half, prod]
        folded[last.output[0]] = (x, pattern)
    if not folded:
        return nodes
    inner = {id(p) for _, pattern in folded.values() for p in pattern}
    out = []
    for node in nodes:
        if node.output and node.output[0] in folded:
            out.append(helper.make_node("Gelu", [folded[node.output[0]][0]], [node.output[0]]))
        elif id(node) not in inner:
            out.append(node)
    return out


def _leaky_relu(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, x = gy[0], n.input[0]
    assert g is not None
    alpha = float(_attr(n, "alpha", 0.01))  # type: ignore[arg-type]
    return [b.op("Where", [b.op("Greater", [x, _zero(b, f, x)]), g,
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
    return [_unb(b, f, b.op("Mul", [g, slope]), x, y), None]


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
        ga = _unbroadcast_shapes(b, b.op("MatMul", [g, _swap_last(b, len(sc[0]), c2)]), shapes, sa)
        out[0] = ga if a2 == a else b.op("Reshape", [ga, b.shape(a)])
    if want[1]:
        shapes = [s[:-2] + s_c[-2:] for s, s_c in zip(sy, sc, strict=True)]
        gc = _unbroadcast_shapes(b, b.op("MatMul", [_swap_last(b, len(sa[0]), a2), g]), shapes, sc)
        out[1] = gc if c2 == c else b.op("Reshape", [gc, b.shape(c)])
    return out


def _gemm(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    a, c = n.input[0], n.input[1]
    alpha, beta = float(_attr(n, "alpha", 1.0)), float(_attr(n, "beta", 1.0))  # type: ignore[arg-type]
    ta, tb = int(_attr(n, "transA", 0)), int(_attr(n, "transB", 0))  # type: ignore[call-overload]
    out: list[str | None] = [None] * len(n.input)
    if want[0]:  # dA = alpha g op(B)^T, transposed back when A was
        out[0] = (b.op("Gemm", [g, c], alpha=alpha, transB=1 - tb) if not ta else
                  b.op("Gemm", [c, g], alpha=alpha, transA=tb, transB=1))
    if want[1]:  # dB = alpha op(A)^T g, transposed back when B was
        out[1] = (b.op("Gemm", [a, g], alpha=alpha, transA=1 - ta) if not tb else
                  b.op("Gemm", [g, a], alpha=alpha, transA=1, transB=ta))
    if len(want) > 2 and want[2]:
        gc = g if beta == 1.0 else b.op("Mul", [g, b.scalar(beta, 2, f.dtypes[y])])
        out[2] = _unb(b, f, gc, n.input[2], y)
    return out


def _softmax(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    axis = int(_attr(n, "axis", -1)) % f.rank(y)  # type: ignore[call-overload]
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
    axis = int(_attr(n, "axis", -1)) % r  # type: ignore[call-overload]
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
    strides = list(_attr(n, "strides", [1] * spatial))  # type: ignore[call-overload]
    auto_pad = _attr(n, "auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        raise ModelError("no gradient rule for Conv with auto_pad SAME_*")
    pads = list(_attr(n, "pads", [0] * 2 * spatial))  # type: ignore[call-overload]
    dil = list(_attr(n, "dilations", [1] * spatial))  # type: ignore[call-overload]
    attrs: dict[str, object] = {"pads": pads, "dilations": dil, "group": int(_attr(n, "group", 1))}  # type: ignore[call-overload]
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
    perm = list(_attr(n, "perm", list(range(f.rank(n.input[0])))[::-1]))  # type: ignore[call-overload]
    return [b.op("Transpose", [g], perm=[int(k) for k in np.argsort(perm)])]


def _expand(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g = gy[0]
    assert g is not None
    return [_unb(b, f, g, n.input[0], n.output[0]), None]


def _concat(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    g, y = gy[0], n.output[0]
    assert g is not None
    axis = int(_attr(n, "axis", 0)) % f.rank(y)  # type: ignore[call-overload]
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
    axis = int(_attr(n, "axis", 0)) % f.rank(x)  # type: ignore[call-overload]
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
    axes_v = f.known(_input(n, 3)) if _input(n, 3) else None
    steps_v = f.known(_input(n, 4)) if _input(n, 4) else None
    if (_input(n, 3) and axes_v is None) or (_input(n, 4) and steps_v is None):
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
    axis = int(_attr(n, "axis", 0)) % r  # type: ignore[call-overload]
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
    zero = _zero(b, f, y)
    out: list[str | None] = [None, None, None]
    if want[1]:
        out[1] = _unb(b, f, b.op("Where", [c, g, zero]), n.input[1], y)
    if want[2]:
        out[2] = _unb(b, f, b.op("Where", [c, zero, g]), n.input[2], y)
    return out


def _clip(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """g where min <= x <= max (the bounds are optional inputs, or attributes before opset 11)."""
    g, x = gy[0], n.input[0]
    assert g is not None
    if any(want[1:]):
        raise ModelError("no gradient rule for Clip with differentiated bounds")
    inside = None
    for k, (op, attr) in enumerate((("GreaterOrEqual", "min"), ("LessOrEqual", "max")), start=1):
        bound = _input(n, k) or None
        if bound is None and _attr(n, attr) is not None:
            bound = b.const(np.array(_attr(n, attr), f.dtypes[x]))
        if bound is not None:
            test = b.op(op, [x, bound])
            inside = test if inside is None else b.op("And", [inside, test])
    out = g if inside is None else b.op("Where", [inside, g, _zero(b, f, x)])
    return [out] + [None] * (len(n.input) - 1)


def _cumsum(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """The adjoint of a running sum is the running sum in the other direction."""
    g = gy[0]
    assert g is not None
    reverse = int(_attr(n, "reverse", 0))  # type: ignore[call-overload]
    exclusive = int(_attr(n, "exclusive", 0))  # type: ignore[call-overload]
    return [b.op("CumSum", [g, n.input[1]], reverse=1 - reverse, exclusive=exclusive), None]


def _reduce_axes(b: Builder, f: Facts, n: onnx.NodeProto) -> tuple[list[int], bool]:
    x = n.input[0]
    r = f.rank(x)
    axes_attr = _attr(n, "axes")
    if axes_attr is not None:
        axes = [int(a) for a in axes_attr]  # type: ignore[attr-defined]
    elif _input(n, 1):
        if _input(n, 1) not in f.values:
            raise ModelError(f"no gradient rule for {n.op_type} over axes computed at run time")
        axes = [int(a) for a in f.values[_input(n, 1)].reshape(-1)]
    else:
        axes = []
    if not axes:
        if int(_attr(n, "noop_with_empty_axes", 0)):  # type: ignore[call-overload]
            raise ModelError(f"no gradient rule for {n.op_type} with noop_with_empty_axes")
        axes = list(range(r))
    return sorted(a % r for a in axes), bool(_attr(n, "keepdims", 1))


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
        return [b.op("Where", [b.op("Equal", [x, y]), g, _zero(b, f, x)])] + [None] * (len(n.input) - 1)
    return [b.op("Expand", [g, b.shape(x)])] + [None] * (len(n.input) - 1)


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
}
