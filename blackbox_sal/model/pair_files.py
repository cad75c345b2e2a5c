"""An encoder/decoder shipped as two files, the decoder stepping one token at a time, loaded
for generation and explanation by finite differences.

config.json (next to the two files) says how they connect::

    {"decoder_start_token_id": 1, "eos_token_id": 2, "pad_token_id": 0,
     "encoder_decoder": {
        "encoder": "encoder.onnx", "decoder": "decoder.onnx",
        "source": "src", "padding_mask": "src_mask",
        "prefix": "prefix", "logits": "logprobs",
        "feeds": {"memory": "memory_out", "src_mask": "src_mask_out", "hidden": "hidden_out"},
        "state": {"hidden": "hidden_out"}}}

- ``encoder``: source ids (``source``, the only integer input when unsaid) and a mask:
  ``padding_mask`` (True/1 on padding) or ``attention_mask`` (1 on tokens), whichever the
  graph takes; one unpadded source is run at a time.
- ``decoder``: the prefix ids [B, t] (``prefix``) and the encoder's outputs under other names
  (``feeds``: decoder input <- encoder output; unsaid, each decoder input X takes the encoder
  output X or X_out when exactly one exists) -> ``logits`` [B, V] for the token after the last
  prefix position (log-probabilities or logits: the explanation takes their log-softmax).
- ``state``: decoder inputs it updates, fed back each step (decoder input <- decoder output):
  step 0 reads the encoder's value, step t the decoder's output at step t - 1, as
  arabic-name-romanizer's beam search does. A decoder that returns more than its logits must
  say ``state`` (``{}`` when nothing is fed back): it is never guessed.

Both lookups are cut out (:func:`~blackbox_sal.surgery.split.split_embedding`; a decoder that
looks up only the last prefix position, ``Gather(prefix, -1, axis=1)`` then the table, is cut at
that Gather), so that finite differences move one position's embedding. There is no gradient
graph: the recurrent state is threaded by the caller, between runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from tokenizers import Tokenizer

from blackbox_sal.model import files
from blackbox_sal.model.seq2seq_folder import KEY, side_files
from blackbox_sal.model.session import create_session, run
from blackbox_sal.surgery.names import EMBEDS
from blackbox_sal.surgery.split import split_embedding
from blackbox_sal.vocabulary.errors import ModelError

FORM = ('config.json "encoder_decoder": {"encoder": "encoder.onnx", "decoder": "decoder.onnx", '
        '"padding_mask": ..., "prefix": ..., "logits": ..., "feeds": {DECODER_INPUT: ENCODER_OUTPUT}, '
        '"state": {DECODER_INPUT: DECODER_OUTPUT}} (docs/seq2seq.md)')
INTEGER = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)


@dataclass(frozen=True)
class FilePair:
    """Two files, a stepping decoder. ``feeds``/``state``: (decoder input, encoder/decoder
    output) pairs. The sessions run the split bodies (embeddings in)."""

    name: str
    tokenizer: Tokenizer
    encoder_table: np.ndarray
    decoder_table: np.ndarray
    start_id: int
    eos_id: int
    pad_id: int | None
    source: str
    mask: str | None
    mask_padding: bool
    mask_type: int
    prefix: str
    logits_name: str
    feeds: tuple[tuple[str, str], ...]
    state: tuple[tuple[str, str], ...]
    encoder_inputs: frozenset[str]
    decoder_inputs: frozenset[str]
    encoder_body: Any = field(repr=False)
    decoder_body: Any = field(repr=False)
    #: no gradient graph: the state is threaded between runs (finite differences answer)
    decoder_grad: None = None
    no_graph: str = "two files with a decoder state fed back each step: finite differences"
    dequantized: tuple[str, ...] = ()

    def token(self, i: int) -> str:
        return self.tokenizer.id_to_token(int(i)) or f"<{int(i)}>"

    def encode(self, embeds: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
        """The decoder's feeds from the encoder, by decoder input name, for unpadded sources."""
        feeds = {EMBEDS: embeds.astype(np.float32)}
        if self.source in self.encoder_inputs:
            feeds[self.source] = ids.astype(np.int64)
        if self.mask is not None:
            marks = np.zeros(ids.shape, bool) if self.mask_padding else np.ones(ids.shape, bool)
            feeds[self.mask] = marks.astype(onnx.helper.tensor_dtype_to_np_dtype(self.mask_type))
        names = [out for _, out in self.feeds]
        values = run(self.encoder_body, names, feeds, "the encoder")
        got = dict(zip(names, values, strict=True))
        return {name: np.asarray(got[out]) for name, out in self.feeds}

    def step(self, embeds: np.ndarray, ids: np.ndarray, state: dict[str, np.ndarray]
             ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder run on the prefix embeddings [B, t, D] (ids [B, t]): the next token's
        scores [B, V] and the state with the decoder's updates."""
        feeds = {**state, EMBEDS: embeds.astype(np.float32)}
        if self.prefix in self.decoder_inputs:
            feeds[self.prefix] = ids.astype(np.int64)
        names = [self.logits_name, *(out for _, out in self.state)]
        out = run(self.decoder_body, names, feeds, "the decoder")
        updated = {**state, **{name: np.asarray(v) for (name, _), v in zip(self.state, out[1:], strict=True)}}
        return np.asarray(out[0]), updated

    def log_probs(self, source: np.ndarray, source_ids: np.ndarray, prefix: np.ndarray, prefix_ids: np.ndarray
                  ) -> np.ndarray:
        """log-softmax of every step's scores [N, T, V] (float64) for source embeddings [N, S, D]
        and prefix embeddings [N, T, D] (teacher forcing: step t reads positions 0..t)."""
        state = self.encode(source, source_ids)
        steps = []
        for t in range(prefix.shape[1]):
            scores, state = self.step(prefix[:, :t + 1], prefix_ids[:, :t + 1], state)
            steps.append(scores.astype(np.float64))
        logits = np.stack(steps, 1)
        logits -= logits.max(-1, keepdims=True)
        return np.asarray(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))

    def greedy(self, source_ids: np.ndarray, max_new: int) -> tuple[list[int], np.ndarray]:
        """Greedy decoding: at most ``max_new`` tokens, stopping after the end token; the tokens
        and each step's scores [n, V]. Each step runs the decoder on the whole prefix with the
        state so far (the decoder reads what it needs of the prefix)."""
        ids = source_ids[None].astype(np.int64)
        state = self.encode(self.encoder_table[ids], ids)
        out: list[int] = []
        steps: list[np.ndarray] = []
        for _ in range(max_new):
            prefix = np.array([[self.start_id, *out]], np.int64)
            scores, state = self.step(self.decoder_table[prefix], prefix, state)
            steps.append(scores[0])
            out.append(int(np.argmax(scores[0])))
            if out[-1] == self.eos_id:
                break
        return out, np.stack(steps)


