"""Probe runs of a forward graph: every intermediate tensor fetched on small inputs, so the
reverse pass (pure surgery, :mod:`blackbox_sal.surgery.reverse`) knows shapes and constants.

The probe runs with onnxruntime on the CPU, without optimisation, one thread. It is the one
place where a graph is run to be read rather than to compute attributions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.model.session import create_session, run
from blackbox_sal.surgery.facts import Facts
from blackbox_sal.surgery.prune import node_inputs
from blackbox_sal.vocabulary.errors import ModelError

#: nodes per probe session. onnxruntime's session start grows faster than linearly with the
#: number of graph outputs (measured on a 2-core machine: 20,000 outputs 4 s, 40,000 10 s), and
#: a probe makes every tensor an output; so a big graph runs in segments of this many nodes,
#: each fed the tensors it reads from the segments before it: linear in the graph's size
SEGMENT = 4000

_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}


def probe(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]], segment: int = SEGMENT) -> Facts:
    """Run ``model`` on each feed with every intermediate tensor fetched (no optimisation,
    CPU, one thread) and collect shapes, dtypes and constant values. A graph of more than
    ``segment`` nodes runs in segments of that many (see SEGMENT)."""
    graph = model.graph
    constant = {t.name for t in graph.initializer}
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if ((node.op_type not in _RANDOM and node.input and all(i in constant for i in node.input if i))
                or node.op_type == "Constant"):
            constant.update(o for o in node.output if o)
    try:
        fetched, runs = _run_every_tensor(model, feeds, segment)
    except ModelError as exc:
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


Runs = list[dict[str, Any]]


def _run_every_tensor(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
                      segment: int) -> tuple[list[str], Runs]:
    """The names of every tensor the nodes make, and per feed their values."""
    if len(model.graph.node) > segment:
        done = _in_segments(model, feeds, segment)
        if done is not None:
            return done
    names = [o for n in model.graph.node for o in n.output if o]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    session = create_session(m.SerializeToString(), "cpu", threads=1, optimize=False)
    fetched = [o.name for o in session.get_outputs()]
    return fetched, [dict(zip(fetched, run(session, fetched, f), strict=True)) for f in feeds]


def _in_segments(model: onnx.ModelProto, feeds: Sequence[Mapping[str, np.ndarray]],
                 segment: int) -> tuple[list[str], Runs] | None:
    """The same, one segment of nodes at a time (graph.node is topologically sorted). None
    when a tensor crossing segments is not a plain tensor (a sequence, an optional), which
    a segment's inputs cannot take: the caller probes in one piece then."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    sparse = {t.values.name: t for t in graph.sparse_initializer}
    runs: Runs = [dict(f) for f in feeds]
    fetched: list[str] = []
    nodes = list(graph.node)
    for start in range(0, len(nodes), segment):
        part = nodes[start:start + segment]
        made = [o for n in part for o in n.output if o]
        reads = sorted(set().union(*(node_inputs(n) for n in part)) - set(made))
        fed = [r for r in reads if r not in constants and r not in sparse]
        if not all(isinstance(values.get(name), np.ndarray) and values[name].dtype.kind in "biuf"
                   for values in runs for name in fed):
            return None
        m = onnx.ModelProto()
        m.ir_version = model.ir_version
        m.opset_import.extend(model.opset_import)
        m.functions.extend(model.functions)
        g = m.graph
        g.name = f"probe-{start}"
        g.node.extend(part)
        g.initializer.extend(constants[r] for r in reads if r in constants)
        g.sparse_initializer.extend(sparse[r] for r in reads if r in sparse)
        g.input.extend(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(runs[0][name].dtype), None) for name in fed)
        g.output.extend(onnx.ValueInfoProto(name=name) for name in made)
        session = create_session(m.SerializeToString(), "cpu", threads=1, optimize=False)
        names = [o.name for o in session.get_outputs()]
        for values in runs:
            values.update(zip(names, run(session, names, {name: values[name] for name in fed}), strict=True))
        fetched += names
    return fetched, runs
