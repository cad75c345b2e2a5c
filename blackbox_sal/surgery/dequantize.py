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

onnxruntime's ``DynamicQuantizeLSTM`` (com.microsoft: an LSTM whose int8 weights are stored
transposed, [dirs, input, 4 hidden], with per-tensor or per-gate-column scales) becomes an ONNX
``LSTM`` on the dequantized weights, transposed back; its activations stay in float.

onnxruntime's weight-only ``MatMulNBits`` (2-, 4- or 8-bit codes in blocks along K, packed
low bits first, each block with a scale and a zero point; 4-bit LLM exports) becomes a float
MatMul on ``(code - zero_point) * scale``. Its activations were never quantized, so with
``accuracy_level`` 0 or 1 (float compute) the twin is the deployed function itself
(:func:`weight_only`).
"""

from __future__ import annotations

from collections.abc import Container

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.index import GraphIndex, attr_int
from blackbox_sal.surgery.prune import prune
from blackbox_sal.surgery.quantized import QUANTIZED_OPS
from blackbox_sal.vocabulary.errors import ModelError


def float_twin(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with every DynamicQuantizeLinear/MatMulInteger/Cast/Mul chain replaced by a
    float MatMul on dequantized weights and every QDQ pair and dequantized constant made
    float, and the number replaced (pure). ModelError when a quantized operator remains
    (other quantization schemes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    qdq = _float_lookups(g) + _float_qdq(g) + _float_nbits(g) + _float_lstm(g)
    index = GraphIndex.of(g)
    consts, producer, only = index.constants, index.producer, index.only_user

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
    left = sorted({n.op_type for n in g.node} & QUANTIZED_OPS)
    if left:
        raise ModelError(f"no float twin for this quantization: {', '.join(left)} remain (dequantized are "
                         f"onnxruntime's dynamic MatMulInteger scheme, DynamicQuantizeLSTM, the QDQ format and "
                         f"MatMulNBits without g_idx)")
    return out, len(replaced) + qdq


def float_lookups(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its 8-bit lookups dequantized after the gather made float lookups
    (:func:`_float_lookups`; pure). Exact: the graph computes the same values, so a float
    model's loader may apply it without ``--dequantize``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    _float_lookups(out.graph)
    return out


#: operators that move an 8-bit lookup's values without changing them
_LAYOUT = frozenset({"Transpose", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Flatten"})


def _float_lookups(g: onnx.GraphProto) -> int:
    """In place: an 8-bit table looked up and dequantized after the lookup (``Gather(Wq, ids)
    [-> Transpose ...] -> DequantizeLinear(., s, z)``, one per-tensor scale and zero point: the
    quantizer's embedding form) becomes a lookup in the float table ``(Wq - z) * s``, each
    DequantizeLinear an Identity: the same values, and a float lookup the embedding split finds.
    Left alone when the lookup also feeds anything else (a MatMulInteger, say). Returns how many
    DequantizeLinear nodes went."""
    index = GraphIndex.of(g)
    consts = {t.name: t for t in g.initializer}
    done = 0
    for gather in [n for n in g.node if n.op_type == "Gather" and n.input[0] in consts
                   and consts[n.input[0]].data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]:
        todo, seen, dequantized, alone = [gather.output[0]], set(), [], True
        while todo and alone:
            name = todo.pop()
            for user in index.users.get(name, []):
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if user.op_type in _LAYOUT and user.input[0] == name and name not in user.input[1:]:
                    todo.append(user.output[0])
                elif user.op_type == "DequantizeLinear" and user.input[0] == name:
                    dequantized.append(user)
                elif user.op_type not in ("Shape", "Size"):
                    alone = False
        params = {tuple(d.input[1:]) for d in dequantized}
        if not alone or len(params) != 1:
            continue
        scale_name, *zero_name = params.pop()
        if scale_name not in consts or any(z and z not in consts for z in zero_name):
            continue
        scale = numpy_helper.to_array(consts[scale_name]).astype(np.float32)
        zero = (numpy_helper.to_array(consts[zero_name[0]]).astype(np.float32) if zero_name and zero_name[0]
                else np.zeros_like(scale))
        if scale.size != 1 or zero.size != 1:
            continue
        table = f"{gather.input[0]}__dequantized"
        if table not in consts:
            q = numpy_helper.to_array(consts[gather.input[0]]).astype(np.float32)
            g.initializer.append(numpy_helper.from_array(((q - zero.reshape(())) * scale.reshape(())).astype(
                np.float32), table))
            consts[table] = g.initializer[-1]
        gather.input[0] = table
        for d in dequantized:
            d.op_type = "Identity"
            del d.input[1:]
            del d.attribute[:]
        done += len(dequantized)
    return done


def _float_qdq(g: onnx.GraphProto) -> int:
    """In place: each DequantizeLinear of a constant becomes a float initializer of the same
    name, each QuantizeLinear -> DequantizeLinear pair an Identity of the float input. Returns
    how many DequantizeLinear nodes went."""
    index = GraphIndex.of(g)
    consts, producer = {t.name: t for t in g.initializer}, index.producer
    kept: list[onnx.NodeProto] = []
    done = 0
    for n in g.node:
        if n.op_type != "DequantizeLinear" or attr_int(n, "block_size", 0):
            kept.append(n)
            continue
        source = producer.get(n.input[0])
        params = [i for i in n.input[1:] if i]
        if n.input[0] in consts and all(p in consts for p in params):
            q = numpy_helper.to_array(consts[n.input[0]]).astype(np.float32)
            scale = numpy_helper.to_array(consts[n.input[1]]).astype(np.float32)
            zero = (numpy_helper.to_array(consts[n.input[2]]).astype(np.float32) if len(params) > 1
                    else np.zeros_like(scale))
            axis = attr_int(n, "axis", 1)
            if scale.ndim == 1 and q.ndim > 0:  # per channel along axis
                shape = [1] * q.ndim
                shape[axis] = scale.shape[0]
                scale, zero = scale.reshape(shape), zero.reshape(shape)
            g.initializer.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), n.output[0]))
            done += 1
        elif source is not None and source.op_type == "QuantizeLinear" and len(index.users[source.output[0]]) == 1:
            kept.append(helper.make_node("Identity", [source.input[0]], list(n.output),
                                         name=f"{n.name or n.output[0]}__float"))
            done += 1
        else:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    return done


def _lstm_weights(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray | None:
    """DynamicQuantizeLSTM's int8 weights [dirs, in, 4H] with per-tensor or per-column
    ([dirs, 4H]) parameters, dequantized and laid out as ONNX LSTM wants them: [dirs, 4H, in]."""
    dirs, _, cols = q.shape
    params = []
    for p in (scale, zero):
        p = p.astype(np.float32)
        if p.size == dirs * cols:
            params.append(p.reshape(dirs, 1, cols))
        elif p.size in (1, dirs):
            params.append(p.reshape(-1, 1, 1))
        else:
            return None
    return np.ascontiguousarray(((q.astype(np.float32) - params[1]) * params[0]).transpose(0, 2, 1), np.float32)


def _float_lstm(g: onnx.GraphProto) -> int:
    """In place: each com.microsoft DynamicQuantizeLSTM on constant weights becomes an ONNX
    LSTM on its dequantized weights (its activations were quantized at run time; the LSTM
    keeps them in float, as the MatMul twin does). Inputs: X, W, R, B, sequence_lens,
    initial_h, initial_c, P, W_scale, W_zero_point, R_scale, R_zero_point. Returns how many went."""
    consts = {t.name: t for t in g.initializer}
    kept: list[onnx.NodeProto] = []
    done = 0
    for n in g.node:
        parts = (list(n.input) + [""] * 12)[:12]
        if n.op_type != "DynamicQuantizeLSTM" or not all(p in consts for p in (parts[1], parts[2], *parts[8:12])):
            kept.append(n)
            continue
        # W (input 1) with W_scale, W_zero_point (8, 9); R (input 2) with R_scale, R_zero_point (10, 11)
        w, r = (_lstm_weights(*(numpy_helper.to_array(consts[parts[i]]) for i in (k, scale, scale + 1)))
                for k, scale in ((1, 8), (2, 10)))
        if w is None or r is None:
            kept.append(n)
            continue
        names = []
        for array, k in ((w, 1), (r, 2)):
            names.append(f"{parts[k]}__dequantized")
            g.initializer.append(numpy_helper.from_array(array, names[-1]))
        inputs = [parts[0], *names, *parts[3:8]]
        while inputs and not inputs[-1]:
            inputs.pop()
        lstm = helper.make_node("LSTM", inputs, list(n.output), name=f"{n.name or n.output[0]}__float")
        lstm.attribute.extend(a for a in n.attribute)
        kept.append(lstm)
        done += 1
    del g.node[:]
    g.node.extend(kept)
    return done


#: ops that only move values: a QuantizeLinear -> these -> DequantizeLinear chain is a float
#: chain of the same ops up to the rounding
_MOVES = frozenset({"Identity", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"})


def drop_requantization(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """``model`` with each QuantizeLinear whose values reach only DequantizeLinear nodes of the
    same scale and zero point (through ops that only move values) made float: the pair become
    Identity nodes, the moves run on floats (pure). The split writes such a QuantizeLinear on
    the embeddings where the 8-bit lookup's values are moved before they are dequantized
    (a torch LSTM's Transpose, quantize_dynamic); a float twin drops that rounding as it drops
    the activations'. Returns the model and how many QuantizeLinear nodes went."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    index = GraphIndex.of(g)
    floats: dict[int, onnx.NodeProto] = {}
    dropped = 0
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        params = list(q.input[1:])
        frontier, leaves, moves, ok = [q.output[0]], [], [], True
        while frontier and ok:
            for user in index.users.get(frontier.pop(), []):
                if user.op_type == "DequantizeLinear" and list(user.input[1:]) == params \
                        and attr_int(user, "axis", 1) == attr_int(q, "axis", 1):
                    leaves.append(user)
                elif user.op_type in _MOVES and all(i == user.input[0] or i in index.constants for i in user.input[1:]):
                    moves.append(user)
                    frontier.extend(user.output)
                else:
                    ok = False
        scale = index.constants.get(params[0]) if params else None
        if not ok or not leaves or (moves and (scale is None or int(np.prod(scale.dims)) > 1)):
            continue  # per-axis parameters would move with the values: left as they are
        dropped += 1
        for node in (q, *leaves):
            floats[id(node)] = helper.make_node("Identity", [node.input[0]], list(node.output),
                                                name=f"{node.name or node.output[0]}__float")
    kept = [floats.get(id(n), n) for n in g.node]
    del g.node[:]
    g.node.extend(kept)
    prune(g, keep_inputs=frozenset(i.name for i in g.input))
    return out, dropped


def weight_only(model: onnx.ModelProto) -> bool:
    """True when the model's only integer operators are MatMulNBits that the twin rewrites and
    that compute in float (accuracy_level 0 or 1): the float twin is then the same function."""
    consts = {t.name for t in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in QUANTIZED_OPS]
    return bool(nodes) and all(_nbits_parts(n, consts) is not None and attr_int(n, "accuracy_level", 0) <= 1
                               for n in nodes)


def _nbits_parts(n: onnx.NodeProto, consts: Container[str]) -> tuple[str, ...] | None:
    """(a, b, scales, zero_points, bias) of a MatMulNBits the twin can rewrite: constant
    weights, no g_idx, 2/4/8 bits; else None."""
    a, b, scales, zeros, g_idx, bias = (list(n.input) + [""] * 6)[:6]
    if (n.op_type != "MatMulNBits" or g_idx or attr_int(n, "bits", 4) not in (2, 4, 8)
            or attr_int(n, "block_size", 0) <= 0 or any(i and i not in consts for i in (b, scales, zeros, bias))):
        return None
    return a, b, scales, zeros, bias


def _unpack(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 [..., n] -> codes [..., n * 8 / bits], the low bits of each byte first."""
    shifts = np.arange(0, 8, bits, dtype=np.uint8)
    codes = (packed[..., None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)


def _float_nbits(g: onnx.GraphProto) -> int:
    """In place: each MatMulNBits on constant weights (no g_idx) becomes MatMul(A, W) on the
    dequantized [K, N] weights, plus its bias. Returns how many went."""
    consts = {t.name: t for t in g.initializer}
    kept: list[onnx.NodeProto] = []
    done = 0
    for n in g.node:
        parts = _nbits_parts(n, consts)
        if parts is None:
            kept.append(n)
            continue
        a, b, scales, zeros, bias = parts
        bits, block = attr_int(n, "bits", 4), attr_int(n, "block_size", 0)
        k, cols = attr_int(n, "K", 0), attr_int(n, "N", 0)
        blocks = -(-k // block)
        codes = _unpack(numpy_helper.to_array(consts[b]).reshape(cols, blocks, -1), bits)
        codes = codes.reshape(cols, blocks, block).astype(np.float32)
        scale = numpy_helper.to_array(consts[scales]).astype(np.float32).reshape(cols, blocks)
        if not zeros:
            zero = np.full((cols, blocks), 2.0 ** (bits - 1), np.float32)
        else:
            z = numpy_helper.to_array(consts[zeros])
            zero = (_unpack(z.reshape(cols, -1), bits)[:, :blocks] if z.dtype == np.uint8
                    else z.reshape(cols, blocks)).astype(np.float32)
        weights = ((codes - zero[..., None]) * scale[..., None]).reshape(cols, blocks * block)[:, :k].T
        name = f"{b}__dequantized"
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weights, np.float32), name))
        out = n.output[0]
        if bias:
            kept.append(helper.make_node("MatMul", [a, name], [f"{out}__nobias"], name=f"{n.name or out}__float"))
            kept.append(helper.make_node("Add", [f"{out}__nobias", bias], [out], name=f"{n.name or out}__bias"))
        else:
            kept.append(helper.make_node("MatMul", [a, name], [out], name=f"{n.name or out}__float"))
        done += 1
    del g.node[:]
    g.node.extend(kept)
    return done
