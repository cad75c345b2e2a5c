"""Executing run requests on one model: rows of the same kind and length, from any number of
requests, packed into onnxruntime runs of at most ``rows`` rows (and ``tokens`` tokens).

=========  ==========================================  =======================================
request    one run's inputs                             sessions
=========  ==========================================  =======================================
Forward    points [k, S, D], each row's ids             the model
Gradient   points, ids, seed weights [k, C]             the gradient graph
PathJvp    each request's anchor and delta once         the gradient graph in path form
           [R, S, D], the row's request and alpha [k]
=========  ==========================================  =======================================

Lazy points are built a run at a time, so memory is bounded by the run size whatever the
number of rows. Results are handed back per request, in order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.store import rules_session
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.progress import Progress
from blackbox_sal.vocabulary.runs import Forward, Gradient, PathJvp, Request, Seq

#: rows per run on the CPU when the config names none (memory grows with it; speed hardly does)
CPU_ROWS = 64
#: and the most rows x tokens in one gradient run on the CPU: 64 rows of 128 tokens. Without it
#: a long text's runs grew with its length (a 233-token MiniLM text's IG peaked at 3.2 GB in
#: 64-row runs; 16-row runs were as fast)
CPU_TOKENS = 8192
#: on CUDA, the most rows x tokens in one gradient run when the config names none: small
#: batches are launch-bound there (a 6-layer BERT's gradient graph has ~2,000 nodes), so runs
#: are sized by tokens, not rows (a 233-token text's 23,300 finite-difference rows take 70 a run)
CUDA_TOKENS = 16_384
#: forward-only runs keep no activations for a backward pass: they take this many times more
FORWARD_FACTOR = 4
#: the most rows one run may take, whatever the sizes
MAX_ROWS = 4096


def run_size(batch_size: int | None, tokens_per_run: int | None, device: str) -> tuple[int, int | None]:
    """(rows, tokens) per run on ``device`` for the configured sizes (None: the device's default)."""
    if device == "cuda":
        return batch_size or MAX_ROWS, tokens_per_run or CUDA_TOKENS
    return batch_size or CPU_ROWS, tokens_per_run or (None if batch_size else CPU_TOKENS)


def rows_per_run(rows: int, tokens: int | None, length: int, forward: bool = False) -> int:
    """Rows in one run of sequences of ``length`` tokens, within both budgets."""
    if tokens is None:
        return max(1, min(rows, MAX_ROWS))
    return max(1, min(rows, MAX_ROWS, tokens * (FORWARD_FACTOR if forward else 1) // max(length, 1)))


@dataclass(frozen=True)
class _Piece:
    """Rows start..stop of request ``index``."""

    index: int
    start: int
    stop: int


class Runner:
    """Runs requests against ``model`` (and its gradient graph, found on first need).

    rows: the most rows per run. tokens: the most rows x tokens per gradient run (None: no
    limit; forward runs take FORWARD_FACTOR times more). progress: show a bar for large groups
    (None: when stderr is a terminal).
    """

    def __init__(self, model: TextModel, rows: int, tokens: int | None = None, progress: bool | None = None) -> None:
        self.model, self.rows, self.tokens, self.progress = model, max(rows, 1), tokens, progress

    def capacity(self, length: int, forward: bool = False) -> int:
        """Rows per run for sequences of ``length`` tokens (a fixed-batch export's own size)."""
        return self.model.fixed_batch or rows_per_run(self.rows, self.tokens, length, forward)

    def execute(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """The result of every request, in order; rows of one kind and length share runs."""
        groups: dict[tuple[type, int, str], list[int]] = {}
        for k, request in enumerate(requests):
            if request.seq is None:
                raise ValueError("a request to a model needs its token sequence")
            rules = request.rules if isinstance(request, (Gradient, PathJvp)) else ""
            groups.setdefault((type(request), len(request.seq), rules), []).append(k)
        results: list[np.ndarray | None] = [None] * len(requests)
        for (kind, length, _), members in groups.items():
            run = {Forward: self._forward, Gradient: self._gradient, PathJvp: self._path_jvp}[kind]
            self._group([requests[k] for k in members], members, length, run, results)
        return [r if r is not None else np.zeros(0) for r in results]

    def _group(self, group: list[Request], members: list[int], length: int,
               run: Callable[[list[Request], list[_Piece]], np.ndarray], results: list[np.ndarray | None]) -> None:
        """Run one group's rows in runs of at most :meth:`capacity` rows; scatter the results."""
        cap = self.capacity(length, forward=isinstance(group[0], Forward))
        total = sum(r.n for r in group)
        parts: list[list[np.ndarray]] = [[] for _ in group]
        pieces: list[_Piece] = []
        filled = 0
        with Progress(total, f"{group[0].label}:", enabled=self.progress) as bar:
            for k, request in enumerate(group):
                start = 0
                while start < request.n:
                    stop = min(request.n, start + cap - filled)
                    pieces.append(_Piece(k, start, stop))
                    filled += stop - start
                    start = stop
                    if filled == cap:
                        self._flush(group, pieces, run, parts, bar)
                        pieces, filled = [], 0
            if pieces:
                self._flush(group, pieces, run, parts, bar)
        for k, member in enumerate(members):
            results[member] = np.concatenate(parts[k]) if parts[k] else np.zeros((0,))

    @staticmethod
    def _flush(group: list[Request], pieces: list[_Piece], run: Callable[[list[Request], list[_Piece]], np.ndarray],
               parts: list[list[np.ndarray]], bar: Progress) -> None:
        out = run(group, pieces)
        at = 0
        for piece in pieces:
            rows = piece.stop - piece.start
            parts[piece.index].append(out[at : at + rows])
            at += rows
        bar.advance(at)

    def _int_rows(self, group: list[Request], pieces: list[_Piece]) -> tuple[np.ndarray, np.ndarray,
                                                                               np.ndarray | None]:
        """Each row's ids, type ids and mask [k, S] (mask None: all ones)."""
        seqs = [cast(Seq, group[p.index].seq) for p in pieces]
        counts = [p.stop - p.start for p in pieces]

        def rows(arrays: list[np.ndarray]) -> np.ndarray:
            return np.concatenate([np.broadcast_to(a, (c, len(a))) for a, c in zip(arrays, counts, strict=True)])

        masks = None if all(s.mask is None for s in seqs) else rows(
            [s.mask if s.mask is not None else np.ones(len(s), np.int64) for s in seqs])
        return rows([s.ids for s in seqs]), rows([s.type_ids for s in seqs]), masks

    def _forward(self, group: list[Request], pieces: list[_Piece]) -> np.ndarray:
        requests = cast(list[Forward], group)
        points = np.concatenate([requests[p.index].points.take(p.start, p.stop) for p in pieces])
        ids, types, masks = self._int_rows(group, pieces)
        return self.model.forward(points, ids, types, masks)

    def _gradient(self, group: list[Request], pieces: list[_Piece]) -> np.ndarray:
        requests = cast(list[Gradient], group)
        points = np.concatenate([requests[p.index].points.take(p.start, p.stop) for p in pieces])
        weights = np.concatenate([requests[p.index].weights[p.start : p.stop] for p in pieces])
        ids, types, masks = self._int_rows(group, pieces)
        return self._graph(requests[0].rules).gradient(self.model, points, ids, types, weights, masks)

    def _path_jvp(self, group: list[Request], pieces: list[_Piece]) -> np.ndarray:
        requests = cast(list[PathJvp], group)
        owners = sorted({p.index for p in pieces})
        slot = {k: j for j, k in enumerate(owners)}
        anchors = np.stack([requests[k].anchor for k in owners])
        deltas = np.stack([requests[k].delta for k in owners])
        rows = np.concatenate([np.full(p.stop - p.start, slot[p.index], np.int64) for p in pieces])
        alphas = np.concatenate([requests[p.index].alphas[p.start : p.stop] for p in pieces])
        weights = np.concatenate([requests[p.index].weights[p.start : p.stop] for p in pieces])
        ids, types, masks = self._int_rows(group, pieces)
        return self._graph(requests[0].rules).path_jvp(self.model, anchors, deltas, rows, alphas, ids, types,
                                                       weights, masks)

    def _graph(self, rules: str) -> GradientSession:
        return rules_session(self.model, rules)
