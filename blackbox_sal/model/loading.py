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
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.model import files
from blackbox_sal.model.features import Featurizer, feature_count, tokenizer_pattern
from blackbox_sal.model.inputs import FLOAT_TYPES, INT_TYPES, fixed_dims, int_inputs, pad_id
from blackbox_sal.model.model_config import ModelConfig, pooling_folder, sentence_transformers_pooling
from blackbox_sal.model.prepared import load_prepared
from blackbox_sal.model.session import create_session, run
from blackbox_sal.model.text_model import PROBE_TEXT, Runtime, TextModel, int_feeds
from blackbox_sal.model.tokenizer_files import load_tokenizer
from blackbox_sal.surgery.names import EMBEDS, IDS, KNOWN_INPUTS, MASK
from blackbox_sal.vocabulary.differences import mean_row_norm
from blackbox_sal.vocabulary.errors import ModelError, UsageError

if TYPE_CHECKING:  # onnx and the surgery are imported where a graph is rewritten, not with this module
    import onnx

#: what load_model says where the onnx package is missing (an edge install) and the folder is not prepared
NO_ONNX = ("this install has no onnx package: it loads prepared folders only "
           "(blackbox-sal grad MODEL --folder OUT where onnx is installed)")



def load_model(path: str | Path, *, device: str = "auto", output: str | None = None,
               verify: bool = True, threads: int = 0, dequantize: bool = False,
               pooling: str | None = None, normalize: bool | None = None) -> TextModel:
    """Load a model directory or ``.onnx`` file (see :mod:`blackbox_sal.model.files`).

    device: auto | cpu | cuda. output: the output to explain (default: the first).
    verify: for a split model, check body(table[ids]) == model(ids) on a probe sentence.
    dequantize: load a quantized model (dynamic or QDQ) as its float twin (int8 weights
    dequantized, activations in float; :mod:`blackbox_sal.surgery.dequantize`), which has exact
    gradients; UsageError for a model that is not quantized. A weight-only model (MatMulNBits
    computing in float) is always loaded dequantized: that is the same function, checked
    against the file on a probe sentence unless verify is False.
    pooling, normalize: for a feature-extraction export (token states [batch, seq, hidden]),
    how they become one sentence embedding (mean, cls, max; L2-normalised or not); None =
    what the folder says (config.json, or sentence-transformers' modules.json and pooling
    config), else mean, not normalised.
    Raises ModelError (exit 3) when the model cannot be used, UnavailableError (exit 4) for
    a device that is not there.
    """
    found = files.locate(path)
    config = ModelConfig.parse(found.config)
    if config.prepared is not None:
        return load_prepared(found, config, device=device, output=output, threads=threads, dequantize=dequantize,
                             pooling=pooling, normalize=normalize)
    try:
        import onnx
    except ImportError:  # an edge install: onnxruntime, numpy and tokenizers only
        raise ModelError(f"{NO_ONNX}; {str(found.onnx_path.parent)!r} is not a prepared folder") from None
    from blackbox_sal.surgery.dequantize import float_twin, weight_only
    from blackbox_sal.surgery.interfaces import input_rank, last_position, single_choice
    from blackbox_sal.surgery.names import NEXT_TOKEN
    from blackbox_sal.surgery.pooling import SENTENCE, pooled
    from blackbox_sal.surgery.quantized import quantized_ops
    from blackbox_sal.surgery.split import split_embedding

    proto = files.read_onnx(found.onnx_path)
    if config.input_kind != "text" or any(i.type.tensor_type.elem_type == onnx.TensorProto.STRING
                                          for i in proto.graph.input):
        return _feature_model(found, config, proto, device, output, verify, threads)
    tokenizer = load_tokenizer(found)
    pad = pad_id(tokenizer)  # before padding is turned off: tokenizer.json's padding declares the pad
    tokenizer.no_truncation()
    tokenizer.no_padding()
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
    original: bytes | None
    serialized = b""
    if EMBEDS in {i.name for i in proto.graph.input}:
        if found.embeddings_path is None:
            raise ModelError(f"the model takes {EMBEDS!r} but there is no embeddings.npy beside it")
        table, body, origin, original = files.read_table(found.embeddings_path, proto), proto, "given", None
    else:
        split = split_embedding(proto, IDS)
        table, body, serialized = split.table, split.body, split.serialized
        origin = f"split at {split.lookup}" + (" (an 8-bit table, dequantized)" if split.quantized_table else "")
        del split
        # the original is kept only as the bytes its check needs: the parsed proto is as large
        # again, and a large model's load peaked with both (BERT-base: 2.95 GB -> see README)
        original = proto.SerializeToString() if verify else None
        del proto
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab > table.shape[0]:
        raise ModelError(f"the tokenizer has {vocab} tokens but the embedding table only "
                         f"{table.shape[0]} rows: they do not belong together")

    session = create_session(serialized or body.SerializeToString(), device, threads)
    del serialized  # a large model's bytes: not kept while the rest loads
    outputs = {o.name: o for o in session.get_outputs()}
    source = output or next(iter(outputs))
    if source not in outputs:
        raise ModelError(f"the model has no output {source!r} (outputs: {', '.join(outputs)})")
    ints, mask_rank = int_inputs(session)
    fixed_batch, fixed_length = fixed_dims(session)
    model = TextModel(
        name=found.name, tokenizer=tokenizer, table=table, runtime=Runtime(session, device, threads), output=source,
        labels=config.labels, max_length=config.max_length or fixed_length,
        origin=origin, int_inputs=ints, row_norm=mean_row_norm(table), body=body,
        config=config, folder=found.onnx_path.parent, quantized=quantized,
        task="multiple-choice" if choices else "classification", twin_of=twin_of,
        weight_only=dequantized, fixed_length=fixed_length, fixed_batch=fixed_batch, mask_rank=mask_rank,
        pad_id=pad,
    )
    per_position = _per_position(model, source) if len(outputs[source].shape or ()) == 3 else None
    if per_position == "logits":  # a causal LM's
        body = last_position(body, source)
        model = replace(model, task="next-token", output=NEXT_TOKEN, body=body,
                        runtime=model.runtime.again(body.SerializeToString()))
    elif per_position == "states" and (pooling is not None or _looks_like_states(model, outputs[source].shape)):
        # token states: pooled into a sentence embedding
        mode, norm, said = _pooling(found.onnx_path.parent, config, pooling, normalize)
        body = pooled(body, source, mode, norm, MASK if MASK in model.int_inputs else None, model.mask_rank)
        model = replace(model, task="embedding", output=SENTENCE, body=body, pooling=said,
                        runtime=model.runtime.again(body.SerializeToString()))
    ids, types, mask = model.probe()
    model.forward(model.embed(ids)[None], ids, types, mask)  # the explained output is [batch, classes]
    if verify and original is not None:
        _check_against(model, original, source)
    if verify and deployed is not None:
        _check_against(model, deployed.SerializeToString(), source, what="the dequantized weight-only model")
    return model


