"""An encoder/decoder pair in Hugging Face optimum's layout, loaded for generation and explanation.

A folder holds::

    encoder_model.onnx   input_ids, attention_mask [B, S] -> last_hidden_state [B, S, D]
    decoder_model.onnx   input_ids [B, T], encoder_attention_mask [B, S],
                         encoder_hidden_states [B, S, D] -> logits [B, T, V]
    tokenizer.json       config.json (decoder_start_token_id, eos_token_id)

Both graphs are split at their word-embedding lookup (:func:`~blackbox_sal.surgery.split.
split_embedding`: shared tables, as T5's and BART's, are found twice and may differ, as
Marian's do not). ``decoder_with_past_model.onnx`` is not needed: generation reruns the
decoder on the growing prefix (correct, quadratic in the output length; tiny outputs are
what is explained). An int8 pair (onnxruntime's ``quantize_dynamic`` or QDQ) is explained as
its float twin (``dequantize``: the deployed int8 weights, activations in float,
:mod:`blackbox_sal.surgery.dequantize`), which generates and is differentiated alike; without
``dequantize`` it is refused with a message. ``decoder_model_merged.onnx`` alone (an ``If`` on ``use_cache_branch``) is
refused with a message: its no-cache branch would have to be cut out first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from tokenizers import Tokenizer

from blackbox_sal.model import files
from blackbox_sal.model.probe import probe
from blackbox_sal.model.session import create_session, run
from blackbox_sal.surgery.dequantize import float_twin
from blackbox_sal.surgery.encoder_decoder import (
    GRAD_STATES,
    LOG_PROBS,
    STATES,
    decoder_gradient,
    encoder_gradient,
    flat_encoder,
    scored_decoder,
)
from blackbox_sal.surgery.names import EMBEDS, GRAD, IDS, WEIGHTS
from blackbox_sal.surgery.quantized import quantized_ops
from blackbox_sal.surgery.split import split_embedding
from blackbox_sal.vocabulary.errors import ModelError

ENCODER = "encoder_model.onnx"
DECODER = "decoder_model.onnx"
MERGED = "decoder_model_merged.onnx"
ENCODER_MASK = "encoder_attention_mask"


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
    encoder_body: Any = field(repr=False)
    decoder_body: Any = field(repr=False)
    encoder_grad: Any = field(repr=False)
    decoder_grad: Any = field(repr=False)

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
                      mask: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {EMBEDS: embeds.astype(np.float32), STATES: states.astype(np.float32), ENCODER_MASK: mask}
        if IDS in self.decoder_inputs:
            feeds[IDS] = ids
        return feeds

    def encode(self, embeds: np.ndarray, mask: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Encoder states [B, S, D]."""
        return np.asarray(run(self.encoder_body, [self.encoder_output], self.encoder_feeds(embeds, mask, ids),
                              "the encoder")[0])

    def logits(self, embeds: np.ndarray, ids: np.ndarray, states: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Decoder logits [B, T, V]."""
        return np.asarray(run(self.decoder_body, [self.decoder_output], self.decoder_feeds(embeds, ids, states, mask),
                              "the decoder")[0])

    def decoder_vjp(self, embeds: np.ndarray, ids: np.ndarray, states: np.ndarray, mask: np.ndarray,
                    weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(log_probs [B, T*V], d/d decoder embeds [B, T, D], d/d states [B, S, D]) of
        sum(weights * log_probs) per row."""
        feeds = {**self.decoder_feeds(embeds, ids, states, mask), WEIGHTS: weights.astype(np.float32)}
        out = run(self.decoder_grad, [LOG_PROBS, GRAD, GRAD_STATES], feeds, "the decoder's gradient graph")
        return np.asarray(out[0]), np.asarray(out[1]), np.asarray(out[2])

    def encoder_vjp(self, embeds: np.ndarray, mask: np.ndarray, ids: np.ndarray, cotangent: np.ndarray) -> np.ndarray:
        """d(sum(cotangent * states))/d source embeds [B, S, D]."""
        feeds = {**self.encoder_feeds(embeds, mask, ids), WEIGHTS: cotangent.reshape(len(cotangent), -1)}
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
    if not (folder / DECODER).is_file():
        what = (f"only {MERGED}: its no-cache branch is not cut out yet; export with --no-post-process to get "
                f"{DECODER}") if (folder / MERGED).is_file() else f"no {DECODER}"
        raise ModelError(f"{str(folder)!r} holds {what}")
    raw_tok = files.read_side_file(folder, "tokenizer.json")
    if raw_tok is None:
        raise ModelError(f"no tokenizer.json in {str(folder)!r}")
    tokenizer = files.read_tokenizer(folder / "tokenizer.json")
    config = files.read_side_json(folder, "config.json") or {}
    start = config.get("decoder_start_token_id")
    eos = config.get("eos_token_id")
    pad = config.get("pad_token_id")
    if not isinstance(start, int) or not isinstance(eos, int):
        raise ModelError("config.json must give decoder_start_token_id and eos_token_id (integers)")
    encoder = files.read_onnx(folder / ENCODER)
    decoder = files.read_onnx(folder / DECODER)
    dequantized = tuple(sorted(set(quantized_ops(encoder)) | set(quantized_ops(decoder))))
    if dequantized and not dequantize:
        raise ModelError(f"the pair is quantized ({', '.join(dequantized)}): an int8 graph is piecewise constant "
                         f"and has no gradient; pass --dequantize to explain its float twin (the int8 weights, "
                         f"activations in float)")
    if dequantized:
        encoder, decoder = float_twin(encoder)[0], float_twin(decoder)[0]
    enc_split = split_embedding(encoder, IDS)
    dec_split = split_embedding(decoder, IDS)
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
    enc_grad = encoder_gradient(enc_fwd, probe(enc_fwd, enc_feeds))
    dec_fwd = scored_decoder(dec_split.body, dec_out)
    width = enc_split.table.shape[1]
    dec_feeds = _probe_feeds(dec_split.table, lambda x, ids, rng: {
        EMBEDS: x.astype(np.float32), STATES: rng.normal(0, 1, (ids.shape[0], ids.shape[1] + 2, width)).astype(
            np.float32), ENCODER_MASK: np.ones((ids.shape[0], ids.shape[1] + 2), np.int64),
        **({IDS: ids} if IDS in dec_inputs else {})})
    dec_grad = decoder_gradient(dec_fwd, probe(dec_fwd, dec_feeds))

    def session(model: onnx.ModelProto | bytes) -> Any:
        data = model if isinstance(model, bytes) else model.SerializeToString()
        return create_session(data, "cpu", threads)

    return Pair(name=folder.name, tokenizer=tokenizer, encoder_table=enc_split.table,
                decoder_table=dec_split.table, start_id=start, eos_id=eos,
                pad_id=pad if isinstance(pad, int) and 0 <= pad < len(enc_split.table) else None,
                dequantized=dequantized,
                encoder_inputs=enc_inputs,
                decoder_inputs=dec_inputs, encoder_output=enc_out, decoder_output=dec_out,
                encoder_body=session(enc_split.serialized), decoder_body=session(dec_split.serialized),
                encoder_grad=session(enc_grad), decoder_grad=session(dec_grad))


def is_pair(path: str | Path) -> bool:
    """Whether ``path`` is a folder in optimum's encoder/decoder layout."""
    folder = Path(path)
    return folder.is_dir() and (folder / ENCODER).is_file()


def describe(pair: Pair) -> str:
    return json.dumps({"name": pair.name, "shared_table": pair.shared_table,
                       "vocab": int(pair.decoder_table.shape[0]), "dim": int(pair.decoder_table.shape[1])})