def _names(protos: Any) -> list[str]:
    return [p.name for p in protos]


def _text_map(value: Any, what: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ModelError(f"config.json's encoder_decoder {what!r} must map names to names: {FORM}")
    return dict(value)


def _last_position_split(model: onnx.ModelProto, prefix: str) -> tuple[np.ndarray, onnx.ModelProto]:
    """(table, body) for a decoder that looks up only one prefix position: ``Gather(prefix, c,
    axis=1)`` with a constant scalar c, then ``Gather(table, .)``. The body takes
    ``inputs_embeds`` [B, t, D] and gathers position c of it."""
    graph = model.graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    for pick in graph.node:
        axis = next((a.i for a in pick.attribute if a.name == "axis"), 0)
        if pick.op_type != "Gather" or pick.input[0] != prefix or axis != 1 or consts.get(
                pick.input[1], np.zeros(2)).shape != ():
            continue
        lookups = [n for n in graph.node if n.op_type == "Gather" and n.input[1] == pick.output[0]
                   and n.input[0] in consts and consts[n.input[0]].ndim == 2]
        readers = [n for n in graph.node if pick.output[0] in n.input]
        if len(lookups) != 1 or len(readers) != 1:
            continue
        lookup = lookups[0]
        body = onnx.ModelProto()
        body.CopyFrom(model)
        nodes = body.graph.node
        at = next(k for k, n in enumerate(nodes) if n.output[0] == lookup.output[0])
        del nodes[at]
        nodes.insert(at, helper.make_node("Gather", [EMBEDS, pick.input[1]], [lookup.output[0]], axis=1,
                                          name="pair_files_last_position"))
        at = next(k for k, n in enumerate(nodes) if n.output[0] == pick.output[0])
        del nodes[at]
        table = consts[lookup.input[0]].astype(np.float32)
        body.graph.input.insert(0, helper.make_tensor_value_info(EMBEDS, onnx.TensorProto.FLOAT,
                                                                 ["batch", "tgt_len", table.shape[1]]))
        if not any(prefix in n.input for n in nodes):
            keep = [i for i in body.graph.input if i.name != prefix]
            del body.graph.input[:]
            body.graph.input.extend(keep)
        return table, body
    raise ModelError(f"no word-embedding lookup on the decoder's {prefix!r} found (neither over the whole "
                     f"prefix nor at one position of it)")


def _split(model: onnx.ModelProto, ids: str) -> tuple[np.ndarray, onnx.ModelProto]:
    try:
        found = split_embedding(model, ids)
    except ModelError:
        return _last_position_split(model, ids)
    return found.table, found.body


def _feeds(declared: dict[str, str] | None, needed: list[str], enc_outputs: list[str]) -> dict[str, str]:
    """decoder input -> encoder output: as declared, else X <- X or X_out when exactly one."""
    if declared is None:
        found = {}
        for name in needed:
            hits = [o for o in enc_outputs if o in (name, f"{name}_out")]
            if len(hits) != 1:
                raise ModelError(f"the decoder's input {name!r} matches encoder outputs {hits} (of {enc_outputs}): "
                                 f"say which in {FORM}")
            found[name] = hits[0]
        return found
    missing = [n for n in needed if n not in declared]
    wrong = {k: v for k, v in declared.items() if k not in needed or v not in enc_outputs}
    if missing or wrong:
        raise ModelError(f"config.json's encoder_decoder \"feeds\" must map each decoder input {needed} to an "
                         f"encoder output {enc_outputs}; missing {missing}, not matching {wrong}")
    return declared


def load_file_pair(path: str | Path, threads: int = 0) -> FilePair:
    """The two-file form in folder ``path`` (config.json's ``encoder_decoder``). ModelError
    (exit 3) with the form named for anything unsaid that matters."""
    folder = Path(path)
    config = files.read_side_json(folder, "config.json")
    spec = config.get(KEY) if isinstance(config, dict) else None
    if not isinstance(spec, dict):
        raise ModelError(f"{str(folder)!r} holds an encoder and a decoder file; say how they connect in {FORM}, "
                         f"or pass the encoder's file itself to explain it alone")
    tokenizer, _, (start, eos, pad) = side_files(folder)
    paths = {}
    for role in ("encoder", "decoder"):
        name = spec.get(role, f"{role}.onnx")
        if not isinstance(name, str) or not (folder / name).is_file():
            raise ModelError(f"config.json's encoder_decoder {role!r}: {name!r} is not a file in {str(folder)!r}")
        paths[role] = folder / name
    encoder, decoder = files.read_onnx(paths["encoder"]), files.read_onnx(paths["decoder"])
    prefix, logits = spec.get("prefix"), spec.get("logits")
    dec_in, dec_out = _names(decoder.graph.input), _names(decoder.graph.output)
    enc_in, enc_out = _names(encoder.graph.input), _names(encoder.graph.output)
    if not isinstance(prefix, str) or prefix not in dec_in or not isinstance(logits, str) or logits not in dec_out:
        raise ModelError(f"config.json's encoder_decoder must name the decoder's prefix input (of {dec_in}) and its "
                         f"next-token scores (of {dec_out}): {FORM}")
    state = _text_map(spec.get("state"), "state")
    extra = [o for o in dec_out if o != logits]
    if state is None and extra:
        raise ModelError(f"the decoder returns {extra} beside {logits!r}: say in config.json's encoder_decoder "
                         f"\"state\" which are fed back each step ({{DECODER_INPUT: DECODER_OUTPUT}}, {{}} for "
                         f"none): {FORM}")
    state = state or {}
    if any(k not in dec_in or k == prefix or v not in extra for k, v in state.items()):
        raise ModelError(f"config.json's encoder_decoder \"state\" {state} must map decoder inputs to decoder "
                         f"outputs other than the logits ({dec_in} <- {extra})")
    needed = [n for n in dec_in if n != prefix]
    feeds = _feeds(_text_map(spec.get("feeds"), "feeds"), needed, enc_out)
    ints = [i.name for i in encoder.graph.input if i.type.tensor_type.elem_type in INTEGER]
    source = spec.get("source", ints[0] if len(ints) == 1 else None)
    if not isinstance(source, str) or source not in enc_in:
        raise ModelError(f"cannot tell the encoder's source ids among {enc_in}: say \"source\" in {FORM}")
    masks = {k: spec[k] for k in ("padding_mask", "attention_mask") if k in spec}
    others = [n for n in enc_in if n != source]
    if len(others) > 1 or len(masks) > 1 or (others and list(masks.values()) != others) or (masks and not others):
        raise ModelError(f"the encoder takes {enc_in}: name its mask, and whether it marks padding, as "
                         f"\"padding_mask\" (True on padding) or \"attention_mask\" (1 on tokens) in {FORM}")
    mask = others[0] if others else None
    mask_type = next((i.type.tensor_type.elem_type for i in encoder.graph.input if i.name == mask),
                     onnx.TensorProto.BOOL)
    enc_table, enc_body = _split(encoder, source)
    dec_table, dec_body = _split(decoder, prefix)
    if not isinstance(start, int) or not isinstance(eos, int):
        raise ModelError("config.json must give decoder_start_token_id and eos_token_id (integers)")

    def session(model: onnx.ModelProto) -> Any:
        return create_session(model.SerializeToString(), "cpu", threads)

    return FilePair(name=folder.name, tokenizer=tokenizer, encoder_table=enc_table, decoder_table=dec_table,
                    start_id=start, eos_id=eos,
                    pad_id=pad if isinstance(pad, int) and 0 <= pad < len(enc_table) else None,
                    source=source, mask=mask, mask_padding="padding_mask" in masks, mask_type=mask_type,
                    prefix=prefix, logits_name=logits, feeds=tuple(feeds.items()), state=tuple(state.items()),
                    encoder_inputs=frozenset(_names(enc_body.graph.input)),
                    decoder_inputs=frozenset(_names(dec_body.graph.input)),
                    encoder_body=session(enc_body), decoder_body=session(dec_body))