def _feature_model(found: files.ModelFiles, config: ModelConfig, proto: onnx.ModelProto, device: str,
                   output: str | None, verify: bool, threads: int) -> TextModel:
    """A model whose input is a feature vector (see :mod:`blackbox_sal.model.features`), loaded
    as a text model whose tokens are its features, each a one-dimensional embedding."""
    import onnx

    from blackbox_sal.surgery.features import embeds_input, split_pipeline, vocabulary
    from blackbox_sal.surgery.index import attr_str
    from blackbox_sal.surgery.quantized import quantized_ops

    original: onnx.ModelProto | None = None
    if any(i.type.tensor_type.elem_type == onnx.TensorProto.STRING for i in proto.graph.input):
        pipe = split_pipeline(proto)
        front, relocated = _front_session(pipe.front, threads)
        pattern = attr_str(pipe.tokenizer, "tokenexp", "") if pipe.tokenizer is not None else ""
        if not pattern:
            raise ModelError("the pipeline tokenizes without a pattern (tokenexp): blackbox-sal cannot find its "
                             "words in the text")
        words = vocabulary(pipe.vectorizer)
        columns = [""] * feature_count(pipe.size, "the pipeline's vectorizer")
        for word, column in words.items():
            columns[column] = word
        featurizer = Featurizer(
            "pipeline", pipe.size, tuple(columns), front=front, front_output=pipe.features,
            pattern=tokenizer_pattern(pattern), vocabulary=words,
            lowercase=pipe.normalizer is None or attr_str(pipe.normalizer, "case_change_action", "") == "LOWER")
        body, origin, original = embeds_input(pipe.body, pipe.features, pipe.size), "a scikit-learn pipeline", proto
        if relocated:
            original = onnx.ModelProto()
            original.CopyFrom(proto)
            _locale(original, "C.UTF-8")
        tokenizer = _placeholder_tokenizer()
    else:
        floats = [i for i in proto.graph.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
        dims = floats[0].type.tensor_type.shape.dim if len(floats) == 1 else []
        if len(floats) != 1 or len(dims) != 2 or len(proto.graph.input) != 1:
            raise ModelError(f"config.json says input_kind {config.input_kind!r}: the model must take one float "
                             f"input [batch, features]")
        if config.input_kind == "bag-of-words":
            tokenizer = load_tokenizer(found)
            tokenizer.no_truncation()
            tokenizer.no_padding()
            size = feature_count(dims[1].dim_value or tokenizer.get_vocab_size(with_added_tokens=True),
                                 f"input {floats[0].name!r}")
            vocab = {i: w for w, i in tokenizer.get_vocab(with_added_tokens=True).items()}
            featurizer = Featurizer("bag-of-words", size, tuple(vocab.get(k, f"<{k}>") for k in range(size)),
                                    tokenizer=tokenizer, binary=config.binary)
        else:
            size = dims[1].dim_value
            if size <= 0:
                raise ModelError("a features model must fix its number of features (input [batch, F])")
            feature_count(size, f"input {floats[0].name!r}")
            names = config.feature_names or tuple(f"x{k}" for k in range(size))
            if len(names) != size:
                raise ModelError(f"config.json names {len(names)} features; the model takes {size}")
            featurizer, tokenizer = Featurizer("numbers", size, tuple(names)), _placeholder_tokenizer()
        body, origin = embeds_input(proto, floats[0].name, size), f"{config.input_kind} input {floats[0].name!r}"
    session = create_session(body.SerializeToString(), device, threads)
    outputs = [o for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)")]
    source = output or (outputs[0].name if outputs else session.get_outputs()[0].name)
    if source not in {o.name for o in session.get_outputs()}:
        raise ModelError(f"the model has no output {source!r} (outputs: "
                         f"{', '.join(o.name for o in session.get_outputs())})")
    ints, mask_rank = int_inputs(session)
    model = TextModel(
        name=found.name, tokenizer=tokenizer, table=np.ones((featurizer.size, 1), np.float32),
        runtime=Runtime(session, device, threads), output=source, labels=config.labels, max_length=featurizer.size,
        origin=origin, int_inputs=ints, row_norm=1.0, body=body, config=config, folder=found.onnx_path.parent,
        quantized=quantized_ops(proto), fixed_length=featurizer.size, mask_rank=mask_rank,
        features=featurizer, notes=_feature_notes(body))
    if verify and original is not None:  # the pipeline's own vectorizer feeding the body == the whole model
        vector, _ = featurizer.featurize(PROBE_TEXT)
        got = model.forward(vector[None, :, None], np.zeros(featurizer.size, np.int64), np.zeros(featurizer.size,
                                                                                                  np.int64))
        whole = create_session(original.SerializeToString(), "cpu", threads)
        want = np.asarray(run(whole, [source], {whole.get_inputs()[0].name: np.array([[PROBE_TEXT]], dtype=object)},
                              "the original model")[0], np.float64).reshape(got.shape)
        if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
            raise ModelError("the pipeline cut at its features disagrees with the whole model: cannot explain it")
    return model


def _front_session(front: onnx.ModelProto, threads: int) -> tuple[Any, bool]:
    """The session of a pipeline's vectorizer, and whether its StringNormalizer's locale had to
    become C.UTF-8: skl2onnx writes en_US.UTF-8, which machines without that locale refuse."""
    import onnx

    try:
        return create_session(front.SerializeToString(), "cpu", threads), False
    except ModelError as exc:
        if "locale" not in str(exc):
            raise
    relocated = onnx.ModelProto()
    relocated.CopyFrom(front)
    _locale(relocated, "C.UTF-8")
    return create_session(relocated.SerializeToString(), "cpu", threads), True


def _locale(model: onnx.ModelProto, name: str) -> None:
    """Set every StringNormalizer's locale to ``name`` (in place)."""
    from onnx import helper

    for node in model.graph.node:
        if node.op_type == "StringNormalizer":
            kept = [a for a in node.attribute if a.name != "locale"]
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("locale", name)])


