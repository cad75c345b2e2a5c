"""The two gradient graphs an encoder/decoder pair is explained through (pure surgery on bodies).

The chain rule across the pair (DESIGN.md §8): for the log-probability of output token t,

    d log p_t / d source_embeds = J_enc^T . (d log p_t / d encoder_hidden_states)

so the decoder's graph differentiates *two* inputs (its own token embeddings and the encoder's
states) and the encoder's graph is seeded with the decoder's cotangent on the states::

    decoder body:  inputs_embeds [B, T, D], encoder_hidden_states [B, S, D], mask [B, S]
                   -> logits [B, T, V] -> LogSoftmax -> Flatten -> log_probs [B, T*V]
    decoder graph: + target_weights [B, T*V]  ->  log_probs, grad [B, T, D], grad_states [B, S, D]

    encoder body:  inputs_embeds [B, S, D], attention_mask [B, S] -> last_hidden_state
                   -> Flatten -> states [B, S*D]
    encoder graph, in two halves (encoder_halves):
      saving forward: the body, also returning the tensors the reverse pass reads
      backward half:  those tensors + target_weights [B, S*D] (= grad_states, flattened) -> grad [B, S, D]

A row of the batch is one output step: its weights are one-hot at (t, y_t). The decoder graph
is the reverse pass run twice over one forward (once per differentiated input); the adjoint
names of the first pass are renamed so the second pass's do not collide with them.
"""

from __future__ import annotations

import onnx
from onnx import helper

from blackbox_sal.surgery.facts import Facts
from blackbox_sal.surgery.gradient import checked_gradient, forward_part
from blackbox_sal.surgery.names import EMBEDS, GRAD, WEIGHTS
from blackbox_sal.surgery.prune import clear_shapes, node_inputs, prune
from blackbox_sal.surgery.reverse import reverse
from blackbox_sal.vocabulary.errors import ModelError

#: the decoder's input carrying the encoder's output (optimum's name)
STATES = "encoder_hidden_states"
#: the decoder graph's second gradient: d(weights . log_probs) / d encoder_hidden_states
GRAD_STATES = "grad_states"
#: the scored outputs added to the bodies
LOG_PROBS = "bbs_log_probs"
FLAT_STATES = "bbs_flat_states"


def scored_decoder(body: onnx.ModelProto, logits: str) -> onnx.ModelProto:
    """The decoder body with ``log_probs`` = Flatten(LogSoftmax(logits)) [B, T*V] as its one
    output (pure)."""
    model = onnx.ModelProto()
    model.CopyFrom(body)
    g = model.graph
    g.node.extend([helper.make_node("LogSoftmax", [logits], ["bbs_log_softmax"], axis=-1),
                   helper.make_node("Flatten", ["bbs_log_softmax"], [LOG_PROBS], axis=1)])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(LOG_PROBS, onnx.TensorProto.FLOAT, ["batch", "scores"]))
    return forward_part(model, LOG_PROBS)


def flat_encoder(body: onnx.ModelProto, states: str) -> onnx.ModelProto:
    """The encoder body with its states flattened to [B, S*D] as its one output (pure)."""
    model = onnx.ModelProto()
    model.CopyFrom(body)
    g = model.graph
    g.node.append(helper.make_node("Flatten", [states], [FLAT_STATES], axis=1))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(FLAT_STATES, onnx.TensorProto.FLOAT, ["batch", "flat"]))
    return forward_part(model, FLAT_STATES)


def _with_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    g.input.append(helper.make_tensor_value_info(WEIGHTS, onnx.TensorProto.FLOAT, ["batch", "scores"]))
    return checked_gradient(model)


def decoder_gradient(forward: onnx.ModelProto, facts: Facts) -> onnx.ModelProto:
    """The decoder's gradient graph with two gradients (see the module's sketch) from
    :func:`scored_decoder`'s output and its probe facts."""
    first = reverse(forward, EMBEDS, LOG_PROBS, WEIGHTS, GRAD, facts)
    _rename_adjoints(first.graph, len(forward.graph.node), len(forward.graph.initializer))
    both = reverse(first, STATES, LOG_PROBS, WEIGHTS, GRAD_STATES, facts)
    grad_info = helper.make_tensor_value_info(GRAD, onnx.TensorProto.FLOAT, ["batch", "target", "dim"])
    both.graph.output.insert(1, grad_info)
    return _with_weights(both)


def _rename_adjoints(graph: onnx.GraphProto, nodes_before: int, initializers_before: int) -> None:
    """Give the names a reverse pass emitted (``bbs_<op>_<n>``, after the first
    ``nodes_before`` nodes) the prefix ``bbs_e_`` so that a second pass can emit its own."""
    renamed: dict[str, str] = {}
    for init in graph.initializer[initializers_before:]:
        if init.name.startswith("bbs_"):
            renamed[init.name] = "bbs_e_" + init.name[4:]
            init.name = renamed[init.name]
    added = graph.node[nodes_before:]
    for node in added:
        for k, out in enumerate(node.output):
            if out.startswith("bbs_") and out != GRAD:
                renamed[out] = "bbs_e_" + out[4:]
                node.output[k] = renamed[out]
        if node.name.startswith("bbs_"):
            node.name = "bbs_e_" + node.name[4:]
    for node in added:
        for k, name in enumerate(node.input):
            node.input[k] = renamed.get(name, name)


