"""Loading a model folder into a :class:`~blackbox_sal.model.text_model.TextModel`.

The folder's files are read safely (:mod:`blackbox_sal.model.files`), then the graph is
rewritten to take token embeddings, in this order, each rewrite a pure function of
:mod:`blackbox_sal.surgery`:

0. the inputs are found by their role (:mod:`blackbox_sal.surgery.roles`: the ids feed the
   embedding lookup, a mask's polarity is probed, config.json's ``inputs`` settles the rest)
   and the graph takes them under the canonical names;
1. a weight-only low-bit model (MatMulNBits computing in float) is dequantized, since that is
   the same function; a quantized model is replaced by its float twin when asked;
2. a multiple-choice export ([batch, choices, seq]) scores one sequence at a time;
3. an ``input_ids`` model is split at its embedding lookup;
4. the explained output is chosen by what each output holds (:mod:`blackbox_sal.model.outputs`);
   one with no batch axis gains one (runs of one row);
5. a causal LM's [batch, seq, vocab] logits gain their last position as the explained output;
   token states are pooled into one embedding.

Each rewrite that could change the function is checked against the file on a probe sentence.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.model import files
from blackbox_sal.model.channels import channel_maps
from blackbox_sal.model.features import Featurizer, feature_count, tokenizer_pattern
from blackbox_sal.model.inputs import (
    FLOAT_TYPES,
    INT_TYPES,
    fixed_dims,
    int_inputs,
    pad_id,
    row_coupled,
    row_coupled_note,
)
from blackbox_sal.model.model_config import ModelConfig, pooling_folder, sentence_transformers_pooling
from blackbox_sal.model.outputs import (
    ArgMaxScores,
    OutputKind,
    answer_span_pair,
    choose,
    classify,
    expose_argmax_scores,
    pass_throughs,
)
from blackbox_sal.model.prepared import load_prepared
from blackbox_sal.model.session import create_session, run
from blackbox_sal.model.text_model import PROBE_TEXT, Runtime, TextModel, int_feeds
from blackbox_sal.model.tokenizer_files import load_tokenizer
from blackbox_sal.surgery.names import EMBEDS, IDS, KNOWN_INPUTS, MASK
from blackbox_sal.surgery.span_logits import SPAN_LOGITS, span_logits
from blackbox_sal.vocabulary.differences import mean_row_norm
from blackbox_sal.vocabulary.errors import ModelError, UsageError

if TYPE_CHECKING:  # onnx and the surgery are imported where a graph is rewritten, not with this module
    import onnx

    from blackbox_sal.surgery.roles import Roles

#: what load_model says where the onnx package is missing (an edge install) and the folder is not prepared
NO_ONNX = ("this install has no onnx package: it loads prepared folders only "
           "(blackbox-sal grad MODEL --folder OUT where onnx is installed)")



def load_model(path: str | Path, *, device: str = "auto", output: str | None = None,
               verify: bool = True, threads: int = 0, dequantize: bool = False,
               pooling: str | None = None, normalize: bool | None = None) -> TextModel:
    """Load a model directory or ``.onnx`` file (see :mod:`blackbox_sal.model.files`).

    device: auto | cpu | cuda. output: the output to explain (default: chosen by what the outputs hold,
    :mod:`blackbox_sal.model.outputs`; the model's inputs are found by role, :mod:`blackbox_sal.surgery.roles`).
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
    from blackbox_sal.surgery.channels import Channel, join_lookups, split_channels
    from blackbox_sal.surgery.dequantize import drop_requantization, float_lookups, float_twin, weight_only
    from blackbox_sal.surgery.interfaces import (
        flat_per_token,
        input_rank,
        last_position,
        single_choice,
        with_batch_axis,
    )
    from blackbox_sal.surgery.names import NEXT_TOKEN
    from blackbox_sal.surgery.pooling import SENTENCE, pooled
    from blackbox_sal.surgery.quantized import quantized_ops
    from blackbox_sal.surgery.split import split_embedding

    channels: tuple[Channel, ...] = ()
    proto = files.read_onnx(found.onnx_path)
    if config.input_kind != "text" or any(i.type.tensor_type.elem_type == onnx.TensorProto.STRING
                                          for i in proto.graph.input):
        return _feature_model(found, config, proto, device, output, verify, threads)
    tokenizer = load_tokenizer(found)
    pad = pad_id(tokenizer, found.onnx_path.parent)  # before the padding section is dropped
    tokenizer.no_truncation()
    tokenizer.no_padding()
    notes: tuple[str, ...] = ()
    ids_name = IDS
    proto, argmax_of = expose_argmax_scores(proto, output)  # only integer outputs: the scores their ArgMax reads
    output = next((a.exposed for a in argmax_of if a.tensor == output), output)
    copies = pass_throughs(proto.graph)  # named as the file names its inputs
    maps = channel_maps(config.channels, tokenizer, found.onnx_path.parent) if config.channels else {}
    if EMBEDS not in {i.name for i in proto.graph.input}:
        proto, notes, ids_name = _by_role(proto, config, tokenizer, pad, threads, maps)
    elif maps:
        raise ModelError(f"config.json channels: the model takes {EMBEDS!r} already; a second id channel is split "
                         f"from a model that takes ids")
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
        deployed = proto
        proto, _ = float_twin(proto)
    choices = input_rank(proto, IDS) == 3 or input_rank(proto, EMBEDS) == 4
    if choices:  # [batch, choices, seq]: score one sequence at a time, as a batch of [batch, 1, seq]
        proto = single_choice(proto)
    quantized = quantized_ops(proto)
    original: bytes | None
    serialized = b""
    first: str | None = None  # the table of the lookup split, when the model was split
    if EMBEDS in {i.name for i in proto.graph.input}:
        if found.embeddings_path is None:
            raise ModelError(f"the model takes {EMBEDS!r} but there is no embeddings.npy beside it")
        table, body, origin, original = files.read_table(found.embeddings_path, proto), proto, "given", None
    else:
        dequantized_lookup = False
        if not twin_of and _requantized_lookup(proto):
            # an 8-bit table dequantized after its lookup and a Transpose (pyfrspell): a float
            # lookup, the same values; split as an 8-bit one its body re-quantized the
            # embeddings, whose gradient is zero (issue 21)
            floats = _as_named(float_lookups(proto))
            dequantized_lookup = _count(floats, "DequantizeLinear") < _count(proto, "DequantizeLinear")
            proto = floats
        split = split_embedding(proto, IDS)
        if maps:  # a second id channel: split at its lookup too, into the same embeddings input
            split, channels = split_channels(split, ids_name, maps)
        table, body, serialized = split.table, split.body, split.serialized
        if twin_of:  # an 8-bit lookup re-quantized in the body: a float twin keeps it in float
            body, dropped = drop_requantization(body)
            serialized = body.SerializeToString() if dropped else serialized
        eight_bit = split.quantized_table or dequantized_lookup
        origin = f"split at {split.lookup}" + (" (an 8-bit table, dequantized)" if eight_bit else "")
        first = split.table_name
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
    if output is not None and output not in outputs:
        raise ModelError(f"the model has no output {output!r} (outputs: {', '.join(outputs)})")
    ints, mask_rank = int_inputs(session)
    fixed_batch, fixed_length = fixed_dims(session)
    model = TextModel(
        name=found.name, tokenizer=tokenizer, table=table, runtime=Runtime(session, device, threads),
        output=output or next(iter(outputs)),
        labels=config.labels, max_length=config.max_length or fixed_length,
        origin=origin, int_inputs=ints, row_norm=mean_row_norm(table), body=body,
        config=config, folder=found.onnx_path.parent, quantized=quantized,
        task="multiple-choice" if choices else "classification", twin_of=twin_of,
        weight_only=dequantized, fixed_length=fixed_length, fixed_batch=fixed_batch, mask_rank=mask_rank,
        pad_id=pad, channels=channels,
    )
    if row_coupled(quantized) and model.fixed_batch is None:
        model = replace(model, fixed_batch=1, notes=(*notes, row_coupled_note(quantized)))
        notes = model.notes
    kinds, one_row = _output_kinds(model, copies, pooling is not None, {a.exposed for a in argmax_of})
    if one_row and model.fixed_batch is None:  # a batch axis declared free that takes one row (khmersm's view)
        model = replace(model, fixed_batch=1, notes=(*notes, "the model declares a free batch axis but fails on two "
                                                     "rows: its runs take one row at a time"))
        notes = model.notes
    span_pair = answer_span_pair(kinds) if output is None else None
    if span_pair is not None:  # extractive QA: start and end logits, explained as one [batch, 2 seq] output
        body = span_logits(body, *span_pair)
        model = replace(model, task="answer-span", output=SPAN_LOGITS, body=body,
                        runtime=model.runtime.again(body.SerializeToString()))
        if verify and original is not None:
            model = replace(model, origin=f"{model.origin} ({_check_against(model, original, span_pair[0])})")
        return model
    chosen, choice_note = choose(kinds, output)
    scores_of = next((a for a in argmax_of if a.exposed == chosen.name), None)
    if scores_of is not None:
        choice_note = _argmax_note(scores_of, chosen)
    source = chosen.name
    model = replace(model, output=source, notes=notes + choice_note)
    joined = join_lookups(body, model.table, model.channels, ids_name, source, first) if first else None
    if joined is not None:  # the explained output reads other lookups of the ids: split at each, as channels
        body = joined.body
        runtime = model.runtime.again(joined.serialized)
        ints, mask_rank = int_inputs(runtime.session)
        model = replace(model, body=body, table=joined.table, channels=joined.channels, runtime=runtime,
                        int_inputs=ints, mask_rank=mask_rank, row_norm=mean_row_norm(joined.table),
                        notes=(*model.notes, joined.note))
    if not chosen.batch_axis:  # [classes]: one row per run, the output given its batch axis
        body = with_batch_axis(body, source)
        model = replace(model, body=body, output=body.graph.output[-1].name, fixed_batch=1,
                        runtime=model.runtime.again(body.SerializeToString()))
    per_position = ("logits" if chosen.per_position else "states" if chosen.kind == "states" else None)
    first_token = chosen.kind == "pooler"  # the model reads its first token as the text
    if chosen.kind == "per-token":  # a tagger's: one row of position-major scores per text
        body = flat_per_token(body, model.output)
        model = replace(model, task="per-token", output=body.graph.output[-1].name, body=body,
                        runtime=model.runtime.again(body.SerializeToString()))
    elif per_position == "logits":  # a causal LM's
        body = last_position(body, source)
        model = replace(model, task="next-token", output=NEXT_TOKEN, body=body,
                        runtime=model.runtime.again(body.SerializeToString()))
    elif chosen.kind == "embedding":  # pooled already [batch, dim]: what to explain of it must be said
        model = replace(model, task="embedding")
    elif per_position == "states":
        # token states: pooled into a sentence embedding
        mode, norm, said = _pooling(found.onnx_path.parent, config, pooling, normalize)
        body = pooled(body, source, mode, norm, MASK if MASK in model.int_inputs else None, model.mask_rank)
        model = replace(model, task="embedding", output=SENTENCE, body=body, pooling=said,
                        runtime=model.runtime.again(body.SerializeToString()))
        first_token = mode == "cls"
    if first_token:
        model = replace(model, notes=model.notes + _no_cls_note(tokenizer))
    ids, types, mask = model.probe()
    model.forward(model.embed(ids)[None], ids, types, mask)  # the explained output is [batch, classes]
    if verify and original is not None:  # the measured difference is kept with the split's origin
        model = replace(model, origin=f"{model.origin} ({_check_against(model, original, source)})")
    if verify and deployed is not None and not twin_of:
        _check_against(model, deployed.SerializeToString(), source, what="the dequantized weight-only model")
    if deployed is not None and twin_of:  # the twin differs by the activation rounding: measured, said
        model = replace(model, notes=(*model.notes, _twin_agreement(model, deployed.SerializeToString(), source)))
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


#: quantized operators that round their activations with a range taken over the whole input
#: tensor: every row of a run changes the others' outputs
def _by_role(proto: onnx.ModelProto, config: ModelConfig, tokenizer: Tokenizer, pad_id: int | None,
             threads: int, maps: dict[str, tuple[str, np.ndarray]]) -> tuple[onnx.ModelProto, tuple[str, ...], str]:
    """``proto`` taking the canonical inputs (:mod:`blackbox_sal.surgery.roles`; a second id
    channel's ids computed from the ids by its map), and a note saying which input plays which
    role where the names did not say it, and the file's name of the ids input."""
    from blackbox_sal.surgery.roles import CONFIG_HINT, canonical, find_roles

    roles = find_roles(proto, config.inputs, tokenizer.get_vocab_size(with_added_tokens=True),
                       {i: m for i, m in maps.values()})
    if config.inputs is None and roles.canonical_already(proto):
        return proto, (), roles.ids
    how = ""
    if roles.mask is not None and config.inputs is None:
        info = next(i for i in proto.graph.input if i.name == roles.mask)
        if len(info.type.tensor_type.shape.dim) == 2:
            on, why = _mask_polarity(proto, roles, tokenizer, pad_id, threads)
            if on is None:
                raise ModelError(f"input {roles.mask!r} looks like a mask, but neither 1 on the tokens nor 1 on the "
                                 f"padding makes padded tokens invisible to the model on a probe sentence: "
                                 f"{CONFIG_HINT} (padding_mask: a mask that is 1 on the padding)")
            roles = replace(roles, mask_on=on)
            how = f" ({'1/True on the padding' if on == 'padding' else '1/True on the tokens'}, found by a probe{why})"
    named = roles.named()
    said = ", ".join([f"{role.replace('_', ' ')} {name!r}" + (how if role == "mask" else "")
                      for role, name in named.items()] +
                     [f"channel {n!r} (input {i!r}, its ids from the tokens as config.json says)"
                      for n, (i, _) in maps.items()])
    return canonical(proto, roles), (f"the model's inputs, found {roles.found}: {said}",), roles.ids


def _mask_polarity(proto: onnx.ModelProto, roles: Roles, tokenizer: Tokenizer, pad_id: int | None,
                   threads: int) -> tuple[str | None, str]:
    """What a 1 (True) of the mask marks, "tokens" or "padding", and how that was told (words
    to add to the note, "" for the first probe): the polarity under which the model's float
    outputs on a padded probe sentence do not change when the padding holds other tokens (cut
    to the real tokens); None when neither or both polarities do that (both: the mask changes
    nothing here, and "tokens" is taken).

    A model that is not padding-invariant whatever its mask (a recurrent layer that reads the
    padding, the mask applied only when pooling: arabic-name-romanizer's encoder) fails that
    probe under both polarities; then a second probe runs the sentence unpadded, every
    position marked real: under the wrong polarity that marks every position as padding, and
    an output that pools under the mask no longer depends on the tokens at all. A polarity
    that leaves some float output blind to the tokens (the same for two different sentences)
    while the other does not is wrong; the other one is taken."""
    from blackbox_sal.surgery.roles import role_feeds

    inputs = {i.name: i for i in proto.graph.input}
    dims = inputs[roles.ids].type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims[:2]]
    rows = fixed[0] or 1
    ids = [int(i) for i in tokenizer.encode(PROBE_TEXT).ids][:12]
    length = fixed[1] or len(ids) + 4
    ids = ids[: max(1, min(len(ids), length - 2))]
    n = len(ids)
    table_rows = tokenizer.get_vocab_size(with_added_tokens=True)
    junk = np.random.default_rng(0).integers(0, table_rows, length - n)
    pad = np.full(length - n, pad_id if pad_id is not None else 0)
    valid = np.tile(np.r_[np.ones(n, np.int64), np.zeros(length - n, np.int64)], (rows, 1))
    session = create_session(proto.SerializeToString(), "cpu", threads)
    floats = [o.name for o in session.get_outputs() if o.type in ("tensor(float)", "tensor(double)",
                                                                   "tensor(float16)")]
    if not floats:
        return "tokens", ""

    def outputs(tail: np.ndarray, on: str) -> list[np.ndarray]:
        batch = np.tile(np.r_[ids, tail].astype(np.int64), (rows, 1))
        got = run(session, floats, role_feeds(proto, roles, batch, valid, on), "the model (probing its mask)")
        cut = []
        for value in got:
            value = np.asarray(value, np.float64)
            axis = next((a for a in range(value.ndim) if value.shape[a] == length), None)
            cut.append(np.take(value, range(n), axis=axis) if axis is not None else value)
        return cut

    change = {}
    for on in ("tokens", "padding"):
        a, b = outputs(pad, on), outputs(junk, on)
        scale = 1.0 + max((float(np.max(np.abs(x))) for x in a if x.size), default=0.0)
        change[on] = max((float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True) if x.size), default=0.0) \
            / scale
    quiet = [on for on, c in change.items() if c <= 1e-5]
    if len(quiet) == 1:
        return quiet[0], ""
    if len(quiet) == 2:
        return "tokens", ""
    best, other = sorted(change, key=lambda on: change[on])
    # a quantized model rounds its activations over the whole input, padding included: the
    # right polarity changes the output far less than the wrong one, if not to nothing
    if change[best] <= 0.01 * change[other]:
        return best, ""
    if fixed[1] is not None or n < 2:  # a fixed-length export is always padded: no unpadded probe
        return None, ""
    # the second probe: unpadded, every position real; another sentence of the same length
    real = np.ones((rows, n), np.int64)
    other_ids = np.random.default_rng(1).integers(0, table_rows, n)

    def unpadded(tokens: np.ndarray, on: str) -> list[np.ndarray]:
        batch = np.tile(tokens.astype(np.int64), (rows, 1))
        got = run(session, floats, role_feeds(proto, roles, batch, real, on), "the model (probing its mask)")
        return [np.asarray(value, np.float64) for value in got]

    blind: dict[str, set[str]] = {}
    for on in ("tokens", "padding"):
        a, b = unpadded(np.asarray(ids), on), unpadded(other_ids, on)
        blind[on] = {name for name, x, y in zip(floats, a, b, strict=True)
                     if x.size and float(np.max(np.abs(x - y))) <= 1e-6 * (1.0 + float(np.max(np.abs(x))))}
    if bool(blind["tokens"]) == bool(blind["padding"]):
        return None, ""
    wrong = "tokens" if blind["tokens"] else "padding"
    names = ", ".join(repr(name) for name in sorted(blind[wrong]))
    return ("padding" if wrong == "tokens" else "tokens"), (
        f": the model reads its padding whatever the mask, but marking an unpadded sentence "
        f"{'1/True' if wrong == 'tokens' else '0/False'} everywhere hides every token from output {names}")


