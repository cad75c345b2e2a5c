"""Generation by an encoder/decoder pair, explained step by step through the chained gradient.

For output step t with decoder input (prefix) tokens p_0..p_t (p_0 the start token, p_j = y_{j-1})
and source embeddings x [S, D], the explained score is log p(y_t | x, p_<=t). One decoder
gradient run over T rows (one per step, seeded one-hot at (t, y_t)) gives d/d prefix embeds
and d/d encoder states; the encoder's gradient graph, seeded with the states' cotangents, turns
those into d/d x (:mod:`blackbox_sal.surgery.encoder_decoder`). Per token, with g the gradient:

- ``grad-x-input``: sum_d g * x (prefix tokens: g * their embeddings);
- ``saliency``: ||g||_2 over the embedding;
- ``ig`` (Sundararajan et al. 2017) on the source, the prefix held fixed:
  x_a = x' + a (x - x'), IG_t = (x - x') * sum_k w_k g_t(x_{a_k}) with Gauss-Legendre points
  a_k, weights w_k on [0, 1]; completeness: sum IG_t = log p_t(x) - log p_t(x') - delta_t. The
  baseline x' is the pad token's embedding at every position (``pad``, the default when the
  config names one) or zeros (``zero``: a poor path through T5's RMSNorm, whose gradient blows
  up near 0). The prefix matrix is then grad x input at x (the prefix is not integrated).

Cost: T decoder rows and T encoder rows per gradient (times ``steps`` for IG), the rows of one
explanation in shared runs of at most ``batch_size`` rows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from blackbox_sal.methods.quadrature import gauss_legendre
from blackbox_sal.model.encoder_decoder import Pair
from blackbox_sal.model.pair_files import FilePair
from blackbox_sal.text.tokenization import MAX_CHARS, tokenize
from blackbox_sal.vocabulary.errors import InputError, UsageError
from blackbox_sal.vocabulary.result import GenerationExplanation

METHODS = ("grad-x-input", "saliency", "ig")
BASELINES = ("pad", "zero")
#: most output tokens one explanation generates or takes
MAX_OUTPUT_TOKENS = 256


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(k, min(k + size, n)) for k in range(0, n, size)]


#: one source's encoder run: the states [1, S, D] and the tensors the encoder's backward reads
Encoded = tuple[np.ndarray, dict[str, np.ndarray]]


def greedy(pair: Pair, source_ids: np.ndarray, max_new: int, encoded: Encoded | None = None,
           use_past: bool = True) -> tuple[list[int], np.ndarray]:
    """Greedy decoding: at most ``max_new`` tokens, stopping after the end-of-sequence token;
    the tokens and each step's logits [n, V]. With decoder_with_past_model.onnx (``use_past``
    and the pair has one) each step runs the decoder on the one new token after the cached keys
    and values; otherwise the decoder reruns on the growing prefix (the same tokens and logits,
    quadratic in the output length). ``encoded``: the source's encoder run when the caller has
    it (:meth:`Pair.encode_saving`), else it is run here."""
    ids = source_ids[None]
    mask = np.ones_like(ids)
    states = pair.encode(pair.encoder_table[ids], mask, ids) if encoded is None else encoded[0]
    out: list[int] = []
    steps: list[np.ndarray] = []
    past = use_past and pair.with_past is not None
    cache: dict[str, np.ndarray] = {}
    for _ in range(max_new):
        if past and out:
            logits, cache = pair.next_step(np.array([out[-1:]], np.int64), states, mask, cache)
        elif past:
            start = np.array([[pair.start_id]], np.int64)
            logits, cache = pair.first_step(pair.decoder_table[start], start, states, mask)
        else:
            prefix = np.array([[pair.start_id, *out]], np.int64)
            logits = pair.logits(pair.decoder_table[prefix], prefix, states, mask, ids)
        steps.append(logits[0, -1])
        out.append(int(np.argmax(logits[0, -1])))
        if out[-1] == pair.eos_id:
            break
    return out, np.stack(steps)


def generate(pair: Pair | FilePair, source_ids: np.ndarray, max_new: int, encoded: Encoded | None = None
             ) -> list[int]:
    """:func:`greedy`'s tokens (two files with a stepping decoder: :meth:`FilePair.greedy`)."""
    if isinstance(pair, FilePair):
        return pair.greedy(source_ids, max_new)[0]
    return greedy(pair, source_ids, max_new, encoded)[0]