#: the prefix a saved forward tensor takes as an input of the encoder's backward half
SAVED = "bbs_saved/"
#: the backward half's int64 [B] input: each row's point among the saved tensors' rows
ROWS = "bbs_row_point"
ROWWISE = "bbs_rowwise/"


def encoder_halves(forward: onnx.ModelProto, facts: Facts) -> tuple[onnx.ModelProto, onnx.ModelProto, tuple[str, ...]]:
    """The encoder's gradient graph cut in two, so that its forward runs once per point and its
    reverse pass once per (point, output step) row (pure)::

        saving forward:  inputs_embeds, attention_mask -> states [B, S*D], saved_1 .. saved_k
        backward:        SAVED + saved_i [P, ...], ROWS [B] (each row's point), target_weights
                         [B, S*D], (the inputs) -> grad

    The saved tensors are the batch-major float tensors of the forward that the reverse pass
    reads (``facts``: their first axis followed the probes' batch sizes); whatever else it reads
    from the forward (shape arithmetic) is recomputed in the backward half from the saved ones.
    A row of the backward half takes its point's saved rows (a Gather on ROWS inside the graph:
    no copy per row outside it). Returns (forward, backward, the saved names)."""
    whole = reverse(forward, EMBEDS, FLAT_STATES, WEIGHTS, GRAD, facts)
    produced = {o for node in whole.graph.node[:len(forward.graph.node)] for o in node.output if o}
    batches = [s[0] for s in facts.shapes[EMBEDS]]
    batch_major = {n for n in produced if facts.is_float(n) and n in facts.shapes
                   and all(len(s) > 0 and s[0] == b for s, b in zip(facts.shapes[n], batches, strict=True))}
    for node in whole.graph.node:
        for k, name in enumerate(node.input):
            if name in batch_major:
                node.input[k] = SAVED + name
    graph = whole.graph
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(GRAD, onnx.TensorProto.FLOAT, ["batch", "source", "dim"]))
    read = {i for node in graph.node for i in node_inputs(node)}
    for name in sorted(n for n in batch_major if SAVED + n in read):
        graph.input.append(helper.make_tensor_value_info(
            SAVED + name, helper.np_dtype_to_tensor_dtype(facts.dtypes[name]), [None] * facts.rank(name)))
    backward = _with_weights(whole)
    prune(backward.graph, keep_inputs=frozenset({WEIGHTS}))
    saved = tuple(sorted(i.name[len(SAVED):] for i in backward.graph.input if i.name.startswith(SAVED)))
    # the saved tensors come one row per point; ROWS [B] says each gradient row's point
    g = backward.graph
    for node in g.node:
        node.input[:] = [ROWWISE + i[len(SAVED):] if i.startswith(SAVED) else i for i in node.input]
    nodes = [helper.make_node("Gather", [SAVED + name, ROWS], [ROWWISE + name], axis=0, name=f"bbs_rows_{k}")
             for k, name in enumerate(saved)] + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    g.input.append(helper.make_tensor_value_info(ROWS, onnx.TensorProto.INT64, ["batch"]))
    saving = onnx.ModelProto()
    saving.CopyFrom(forward)
    saving.graph.output.extend(helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(facts.dtypes[name]), [None] * facts.rank(name)) for name in saved)
    return saving, backward, saved


#: the bool [1] input of optimum's merged decoder choosing the with-past branch
USE_CACHE = "use_cache_branch"


def no_cache_branch(merged: onnx.ModelProto) -> onnx.ModelProto:
    """optimum's ``decoder_model_merged.onnx`` reduced to its decoder without past (the ``If``
    on ``use_cache_branch``'s else branch, lifted to the main graph; pure): the inputs are then
    input_ids, the encoder's mask and states, the outputs the logits and every present.*.
    ModelError when the graph has no such ``If``."""
    model = onnx.ModelProto()
    model.CopyFrom(merged)
    g = model.graph
    switch = next((n for n in g.node if n.op_type == "If" and list(n.input) == [USE_CACHE]), None)
    if switch is None:
        raise ModelError(f"the merged decoder has no If on {USE_CACHE!r} (optimum's layout): its no-cache "
                         f"branch cannot be cut out")
    branch = next(a.g for a in switch.attribute if a.name == "else_branch")
    at = list(g.node).index(switch)
    lifted = [*g.node[:at], *branch.node,
              *(helper.make_node("Identity", [inner.name], [outer], name=f"bbs_no_cache_{outer}")
                for inner, outer in zip(branch.output, switch.output, strict=True)), *g.node[at + 1:]]
    del g.node[:]
    g.node.extend(lifted)
    g.initializer.extend(branch.initializer)
    kept = [i for i in g.input if i.name != USE_CACHE]
    del g.input[:]
    g.input.extend(kept)
    prune(g)
    clear_shapes(g)
    if any(i.name.startswith("past_key_values.") for i in g.input):
        raise ModelError("the merged decoder's no-cache branch reads past_key_values: not optimum's layout")
    return model
