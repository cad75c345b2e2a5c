"""The gradient graph of a model body: the body plus d(target)/d(inputs_embeds), in ONNX.

Interface of the result (standard ONNX domain only, dynamic batch and sequence axes)::

    inputs:  inputs_embeds [B, S, D], the body's other inputs, target_weights [B, C]
    outputs: <explained output> [B, C], grad [B, S, D]

    grad[b] = d/d inputs_embeds[b] of sum_c target_weights[b, c] * output[b, c]

so one class (a one-hot row), a margin (+1/-1) or the chain-rule seed of a softmax score is
one run. Building takes two steps around a probe run (which needs a session, so it happens
outside this package): :func:`forward_part` keeps what the output needs, then
:func:`gradient_model` adds the reverse pass (:mod:`blackbox_sal.surgery.reverse`) with
shapes from the probe. The forward part is left as exported, so onnxruntime's fusions
(Gelu, MatMul+scale) still apply to it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from blackbox_sal.surgery.facts import Facts
from blackbox_sal.surgery.lrp_rules import GRADIENT, RuleSet
from blackbox_sal.surgery.names import EMBEDS, GRAD, WEIGHTS
from blackbox_sal.surgery.prune import clear_shapes, prune
from blackbox_sal.surgery.reverse import reverse
from blackbox_sal.vocabulary.errors import ModelError

#: bump when the builder changes what it emits: cached graphs of other versions are rebuilt
BUILDER_VERSION = 9


def forward_part(body: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """``body`` reduced to what ``output`` needs, with no stale intermediate shapes (pure)."""
    if EMBEDS not in {i.name for i in body.graph.input}:
        raise ModelError(f"the model has no {EMBEDS!r} input to differentiate")
    model = onnx.ModelProto()
    model.CopyFrom(body)
    outs = [o for o in model.graph.output if o.name == output]
    if not outs:
        raise ModelError(f"the model has no output {output!r}")
    del model.graph.output[:]
    model.graph.output.extend(outs)
    prune(model.graph, keep_inputs=frozenset(i.name for i in model.graph.input))
    clear_shapes(model.graph)
    return model


def gradient_model(forward: onnx.ModelProto, output: str, facts: Facts, rules: RuleSet = GRADIENT) -> onnx.ModelProto:
    """The gradient graph of ``forward`` (from :func:`forward_part`) for ``output``, with shapes
    from ``facts`` (probe runs of ``forward``). Pure. ModelError names an operator without a
    rule (quantized models, exotic ops): finite differences then take over. ``rules``: another
    rule set (LRP) makes ``grad`` its modified gradient, same interface."""
    rank = facts.rank(output)
    if rank not in (1, 2):
        raise ModelError(f"output {output!r} has rank {rank}; a gradient graph needs [batch, classes] or [batch]")
    seed = WEIGHTS if rank == 2 else "bbs_seed"
    grad_model = reverse(forward, EMBEDS, output, seed, GRAD, facts, rules)
    graph = grad_model.graph
    graph.input.append(helper.make_tensor_value_info(WEIGHTS, onnx.TensorProto.FLOAT, ["batch", "classes"]))
    if rank == 1:  # weights [B, 1] seed a [B] output
        flat = numpy_helper.from_array(np.array([-1], np.int64), "bbs_flat")
        graph.initializer.append(flat)
        graph.node.insert(0, helper.make_node("Reshape", [WEIGHTS, flat.name], [seed], name="bbs_seed"))
    return checked_gradient(grad_model)


def checked_gradient(grad_model: onnx.ModelProto) -> onnx.ModelProto:
    """A gradient graph made ready to run: what no output needs pruned (the dead weight-gradient
    branches), stale shapes cleared, onnx.checker passed (ModelError otherwise)."""
    graph = grad_model.graph
    prune(graph, keep_inputs=frozenset(i.name for i in graph.input))
    clear_shapes(graph)
    try:
        onnx.checker.check_model(grad_model)
    except onnx.checker.ValidationError as exc:
        raise ModelError(f"the gradient graph does not pass onnx.checker: {exc}") from exc
    return grad_model