def _no_cls_note(tokenizer: Tokenizer) -> tuple[str, ...]:
    """A note when the model reads its first token as the sentence ([CLS] pooling, BERT's
    pooler) but the tokenizer puts no special token there: the first word is read instead."""
    encoding = tokenizer.encode(PROBE_TEXT)
    if encoding.special_tokens_mask and encoding.special_tokens_mask[0]:
        return ()
    return ("the model reads its first token as the whole text ([CLS] pooling), but the tokenizer adds no special "
            "token there, so the first word is read instead: if the model was trained with [CLS] ... [SEP], give "
            "tokenizer.json a post_processor that adds them",)


def _argmax_note(scores: ArgMaxScores, chosen: OutputKind) -> tuple[str, ...]:
    if not scores.labels_last(chosen.shape):
        raise ModelError(f"the model returns only ArgMax({scores.tensor!r}) over axis {scores.axis} of "
                         f"{list(chosen.shape)}, not its last: its labels axis cannot be told apart")
    return (scores.note(),)


def _output_kinds(model: TextModel, copies: dict[str, str], pooling_asked: bool,
                  argmax_of: set[str] | None = None) -> tuple[list[OutputKind], bool]:
    """Every output of the loaded body, sorted into what it holds by two probe runs: the probe
    sentence at its length and a few tokens shorter (one length for a fixed-length export), at
    one row and at two (the fixed batch where there is one); and whether the model failed on
    two rows though it declares a free batch axis (then it runs one row at a time)."""
    ids, types, mask = model.probe()
    short = max(1, len(ids) - 3)
    second: tuple[np.ndarray, np.ndarray, np.ndarray | None] = (ids, types, mask)
    if model.fixed_length is None and len(ids) > 1:
        second = (ids[:short], types[:short], None)
    rows = (model.fixed_batch or 1, model.fixed_batch or 2)
    names = [o.name for o in model.session.get_outputs()]
    runs = []
    for (i, t, m), k in zip(((ids, types, mask), second), rows, strict=True):
        try:
            runs.append(run(model.session, names, model.feeds(np.repeat(model.embed(i)[None], k, axis=0), i, t, m)))
        except ModelError as exc:
            if runs and k > 1:  # a batch axis that is declared free but is not: told by the batch-1 run alone
                rows = (1, 1)
                runs.append(run(model.session, names, model.feeds(model.embed(i)[None], i, t, m)))
                continue
            wanted = ", ".join(f"{x.name} {x.shape}" for x in model.session.get_inputs())
            raise ModelError(f"the model fails on a probe sentence ({exc}); it wants {wanted}") from exc
    labels = len(model.labels) if model.labels is not None else None
    types_of = {o.name: o.type for o in model.session.get_outputs()}
    return [classify(name, types_of[name], runs[0][k], runs[1][k], rows=rows, lengths=(len(ids), len(second[0])),
                     fixed_batch=model.fixed_batch, vocab=model.table.shape[0], labels=labels,
                     pooling_asked=pooling_asked, copy_of=copies.get(name),
                     argmax_of=name in (argmax_of or ())) for k, name in enumerate(names)], \
        rows == (1, 1) and model.fixed_batch is None