def chained_gradients(pair: Pair, source: np.ndarray, source_ids: np.ndarray, prefix_ids: np.ndarray,
                      targets: np.ndarray, batch_size: int = 64, last: Encoded | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For source embeddings ``source`` [P, S, D] (P points, e.g. IG's) and the output
    ``targets`` [T] after ``prefix_ids`` [T]: (log p_t at each point [P, T], d log p_t / d
    source [P, T, S, D], d log p_t / d prefix embeddings [P, T, T, D]).

    The encoder's forward runs once per point (saving what its reverse pass reads), the
    decoder's gradient graph and the encoder's backward half once per (point, step) row. Points
    go in groups of ``batch_size // T`` (at least one), so that what a group saves is held for
    its own rows only. ``last``: the last point's encoder run, when the caller has it (the
    unperturbed source, encoded for generation)."""
    points, length, _ = source.shape
    steps = len(targets)
    vocab, dim = pair.decoder_table.shape
    log_probs = np.empty((points, steps))
    g_prefix = np.empty((points, steps, steps, dim), np.float32)
    g_source = np.empty((points, steps, length, source.shape[2]), np.float32)
    step = np.arange(steps)
    weights = np.zeros((steps, steps * vocab), np.float32)
    weights[step, step * vocab + targets] = 1.0
    dec_embeds = pair.decoder_table[prefix_ids][None].astype(np.float32)
    ids = source_ids[None]
    mask = np.ones_like(ids)
    for group in _chunks(points, max(1, batch_size // steps)):
        n = group.stop - group.start
        reuse = int(last is not None and group.stop == points)
        runs = [pair.encode_saving(source[group.start:group.stop - reuse], np.repeat(mask, n - reuse, 0),
                                   np.repeat(ids, n - reuse, 0))] if n - reuse else []
        if reuse and last is not None:
            runs.append(last)
        states = np.concatenate([r[0] for r in runs])
        saved = {name: np.concatenate([r[1][name] for r in runs]) for name in runs[0][1]}
        point = np.repeat(np.arange(n), steps)  # the group's rows: each point's T steps
        row_step = np.tile(step, n)
        for s in _chunks(n * steps, batch_size):
            at, t, k = point[s], row_step[s], s.stop - s.start
            rows_ids, rows_mask = np.repeat(ids, k, 0), np.repeat(mask, k, 0)
            flat, g_dec, g_states = pair.decoder_vjp(np.repeat(dec_embeds, k, 0), np.repeat(prefix_ids[None], k, 0),
                                                     states[at], rows_mask, weights[t], rows_ids)
            p = group.start + at
            log_probs[p, t] = flat[np.arange(k), t * vocab + targets[t]]
            g_prefix[p, t] = g_dec
            g_source[p, t] = pair.encoder_vjp(source[p], rows_mask, rows_ids, g_states, saved, at)
    return log_probs, g_source, g_prefix


def _log_p(pair: Pair | FilePair, source: np.ndarray, source_ids: np.ndarray, prefix: np.ndarray,
           prefix_ids: np.ndarray, targets: np.ndarray, batch_size: int) -> np.ndarray:
    """log p_t for rows of source embeddings [N, S, D] and prefix embeddings [N, T, D]: [N, T]
    (float64 softmax over float32 logits)."""
    rows = len(source)
    out = np.empty((rows, len(targets)))
    for s in _chunks(rows, batch_size):
        n = s.stop - s.start
        ids = np.repeat(source_ids[None], n, 0)
        if isinstance(pair, FilePair):  # the decoder steps, its state fed back
            lp = pair.log_probs(source[s], ids, prefix[s], np.repeat(prefix_ids[None], n, 0))
            out[s] = lp[:, np.arange(len(targets)), targets]
            continue
        mask = np.ones_like(ids)
        states = pair.encode(source[s], mask, ids)
        logits = pair.logits(prefix[s], np.repeat(prefix_ids[None], n, 0), states, mask, ids).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        out[s] = lp[:, np.arange(len(targets)), targets]
    return out


def fd_gradients(pair: Pair | FilePair, source: np.ndarray, source_ids: np.ndarray, prefix_ids: np.ndarray,
                 targets: np.ndarray, batch_size: int = 64, step: float = 3e-3
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`chained_gradients` by central differences, for models without a gradient graph
    (a recurrent layer): every output step comes out of each perturbed forward run, so a point
    costs 2 (S + T) D rows. ``step`` is relative to the embeddings' root mean square."""
    points, length, dim = source.shape
    steps = len(targets)
    prefix = pair.decoder_table[prefix_ids].astype(np.float32)
    h_src = step * float(np.sqrt(np.mean(source[-1].astype(np.float64) ** 2)) or 1.0)
    h_pre = step * float(np.sqrt(np.mean(prefix.astype(np.float64) ** 2)) or 1.0)
    n_src, n_pre = length * dim, steps * dim
    eye_src = np.eye(n_src, dtype=np.float32).reshape(n_src, length, dim)
    eye_pre = np.eye(n_pre, dtype=np.float32).reshape(n_pre, steps, dim)
    log_probs = np.empty((points, steps))
    g_source = np.empty((points, steps, length, dim), np.float32)
    g_prefix = np.empty((points, steps, steps, dim), np.float32)
    for p in range(points):
        x = source[p].astype(np.float32)
        src_rows = np.concatenate([x[None], x + h_src * eye_src, x - h_src * eye_src,
                                   np.repeat(x[None], 2 * n_pre, 0)])
        pre_rows = np.concatenate([prefix[None], np.repeat(prefix[None], 2 * n_src, 0), prefix + h_pre * eye_pre,
                                   prefix - h_pre * eye_pre])
        lp = _log_p(pair, src_rows, source_ids, pre_rows, prefix_ids, targets, batch_size)
        log_probs[p] = lp[0]
        up, down = lp[1:1 + n_src], lp[1 + n_src:1 + 2 * n_src]
        g_source[p] = ((up - down) / (2 * h_src)).T.reshape(steps, length, dim)
        up, down = lp[1 + 2 * n_src:1 + 2 * n_src + n_pre], lp[1 + 2 * n_src + n_pre:]
        g_prefix[p] = ((up - down) / (2 * h_pre)).T.reshape(steps, steps, dim)
    return log_probs, g_source, g_prefix


def _per_token(method: str) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    if method == "saliency":
        return lambda g, x: np.asarray(np.linalg.norm(g, axis=-1))
    return lambda g, x: np.asarray((g * x).sum(-1))


def explain_generation(pair: Pair | FilePair, text: str, *, generate_tokens: int | None = None,
                       target_text: str | None = None, method: str = "grad-x-input", steps: int = 32,
                       baseline: str = "pad", batch_size: int = 64,
                       max_length: int | None = 512, max_chars: int = MAX_CHARS,
                       backend: str = "auto") -> GenerationExplanation:
    """Explain each output token's log-probability by the source tokens and the earlier output
    tokens. The output is generated greedily (``generate_tokens`` at most) or given
    (``target_text``, tokenized as labels: teacher forcing). UsageError for an unknown method
    or neither/both of the two; InputError for a text that cannot be tokenized. ``backend``:
    ``graph`` (the chained gradient graphs; UsageError when the model has none), ``fd``
    (central differences, :func:`fd_gradients`), ``auto`` (the graph when there is one)."""
    if method not in METHODS:
        raise UsageError(f"method {method!r} is not available for encoder/decoder models; choose from "
                         f"{', '.join(METHODS)}")
    if baseline not in BASELINES:
        raise UsageError(f"baseline {baseline!r} is not available for encoder/decoder models; choose from "
                         f"{', '.join(BASELINES)}")
    if backend not in ("auto", "graph", "fd"):
        raise UsageError(f"backend {backend!r} is not one of auto, graph, fd")
    if backend == "graph" and pair.decoder_grad is None:
        raise UsageError(f"--backend graph: this model has no gradient graph ({pair.no_graph}); use fd or auto")
    use = "fd" if backend == "fd" or pair.decoder_grad is None else "graph"
    if (generate_tokens is None) == (target_text is None):
        raise UsageError("an encoder/decoder model needs --generate N or --target-text TEXT (one of them)")
    if generate_tokens is not None and not 1 <= generate_tokens <= MAX_OUTPUT_TOKENS:
        raise UsageError(f"--generate must be between 1 and {MAX_OUTPUT_TOKENS}")
    tokens = tokenize(pair.tokenizer, text, max_length, max_chars)
    source_ids = tokens.ids.astype(np.int64)
    x = pair.encoder_table[source_ids].astype(np.float32)
    # the source's one encoder run, shared by generation and the explanation's point at x
    encoded = None if isinstance(pair, FilePair) else pair.encode_saving(
        x[None], np.ones((1, len(source_ids)), np.int64), source_ids[None])
    if target_text is not None:
        outputs = tokenize(pair.tokenizer, target_text, MAX_OUTPUT_TOKENS, max_chars).ids.astype(np.int64)
    else:
        outputs = np.array(generate(pair, source_ids, generate_tokens or 1, encoded), np.int64)
    if not len(outputs):
        raise InputError("the target text has no tokens")
    prefix_ids = np.array([pair.start_id, *outputs[:-1]], np.int64)
    gradients: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] = fd_gradients
    if use == "graph" and isinstance(pair, Pair):
        gradients = partial(chained_gradients, last=encoded)
    prefix_x = pair.decoder_table[prefix_ids].astype(np.float32)
    score = _per_token(method)
    deltas: tuple[float, ...] | None = None
    if method == "ig":
        alphas, w = gauss_legendre(steps)
        base = (np.broadcast_to(pair.encoder_table[pair.pad_id], x.shape) if baseline == "pad" and pair.pad_id
                is not None else np.zeros_like(x))
        points = np.concatenate([base[None] + alphas[:, None, None] * (x - base)[None], base[None], x[None]])
        lp, g_src, g_pre = gradients(pair, points.astype(np.float32), source_ids, prefix_ids, outputs, batch_size)
        avg = np.tensordot(w, g_src[:steps], axes=1)  # [T, S, D]
        source_scores = (avg * (x - base)[None]).sum(-1)
        prefix_scores = (g_pre[-1] * prefix_x[None]).sum(-1)
        log_probs = lp[-1]
        deltas = tuple(float(d) for d in lp[-1] - lp[-2] - source_scores.sum(-1))
    else:
        lp, g_src, g_pre = gradients(pair, x[None], source_ids, prefix_ids, outputs, batch_size)
        source_scores = score(g_src[0], x[None])
        prefix_scores = score(g_pre[0], prefix_x[None])
        log_probs = lp[0]
    return GenerationExplanation(
        model=pair.name, method=method, source_text=text,
        output_text=pair.tokenizer.decode([int(i) for i in outputs], skip_special_tokens=True),
        source_tokens=tokens.strings, prefix_tokens=tuple(pair.token(i) for i in prefix_ids),
        output_tokens=tuple(pair.token(i) for i in outputs), log_probs=tuple(float(v) for v in log_probs),
        source_scores=tuple(tuple(float(v) for v in row) for row in source_scores),
        prefix_scores=tuple(tuple(float(v) for v in row) for row in prefix_scores),
        teacher_forced=target_text is not None, backend=use, steps=steps if method == "ig" else None,
        deltas=deltas)


#: the package root exports this as ``explain_seq2seq`` (``explain_generation`` there is the causal-LM one)
explain_seq2seq = explain_generation
