"""Probe runs of a forward graph: every intermediate tensor fetched on small inputs, so the
reverse pass (pure surgery, :mod:`blackbox_sal.surgery.reverse`) knows shapes and constants.

The probe runs with onnxruntime on the CPU, without optimisation, one thread. It is the one
place where a graph is run to be read rather than to compute attributions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import onnx
from onnx import numpy_helper

from blackbox_sal.errors import ModelError
from blackbox_sal.model.session import create_session, run
from blackbox_sal.surgery.facts import Facts

_RANDOM = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}


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
    try:
        session = create_session(m.SerializeToString(), "cpu", threads=1, optimize=False)
        fetched = [o.name for o in session.get_outputs()]
        runs = [dict(zip(fetched, run(session, fetched, f), strict=True)) for f in feeds]
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