def _twin_agreement(model: TextModel, deployed: bytes, source: str) -> str:
    """A note measuring how far the float twin's output is from the quantized model's on the
    probe sentence (they differ by the activation rounding)."""
    ids, types, mask = model.probe()
    got = np.asarray(run(model.session, [source], model.feeds(model.embed(ids)[None], ids, types, mask))[0],
                     np.float64)
    session = create_session(deployed, "cpu", model.threads)
    feeds = _original_feeds(session, model, ids, types, mask)
    want = np.asarray(run(session, [source], feeds, "the quantized model")[0], np.float64).reshape(got.shape)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return (f"the float twin's output {source!r} differs from the quantized model's by at most {err:.3g} on a probe "
            f"sentence (largest output {scale:.3g})")



def _check_against(model: TextModel, original: bytes, source: str, what: str = "") -> str:
    """The loaded model must compute what ``original`` (the file's graph, taking ids,
    serialized) does on a real sentence; else refuse the split (or, with ``what``, that model).
    Returns the agreement measured, in words (the largest difference and output)."""
    ids, types, mask = model.probe()
    got = np.asarray(run(model.session, [source], model.feeds(model.embed(ids)[None], ids, types, mask))[0],
                     dtype=np.float64)
    session = create_session(original, model.device_request, model.threads)
    feeds = _original_feeds(session, model, ids, types, mask)
    want = np.asarray(run(session, [source], feeds, "the original model")[0], dtype=np.float64).reshape(got.shape)
    err = float(np.max(np.abs(got - want))) if want.size else 0.0
    if not err <= 1e-4 * (1.0 + float(np.max(np.abs(want)))):
        if what:
            raise ModelError(f"{what} disagrees with the file (max difference {err:.3g}); load it with "
                             f"verify=False (--no-verify) to explain the dequantized weights anyway")
        raise ModelError(f"the split model disagrees with the original (max difference {err:.3g}); "
                         f"the lookup cut is wrong for this model")
    if not what:
        _check_paths(model, session, source, (ids, types, mask), want)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    return f"checked against the file on a probe sentence: max difference {err:.2g}, largest output {scale:.3g}"


