"""An encoder/decoder pair in Hugging Face optimum's layout, loaded for generation and explanation.

A folder holds::

    encoder_model.onnx   input_ids, attention_mask [B, S] -> last_hidden_state [B, S, D]
    decoder_model.onnx   input_ids [B, T], encoder_attention_mask [B, S],
                         encoder_hidden_states [B, S, D] -> logits [B, T, V]
    tokenizer.json       config.json (decoder_start_token_id, eos_token_id)

Both graphs are split at their word-embedding lookup (:func:`~blackbox_sal.surgery.split.
split_embedding`: shared tables, as T5's and BART's, are found twice and may differ, as
Marian's do not). ``decoder_with_past_model.onnx`` (or the merged decoder's cache branch)
makes greedy generation feed one new token per step after the cached keys and values;
without it the decoder reruns on the growing prefix (the same tokens, quadratic in the output
length). An int8 pair (onnxruntime's ``quantize_dynamic`` or QDQ) is explained as
its float twin (``dequantize``: the deployed int8 weights, activations in float,
:mod:`blackbox_sal.surgery.dequantize`), which generates and is differentiated alike; without
``dequantize`` it is refused with a message. ``decoder_model_merged.onnx`` alone (an ``If`` on
``use_cache_branch``) serves as both decoders: its no-cache branch, cut out, is explained, and
its cache branch generates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from tokenizers import Tokenizer

from blackbox_sal.model import files
from blackbox_sal.model.probe import probe
from blackbox_sal.model.seq2seq_folder import is_file_pair, side_files
from blackbox_sal.model.session import create_session, run
from blackbox_sal.surgery.dequantize import float_lookups, float_twin
from blackbox_sal.surgery.encoder_decoder import (
    FLAT_STATES,
    GRAD_STATES,
    LOG_PROBS,
    ROWS,
    SAVED,
    STATES,
    USE_CACHE,
    decoder_gradient,
    encoder_halves,
    flat_encoder,
    no_cache_branch,
    scored_decoder,
)
from blackbox_sal.surgery.names import EMBEDS, GRAD, IDS, WEIGHTS
from blackbox_sal.surgery.quantized import quantized_ops
from blackbox_sal.surgery.split import split_embedding
from blackbox_sal.vocabulary.errors import ModelError

if TYPE_CHECKING:
    from blackbox_sal.model.pair_files import FilePair

ENCODER = "encoder_model.onnx"
DECODER = "decoder_model.onnx"
MERGED = "decoder_model_merged.onnx"
WITH_PAST = "decoder_with_past_model.onnx"
#: optimum's names: past_key_values.<layer>.<decoder|encoder>.<key|value> in, present.<...> out
PAST, PRESENT = "past_key_values.", "present."
ENCODER_MASK = "encoder_attention_mask"
#: the single-graph form: one model.onnx taking the source ids and the decoder prefix
SINGLE = "model.onnx"
#: the canonical name the single graph's source ids take (the prefix takes input_ids)
SOURCE_IDS = "source_ids"
#: how the prefix input is recognised by its name (config.json "inputs": {"source", "prefix"} settles it)
PREFIX_HINTS = ("tgt", "target", "dec", "prefix", "label", "output")


@dataclass(frozen=True)
class Pair:
    """A loaded encoder/decoder pair. ``encoder_table`` / ``decoder_table``: float32 [V, D]
    lookups (equal when shared). The sessions run the split bodies (``*_body``: inputs_embeds
    in, states / logits out) and the gradient graphs (``*_grad``, see
    :mod:`blackbox_sal.surgery.encoder_decoder`)."""

    name: str
    tokenizer: Tokenizer
    encoder_table: np.ndarray
    decoder_table: np.ndarray
    start_id: int
    eos_id: int
    pad_id: int | None
    #: the quantized operators replaced by their float twin (empty for a float pair)
    dequantized: tuple[str, ...]
    encoder_inputs: frozenset[str]
    decoder_inputs: frozenset[str]
    encoder_output: str
    decoder_output: str
    encoder_body: Any = field(repr=False)  # None: a single graph, whose "states" are the source embeddings
    decoder_body: Any = field(repr=False)
    encoder_grad: Any = field(repr=False)  # the encoder's backward half (surgery.encoder_decoder.encoder_halves)
    decoder_grad: Any = field(repr=False)  # None (both, for a pair): no gradient graph, see no_graph
    #: why no gradient graph could be built (an operator without a reverse rule), else None
    no_graph: str | None = None
    #: the encoder's forward that also returns the tensors its backward half reads (None: no graph)
    encoder_saving: Any = field(default=None, repr=False)
    #: the names of those tensors, in the saving forward's outputs after the states
    saved: tuple[str, ...] = ()
    #: the inputs the backward half reads besides the saved tensors and the weights
    backward_inputs: frozenset[str] = frozenset()
    #: decoder_with_past_model.onnx (one new token per step), or None: the prefix reruns
    with_past: Any = field(default=None, repr=False)
    #: its past_key_values.* inputs, without the prefix (``0.decoder.key``, ...), in order
    past: tuple[str, ...] = ()
    #: its inputs besides the past (input_ids and the encoder's mask and states it reads)
    with_past_inputs: frozenset[str] = frozenset()

    @property
    def shared_table(self) -> bool:
        return self.encoder_table.shape == self.decoder_table.shape and bool(
            np.array_equal(self.encoder_table, self.decoder_table))

    def token(self, i: int) -> str:
        return self.tokenizer.id_to_token(int(i)) or f"<{int(i)}>"

    # --- runs; every array is float32 embeddings [B, L, D] or int64 [B, L]
    def encoder_feeds(self, embeds: np.ndarray, mask: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {EMBEDS: embeds.astype(np.float32), "attention_mask": mask}
        if IDS in self.encoder_inputs:
            feeds[IDS] = ids
        return feeds

    def decoder_feeds(self, embeds: np.ndarray, ids: np.ndarray, states: np.ndarray,
                      mask: np.ndarray, source_ids: np.ndarray | None = None) -> dict[str, np.ndarray]:
        feeds = {EMBEDS: embeds.astype(np.float32), STATES: states.astype(np.float32)}
        if ENCODER_MASK in self.decoder_inputs:
            feeds[ENCODER_MASK] = mask
        if IDS in self.decoder_inputs:
            feeds[IDS] = ids
        if SOURCE_IDS in self.decoder_inputs:
            if source_ids is None:
                raise ModelError("the model reads its source ids beyond the lookup; they were not given")
            feeds[SOURCE_IDS] = source_ids
        return feeds

    def encode(self, embeds: np.ndarray, mask: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Encoder states [B, S, D] (a single graph: the source embeddings themselves)."""
        if self.encoder_body is None:
            return embeds.astype(np.float32)
        return np.asarray(run(self.encoder_body, [self.encoder_output], self.encoder_feeds(embeds, mask, ids),
                              "the encoder")[0])

    def logits(self, embeds: np.ndarray, ids: np.ndarray, states: np.ndarray, mask: np.ndarray,
               source_ids: np.ndarray | None = None) -> np.ndarray:
        """Decoder logits [B, T, V]."""
        feeds = self.decoder_feeds(embeds, ids, states, mask, source_ids)
        return np.asarray(run(self.decoder_body, [self.decoder_output], feeds, "the decoder")[0])

    def first_step(self, embeds: np.ndarray, ids: np.ndarray, states: np.ndarray, mask: np.ndarray
                   ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The decoder's logits [B, T, V] and its present.* outputs (the cache :meth:`next_step`
        starts from; needs :attr:`with_past`)."""
        feeds = self.decoder_feeds(embeds, ids, states, mask)
        out = run(self.decoder_body, [self.decoder_output, *(PRESENT + n for n in self.past)], feeds, "the decoder")
        return np.asarray(out[0]), {n: np.asarray(v) for n, v in zip(self.past, out[1:], strict=True)}

    def next_step(self, ids: np.ndarray, states: np.ndarray, mask: np.ndarray, cache: dict[str, np.ndarray]
                  ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """decoder_with_past_model.onnx on the new tokens ``ids`` [B, 1] after ``cache``: the
        logits [B, 1, V] and the cache with the decoder's presents replacing their pasts."""
        feeds = {PAST + n: v for n, v in cache.items()}
        feeds.update({k: v for k, v in (("input_ids", ids), (ENCODER_MASK, mask), (STATES, states.astype(
            np.float32)), (USE_CACHE, np.array([True]))) if k in self.with_past_inputs})
        fresh = [n for n in self.past if ".encoder." not in n]
        out = run(self.with_past, [self.decoder_output, *(PRESENT + n for n in fresh)], feeds,
                  "the decoder with past")
        return np.asarray(out[0]), {**cache, **{n: np.asarray(v) for n, v in zip(fresh, out[1:], strict=True)}}

    def decoder_vjp(self, embeds: np.ndarray, ids: np.ndarray, states: np.ndarray, mask: np.ndarray,
                    weights: np.ndarray, source_ids: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log_probs [B, T*V], d/d decoder embeds [B, T, D], d/d states [B, S, D]) of
        sum(weights * log_probs) per row."""
        feeds = {**self.decoder_feeds(embeds, ids, states, mask, source_ids), WEIGHTS: weights.astype(np.float32)}
        out = run(self.decoder_grad, [LOG_PROBS, GRAD, GRAD_STATES], feeds, "the decoder's gradient graph")
        return np.asarray(out[0]), np.asarray(out[1]), np.asarray(out[2])

    def encode_saving(self, embeds: np.ndarray, mask: np.ndarray, ids: np.ndarray
                      ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Encoder states [B, S, D] and the forward tensors the encoder's backward half reads
        (by name, each [B, ...]): the one forward run an explanation needs per point. A single
        graph's states are its source embeddings, and it saves nothing."""
        if self.encoder_saving is None:
            return self.encode(embeds, mask, ids), {}
        out = run(self.encoder_saving, [FLAT_STATES, *self.saved], self.encoder_feeds(embeds, mask, ids),
                  "the encoder")
        states = np.asarray(out[0]).reshape(len(embeds), embeds.shape[1], -1)
        return states, {name: np.asarray(v) for name, v in zip(self.saved, out[1:], strict=True)}

    def encoder_vjp(self, embeds: np.ndarray, mask: np.ndarray, ids: np.ndarray, cotangent: np.ndarray,
                    saved: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """d(sum(cotangent * states))/d source embeds [B, S, D] by the encoder's backward half,
        from the points' saved forward tensors (:meth:`encode_saving`, [P, ...]) and each row's
        point ``rows`` [B] (a single graph: the cotangent itself)."""
        if self.encoder_grad is None:
            return cotangent.astype(np.float32)
        feeds = {k: v for k, v in self.encoder_feeds(embeds, mask, ids).items() if k in self.backward_inputs}
        feeds.update({SAVED + name: value for name, value in saved.items()})
        feeds[ROWS] = rows.astype(np.int64)
        feeds[WEIGHTS] = cotangent.reshape(len(cotangent), -1).astype(np.float32)
        return np.asarray(run(self.encoder_grad, [GRAD], feeds, "the encoder's gradient graph")[0])


def _probe_feeds(table: np.ndarray, extra: Any) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    feeds = []
    for batch, length in ((2, 5), (3, 7)):
        ids = rng.integers(0, table.shape[0], (batch, length))
        feeds.append(extra(table[ids] + rng.normal(0, 0.01, (batch, length, table.shape[1])), ids, rng))
    return feeds


def load_pair(path: str | Path, threads: int = 0, dequantize: bool = False) -> Pair:
    """Load the pair in ``path`` and build both gradient graphs (CPU). ModelError (exit 3) for
    a folder that is not a pair, a lookup not found, an operator without a reverse rule, a
    quantized pair without ``dequantize``."""
    folder = Path(path)
    if not (folder / ENCODER).is_file():
        raise ModelError(f"{str(folder)!r} holds no {ENCODER} (an encoder/decoder pair in optimum's layout)")
    if not (folder / DECODER).is_file() and not (folder / MERGED).is_file():
        raise ModelError(f"{str(folder)!r} holds no {DECODER} (nor {MERGED})")
    tokenizer, _, (start, eos, pad) = side_files(folder)
    encoder = files.read_onnx(folder / ENCODER)
    merged = files.read_onnx(folder / MERGED) if (folder / MERGED).is_file() else None
    if (folder / DECODER).is_file() or merged is None:
        decoder = files.read_onnx(folder / DECODER)
    else:
        decoder = no_cache_branch(merged)
    with_past = files.read_onnx(folder / WITH_PAST) if (folder / WITH_PAST).is_file() else merged
    dequantized = tuple(sorted(set(quantized_ops(encoder)) | set(quantized_ops(decoder))
                               | set(quantized_ops(with_past) if with_past is not None else ())))
    if dequantized and not dequantize:
        raise ModelError(f"the pair is quantized ({', '.join(dequantized)}): an int8 graph is piecewise constant "
                         f"and has no gradient; pass --dequantize to explain its float twin (the int8 weights, "
                         f"activations in float)")
    if dequantized:
        encoder, decoder = float_twin(encoder)[0], float_twin(decoder)[0]
        # the merged decoder's branches are subgraphs the twin does not reach: generation reruns the prefix
        with_past = float_twin(with_past)[0] if with_past is not None and with_past is not merged else None
    enc_split = split_embedding(float_lookups(encoder), IDS)
    dec_split = split_embedding(float_lookups(decoder), IDS)
    enc_out, dec_out = encoder.graph.output[0].name, decoder.graph.output[0].name
    dec_inputs = frozenset(i.name for i in dec_split.body.graph.input)
    if STATES not in dec_inputs or ENCODER_MASK not in dec_inputs:
        raise ModelError(f"the decoder takes {sorted(dec_inputs)}; expected {STATES!r} and {ENCODER_MASK!r} "
                         f"(optimum's decoder_model.onnx)")
    enc_inputs = frozenset(i.name for i in enc_split.body.graph.input)

    enc_fwd = flat_encoder(enc_split.body, enc_out)
    enc_feeds = _probe_feeds(enc_split.table, lambda x, ids, rng: {
        EMBEDS: x.astype(np.float32), "attention_mask": np.ones(ids.shape, np.int64),
        **({IDS: ids} if IDS in enc_inputs else {})})
    dec_fwd = scored_decoder(dec_split.body, dec_out)
    width = enc_split.table.shape[1]
    dec_feeds = _probe_feeds(dec_split.table, lambda x, ids, rng: {
        EMBEDS: x.astype(np.float32), STATES: rng.normal(0, 1, (ids.shape[0], ids.shape[1] + 2, width)).astype(
            np.float32), ENCODER_MASK: np.ones((ids.shape[0], ids.shape[1] + 2), np.int64),
        **({IDS: ids} if IDS in dec_inputs else {})})
    enc_saving: onnx.ModelProto | None = None
    enc_grad: onnx.ModelProto | None = None
    dec_grad: onnx.ModelProto | None = None
    saved: tuple[str, ...] = ()
    try:
        enc_saving, enc_grad, saved = encoder_halves(enc_fwd, probe(enc_fwd, enc_feeds))
        dec_grad = decoder_gradient(dec_fwd, probe(dec_fwd, dec_feeds))
        why = None
    except ModelError as exc:  # an operator without a reverse rule: finite differences answer
        enc_saving = enc_grad = dec_grad = None
        why = str(exc)

    def session(model: onnx.ModelProto | bytes) -> Any:
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return create_session(data, "cpu", threads)

    past = _past_names(with_past, dec_split.body, dec_out)
    return Pair(name=folder.name, tokenizer=tokenizer, encoder_table=enc_split.table,
                decoder_table=dec_split.table, start_id=start, eos_id=eos,
                pad_id=pad if isinstance(pad, int) and 0 <= pad < len(enc_split.table) else None,
                dequantized=dequantized,
                encoder_inputs=enc_inputs,
                decoder_inputs=dec_inputs, encoder_output=enc_out, decoder_output=dec_out,
                encoder_body=session(enc_split.serialized), decoder_body=session(dec_split.serialized),
                encoder_grad=None if enc_grad is None else session(enc_grad),
                decoder_grad=None if dec_grad is None else session(dec_grad), no_graph=why,
                encoder_saving=None if enc_saving is None else session(enc_saving), saved=saved,
                backward_inputs=frozenset() if enc_grad is None else frozenset(
                    i.name for i in enc_grad.graph.input if not i.name.startswith(SAVED) and i.name != ROWS),
                with_past=None if with_past is None or not past else session(with_past), past=past,
                with_past_inputs=frozenset() if with_past is None else frozenset(
                    i.name for i in with_past.graph.input if not i.name.startswith(PAST)))


def _past_names(with_past: onnx.ModelProto | None, decoder: onnx.ModelProto, logits: str) -> tuple[str, ...]:
    """The cache entries (``0.decoder.key``, ...) when decoder_with_past_model.onnx can be used:
    it takes past_key_values.* and returns the logits and the decoder's present.*, and
    decoder_model.onnx returns every present.* it starts from. Empty otherwise (generation then
    reruns the prefix, which gives the same tokens)."""
    if with_past is None:
        return ()
    past = tuple(i.name[len(PAST):] for i in with_past.graph.input if i.name.startswith(PAST))
    first = {o.name for o in decoder.graph.output}
    then = {o.name for o in with_past.graph.output}
    if not past or logits not in then or any(PRESENT + n not in first for n in past) or any(
            PRESENT + n not in then for n in past if ".encoder." not in n):
        return ()
    return past


def _rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename a graph input and its readers in the main graph (in place)."""
    for i in model.graph.input:
        if i.name == old:
            i.name = new
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new


def _roles(proto: onnx.ModelProto, declared: Any) -> tuple[str, str]:
    """(source, prefix): the two integer [batch, length] inputs of a single graph, the prefix
    named like PREFIX_HINTS unless config.json's "inputs" names them."""
    ints = [i.name for i in proto.graph.input if i.type.tensor_type.elem_type in (onnx.TensorProto.INT64,
            onnx.TensorProto.INT32) and len(i.type.tensor_type.shape.dim) == 2]
    others = [i.name for i in proto.graph.input if i.name not in ints]
    if others:
        raise ModelError(f"the single graph takes inputs other than the source and the prefix ids: {others}")
    if isinstance(declared, dict) and isinstance(declared.get("source"), str) and isinstance(
            declared.get("prefix"), str):
        source, prefix = declared["source"], declared["prefix"]
        if {source, prefix} != set(ints):
            raise ModelError(f"config.json's inputs name {source!r} and {prefix!r}; the graph takes {ints}")
        return source, prefix
    if len(ints) != 2:
        raise ModelError(f"a single-graph encoder/decoder takes two integer [batch, length] inputs; this one {ints}")
    hinted = [n for n in ints if any(h in n.lower() for h in PREFIX_HINTS)]
    if len(hinted) != 1:
        raise ModelError(f"cannot tell the decoder prefix among {ints}: say it in config.json: "
                         f'"inputs": {{"source": ..., "prefix": ...}}')
    return next(n for n in ints if n != hinted[0]), hinted[0]


def load_single(path: str | Path, threads: int = 0, dequantize: bool = False) -> Pair:
    """The single-graph form (``model.onnx`` taking the source ids and the decoder prefix,
    returning per-step logits [batch, target, vocab]) as a :class:`Pair` whose encoder is the
    identity: the decoder's "states" are the source embeddings, so generation and the chained
    gradient run unchanged. Both lookups are split out (separate tables, or one shared)."""
    folder = Path(path)
    tokenizer, config, (start, eos, pad) = side_files(folder)
    proto = files.read_onnx(folder / SINGLE)
    dequantized = quantized_ops(proto)
    if dequantized and not dequantize:
        raise ModelError(f"the single graph is quantized ({', '.join(dequantized)}): an int8 graph is piecewise "
                         f"constant, and neither its gradient nor finite differences mean anything; pass "
                         f"--dequantize to explain its float twin (the int8 weights, activations in float)")
    if dequantized:
        proto, _ = float_twin(proto)
        left = quantized_ops(proto)
        if left:
            raise ModelError(f"the single graph's quantized operators {', '.join(left)} have no float twin: "
                             f"not explained")
    source, prefix = _roles(proto, config.get("inputs"))
    outputs = [o for o in proto.graph.output if len(o.type.tensor_type.shape.dim) == 3]
    if not outputs:
        raise ModelError("the single graph has no [batch, target, vocab] output")
    out = next((o.name for o in outputs if "logit" in o.name.lower()), outputs[0].name)
    model = float_lookups(proto)  # an 8-bit table dequantized after the lookup: a float lookup, the same values
    _rename_input(model, source, SOURCE_IDS)
    _rename_input(model, prefix, IDS)
    src_split = split_embedding(model, SOURCE_IDS)
    body = src_split.body
    _rename_input(body, EMBEDS, STATES)
    dec_split = split_embedding(body, IDS)
    dec_inputs = frozenset(i.name for i in dec_split.body.graph.input)
    fwd = scored_decoder(dec_split.body, out)
    feeds = _probe_feeds(dec_split.table, lambda x, ids, rng: {
        EMBEDS: x.astype(np.float32), **({IDS: ids} if IDS in dec_inputs else {}),
        **_source_feed(src_split.table, ids.shape[0], ids.shape[1] + 2, dec_inputs, rng)})
    try:
        grad: onnx.ModelProto | None = decoder_gradient(fwd, probe(fwd, feeds))
        why = None
    except ModelError as exc:  # a recurrent layer, say: finite differences answer
        grad, why = None, str(exc)
    return Pair(name=folder.name, tokenizer=tokenizer, encoder_table=src_split.table, decoder_table=dec_split.table,
                start_id=start, eos_id=eos,
                pad_id=pad if isinstance(pad, int) and 0 <= pad < len(src_split.table) else None,
                dequantized=dequantized,
                encoder_inputs=frozenset(), decoder_inputs=dec_inputs, encoder_output="", decoder_output=out,
                encoder_body=None, decoder_body=create_session(dec_split.serialized, "cpu", threads),
                encoder_grad=None, no_graph=why,
                decoder_grad=None if grad is None else create_session(grad.SerializeToString(), "cpu", threads))


def _source_feed(table: np.ndarray, batch: int, length: int, inputs: frozenset[str],
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(0, table.shape[0], (batch, length))
    feeds: dict[str, np.ndarray] = {
        STATES: (table[ids] + rng.normal(0, 0.01, (batch, length, table.shape[1]))).astype(np.float32)}
    if SOURCE_IDS in inputs:
        feeds[SOURCE_IDS] = ids
    return feeds


def load_encoder_decoder(path: str | Path, threads: int = 0, dequantize: bool = False) -> Pair | FilePair:
    """optimum's pair (``encoder_model.onnx``), two files with a stepping decoder
    (config.json's ``encoder_decoder``, :mod:`blackbox_sal.model.pair_files`) or the
    single-graph form (``model.onnx`` with ``"is_encoder_decoder": true`` in config.json)."""
    from blackbox_sal.model.pair_files import load_file_pair

    if (Path(path) / ENCODER).is_file():
        return load_pair(path, threads, dequantize)
    if is_file_pair(Path(path)):
        return load_file_pair(path, threads)
    return load_single(path, threads, dequantize)
