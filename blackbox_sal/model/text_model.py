"""A text model whose input is token embeddings: what the model is, and how it runs here.

Two parts, kept apart. :class:`TextModel` is what the model *is*: a frozen description (its
tokenizer, embedding table, graph, output, labels, task, input interface) that any number
of threads may read. :class:`Runtime` is how it runs in this process: its onnxruntime session
on a device, and what is built for it on first use (the gradient graph), each made once under
the model's own lock. A model derived with other weights (:meth:`TextModel.with_weights`)
gets a runtime of its own.

Arrays at this boundary: embeddings float32 [N, S, D]; ids and type ids int64, [S] (shared by
every row) or [N, S] (one sequence per row); outputs float64 [N, C].
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from blackbox_sal.model.features import Featurizer
from blackbox_sal.model.model_config import ModelConfig
from blackbox_sal.model.session import batches, create_session, on_cuda, run
from blackbox_sal.surgery.names import EMBEDS, IDS, MASK, POSITIONS, TYPES
from blackbox_sal.text.tokenization import encode
from blackbox_sal.vocabulary.differences import mean_row_norm
from blackbox_sal.vocabulary.errors import InputError, ModelError

#: tasks (what the explained output is): a class score, the next token of a causal LM, or
#: the score of one (context, choice) sequence of a multiple-choice model, or the start and end
#: scores of an answer span (extractive question answering: blackbox_sal.api.spans); per-token:
#: a score per token and label (taggers: blackbox_sal.api.per_token)
TASKS = ("classification", "next-token", "multiple-choice", "answer-span", "per-token")

#: the sentence every loader runs a model on once, to check what it computes
PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and the film was good."

if TYPE_CHECKING:  # the surgery (and onnx) is imported where a graph is split, not with the model
    from blackbox_sal.surgery.channels import Channel

T = TypeVar("T")


def int_feeds(int_inputs: Mapping[str, Any], ids: np.ndarray, type_ids: np.ndarray, rows: int,
              mask: np.ndarray | None = None, mask_rank: int = 2) -> dict[str, np.ndarray]:
    """The other feeds a session wants (``int_inputs``: name -> numpy dtype) for ``rows`` rows
    of ids/type ids/mask ([S], shared, or [rows, S]; mask None: all ones): the mask, the type
    ids, positions 0..S-1 and the ids themselves (e.g. for Shape(input_ids) inside the body).
    A float mask of rank 4 is additive, as some exports take it: 0 on tokens, the float32
    minimum on padding, [rows, 1, 1, S]."""
    ids2 = np.broadcast_to(ids, (rows, ids.shape[-1])) if ids.ndim == 1 else ids
    types2 = np.broadcast_to(type_ids, ids2.shape) if type_ids.ndim == 1 else type_ids
    ones = np.ones(ids2.shape, np.int64)
    mask2 = ones if mask is None else np.broadcast_to(mask, ids2.shape) if mask.ndim == 1 else mask
    feeds: dict[str, np.ndarray] = {}
    for name, dtype in int_inputs.items():
        if name == MASK and np.dtype(dtype).kind == "f" and mask_rank == 4:
            value = np.where(mask2 > 0, 0.0, np.finfo(np.float32).min).astype(dtype)[:, None, None, :]
        elif name == MASK:
            value = mask2.astype(dtype)
        elif name == TYPES:
            value = types2.astype(dtype)
        elif name == POSITIONS:
            value = np.broadcast_to(np.arange(ids2.shape[1], dtype=dtype), ids2.shape).copy()
        elif name == IDS:
            value = ids2.astype(dtype)
        else:
            raise ModelError(f"the model needs an input {name!r} that blackbox-sal cannot fill")
        feeds[name] = np.ascontiguousarray(value)
    return feeds


class Runtime:
    """How a model runs in this process: its onnxruntime ``session`` (created for
    ``device_request``, auto | cpu | cuda, with ``threads``; 0 = onnxruntime's choice), and what
    is built for the model lazily, keyed by purpose (:meth:`kept`). Each model has its own
    lock, so building one model's gradient graph never waits for another's."""

    def __init__(self, session: ort.InferenceSession, device_request: str = "auto", threads: int = 0) -> None:
        self.session, self.device_request, self.threads = session, device_request, threads
        self.built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Runtime(device={self.device!r}, threads={self.threads}, built={sorted(self.built)})"

    @property
    def device(self) -> str:
        return "cuda" if on_cuda(self.session) else "cpu"

    def kept(self, purpose: str, make: Callable[[], T]) -> T:
        """What is kept for ``purpose``, made by ``make`` on first use: one thread makes it
        while the others asking for it wait (the engine's lanes and the server's workers ask
        from several); a ``make`` that raises keeps nothing, so the next caller tries again."""
        if purpose in self.built:
            return cast(T, self.built[purpose])
        with self._lock:
            if purpose not in self.built:
                self.built[purpose] = make()
            return cast(T, self.built[purpose])

    def keep(self, purpose: str, value: Any) -> None:
        """Keep ``value`` for ``purpose`` (made elsewhere, e.g. a substituted gradient graph)."""
        with self._lock:
            self.built[purpose] = value

    def again(self, model: bytes) -> Runtime:
        """A new runtime for ``model`` (serialized) on the same device and threads, nothing kept."""
        return Runtime(create_session(model, self.device_request, self.threads), self.device_request, self.threads)


@dataclass(frozen=True)
class TextModel:
    """A loaded model (see :func:`blackbox_sal.model.loading.load_model`).

    What the model is, frozen; how it runs here is its :class:`Runtime` (``runtime``; its
    ``session``, ``device_request``, ``threads`` and ``cache`` read through as before).
    name: what results report. table: float32 [vocab, dim]. labels: class names by index, or
    None. max_length: the most tokens the model takes, or None. output: the explained output's
    name. origin: how the embeddings input was obtained (the split lookup, or given).
    """

    name: str
    tokenizer: Tokenizer = field(repr=False)
    table: np.ndarray = field(repr=False)
    runtime: Runtime = field(repr=False, compare=False)
    output: str
    labels: tuple[str, ...] | None
    max_length: int | None
    origin: str
    int_inputs: Mapping[str, Any] = field(repr=False)  # name -> numpy int dtype the session wants
    row_norm: float = 1.0  # mean non-zero row norm of the table: the fallback step scale
    body: Any = field(default=None, repr=False, compare=False)  # the onnx.ModelProto that runs, if kept
    config: ModelConfig = field(default_factory=ModelConfig, repr=False, compare=False)
    folder: Path | None = field(default=None, repr=False, compare=False)
    #: the integer op types that make the model quantized; () if float (an 8-bit embedding
    #: table alone does not: the split dequantizes it exactly)
    quantized: tuple[str, ...] = ()
    #: for a float twin (load_model(dequantize=True)): the integer op types it replaced
    twin_of: tuple[str, ...] = ()
    #: weight-only integer op types (MatMulNBits computing in float) dequantized at load: the
    #: loaded graph computes the deployed function itself (checked), so it is not "quantized"
    weight_only: tuple[str, ...] = ()
    #: classification ([batch, classes] output), next-token (a causal LM's [batch, seq,
    #: vocab] logits, explained at the last position; classes are vocabulary tokens),
    #: multiple-choice (one (context, choice) sequence scored at a time), or embedding (token
    #: states pooled into a sentence embedding)
    task: str = "classification"
    #: a fixed-shape export: the number of tokens it takes exactly (texts are padded to it,
    #: under the mask), and the rows one run must have
    fixed_length: int | None = None
    fixed_batch: int | None = None
    #: the attention mask's rank: 2 ([batch, seq]), or 4 for an additive float mask [batch, 1, 1, seq]
    mask_rank: int = 2
    #: the pad token's id (None: the tokenizer names none; the table's row 0 is used)
    pad_id: int | None = None
    #: for an embedding model: how its token states were pooled, and where that was read
    pooling: str | None = None
    #: for a feature model (bag of words, a scikit-learn pipeline, numbers): how its input
    #: vector is made; its features are the "tokens", each a one-dimensional embedding
    features: Featurizer | None = field(default=None, repr=False, compare=False)
    #: what every explanation of this model should say, found when it was loaded
    notes: tuple[str, ...] = ()
    #: a model with a second id channel (blackbox_sal.surgery.channels): each channel's name,
    #: input and dimensions of the embeddings; () for a model with one
    channels: tuple[Channel, ...] = ()

    def __post_init__(self) -> None:  # a read-only view: the description cannot change under a reader
        object.__setattr__(self, "int_inputs", MappingProxyType(dict(self.int_inputs)))

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def session(self) -> ort.InferenceSession:
        return self.runtime.session

    @property
    def device_request(self) -> str:
        return self.runtime.device_request

    @property
    def threads(self) -> int:
        return self.runtime.threads

    @property
    def cache(self) -> dict[str, Any]:
        """What the runtime keeps for this model, by purpose (see :meth:`Runtime.kept`)."""
        return self.runtime.built

    @property
    def device(self) -> str:
        return self.runtime.device

    def with_weights(self, body: Any, table: np.ndarray | None = None) -> TextModel:
        """The same model with other weights: ``body`` (an onnx.ModelProto of the same
        interface) and, if given, another embedding table; a runtime of its own (a new session
        on the same device, nothing kept)."""
        changes: dict[str, Any] = {} if table is None else {"table": table, "row_norm": mean_row_norm(table)}
        return replace(self, body=body, runtime=self.runtime.again(body.SerializeToString()), **changes)

    def probe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """:data:`PROBE_TEXT` as ids, type ids and mask (padded for a fixed-length export); where
        the tokenizer cannot encode it (no unknown token for its characters, a panic), the first
        ordinary tokens of the vocabulary."""
        try:
            found = encode(self.tokenizer, PROBE_TEXT).ids
        except InputError:
            added = set(self.tokenizer.get_added_tokens_decoder())
            found = [i for i in range(min(self.tokenizer.get_vocab_size(with_added_tokens=True), 64))
                     if i not in added][:8] or [0]
        ids = np.array(found, dtype=np.int64)[: self.max_length or None]
        return self.pad(ids, np.zeros_like(ids))

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
            try:
                ids = encode(self.tokenizer, text, add_special_tokens=False).ids
            except InputError:  # not text the tokenizer can read: not one of its tokens either
                continue
            if len(ids) == 1:
                return int(ids[0])
        return None

    def pad(self, ids: np.ndarray, type_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """ids and type ids [S] padded to a fixed-length export's length with the pad token,
        and the mask (0 on the padding); as they are (mask None) for any other model."""
        if self.fixed_length is None or len(ids) >= self.fixed_length:
            return ids, type_ids, None
        n = self.fixed_length - len(ids)
        pad = np.full(n, self.pad_id if self.pad_id is not None else 0, ids.dtype)
        return (np.concatenate([ids, pad]), np.concatenate([type_ids, np.zeros(n, type_ids.dtype)]),
                np.concatenate([np.ones(len(ids), np.int64), np.zeros(n, np.int64)]))

    def embed(self, ids: np.ndarray) -> np.ndarray:
        """Look token ids [S] up in the table: float32 [S, D]. ModelError for an id the table
        lacks (a tokenizer with holes in its vocabulary, say)."""
        if ids.size and (int(ids.max()) >= self.table.shape[0] or int(ids.min()) < 0):
            raise ModelError(f"the tokenizer gave token id {int(ids.max())}, but the embedding table has "
                             f"{self.table.shape[0]} rows: they do not belong together")
        return self.table[ids]

    def feeds(self, embeds: np.ndarray, ids: np.ndarray, type_ids: np.ndarray,
              mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Session feeds for ``embeds`` [k, S, D] and ids/type ids/mask ([S] shared, or [k, S])."""
        feeds = int_feeds(self.int_inputs, ids, type_ids, embeds.shape[0], mask, self.mask_rank)
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

    def forward(self, embeds: np.ndarray, ids: np.ndarray, type_ids: np.ndarray,
                mask: np.ndarray | None = None) -> np.ndarray:
        """The explained output for ``embeds`` [k, S, D], in one run (runs of exactly
        ``fixed_batch`` rows for a fixed-batch export): float64 [k, C]."""
        k = embeds.shape[0]
        if self.fixed_batch is not None and k != self.fixed_batch:
            ids, type_ids, mask = per_row(k, ids, type_ids, mask)
            return np.concatenate([self.forward(*fill(self.fixed_batch, rows, embeds, ids, type_ids, mask))[
                : rows.stop - rows.start] for rows in batches(k, self.fixed_batch)], axis=0)
        out = run(self.session, [self.output], self.feeds(embeds, ids, type_ids, mask))[0]
        return self.as_classes(out, k)

    def run(self, embeds: np.ndarray, ids: np.ndarray, type_ids: np.ndarray, batch_size: int,
            mask: np.ndarray | None = None) -> np.ndarray:
        """The explained output for ``embeds`` [N, S, D] that share ``ids``/``type_ids``/``mask``
        [S], ``batch_size`` rows per run: float64 [N, C]."""
        return np.concatenate([self.forward(embeds[rows], ids, type_ids, mask)
                               for rows in batches(embeds.shape[0], batch_size)], axis=0)


def per_row(k: int, ids: np.ndarray, type_ids: np.ndarray,
            mask: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """ids, type ids and mask with one row each for k rows ([S] ones repeated)."""
    def rows(a: np.ndarray) -> np.ndarray:
        return np.broadcast_to(a, (k, a.shape[-1])) if a.ndim == 1 else a
    return rows(ids), rows(type_ids), None if mask is None else rows(mask)


def fill(n: int, rows: slice, first: np.ndarray, *per_row: np.ndarray | None) -> tuple[Any, ...]:
    """``rows`` of ``first`` and of each array in ``per_row`` (all with one entry per row;
    None stays None), as exactly n rows: the last row repeated to fill a fixed-batch run."""
    def take(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return a
        part = a[rows]
        return np.concatenate([part, np.repeat(part[-1:], n - len(part), axis=0)]) if len(part) < n else part
    return (take(first), *(take(a) for a in per_row))
