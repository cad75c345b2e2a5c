"""Loading a model folder into a :class:`~blackbox_sal.model.text_model.TextModel`.

The folder's files are read safely (:mod:`blackbox_sal.model.files`), then the graph is
rewritten to take token embeddings, in this order, each rewrite a pure function of
:mod:`blackbox_sal.surgery`:

1. a weight-only low-bit model (MatMulNBits computing in float) is dequantized, since that is
   the same function; a quantized model is replaced by its float twin when asked;
2. a multiple-choice export ([batch, choices, seq]) scores one sequence at a time;
3. an ``input_ids`` model is split at its embedding lookup;
4. a causal LM's [batch, seq, vocab] logits gain their last position as the explained output.

Each rewrite that could change the function is checked against the file on a probe sentence.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tokenizers import Tokenizer

from blackbox_sal.differences import mean_row_norm
from blackbox_sal.errors import ModelError, UsageError
from blackbox_sal.model import files
from blackbox_sal.model.model_config import ModelConfig
from blackbox_sal.model.session import create_session, first_line, run
from blackbox_sal.model.text_model import TextModel, int_feeds
from blackbox_sal.surgery.dequantize import float_twin, weight_only
from blackbox_sal.surgery.interfaces import input_rank, last_position, single_choice
from blackbox_sal.surgery.names import EMBEDS, IDS, KNOWN_INPUTS, NEXT_TOKEN
from blackbox_sal.surgery.quantized import quantized_ops
from blackbox_sal.surgery.split import split_embedding

_PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and the film was good."
_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def load_model(path: str | Path, *, device: str = "auto", output: str | None = None,
               verify: bool = True, threads: int = 0, dequantize: bool = False) -> TextModel:
    """Load a model directory or ``.onnx`` file (see :mod:`blackbox_sal.model.files`).

    device: auto | cpu | cuda. output: the output to explain (default: the first).
    verify: for a split model, check body(table[ids]) == model(ids) on a probe sentence.
    dequantize: load a quantized model (dynamic or QDQ) as its float twin (int8 weights
    dequantized, activations in float; :mod:`blackbox_sal.surgery.dequantize`), which has exact
    gradients; UsageError for a model that is not quantized. A weight-only model (MatMulNBits
    computing in float) is always loaded dequantized: that is the same function, checked
    against the file on a probe sentence unless verify is False.
    Raises ModelError (exit 3) when the model cannot be used, UnavailableError (exit 4) for
    a device that is not there.
    """
    found = files.locate(path)
    tokenizer = _tokenizer(found.tokenizer_path)
    config = ModelConfig.parse(found.config)
    proto = files.read_onnx(found.onnx_path)
    twin_of: tuple[str, ...] = ()
    deployed: onnx.ModelProto | None = None
    dequantized: tuple[str, ...] = ()
    if weight_only(proto):  # float activations: the twin is the model itself
        deployed, dequantized = proto, quantized_ops(proto)
        proto, _ = float_twin(proto)
    elif dequantize:
        twin_of = quantized_ops(proto)
        if not twin_of:
            raise UsageError("--dequantize: the model has no integer operators to dequantize")
        proto, _ = float_twin(proto)
    choices = input_rank(proto, IDS) == 3 or input_rank(proto, EMBEDS) == 4
    if choices:  # [batch, choices, seq]: score one sequence at a time, as a batch of [batch, 1, seq]
        proto = single_choice(proto)
    quantized = quantized_ops(proto)
    original: onnx.ModelProto | None
    if EMBEDS in {i.name for i in proto.graph.input}:
        if found.embeddings_path is None:
            raise ModelError(f"the model takes {EMBEDS!r} but there is no embeddings.npy beside it")
        table, body, origin, original = files.read_table(found.embeddings_path), proto, "given", None
    else:
        split = split_embedding(proto, IDS)
        table, body, original = split.table, split.body, proto
        origin = f"split at {split.lookup}" + (" (an 8-bit table, dequantized)" if split.quantized_table else "")
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > table.shape[0]:
        raise ModelError(f"the tokenizer has {vocab} tokens but the embedding table only "
                         f"{table.shape[0]} rows: they do not belong together")

    session = create_session(body.SerializeToString(), device, threads)
    outputs = {o.name: o for o in session.get_outputs()}
    source = output or next(iter(outputs))
    if source not in outputs:
        raise ModelError(f"the model has no output {source!r} (outputs: {', '.join(outputs)})")
    model = TextModel(
        name=found.name, tokenizer=tokenizer, table=table, session=session, output=source,
        labels=config.labels, max_length=config.max_length or _static_length(proto),
        origin=origin, int_inputs=_int_inputs(session), row_norm=mean_row_norm(table), body=body,
        config=config, folder=found.onnx_path.parent, device_request=device, threads=threads,
        quantized=quantized, task="multiple-choice" if choices else "classification", twin_of=twin_of,
        weight_only=dequantized,
    )
    if len(outputs[source].shape or ()) == 3 and _per_position(model, source):  # a causal LM's logits
        body = last_position(body, source)
        model = replace(model, task="next-token", output=NEXT_TOKEN, body=body,
                        session=create_session(body.SerializeToString(), device, threads))
    if verify and original is not None:
        _check_against(model, original, source)
    if verify and deployed is not None:
        _check_against(model, deployed, source, what="the dequantized weight-only model")
    return model


def _tokenizer(path: Path) -> Tokenizer:
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise ModelError(f"cannot read {str(path)!r}: {first_line(exc)}") from exc
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def _int_inputs(session: Any) -> dict[str, Any]:
    """name -> numpy dtype of every integer input the body takes; ModelError for inputs
    blackbox-sal cannot fill."""
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
    return int_inputs


def _static_length(proto: onnx.ModelProto) -> int | None:
    """A static sequence axis on the ids or embeddings input: a hard token limit."""
    for inp in proto.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name in (IDS, EMBEDS) and len(dims) >= 2 and dims[1].dim_value > 0:
            return int(dims[1].dim_value)
    return None


def _probe_ids(model: TextModel) -> np.ndarray:
    return np.array(model.tokenizer.encode(_PROBE_TEXT).ids, dtype=np.int64)[: model.max_length or None]


def _per_position(model: TextModel, output: str) -> bool:
    """Whether a rank-3 output is [batch, seq, vocab]: one row per input position, as wide as
    the embedding table (a token classifier's [batch, seq, labels] is not a causal LM)."""
    ids = _probe_ids(model)
    feeds = model.feeds(model.embed(ids)[None], ids, np.zeros_like(ids))
    try:
        shape = np.shape(run(model.session, [output], feeds)[0])
    except ModelError as exc:
        raise ModelError(f"the model fails on a probe sentence: {exc}") from exc
    return len(shape) == 3 and shape[1] == len(ids) and shape[2] == model.table.shape[0]


def _check_against(model: TextModel, original: onnx.ModelProto, source: str, what: str = "") -> None:
    """The loaded model must compute what ``original`` (the file's graph, taking ids) does on a
    real sentence; else refuse the split (or, with ``what``, that model)."""
    ids = _probe_ids(model)
    types = np.zeros_like(ids)
    got = model.forward(model.embed(ids)[None], ids, types)
    session = create_session(original.SerializeToString(), model.device_request, model.threads)
    feeds = {}
    for inp in session.get_inputs():
        if inp.name == EMBEDS:
            feeds[EMBEDS] = model.embed(ids)[None]
            continue
        if inp.name not in KNOWN_INPUTS:
            raise ModelError(f"the original model needs an input {inp.name!r} that blackbox-sal cannot fill")
        feeds.update(int_feeds({inp.name: _INT_TYPES.get(inp.type, np.int64)}, ids, types, 1))
    want = np.asarray(run(session, [source], feeds, "the original model")[0], dtype=np.float64)
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
