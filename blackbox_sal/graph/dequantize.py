"""The float twin of a quantized model: its int8 weights dequantized, activations left in
float, so it has exact gradients. Two schemes are rewritten: onnxruntime's dynamic one and
the QDQ format (static quantization).

onnxruntime's ``quantize_dynamic`` writes every quantized matrix product as::

    x --DynamicQuantizeLinear--> (xq, xs, xz) --MatMulInteger(xq, Wq, xz, Wz)--> int32
      --Cast--> float --Mul(xs * Ws)--> y

which is ``y = (x rounded to 8 bits) @ ((Wq - Wz) * Ws)`` (an 8-bit embedding lookup can take
the place of the DynamicQuantizeLinear; it is dequantized with its table's scale). The twin computes
``y = x @ ((Wq - Wz) * Ws)``: the deployed weights exactly, without the activation rounding
that makes the int8 model piecewise constant. Its predictions differ from the int8 model's
by that rounding; its gradients are the deployed weights' gradients.

The QDQ format (``quantize_static``, most exporters' int8 output) writes quantized weights as
``DequantizeLinear(Wq, Ws, Wz)`` on constants and quantized activations as a
``QuantizeLinear -> DequantizeLinear`` pair. The twin stores each dequantized constant as a
float initializer under the node's output name, and turns each pair into an Identity of its
float input (the rounding dropped, as above).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.errors import ModelError
from blackbox_sal.graph.prune import prune


def float_twin(model: onnx.ModelProto, integer_ops: frozenset[str]) -> tuple[onnx.ModelProto, int]:
    """``model`` with every DynamicQuantizeLinear/MatMulInteger/Cast/Mul chain replaced by a
    float MatMul on dequantized weights and every QDQ pair and dequantized constant made
    float, and the number replaced (pure). ModelError when an operator of ``integer_ops``
    remains (other quantization schemes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    qdq = _float_qdq(g)
    consts = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = node.attribute[0].t
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)

    def only(name: str, op: str) -> onnx.NodeProto | None:
        found = users.get(name, [])
        return found[0] if len(found) == 1 and found[0].op_type == op else None

    replaced: dict[int, onnx.NodeProto] = {}  # id(Mul node) -> its float MatMul
    dead: set[int] = set()
    lookups: dict[str, onnx.NodeProto] = {}  # 8-bit lookup output -> its DequantizeLinear
    for mi in [n for n in g.node if n.op_type == "MatMulInteger"]:
        a = producer.get(mi.input[0])
        cast = only(mi.output[0], "Cast")
        mul = only(cast.output[0], "Mul") if cast is not None else None
        if a is None or cast is None or mul is None or mi.input[1] not in consts:
            continue
        if a.op_type == "DynamicQuantizeLinear":  # activations quantized at run time
            x, a_scale = a.input[0], a.output[1]
        elif a.op_type == "Gather" and a.input[0].endswith("_quantized"):  # an 8-bit table lookup
            base = a.input[0].removesuffix("_quantized")
            a_scale, a_zero = f"{base}_scale", f"{base}_zero_point"
            if a_scale not in consts or a_zero not in consts:
                continue
            x = f"{mi.input[0]}__float"
            lookups[mi.input[0]] = helper.make_node("DequantizeLinear", [mi.input[0], a_scale, a_zero], [x])
        else:
            continue
        scales = producer.get(next((i for i in mul.input if i != cast.output[0]), ""))
        if scales is None or scales.op_type != "Mul" or a_scale not in scales.input:
            continue
        w_scale = next((i for i in scales.input if i != a_scale), "")
        if w_scale not in consts:
            continue
        wq = numpy_helper.to_array(consts[mi.input[1]]).astype(np.float32)
        wz = (numpy_helper.to_array(consts[mi.input[3]]).astype(np.float32)
              if len(mi.input) > 3 and mi.input[3] in consts else np.float32(0))
        weights = ((wq - wz) * numpy_helper.to_array(consts[w_scale]).astype(np.float32)).astype(np.float32)
        name = f"{mi.input[1]}__dequantized"
        if name not in consts:
            g.initializer.append(numpy_helper.from_array(weights, name))
            consts[name] = g.initializer[-1]
        replaced[id(mul)] = helper.make_node("MatMul", [x, name], list(mul.output),
                                             name=f"{mul.name or mul.output[0]}__float")
        dead.update({id(mi), id(cast)})
    kept = []
    for n in g.node:
        if id(n) in dead:
            continue
        kept.append(replaced.get(id(n), n))
        kept += [lookups.pop(o) for o in n.output if o in lookups]  # right after the 8-bit lookup
    del g.node[:]
    g.node.extend(kept)
    prune(g, keep_inputs=frozenset(i.name for i in g.input))
    left = sorted({n.op_type for n in g.node} & integer_ops)
    if left:
        raise ModelError(f"no float twin for this quantization: {', '.join(left)} remain (dequantized are "
                         f"onnxruntime's dynamic MatMulInteger scheme and the QDQ format)")
    return out, len(replaced) + qdq


def _float_qdq(g: onnx.GraphProto) -> int:
    """In place: each DequantizeLinear of a constant becomes a float initializer of the same
    name, each QuantizeLinear -> DequantizeLinear pair an Identity of the float input. Returns
    how many DequantizeLinear nodes went."""
    consts = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    users: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            users[i] = users.get(i, 0) + 1
    kept: list[onnx.NodeProto] = []
    done = 0
    for n in g.node:
        if n.op_type != "DequantizeLinear" or any(a.name == "block_size" and a.i for a in n.attribute):
            kept.append(n)
            continue
        source = producer.get(n.input[0])
        params = [i for i in n.input[1:] if i]
        if n.input[0] in consts and all(p in consts for p in params):
            q = numpy_helper.to_array(consts[n.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(consts[n.input[1]]).astype(np.float32)
            zero = (numpy_helper.to_array(consts[n.input[2]]).astype(np.float32) if len(params) > 1
                    else np.zeros_like(scale))
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and q.ndim > 0:  # per channel along axis
                shape = [1] * q.ndim
                shape[axis] = scale.shape[0]
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            g.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), n.output[0]))
            done += 1
        elif source is not None and source.op_type == "QuantizeLinear" and users.get(source.output[0]) == 1:
            kept.append(helper.make_node("Identity", [source.input[0]], list(n.output),
                                         name=f"{n.name or n.output[0]}__float"))
            done += 1
        else:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    return done
