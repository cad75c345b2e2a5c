"""A text model whose input is token embeddings: loading and running it.

:func:`load_model` turns a model directory (see :mod:`blackbox_sal.model.files`) into a
:class:`TextModel`: an onnxruntime session that takes ``inputs_embeds`` [batch, seq, dim]
float32, the embedding table [vocab, dim], the tokenizer and the labels. A model that takes
``input_ids`` is split at its lookup first and the split is checked against the original.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

from blackbox_sal.errors import ModelError, UsageError
from blackbox_sal.gradients.finite_differences import mean_row_norm
from blackbox_sal.graph.dequantize import float_twin, weight_only
from blackbox_sal.graph.split import EMBEDS, split_embedding
from blackbox_sal.model import files
from blackbox_sal.model.session import create_session, run_batched

#: the output a causal LM is explained through: its logits at the last position [batch, vocab]
NEXT_TOKEN = "next_token_logits"
#: tasks (what the explained output is): a class score, the next token of a causal LM, or
#: the score of one (context, choice) sequence of a multiple-choice model
TASKS = ("classification", "next-token", "multiple-choice")
IDS = "input_ids"
MASK = "attention_mask"
TYPES = "token_type_ids"
POSITIONS = "position_ids"
#: Inputs filled automatically, by name; any other required input is an error at load time.
KNOWN_INPUTS = (EMBEDS, IDS, MASK, TYPES, POSITIONS)
_PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and the film was good."
_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


@dataclass(frozen=True)
class TextModel:
    """A loaded model. Arrays at this boundary: embeddings float32 [N, S, D], ids int64 [S].

    name: what results report. table: float32 [vocab, dim]. labels: class names by index, or
    None. max_length: the most tokens the model takes, or None. output: the explained output's
    name. origin: how the embeddings input was obtained (the split lookup, or given).
    """

    name: str
    tokenizer: Tokenizer = field(repr=False)
    table: np.ndarray = field(repr=False)
    session: ort.InferenceSession = field(repr=False)
    output: str
    labels: tuple[str, ...] | None
    max_length: int | None
    origin: str
    int_inputs: dict[str, Any] = field(repr=False)  # name -> numpy int dtype the session wants
    row_norm: float = 1.0  # mean non-zero row norm of the table: the fallback step scale
    body: onnx.ModelProto | None = field(default=None, repr=False, compare=False)  # what runs
    config: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    folder: Path | None = field(default=None, repr=False, compare=False)
    device_request: str = field(default="auto", repr=False, compare=False)
    threads: int = field(default=0, repr=False, compare=False)
    #: the integer op types that make the model quantized; () if float (an 8-bit embedding
    #: table alone does not: the split dequantizes it exactly)
    quantized: tuple[str, ...] = ()
    #: for a float twin (load_model(dequantize=True)): the integer op types it replaced
    twin_of: tuple[str, ...] = ()
    #: weight-only integer op types (MatMulNBits computing in float) dequantized at load: the
    #: loaded graph computes the deployed function itself (checked), so it is not "quantized"
    weight_only: tuple[str, ...] = ()
    #: classification ([batch, classes] output), or next-token (a causal LM's [batch, seq,
    #: vocab] logits, explained at the last position; classes are vocabulary tokens)
    task: str = "classification"
    #: built lazily and kept with the model (the gradient-graph session), keyed by purpose
    cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def device(self) -> str:
        return "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"

    def label(self, index: int) -> str | None:
        """The name of output class ``index``: a label, a vocabulary token, or None."""
        if self.labels is not None:
            return self.labels[index] if 0 <= index < len(self.labels) else None
        if self.task == "next-token":
            return self.tokenizer.decode([index], skip_special_tokens=False)
        return None

    def class_of(self, name: str) -> int | None:
        """The class a name stands for: a label, or for a causal LM a single token. A word is
        read as the next word, i.e. with a leading space where the vocabulary has that token
        (byte-level tokenizers spell a word after a space with it), else as given."""
        if self.labels is not None:
            return self.labels.index(name) if name in self.labels else None
        if self.task != "next-token":
            return None
        for text in ((" " + name, name) if not name.startswith(" ") else (name,)):
            found = self.tokenizer.token_to_id(text)
            if found is not None:
                return int(found)
            ids = self.tokenizer.encode(text, add_special_tokens=False).ids
            if len(ids) == 1:
                return int(ids[0])
        return None

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Look token ids [S] up in the table: float32 [S, D]."""
        return self.table[ids]

    def feeds(self, embeds: np.ndarray, ids: np.ndarray, type_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Session feeds for ``embeds`` [k, S, D] whose rows all share ``ids``/``type_ids`` [S]:
        an all-ones mask, the type ids, positions 0..S-1 and the ids, for the inputs it has."""
        k, s = embeds.shape[0], embeds.shape[1]
        feeds: dict[str, np.ndarray] = {}
        for name, dtype in self.int_inputs.items():
            if name == MASK:
                row = np.ones(s, dtype=dtype)
            elif name == TYPES:
                row = type_ids.astype(dtype)
            elif name == POSITIONS:
                row = np.arange(s, dtype=dtype)
            else:  # IDS: the body still reads them (e.g. Shape(input_ids) for position ids)
                row = ids.astype(dtype)
            feeds[name] = np.tile(row, (k, 1))
        feeds[EMBEDS] = np.ascontiguousarray(embeds, dtype=np.float32)
        return feeds

    def as_classes(self, out: np.ndarray, k: int) -> np.ndarray:
        """Check an explained-output batch and return it as float64 [k, C]."""
        out = np.asarray(out)
        if out.ndim == 1:
            out = out[:, None]
        if out.ndim != 2 or out.shape[0] != k:
            raise ModelError(
                f"output {self.output!r} has shape {list(out.shape)} for a batch of {k}; "
                f"expected [batch, classes] (choose another output with --model-output)")
        return out.astype(np.float64)

    def run(self, embeds: np.ndarray, ids: np.ndarray, type_ids: np.ndarray,
            batch_size: int) -> np.ndarray:
        """Explained output for ``embeds`` [N, S, D] that all share ``ids``/``type_ids`` [S].

        Returns float64 [N, C] (a 1-D output counts as one column); runs at most
        ``batch_size`` rows at a time.
        """
        def one(rows: slice) -> np.ndarray:
            out = self.session.run([self.output], self.feeds(embeds[rows], ids, type_ids))[0]
            return self.as_classes(out, rows.stop - rows.start)

        return run_batched(one, embeds.shape[0], batch_size)


def load_model(path: str | Path, *, device: str = "auto", output: str | None = None,
               verify: bool = True, threads: int = 0, dequantize: bool = False) -> TextModel:
    """Load a model directory or ``.onnx`` file (see :mod:`blackbox_sal.model.files`).

    device: auto | cpu | cuda. output: the output to explain (default: the first).
    verify: for a split model, check body(table[ids]) == model(ids) on a probe sentence.
    dequantize: load a quantized model (dynamic or QDQ) as its float twin (int8 weights
    dequantized, activations in float; :mod:`blackbox_sal.graph.dequantize`), which has exact
    gradients; UsageError for a model that is not quantized. A weight-only model (MatMulNBits
    computing in float) is always loaded dequantized: that is the same function, checked
    against the file on a probe sentence unless verify is False.
    Raises ModelError (exit 3) when the model cannot be used, UnavailableError (exit 4) for
    a device that is not there.
    """
    found = files.locate(path)
    tokenizer = files.read_tokenizer(found.tokenizer_path)
    tokenizer.no_truncation()
    tokenizer.no_padding()
    proto = files.read_onnx(found.onnx_path)
    twin_of: tuple[str, ...] = ()
    deployed: onnx.ModelProto | None = None
    dequantized: tuple[str, ...] = ()
    if weight_only(proto, QUANTIZED_OPS):  # float activations: the twin is the model itself
        deployed, dequantized = proto, quantized_ops(proto)
        proto, _ = float_twin(proto, QUANTIZED_OPS)
    elif dequantize:
        twin_of = quantized_ops(proto)
        if not twin_of:
            raise UsageError("--dequantize: the model has no integer operators to dequantize")
        proto, _ = float_twin(proto, QUANTIZED_OPS)
    choices = _rank(proto, IDS) == 3 or _rank(proto, EMBEDS) == 4
    if choices:  # [batch, choices, seq]: score one sequence at a time, as a batch of [batch, 1, seq]
        proto = single_choice(proto)
    input_names = [i.name for i in proto.graph.input]
    if EMBEDS in input_names:
        if found.embeddings_path is None:
            raise ModelError(f"the model takes {EMBEDS!r} but there is no embeddings.npy beside it")
        table, body, origin, original = files.read_table(found.embeddings_path, proto), proto, "given", None
        quantized = quantized_ops(proto)
    else:
        split = split_embedding(proto, IDS)
        table, body, original = split.table, split.body, proto
        origin = f"split at {split.lookup}"
        quantized = quantized_ops(proto)
        if split.quantized_table:
            origin += " (an 8-bit table, dequantized)"
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > table.shape[0]:
        raise ModelError(f"the tokenizer has {vocab} tokens but the embedding table only "
                         f"{table.shape[0]} rows: they do not belong together")

    session = create_session(body.SerializeToString(), device, threads)
    outputs = {o.name: o for o in session.get_outputs()}
    source = output or next(iter(outputs))
    if source not in outputs:
        raise ModelError(f"the model has no output {source!r} (outputs: {', '.join(outputs)})")
    task, chosen = ("multiple-choice" if choices else "classification"), source
    int_inputs: dict[str, Any] = {}
    for inp in session.get_inputs():
        if inp.name == EMBEDS:
            if inp.type != "tensor(float)":
                raise ModelError(f"{EMBEDS!r} must be float32, the model declares {inp.type}")
            continue
        if inp.name not in KNOWN_INPUTS:
            raise ModelError(f"the model needs an input {inp.name!r} that blackbox-sal cannot fill "
                             f"(it fills {', '.join(KNOWN_INPUTS)})")
        if inp.type not in _INT_TYPES:
            raise ModelError(f"input {inp.name!r} has type {inp.type}; expected int64 or int32")
        int_inputs[inp.name] = _INT_TYPES[inp.type]

    model = TextModel(
        name=found.name, tokenizer=tokenizer, table=table, session=session, output=chosen,
        labels=_labels(found.config), max_length=_max_length(found.config, proto),
        origin=origin, int_inputs=int_inputs, row_norm=mean_row_norm(table), body=body,
        config=found.config, folder=found.onnx_path.parent, device_request=device, threads=threads,
        quantized=quantized, task=task, twin_of=twin_of, weight_only=dequantized,
    )
    if len(outputs[source].shape or ()) == 3 and _per_position(model, source):  # a causal LM's logits
        body = last_position(body, source)
        model = replace(model, task="next-token", output=NEXT_TOKEN, body=body,
                        session=create_session(body.SerializeToString(), device, threads))
    if verify and original is not None:
        _check_split(model, original, device, threads, source)
    if verify and deployed is not None:
        _check_split(model, deployed, device, threads, source, what="the dequantized weight-only model")
    return model


def _rank(proto: onnx.ModelProto, name: str) -> int | None:
    found = next((i for i in proto.graph.input if i.name == name), None)
    return len(found.type.tensor_type.shape.dim) if found is not None and found.type.tensor_type.HasField("shape") \
        else None


def single_choice(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A multiple-choice export ([batch, choices, seq] inputs, [batch, choices] output) as a
    model of one sequence: its inputs become [batch, seq] and are unsqueezed to one choice
    inside, so the output is [batch, 1], the score of that (context, choice) sequence (pure)."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 13)
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
            axes = onnx.numpy_helper.from_array(np.array([1], np.int64), f"{inner}__axes")
            g.initializer.append(axes)
            new_nodes.append(onnx.helper.make_node("Unsqueeze", [inp.name, axes.name], [inner]))
        else:
            new_nodes.append(onnx.helper.make_node("Unsqueeze", [inp.name], [inner], axes=[1]))
        del dims[1]
    for k, node in enumerate(new_nodes):
        g.node.insert(k, node)
    return out


def _per_position(model: TextModel, output: str) -> bool:
    """Whether a rank-3 output is [batch, seq, vocab]: one row per input position, as wide as
    the embedding table (a token classifier's [batch, seq, labels] is not a causal LM)."""
    ids = np.array(model.tokenizer.encode(_PROBE_TEXT).ids, dtype=np.int64)[: model.max_length or None]
    feeds = model.feeds(model.embed(ids)[None], ids, np.zeros_like(ids))
    try:
        shape = np.shape(model.session.run([output], feeds)[0])
    except Exception as exc:  # onnxruntime's own error types
        raise ModelError(f"the model fails on a probe sentence: {str(exc).splitlines()[0][:300]}") from exc
    return len(shape) == 3 and shape[1] == len(ids) and shape[2] == model.table.shape[0]


def last_position(body: onnx.ModelProto, logits: str) -> onnx.ModelProto:
    """``body`` with one more output, NEXT_TOKEN = logits[:, -1, :] (pure)."""
    out = onnx.ModelProto()
    out.CopyFrom(body)
    last = onnx.numpy_helper.from_array(np.array(-1, np.int64), f"{NEXT_TOKEN}__last")
    out.graph.initializer.append(last)
    out.graph.node.append(onnx.helper.make_node("Gather", [logits, last.name], [NEXT_TOKEN], axis=1))
    out.graph.output.append(onnx.helper.make_tensor_value_info(NEXT_TOKEN, onnx.TensorProto.FLOAT, ["batch", None]))
    return out


#: operators of quantized graphs (ONNX and onnxruntime's com.microsoft): no gradients through them
QUANTIZED_OPS = frozenset({
    "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "QuantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "QGemm", "QLinearAdd", "QLinearMul",
    "QEmbedLayerNormalization", "DynamicQuantizeLSTM", "MatMulNBits", "QOrderedMatMul",
})


def quantized_ops(proto: onnx.ModelProto) -> tuple[str, ...]:
    """The quantized operator types a graph uses, sorted (empty for a float model)."""
    return tuple(sorted({n.op_type for n in proto.graph.node} & QUANTIZED_OPS))


def _labels(config: dict[str, Any]) -> tuple[str, ...] | None:
    raw = config.get("id2label")
    if not isinstance(raw, dict) or not raw:
        return None
    try:
        pairs = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError as exc:
        raise ModelError("config.json id2label keys must be integers") from exc
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise ModelError("config.json id2label must number the labels 0..n-1")
    return tuple(v for _, v in pairs)


def _max_length(config: dict[str, Any], proto: onnx.ModelProto) -> int | None:
    for key in ("max_length", "max_position_embeddings", "n_positions"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    for inp in proto.graph.input:  # a static sequence axis is a hard limit too
        dims = inp.type.tensor_type.shape.dim
        if inp.name in (IDS, EMBEDS) and len(dims) >= 2 and dims[1].dim_value > 0:
            return int(dims[1].dim_value)
    return None


def _check_split(model: TextModel, original: onnx.ModelProto, device: str, threads: int, source: str,
                 what: str = "") -> None:
    """body(table[ids]) must equal original(ids) on a real sentence; else refuse the split
    (or, with ``what``, that model)."""
    ids = np.array(model.tokenizer.encode(_PROBE_TEXT).ids, dtype=np.int64)
    if model.max_length:
        ids = ids[: model.max_length]
    types = np.zeros_like(ids)
    got = model.run(model.embed(ids)[None], ids, types, batch_size=1)
    session = create_session(original.SerializeToString(), device, threads)
    feeds = {}
    for inp in session.get_inputs():
        dtype = _INT_TYPES.get(inp.type, np.int64)
        row = {IDS: ids, MASK: np.ones_like(ids), TYPES: types,
               POSITIONS: np.arange(len(ids)), EMBEDS: model.embed(ids)}.get(inp.name)
        if row is None:
            raise ModelError(f"the original model needs an input {inp.name!r} that blackbox-sal cannot fill")
        feeds[inp.name] = row[None].astype(np.float32 if inp.name == EMBEDS else dtype)
    want = np.asarray(session.run([source], feeds)[0], dtype=np.float64)
    if model.task == "next-token":
        want = want[:, -1]
    want = want.reshape(got.shape)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not err <= 1e-4 * (1.0 + float(np.max(np.abs(want)))):
        if what:
            raise ModelError(f"{what} disagrees with the file (max difference {err:.3g}); load it with "
                             f"verify=False (--no-verify) to explain the dequantized weights anyway")
        raise ModelError(f"the split model disagrees with the original (max difference {err:.3g}); "
                         f"the lookup cut is wrong for this model")
