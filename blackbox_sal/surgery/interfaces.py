"""Rewrites of a model's inputs and outputs for a task (pure: each returns a new model).

- :func:`single_choice`: a multiple-choice export ([batch, choices, seq] inputs) as a model
  of one (context, choice) sequence at a time;
- :func:`last_position`: a causal LM's [batch, seq, vocab] logits plus their last position,
  the next token's logits [batch, vocab];
- :func:`with_batch_axis`: an output with no batch axis given one (runs of one row).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.index import opset_of
from blackbox_sal.surgery.names import EMBEDS, KNOWN_INPUTS, NEXT_TOKEN


def input_rank(proto: onnx.ModelProto, name: str) -> int | None:
    """The declared rank of graph input ``name`` (None when absent or shapeless)."""
    found = next((i for i in proto.graph.input if i.name == name), None)
    if found is None or not found.type.tensor_type.HasField("shape"):
        return None
    return len(found.type.tensor_type.shape.dim)


def single_choice(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A multiple-choice export ([batch, choices, seq] inputs, [batch, choices] output) as a
    model of one sequence: its inputs become [batch, seq] and are unsqueezed to one choice
    inside, so the output is [batch, 1], the score of that (context, choice) sequence."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    opset = opset_of(out) or 13
    new_nodes = []
    for inp in g.input:
        dims = inp.type.tensor_type.shape.dim
        wanted = 4 if inp.name == EMBEDS else 3
        if inp.name not in KNOWN_INPUTS or len(dims) != wanted:
            continue
        inner = f"{inp.name}__choices"
        for node in g.node:
            node.input[:] = [inner if i == inp.name else i for i in node.input]
        if opset >= 13:
            axes = numpy_helper.from_array(np.array([1], np.int64), f"{inner}__axes")
            g.initializer.append(axes)
            new_nodes.append(helper.make_node("Unsqueeze", [inp.name, axes.name], [inner]))
        else:
            new_nodes.append(helper.make_node("Unsqueeze", [inp.name], [inner], axes=[1]))
        del dims[1]
    for k, node in enumerate(new_nodes):
        g.node.insert(k, node)
    return out


def last_position(body: onnx.ModelProto, logits: str) -> onnx.ModelProto:
    """``body`` with one more output, NEXT_TOKEN = logits[:, -1, :]."""
    out = onnx.ModelProto()
    out.CopyFrom(body)
    last = numpy_helper.from_array(np.array(-1, np.int64), f"{NEXT_TOKEN}__last")
    out.graph.initializer.append(last)
    out.graph.node.append(helper.make_node("Gather", [logits, last.name], [NEXT_TOKEN], axis=1))
    out.graph.output.append(helper.make_tensor_value_info(NEXT_TOKEN, onnx.TensorProto.FLOAT, ["batch", None]))
    return out


def with_batch_axis(body: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """``body`` with one more output, ``output`` + ``__batched`` = output[None]: an output with
    no batch axis ([classes], or a scalar) as one row [1, classes] (run one row at a time)."""
    out = onnx.ModelProto()
    out.CopyFrom(body)
    name = f"{output}__batched"
    axes = numpy_helper.from_array(np.array([0], np.int64), f"{name}__axes")
    if (opset_of(out) or 13) >= 13:
        out.graph.initializer.append(axes)
        out.graph.node.append(helper.make_node("Unsqueeze", [output, axes.name], [name]))
    else:
        out.graph.node.append(helper.make_node("Unsqueeze", [output], [name], axes=[0]))
    out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [1, None]))
    return out


def flat_per_token(body: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """``body`` with one more output, ``output`` + ``__flat`` = output reshaped [batch, seq *
    labels]: a per-token output ([batch, seq, labels] or [batch, seq]) as one row of scores per
    text, position-major (score (i, l) at column i * labels + l), so every explained scalar is
    a weighting of its columns (:class:`blackbox_sal.vocabulary.scores.TokenWeights`)."""
    out = onnx.ModelProto()
    out.CopyFrom(body)
    name = f"{output}__flat"
    shape = numpy_helper.from_array(np.array([0, -1], np.int64), f"{name}__shape")
    out.graph.initializer.append(shape)
    out.graph.node.append(helper.make_node("Reshape", [output, shape.name], [name]))
    out.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["batch", None]))
    return out