def _count(proto: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in proto.graph.node)


def _as_named(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` (made by float_lookups) with each dequantized table under its 8-bit table's
    name where nothing reads that one any more, so channels and notes name the tables as the
    file does (in place; returned)."""
    from blackbox_sal.surgery.prune import node_inputs

    suffix = "__dequantized"
    g = proto.graph
    read = set().union(*(node_inputs(n) for n in g.node)) | {i.name for i in g.input}
    names = {t.name for t in g.initializer}
    renamed = {t.name: t.name.removesuffix(suffix) for t in g.initializer
               if t.name.endswith(suffix) and t.name.removesuffix(suffix) in names
               and t.name.removesuffix(suffix) not in read}
    if not renamed:
        return proto
    gone = [k for k, t in enumerate(g.initializer) if t.name in renamed.values()]
    for k in reversed(gone):
        del g.initializer[k]
    for t in g.initializer:
        t.name = renamed.get(t.name, t.name)
    for n in g.node:
        n.input[:] = [renamed.get(i, i) for i in n.input]
    return proto


def _requantized_lookup(proto: onnx.ModelProto) -> bool:
    """Whether the ids' lookup is in an 8-bit table that the split would not dequantize after
    the gather (re-quantized in the body, or refused): a DequantizeLinear further on (after a
    Transpose, say) may make it a float lookup (:func:`blackbox_sal.surgery.dequantize.float_lookups`)."""
    from blackbox_sal.surgery.split import find_lookups

    if not any(n.op_type == "DequantizeLinear" for n in proto.graph.node):
        return False
    candidates, refused = find_lookups(proto.graph, IDS)
    return any(c.requantize for c in candidates) or any(": 8-bit," in why for _, why in refused)


def _swap(ids: np.ndarray, mask: np.ndarray | None, pad: int | None) -> tuple[int, int] | None:
    """A position of the probe and another token of the probe to put there, the guard's
    replacement (:func:`_check_paths`): both ordinary tokens (not the first or last real
    position, where special tokens sit; not the pad token; not the largest id, which a model
    may read as its end-of-text marker), so whatever a model computes from the ids other than
    the token's identity (a mask, position ids, where the text ends) stays as it was. None for
    a probe too short to have two different such tokens."""
    real = int(mask.sum()) if mask is not None else len(ids)
    inner = [k for k in range(1, real - 1) if int(ids[k]) != pad and int(ids[k]) != int(ids[:real].max())]
    for k in inner:
        other = next((int(ids[j]) for j in inner if int(ids[j]) != int(ids[k])), None)
        if other is not None:
            return k, other
    return None


def _check_paths(model: TextModel, session: Any, source: str,
                 probe: tuple[np.ndarray, np.ndarray, np.ndarray | None], want: np.ndarray) -> None:
    """The split must carry every path from a token to the explained output (issue 21): one
    probe token replaced by another moves the file's output (run on the new ids) exactly as
    it moves the split model's fed the new token's embedding, every other input (the ids
    themselves, where the body still reads them) left as it was. A path the split did not cut
    (the ids read a second way: a one-hot product, a lookup in a table computed at run time)
    is seen by the file and not by the embeddings: refused, as its scores would leave it out.
    Costs one row of the file and one of the split model. ``session``: the file's;
    ``want``: its output on the probe."""
    ids, types, mask = probe
    swap = _swap(ids, mask, model.pad_id)
    if swap is None:
        return
    position, token = swap
    swapped = ids.copy()
    swapped[position] = token
    got = np.asarray(run(model.session, [source], model.feeds(model.embed(swapped)[None], ids, types, mask))[0],
                     dtype=np.float64)
    moved = np.asarray(run(session, [source], _original_feeds(session, model, swapped, types, mask),
                           "the original model")[0], dtype=np.float64).reshape(got.shape)
    err = float(np.max(np.abs(got - moved))) if moved.size else 0.0
    file_move = float(np.max(np.abs(moved - want.reshape(got.shape)))) if moved.size else 0.0
    if err <= 1e-4 * (1.0 + float(np.max(np.abs(moved)))):
        if file_move > 1e-4 * (1.0 + float(np.max(np.abs(moved)))) and not model.quantized:
            blocked = _gradient_blocked(model.body, source)
            if blocked is not None:
                raise ModelError(
                    f"the split model's output {source!r} moves with the tokens (by {file_move:.3g} on a probe "
                    f"sentence) but has no gradient from the embeddings: every path from them passes "
                    f"{blocked}, so gradients would be all zero; occlusion and the sampling methods see it with "
                    f"--no-verify (which skips these checks), or report it")
        return
    body_move = float(np.max(np.abs(got - want.reshape(got.shape))))
    raise ModelError(
        f"the split misses a path from the tokens to output {source!r}: on a probe sentence, token "
        f"{_token(model, int(ids[position]))} replaced by {_token(model, token)} at position {position} moves the "
        f"file's output by {file_move:.3g} but the split model's, fed the new token's embedding, by "
        f"{body_move:.3g} (max difference {err:.3g}): the model reads the tokens another way "
        f"too, which scores of the embeddings would leave out: report it")


def _token(model: TextModel, token: int) -> str:
    """A token id as the error says it: its text and its id."""
    return f"{model.tokenizer.id_to_token(token)!r} ({token})"


def _gradient_blocked(body: onnx.ModelProto, output: str) -> str | None:
    """The operators that stop every gradient path from the embeddings to ``output`` in a
    float body (a QuantizeLinear that re-quantizes them, a Round, a cast to integers), named;
    None where some path carries a gradient (or the output is not reached at all, which the
    swapped-token check has judged)."""
    import onnx

    from blackbox_sal.surgery.prune import node_inputs
    from blackbox_sal.surgery.reverse import NON_DIFFERENTIABLE

    integer = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
               onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64,
               onnx.TensorProto.BOOL}
    stops = NON_DIFFERENTIABLE | {"QuantizeLinear", "DynamicQuantizeLinear", "ArgMax", "ArgMin"}
    carried, touched = {EMBEDS}, {EMBEDS}
    blockers: set[str] = set()
    for node in body.graph.node:
        reads = node_inputs(node)
        if not reads & touched:
            continue
        touched.update(o for o in node.output if o)
        data = [i for i in node.input if i]
        if node.op_type in ("Gather", "GatherElements", "GatherND", "ScatterND", "ScatterElements") \
                and len(data) > 1 and data[1] in carried and data[0] not in carried:
            blockers.add(f"{node.op_type} (the embeddings as indices)")
            continue
        to_integer = node.op_type == "Cast" and any(a.name == "to" and a.i in integer for a in node.attribute)
        if not reads & carried:
            continue
        if node.op_type in stops or to_integer:
            blockers.add(node.op_type + (" to integers" if to_integer else ""))
            continue
        carried.update(o for o in node.output if o)
    if output in carried or output not in touched:
        return None
    return ", ".join(sorted(blockers)) or "no differentiable operator"


def _original_feeds(session: Any, model: TextModel, ids: np.ndarray, types: np.ndarray,
                    mask: np.ndarray | None) -> dict[str, np.ndarray]:
    """Feeds of one probe row for a graph that takes ids (the file's, before the split)."""
    feeds = {}
    for inp in session.get_inputs():
        if inp.name == EMBEDS:
            feeds[EMBEDS] = model.embed(ids)[None]
            continue
        if inp.name not in KNOWN_INPUTS:
            raise ModelError(f"the original model needs an input {inp.name!r} that blackbox-sal cannot fill")
        dtype = INT_TYPES.get(inp.type) or FLOAT_TYPES.get(inp.type, np.int64)
        feeds.update(int_feeds({inp.name: dtype}, ids, types, 1, mask, len(inp.shape or ()) if inp.name == MASK else 2))
    return feeds
