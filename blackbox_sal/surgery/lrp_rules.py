"""Layer-wise relevance propagation as modified gradients: small tables of rule overrides
merged over the gradient table (:data:`blackbox_sal.surgery.rules.RULES`), and the patterns
the overrides need recognized on the ONNX graph.

In the input x gradient form of LRP (Arras et al., "A close look at decomposition-based XAI
methods for transformer language models", 2025; the ``lxt`` package's efficient mode), the
relevance of an input is x * g, where g is a gradient whose backward rule is changed at a few
operators. Per ONNX operator (y the output, g its adjoint)::

    operator                                  lrp-attn (AttnLRP)          lrp-cp (CP-LRP)
    MatMul/Gemm/Conv/Mul/Div, one operand     epsilon = plain gradient    the same
      an activation, the other constant
    Gelu Tanh Sigmoid Softplus Elu ...,       identity: g * y / (x + e)   the same
      and elementwise functions written out
      (x * sigmoid(x), tanh-GELU, ...)
    LayerNormalization, and a norm written    std held constant           the same
      out (the statistic side of a Mul/Div
      that reduces the other side)
    Mul/MatMul/Div/Einsum/Gemm of two         uniform: g / 2 to each      the same, except
      activations (Q Kᵀ, A V, gates)                                      A V: A is constant
    Softmax                                   its own Jacobian (AttnLRP's  the same, but attention
                                              rule in input x gradient     weights (a Softmax
                                              form)                        output times V) are
                                                                           held constant

e = 1e-6 signed like x (the stabilizer of the identity rule, where relevance is divided). For
Relu, LeakyRelu and PRelu y / x is their gradient: kept, with no stabilizer.
Max, ReduceMax and max pooling keep their gradient (LRP's winner-take-all). An operator on
the path that is neither linear nor covered (Exp, Sqrt, Pow... outside a recognized
pattern) keeps its plain gradient, and the graph says which (:func:`fallback_note`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import helper

from blackbox_sal.surgery.builder import Builder, zero_like
from blackbox_sal.surgery.facts import Facts
from blackbox_sal.surgery.index import GraphIndex, attr_int
from blackbox_sal.surgery.rules import RULES, Rule

#: the stabilizer of the identity rule: y / (x + EPS sign(x)), sign(0) = +1
EPS = 1e-6
#: the op_type of an elementwise function written out as several nodes, folded into one
ELEMENTWISE = "bbs_Elementwise"
#: elementwise activations that take the identity rule (their extra inputs are constants)
ACTIVATIONS = ("Elu", "Gelu", "Tanh", "Sigmoid", "Softplus", "Softsign",
               "HardSigmoid", "Clip", ELEMENTWISE)
#: piecewise-linear activations: y / x is their gradient, kept as it is (no stabilizer needed)
PIECEWISE_LINEAR = ("Relu", "LeakyRelu", "PRelu")
#: operators whose plain gradient is the LRP rule: linear in their active inputs, or
#: winner-take-all (max pooling); products and quotients are judged per node
LINEAR = frozenset({
    "Identity", "Cast", "Dropout", "Neg", "Add", "Sub", "Sum", "Mean", "Reshape", "Flatten", "Squeeze",
    "Unsqueeze", "Transpose", "Expand", "Concat", "Split", "Slice", "Gather", "Where", "ReduceSum", "ReduceMean",
    "CumSum", "GlobalAveragePool", "Conv", "Pad", "Max", "Min", "ReduceMax", "ReduceMin", "GlobalMaxPool"})
PRODUCTS = ("Mul", "Div", "MatMul", "Gemm", "Einsum")
#: walking back through these keeps a tensor an elementwise function of its leaves
_UNARY = frozenset({"Identity", "Cast", "Dropout", "Neg", "Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Sigmoid",
                    "Erf", "Relu", "Gelu", "Abs", "Softplus", "Softsign", "LeakyRelu", "Elu", "HardSigmoid", "Clip",
                    "Expand"})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min"})
_STATISTICS = frozenset({"ReduceMean", "ReduceSum", "ReduceL2", "ReduceSumSquare"})
#: what may lie between a Softmax and the product its attention weights enter
_PASS_THROUGH = frozenset({"Identity", "Cast", "Dropout", "Where", "Reshape", "Transpose"})
#: how far back a pattern is looked for (a tanh-GELU is 8 nodes, a LayerNorm 7)
_MAX_WALK = 24


def _identity(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """R_x = R_y: the gradient passed as y / (x + e sign x), to the first input only."""
    g, x, y = gy[0], n.input[0], n.output[0]
    assert g is not None
    eps = b.scalar(EPS, f.rank(x), f.dtypes[x])
    den = b.op("Where", [b.op("Less", [x, zero_like(b, f, x)]), b.op("Sub", [x, eps]), b.op("Add", [x, eps])])
    return [b.op("Mul", [g, b.op("Div", [y, den])])] + [None] * (len(n.input) - 1)


def _layer_norm(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
    """(x - mean) * inv_std * scale + bias with inv_std constant: inv * (gs - mean(gs))."""
    g, x = gy[0], n.input[0]
    assert g is not None
    r = f.rank(x)
    axes = list(range(attr_int(n, "axis", -1) % r, r))
    while len(n.output) < 3:  # the forward node hands out its 1/std: ask for it
        n.output.append("")
    if not n.output[2]:
        n.output[2] = b.fresh("ln_stat")
    gs = b.op("Mul", [g, n.input[1]])
    centred = b.op("Sub", [gs, b.reduce("ReduceMean", gs, axes, keepdims=True)])
    return [b.op("Mul", [n.output[2], centred])] + [None] * (len(n.input) - 1)


def _uniform(plain: Rule) -> Rule:
    """A product of k >= 2 activations: each gets 1/k of the relevance (the plain rule on g / k)."""
    def rule(b: Builder, f: Facts, n: onnx.NodeProto, gy: list[str | None], want: list[bool]) -> list[str | None]:
        k, g = sum(want), gy[0]
        if k >= 2 and g is not None:
            gy = [b.op("Mul", [g, b.scalar(1.0 / k, f.rank(n.output[0]), f.dtypes[n.output[0]])]), *gy[1:]]
        return plain(b, f, n, gy, want)
    return rule


@dataclass(frozen=True)
class RuleSet:
    """A named set of reverse rules: ``overrides`` merged over the gradient table, whether
    LRP patterns are recognized (elementwise functions written out, norm statistics), and
    whether attention weights (a Softmax output multiplied with another activation) are held
    constant. ``version`` enters the cache key."""

    name: str
    overrides: dict[str, Rule] = field(default_factory=dict)
    patterns: bool = False
    hold_attention: bool = False
    version: int = 1

    def rule(self, op: str) -> Rule | None:
        return self.overrides.get(op) or RULES.get(op)


_LRP = {**{op: _identity for op in ACTIVATIONS}, "LayerNormalization": _layer_norm,
        **{op: _uniform(RULES[op]) for op in PRODUCTS},
        **{op: RULES[op] for op in PIECEWISE_LINEAR},
        "Softmax": RULES["Softmax"]}  # AttnLRP's softmax rule, in input x gradient form, is its Jacobian
GRADIENT = RuleSet("gradient")
RULE_SETS: dict[str, RuleSet] = {
    "gradient": GRADIENT,
    "lrp-attn": RuleSet("lrp-attn", _LRP, patterns=True),
    "lrp-cp": RuleSet("lrp-cp", _LRP, patterns=True, hold_attention=True, version=2),
}


def fallback(rules: RuleSet, node: onnx.NodeProto, want: list[bool]) -> bool:
    """Whether ``node`` keeps a plain gradient that is not an LRP rule (a note says so)."""
    if node.op_type == "Div":  # x / c is linear; c / x is not
        return rules.patterns and want[1] and not want[0]
    return rules.patterns and node.op_type not in LINEAR and node.op_type not in rules.overrides


def fallback_note(rules: RuleSet, ops: list[str]) -> str:
    """The note for the ops (one entry per node) that kept their plain gradient."""
    counts = {op: ops.count(op) for op in sorted(set(ops))}
    listed = ", ".join(f"{op} ({k} node{'s' if k > 1 else ''})" for op, k in counts.items())
    return (f"{rules.name}: no LRP rule for {listed} on the path: their plain gradient was used, so relevance "
            f"there is not conserved by an LRP rule")


def recognize(graph: onnx.GraphProto, f: Facts, nodes: list[onnx.NodeProto], active: set[str],
              hold_attention: bool = False) -> tuple[list[onnx.NodeProto], dict[int, set[int]]]:
    """The LRP patterns among ``nodes`` (the differentiated nodes, in reverse order):

    - a Mul or Div whose two operands are elementwise functions of one tensor x (x * sigmoid(x),
      0.5 x (1 + tanh(...x...))) becomes one ``bbs_Elementwise`` node x -> y (identity rule);
    - a Mul or Div one of whose operands is a statistic of the other (a reduction over it:
      1/std, rsqrt(mean(x^2))) holds that operand constant;
    - with ``hold_attention`` (CP-LRP), a MatMul or Einsum of attention weights (a Softmax
      output, through Cast/Dropout/Where/Reshape/Transpose) and another activation holds the
      weights constant; a Softmax elsewhere (a classifier's probabilities) keeps its rule.

    Returns the nodes (folded ones replaced) and, per node index, the inputs held constant."""
    index = GraphIndex.of(graph)
    order = {o: k for k, n in enumerate(graph.node) for o in n.output}

    def walk(name: str, reduce: bool, stop: str | None = None) -> tuple[frozenset[str], bool, set[str]] | None:
        """The active leaves ``name`` is an elementwise function of (through reductions too
        when ``reduce``; ``stop`` a leaf wherever met), whether a reduction was passed, and
        every tensor passed; None: more than _MAX_WALK nodes back."""
        leaves: set[str] = set()
        reduced, seen, todo = False, set(), [name]
        while todo:
            t = todo.pop()
            node = index.producer.get(t)
            op = node.op_type if node is not None else ""
            if t == stop or node is None or not (op in _UNARY or op in _BINARY or (reduce and op in _STATISTICS)):
                leaves.add(t)
                continue
            if t in seen:
                continue
            seen.add(t)
            if len(seen) > _MAX_WALK:
                return None
            reduced |= op in _STATISTICS
            todo += [i for i in (node.input[:1] if op in _UNARY or op in _STATISTICS else node.input) if i in active]
        return frozenset(leaves), reduced, seen | leaves

    def common_source(a: str, c: str) -> str | None:
        """The nearest tensor that a and c are both elementwise functions of, and of nothing else."""
        wa, wc = walk(a, False), walk(c, False)
        if wa is None or wc is None:
            return None
        for x in sorted(wa[2] & wc[2], key=lambda t: order.get(t, -1), reverse=True):
            sa, sc = walk(a, False, x), walk(c, False, x)
            if sa is not None and sc is not None and sa[0] == sc[0] == {x}:
                return x
        return None

    def attention_weights(name: str) -> bool:
        node = index.producer.get(name)
        while node is not None and node.op_type in _PASS_THROUGH:
            data = [i for i in node.input[1:3] if i in active] if node.op_type == "Where" else node.input[:1]
            node = index.producer.get(data[0]) if len(data) == 1 else None
        return node is not None and node.op_type == "Softmax"

    out: list[onnx.NodeProto] = []
    held: dict[int, set[int]] = {}
    for node in nodes:
        if hold_attention and node.op_type in ("MatMul", "Einsum") and len(node.input) == 2 \
                and all(i in active for i in node.input):
            weights = {k for k, i in enumerate(node.input) if attention_weights(i)}
            if len(weights) == 1:
                held[len(out)] = weights
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2 or not all(i in active for i in node.input):
            out.append(node)
            continue
        a, c, y = node.input[0], node.input[1], node.output[0]
        x = common_source(a, c)
        if x is not None and f.shapes.get(x) == f.shapes.get(y):  # (an Expand inside would broadcast x)
            out.append(helper.make_node(ELEMENTWISE, [x], [y], name=node.name or y))
            continue
        for k, (stat, other) in enumerate(((a, c), (c, a))):
            if node.op_type == "Div" and k == 0:  # only a divisor is a statistic
                continue
            ws = walk(stat, True, other)
            if ws is not None and ws[1] and ws[0] == {other}:
                held.setdefault(len(out), set()).add(list(node.input).index(stat))
        out.append(node)
    return out, held
