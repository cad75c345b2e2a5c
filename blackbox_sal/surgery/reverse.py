"""Reverse-mode differentiation of an ONNX graph with respect to one input: the driver.

Only what an input gradient needs is emitted. A node is differentiated when it lies on a path
from the input to the output; weights, masks and shape arithmetic get no adjoints at all.
Shapes come from probe runs (:class:`~blackbox_sal.surgery.facts.Facts`), so broadcasting is
undone with a static ``ReduceSum`` (no run-time ``Shape``/``Equal``/``NonZero`` bookkeeping,
no host sync on CUDA), and a tensor computed from constants only is a known value. The rules
are in :mod:`blackbox_sal.surgery.rules`; an operator without one raises ModelError naming
it, and the caller falls back to finite differences.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.builder import Builder
from blackbox_sal.surgery.facts import Facts
from blackbox_sal.surgery.gelu import fold_gelus
from blackbox_sal.surgery.index import opset_of
from blackbox_sal.surgery.lrp_rules import GRADIENT, RuleSet, fallback, fallback_note, recognize
from blackbox_sal.surgery.names import RULES_KEY, RULES_NOTE_KEY
from blackbox_sal.surgery.prune import node_inputs
from blackbox_sal.surgery.rules import LEFT_TO_FINITE_DIFFERENCES
from blackbox_sal.vocabulary.errors import ModelError

#: ops whose outputs carry no gradient even when a float input is differentiated
NON_DIFFERENTIABLE = {
    "Shape", "Size", "ArgMax", "ArgMin", "NonZero", "Equal", "Less", "LessOrEqual", "Greater",
    "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round",
    "ConstantOfShape", "Range", "OneHot", "EyeLike", "RandomNormalLike", "RandomUniformLike",
    "Bernoulli", "Multinomial",
}
MIN_OPSET = 13


def reverse(model: onnx.ModelProto, wrt: str, output: str, seed: str, grad: str,
            facts: Facts, rules: RuleSet = GRADIENT) -> onnx.ModelProto:
    """``model`` plus the nodes computing ``grad`` = d(sum(seed * output))/d(wrt).

    ``seed`` must be a tensor the graph provides (an input, or a node output the caller
    added) with ``output``'s shape. Outputs of the result: ``output`` and ``grad``. Pure.
    With another rule set than the gradient's (LRP: :mod:`blackbox_sal.surgery.lrp_rules`)
    ``grad`` is the modified gradient, and the model's metadata names the rule set and the
    operators that kept their plain gradient (RULES_KEY, RULES_NOTE_KEY).
    """
    opset = opset_of(model)
    if opset < MIN_OPSET:
        raise ModelError(f"opset {opset} is older than {MIN_OPSET}: no gradient graph (re-export with a newer opset)")
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    active = {wrt}
    for node in graph.node:  # a subgraph (Loop, Scan, If) reading an active tensor makes its node active too
        if node.op_type not in NON_DIFFERENTIABLE and any(i in active for i in node_inputs(node)):
            active.update(o for o in node.output if o and facts.is_float(o))
    needed = {output}
    differentiated: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed and o in active for o in node.output):
            differentiated.append(node)
            needed.update(i for i in node_inputs(node) if i in active)
    differentiated = fold_gelus(graph, facts, differentiated)
    held: dict[int, set[int]] = {}
    if rules.patterns:
        differentiated, held = recognize(graph, facts, differentiated, active, rules.hold_attention)
    fell: list[str] = []
    b = Builder(opset)
    adjoints: dict[str, list[str]] = {output: [seed]}
    for position, node in enumerate(differentiated):  # reverse topological order
        grads = [_collect(b, adjoints, o) if o in active else None for o in node.output]
        if all(g is None for g in grads):
            continue
        rule = rules.rule(node.op_type)
        if rule is None:
            why = LEFT_TO_FINITE_DIFFERENCES.get(node.op_type, "")
            raise ModelError(f"no gradient rule for operator {node.op_type!r} (node {node.name or node.output[0]!r})"
                             f"{': ' + why if why else ''}; finite differences work for any model")
        want = [bool(i) and i in active and i in needed and k not in held.get(position, ())
                for k, i in enumerate(node.input)]
        if fallback(rules, node, want):
            fell.append(node.op_type)
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
    if rules is not GRADIENT:
        helper.set_model_props(result, {**{p.key: p.value for p in result.metadata_props}, RULES_KEY: rules.name,
                                        RULES_NOTE_KEY: fallback_note(rules, fell) if fell else ""})
    return result


def _collect(b: Builder, adjoints: dict[str, list[str]], name: str) -> str | None:
    parts = adjoints.get(name)
    if not parts:
        return None
    if len(parts) > 1:
        adjoints[name] = [b.op("Sum", parts)]
    return adjoints[name][0]