def _feature_notes(body: onnx.ModelProto) -> tuple[str, ...]:
    if any(n.op_type == "Normalizer" for n in body.graph.node):
        return ("the model normalises its feature vector (a Normalizer): its output is the same all along the "
                "straight path from the zero vector, so integrated gradients cannot attribute it there (their "
                "completeness delta is the whole difference); grad-x-input and occlusion can",)
    return ()


def _placeholder_tokenizer() -> Tokenizer:
    """A tokenizer for a model that needs none of its own (it tokenizes itself, or takes numbers)."""
    from tokenizers import models

    return Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))


def _pooling(folder: Path, config: ModelConfig, mode: str | None,
             normalize: bool | None) -> tuple[str, bool, str]:
    """How token states become a sentence embedding, and where that was read (for the notes)."""
    modules = files.read_side_json(folder, "modules.json")
    sub = pooling_folder(modules)
    found = sentence_transformers_pooling(modules, files.read_side_json(folder, f"{sub}/config.json")
                                          if sub else None)
    if mode is not None:
        where = "as asked"
    elif config.pooling is not None:
        mode, where = config.pooling, "as config.json says"
    elif found is not None:
        mode, where = found[0], "as the folder's sentence-transformers pooling config says"
    else:
        mode, where = "mean", "the default (mean over the attention mask, as sentence-transformers does)"
    if normalize is None:
        normalize = config.normalize if config.normalize is not None else bool(found and found[1])
    return mode, normalize, f"{mode} pooling{', L2-normalised' if normalize else ''}, {where}"


