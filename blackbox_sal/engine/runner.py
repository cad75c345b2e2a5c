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

Gradient rows that repeat a point (the same embeddings, ids, type ids and mask; for PathJvp
the same anchor, delta and alpha) with different seeds (k targets of one text, the classes of
a Jacobian) run through the gradient graph's fan form (:mod:`blackbox_sal.gradient_graph.fan`):
the group's rows are ordered by point, so each run holds few points and many seed rows, the
forward pass runs once per point in the run and the backward once per row. Where the model has
no fan form (or no row repeats a point) the rows run as above. Forward requests that ask for the
same rows over the same sequence (the k targets' predictions) run once and share the outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from blackbox_sal.gradient_graph.fan import fan_session
from blackbox_sal.gradient_graph.session import FanSession, GradientSession
from blackbox_sal.gradient_graph.store import rules_session
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.progress import Progress
from blackbox_sal.vocabulary.runs import ArrayPoints, Forward, Gradient, PathJvp, Points, Request, RowRange, Seq

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
#: a gradient group runs through the fan form only when its distinct points are at most this
#: share of its rows: the fan form's gathers cost about 0.4 of a forward pass per seed row
#: (tiny-tagger, 64 rows of 64 tokens: plain graph 5.2 ms, fan form at 64 distinct points 6.2,
#: at 1 point 3.0; the model's forward alone 2.1), so fewer repeats would not pay for them
FAN_SHARE = 0.5


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
        for (kind, length, rules), members in groups.items():
            group = [requests[k] for k in members]
            if kind is Forward:  # requests that repeat another's rows run once
                twins = _twins(group)
                alone = [k for k, t in enumerate(twins) if t == k]
                self._group([group[k] for k in alone], [members[k] for k in alone], length, self._forward, results)
                for k, t in enumerate(twins):
                    if t != k:
                        results[members[k]] = np.array(results[members[t]])
            elif not self._fanned(cast(list[Gradient | PathJvp], group), members, length, rules, results):
                self._group(group, members, length, self._gradient if kind is Gradient else self._path_jvp, results)
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

    def _fanned(self, group: list[Gradient | PathJvp], members: list[int], length: int, rules: str,
                results: list[np.ndarray | None]) -> bool:
        """Run a gradient group whose rows repeat points through the fan form, rows ordered by
        point (see the module docstring); False, nothing run, when too few rows repeat a point
        (FAN_SHARE) or the model has no fan form."""
        if self.model.fixed_batch is not None:
            return False
        point_of = _points_of(group)
        order = np.argsort(np.concatenate(point_of), kind="stable")
        total = len(order)
        if len(np.unique(np.concatenate(point_of))) > FAN_SHARE * total:
            return False
        fan = fan_session(self.model, rules)
        if fan is None:
            return False
        owner = np.concatenate([np.full(r.n, k) for k, r in enumerate(group)])
        row = np.concatenate([np.arange(r.n) for r in group])
        points = np.concatenate(point_of)
        outs: list[np.ndarray | None] = [None] * len(group)
        cap = self.capacity(length)
        with Progress(total, f"{group[0].label}:", enabled=self.progress) as bar:
            for start in range(0, total, cap):
                take = order[start:start + cap]
                if len(np.unique(points[take])) <= FAN_SHARE * len(take):
                    out = self._fan_run(fan, group, owner[take], row[take], points[take])
                else:  # a run of mostly distinct points (the group's unrepeated rest): the plain graph
                    plain = self._gradient if isinstance(group[0], Gradient) else self._path_jvp
                    rows = zip(owner[take].tolist(), row[take].tolist(), strict=True)
                    out = plain(cast(list[Request], group), [_Piece(k, j, j + 1) for k, j in rows])
                for k in np.unique(owner[take]):
                    mine = owner[take] == k
                    if outs[k] is None:
                        outs[k] = np.empty((group[k].n, *out.shape[1:]), out.dtype)
                    cast(np.ndarray, outs[k])[row[take][mine]] = out[mine]
                bar.advance(len(take))
        for k, member in enumerate(members):
            results[member] = outs[k] if outs[k] is not None else np.zeros((0,))
        return True

    def _fan_run(self, fan: FanSession, group: list[Gradient | PathJvp], owner: np.ndarray, row: np.ndarray,
                 point: np.ndarray) -> np.ndarray:
        """One fan run over seed rows (request owner[r], its row row[r], at point point[r])."""
        weights = np.empty((len(owner), group[0].weights.shape[1]), np.float32)
        for k in np.unique(owner).tolist():  # a request's rows at once (a causal LM's seeds are vocabulary-wide)
            mine = owner == k
            weights[mine] = group[k].weights[row[mine]]
        _, first, fan_rows = np.unique(point, return_index=True, return_inverse=True)
        pieces = [_Piece(k, j, j + 1) for k, j in zip(owner[first].tolist(), row[first].tolist(), strict=True)]
        ids, types, masks = self._int_rows(cast(list[Request], group), pieces)
        if isinstance(group[0], Gradient):
            points = np.concatenate([cast(Gradient, group[p.index]).points.take(p.start, p.stop) for p in pieces])
            return fan.gradient(self.model, points, ids, types, masks, fan_rows.astype(np.int64), weights)
        requests = cast(list[PathJvp], group)
        owners = sorted({p.index for p in pieces})
        slot = {k: j for j, k in enumerate(owners)}
        anchors = np.stack([requests[k].anchor for k in owners])
        deltas = np.stack([requests[k].delta for k in owners])
        rows = np.array([slot[p.index] for p in pieces], np.int64)
        alphas = np.array([requests[p.index].alphas[p.start] for p in pieces], np.float32)
        return fan.path_jvp(self.model, anchors, deltas, rows, alphas, ids, types, masks,
                            fan_rows.astype(np.int64), weights)


def _points_of(group: Sequence[Gradient | PathJvp]) -> list[np.ndarray]:
    """Per request, each row's point as an integer: rows at the same point (the same ids, type
    ids, mask and embeddings; for PathJvp the same anchor, delta and alpha) share one. Lazy
    points are not read: each is a point of its own."""
    digests: dict[int, bytes] = {}  # id(array) -> digest: requests often share their arrays

    def digest(*arrays: np.ndarray | None) -> bytes:
        h = hashlib.blake2b(digest_size=16)
        for a in arrays:
            if a is None:
                h.update(b"none")
                continue
            if id(a) not in digests:
                c = np.ascontiguousarray(a)
                digests[id(a)] = hashlib.blake2b(f"{c.dtype.str}{c.shape}".encode() + c.tobytes(),
                                                 digest_size=16).digest()
            h.update(digests[id(a)])
        return h.digest()

    ids: dict[bytes | tuple[bytes, int], int] = {}
    fresh = iter(range(-1, -(1 << 62), -1))  # rows nothing else can share
    out = []
    for request in group:
        seq = cast(Seq, request.seq)
        base = digest(seq.ids, seq.type_ids, seq.mask)
        if isinstance(request, PathJvp):
            base += digest(request.anchor, request.delta)
            bits = np.ascontiguousarray(request.alphas, np.float64).view(np.int64).tolist()  # alphas, exactly
            out.append(np.array([ids.setdefault((base, a), len(ids)) for a in bits], np.int64))
            continue
        array = _array_of(request.points)
        if array is None:
            out.append(np.array([next(fresh) for _ in range(request.n)], np.int64))
            continue
        out.append(np.array([ids.setdefault(base + hashlib.blake2b(np.ascontiguousarray(p, np.float32).tobytes(),
                                                                   digest_size=16).digest(), len(ids))
                             for p in array], np.int64))
    return out


def _twins(group: Sequence[Request]) -> list[int]:
    """Per Forward request, the first request of the group asking for the same rows over the
    same sequence (itself where none does). Cheap when nothing repeats: the arrays' shapes and
    sums are compared first, their bytes only where those agree. Lazy points are never twins."""
    seen: dict[tuple[object, ...], list[tuple[int, np.ndarray]]] = {}
    twins = []
    for k, request in enumerate(group):
        array = _array_of(cast(Forward, request).points)
        seq = cast(Seq, request.seq)
        if array is None:
            twins.append(k)
            continue
        rough = (array.shape, float(np.sum(array, dtype=np.float64)), seq.ids.tobytes(), seq.type_ids.tobytes(),
                 None if seq.mask is None else seq.mask.tobytes())
        same = seen.setdefault(rough, [])
        twin = next((j for j, earlier in same if np.array_equal(earlier, array)), k)
        if twin == k:
            same.append((k, array))
        twins.append(twin)
    return twins


def _array_of(points: Points) -> np.ndarray | None:
    """The rows of points held in an array (or a row range of one); None for lazy points."""
    if isinstance(points, ArrayPoints):
        return points.array
    if isinstance(points, RowRange) and isinstance(points.points, ArrayPoints):
        return points.points.array[points.start:points.stop]
    return None