#: token states narrower than this are taken for per-token labels, not pooled (unless asked)
MIN_STATE_WIDTH = 32


def _looks_like_states(model: TextModel, shape: Any) -> bool:
    """Whether a [batch, seq, width] output holds token states to pool rather than per-token
    labels: no labels of that number in config.json, and a width of at least MIN_STATE_WIDTH."""
    width = shape[2] if len(shape) == 3 and isinstance(shape[2], int) else None
    if model.labels is not None and width is not None and len(model.labels) == width:
        return False
    return width is None or width >= MIN_STATE_WIDTH


def _per_position(model: TextModel, output: str) -> str | None:
    """What a rank-3 output holds: "logits" for [batch, seq, vocab], one row per input position
    as wide as the embedding table (a causal LM); "states" for other rows per position
    ([batch, seq, hidden]: token states to pool); None for anything else."""
    ids, types, mask = model.probe()
    feeds = model.feeds(model.embed(ids)[None], ids, types, mask)
    try:
        shape = np.shape(run(model.session, [output], feeds)[0])
    except ModelError as exc:
        wanted = ", ".join(f"{i.name} {i.shape}" for i in model.session.get_inputs())
        raise ModelError(f"the model fails on a probe sentence ({exc}); it wants {wanted}") from exc
    if len(shape) != 3 or shape[1] != len(ids):
        return None
    return "logits" if shape[2] == model.table.shape[0] else "states"


def _check_against(model: TextModel, original: bytes, source: str, what: str = "") -> None:
    """The loaded model must compute what ``original`` (the file's graph, taking ids,
    serialized) does on a real sentence; else refuse the split (or, with ``what``, that model)."""
    ids, types, mask = model.probe()
    got = np.asarray(run(model.session, [source], model.feeds(model.embed(ids)[None], ids, types, mask))[0],
                     dtype=np.float64)
    session = create_session(original, model.device_request, model.threads)
    feeds = {}
    for inp in session.get_inputs():
        if inp.name == EMBEDS:
            feeds[EMBEDS] = model.embed(ids)[None]
            continue
        if inp.name not in KNOWN_INPUTS:
            raise ModelError(f"the original model needs an input {inp.name!r} that blackbox-sal cannot fill")
        dtype = INT_TYPES.get(inp.type) or FLOAT_TYPES.get(inp.type, np.int64)
        feeds.update(int_feeds({inp.name: dtype}, ids, types, 1, mask, len(inp.shape or ()) if inp.name == MASK else 2))
    want = np.asarray(run(session, [source], feeds, "the original model")[0], dtype=np.float64).reshape(got.shape)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not err <= 1e-4 * (1.0 + float(np.max(np.abs(want)))):
        if what:
            raise ModelError(f"{what} disagrees with the file (max difference {err:.3g}); load it with "
                             f"verify=False (--no-verify) to explain the dequantized weights anyway")
        raise ModelError(f"the split model disagrees with the original (max difference {err:.3g}); "
                         f"the lookup cut is wrong for this model")
