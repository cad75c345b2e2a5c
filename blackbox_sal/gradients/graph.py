"""The gradient-graph backend: exact gradients from an exported ONNX gradient graph.

One run of the graph gives the outputs and d(target)/d(inputs_embeds) for a whole batch,
at a few times the cost of a forward pass, whatever the embedding width. Directional
derivatives are then dot products. Where the graph comes from, in order:

1. the model directory declares one: ``"gradient_model": "grad.onnx"`` in config.json
   (built by ``blackbox-sal grad`` or exported by other means with the same interface);
2. the user cache, keyed by the SHA-256 of the model body, the output and the builder version
   (``$BLACKBOX_SAL_CACHE``, else ``$XDG_CACHE_HOME/blackbox-sal``, else ``~/.cache/blackbox-sal``);
3. built now (:func:`blackbox_sal.graph.gradient.build_gradient`), checked against finite
   differences (:func:`verify`), then cached. A graph that fails the check is refused, and the
   reason is cached too (``grad-<key>.failed``), so ``auto`` does not rebuild it every run;
   ``blackbox-sal grad`` always builds afresh.

Scores other than the logit need the chain rule through the softmax: their seed over the
classes depends on the outputs, so those cost one extra forward pass per point.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from blackbox_sal.errors import ModelError, UsageError
from blackbox_sal.graph.gradient import BUILDER_VERSION, GRAD, WEIGHTS, build_gradient
from blackbox_sal.model import files
from blackbox_sal.model.objective import Objective
from blackbox_sal.model.session import batches, create_session
from blackbox_sal.model.text_model import TextModel

log = logging.getLogger("blackbox_sal")

#: verification: relative error allowed per direction, and how many directions may exceed it
#: (a direction whose finite difference straddles a ReLU or max-pool kink can miss)
VERIFY_RTOL = 1e-2
VERIFY_LENGTHS = (3, 8)
VERIFY_DIRECTIONS = 3


def cache_dir() -> Path:
    """Where built gradient graphs are kept."""
    env = os.environ.get("BLACKBOX_SAL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "blackbox-sal"


def cache_key(body: onnx.ModelProto, output: str) -> str:
    """SHA-256 of what determines the gradient graph: the body, the output, the builder."""
    h = hashlib.sha256()
    h.update(f"builder={BUILDER_VERSION};output={output};".encode())
    h.update(body.SerializeToString(deterministic=True))
    return h.hexdigest()


def gradient_session(model: TextModel) -> ort.InferenceSession:
    """The model's gradient-graph session: shipped, cached or built (and verified) once,
    then kept with the model. Raises ModelError when no verified graph can be had."""
    if "gradient" in model.cache:
        return model.cache["gradient"]
    shipped = model.config.get("gradient_model")
    if shipped:
        session = _shipped(model, str(shipped))
    else:
        session = _cached_or_built(model)
    model.cache["gradient"] = session
    return session


def _shipped(model: TextModel, name: str) -> ort.InferenceSession:
    path = files.gradient_model_path(model.folder, name)
    proto = files.read_onnx(path)
    session = create_session(proto.SerializeToString(), model.device_request, model.threads)
    _check_interface(model, session)
    verify(model, session)
    return session


def _cache_path(model: TextModel) -> Path:
    if model.body is None:
        raise ModelError("this model keeps no graph to differentiate")
    return cache_dir() / f"grad-{cache_key(model.body, model.output)[:32]}.onnx"


def _cached_or_built(model: TextModel) -> ort.InferenceSession:
    path = _cache_path(model)
    failed = path.with_suffix(".failed")
    if not path.is_file() and failed.is_file():  # no graph can be had: say so, don't retry
        raise ModelError(failed.read_text(encoding="utf-8", errors="replace").strip())
    if path.is_file():
        try:
            session = create_session(path.read_bytes(), model.device_request, model.threads)
            _check_interface(model, session)
            log.debug("gradient graph from the cache: %s", path)
            return session
        except ModelError:
            log.info("ignoring an unreadable cached gradient graph: %s", path)
    try:
        proto, session = _built_and_verified(model)
    except ModelError as exc:
        _store_text(str(exc), failed)
        raise
    _store(proto, path)
    return session


def _built_and_verified(model: TextModel) -> tuple[onnx.ModelProto, ort.InferenceSession]:
    proto = build_model_gradient(model)
    session = create_session(proto.SerializeToString(), model.device_request, model.threads)
    verify(model, session)
    return proto, session


def build_model_gradient(model: TextModel) -> onnx.ModelProto:
    """Build (not verify) the gradient graph of a loaded model's body."""
    if model.body is None:
        raise ModelError("this model keeps no graph to differentiate")
    log.info("building the gradient graph of %s", model.name)
    return build_gradient(model.body, model.output, probe_feeds(model))


def probe_feeds(model: TextModel, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Two feeds of different batch size and length (neither 1), for reading shapes."""
    rng = np.random.default_rng(seed)
    feeds = []
    for batch, length in ((2, 5), (3, 7)):
        ids = rng.integers(0, model.table.shape[0], length)
        x = np.repeat(model.embed(ids)[None], batch, axis=0)
        feeds.append(model.feeds(x + rng.normal(0, 0.01, x.shape), ids, np.zeros_like(ids)))
    return feeds


def export_gradient(model: TextModel, out: str | os.PathLike[str] | None = None) -> Path:
    """Build the model's gradient graph, verify it, and write it to ``out`` (default: the
    cache, where ``--backend graph`` looks). Returns the path. ModelError when it cannot be
    built or fails verification."""
    proto, _ = _built_and_verified(model)
    path = Path(out) if out is not None else _cache_path(model)
    if out is None:
        path.with_suffix(".failed").unlink(missing_ok=True)  # a graph now exists after all
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(proto.SerializeToString())
    except OSError as exc:
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror}") from exc
    return path


def _store(proto: onnx.ModelProto, path: Path) -> None:
    _store_bytes(proto.SerializeToString(), path)


def _store_text(text: str, path: Path) -> None:
    """Remember why no graph could be had (same key), so ``auto`` does not retry each run."""
    _store_bytes(text.encode("utf-8"), path)


def _store_bytes(data: bytes, path: Path) -> None:
    """Write atomically; a cache that cannot be written is only a missed speed-up."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
            fh.write(data)
        os.replace(fh.name, path)
    except OSError as exc:
        log.info("could not write to the gradient-graph cache %s: %s", path.parent, exc.strerror)


def _check_interface(model: TextModel, session: ort.InferenceSession) -> None:
    names = {i.name for i in session.get_inputs()}
    outs = {o.name for o in session.get_outputs()}
    missing = ({WEIGHTS, *model.int_inputs} - names) | ({GRAD} - outs)
    if missing:
        raise ModelError(f"the gradient graph lacks {', '.join(sorted(missing))}: it must take "
                         f"inputs_embeds, the model's inputs and {WEIGHTS!r}, and return {GRAD!r}")


def run_gradient(model: TextModel, session: ort.InferenceSession, points: np.ndarray,
                 ids: np.ndarray, type_ids: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """d(weights . output)/d(points) for points [k, S, D], weights [k, C]: float64 [k, S, D]."""
    feeds = model.feeds(points, ids, type_ids)
    feeds[WEIGHTS] = np.ascontiguousarray(weights, dtype=np.float32)
    return np.asarray(session.run([GRAD], feeds)[0], dtype=np.float64)


def verify(model: TextModel, session: ort.InferenceSession, seed: int = 0) -> None:
    """Check graph directional derivatives against Richardson finite differences on random
    token sequences of two lengths, at the embeddings and at half of them (a point off the
    embedding manifold, like the middle of an integrated-gradients path); ModelError when
    more than one direction in six disagrees.

    Each direction v is scaled so that every token row has that token's own norm; the
    steps are 2e-3 and 1e-3 of that, all perturbed points of one length in one run.
    """
    rng = np.random.default_rng(seed)
    errors: list[float] = []
    steps = np.array([2e-3, -2e-3, 1e-3, -1e-3])
    for length in VERIFY_LENGTHS:
        s = min(length, model.max_length or length)
        ids = rng.integers(0, model.table.shape[0], s)
        types = np.zeros(s, np.int64)
        embeds = model.embed(ids)
        n_classes = model.run(embeds[None], ids, types, 1).shape[1]
        w = rng.normal(size=(n_classes,))
        for x in (embeds, (0.5 * embeds).astype(np.float32)):
            grad = run_gradient(model, session, x[None], ids, types, w[None])[0]
            v = rng.normal(size=(VERIFY_DIRECTIONS, *x.shape))
            v *= np.linalg.norm(embeds, axis=-1, keepdims=True) / np.linalg.norm(v, axis=-1, keepdims=True)
            points = (x[None, None] + steps[None, :, None, None] * v[:, None]).astype(np.float32)
            g = model.run(points.reshape(-1, *x.shape), ids, types, 64).reshape(len(v), len(steps), -1) @ w
            t = steps[0]
            fd = (8 * (g[:, 2] - g[:, 3]) - (g[:, 0] - g[:, 1])) / (6 * t)  # Richardson
            exact = np.einsum("sd,ksd->k", grad, v)
            scale = np.linalg.norm(grad) * np.linalg.norm(v.reshape(len(v), -1), axis=1)
            errors += (np.abs(exact - fd) / (np.abs(fd) + 1e-3 * scale + 1e-12)).tolist()
    bad = sum(e > VERIFY_RTOL for e in errors)
    if bad > len(errors) // 6:
        raise ModelError(
            f"the gradient graph disagrees with finite differences in {bad} of {len(errors)} "
            f"directions (relative errors {', '.join(f'{e:.2g}' for e in errors)}); refusing it")


class GraphBackend:
    """The gradient-graph :class:`~blackbox_sal.gradients.backend.GradientBackend`.

    ``gradient_passes`` counts rows through the gradient graph (one forward+backward each);
    forward-only rows (values, softmax seeds) are counted by the objective.
    """

    name = "graph"

    def __init__(self, f: Objective, session: ort.InferenceSession, batch_size: int) -> None:
        self.f, self.session, self.batch_size = f, session, batch_size
        self.gradient_passes = 0

    def values(self, points: np.ndarray) -> np.ndarray:
        return self.f(points)

    def _gradient_chunks(self, points: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
        """(rows, gradient [k, S, D]) for consecutive batches of points."""
        f = self.f
        for rows in batches(len(points), self.batch_size):
            chunk = points[rows]
            # a logit's seed is the one-hot target: no forward pass needed
            outputs = f.outputs(chunk) if f.seed_reads_outputs else np.zeros((len(chunk), f.n_classes))
            weights = f.seed(outputs)
            self.gradient_passes += len(chunk)
            yield rows, run_gradient(f.model, self.session, chunk, f.ids, f.type_ids, weights)

    def gradient(self, points: np.ndarray) -> np.ndarray:
        out = np.empty(points.shape, np.float64)
        for rows, grad in self._gradient_chunks(points):
            out[rows] = grad
        return out

    def token_jvp(self, points: np.ndarray, blocks: np.ndarray) -> np.ndarray:
        out = np.empty(points.shape[:2])
        for rows, grad in self._gradient_chunks(points):
            out[rows] = np.einsum("psd,psd->ps", grad, blocks[rows])
        return out

    def jvp(self, points: np.ndarray, directions: np.ndarray) -> np.ndarray:
        return self.token_jvp(points, directions).sum(axis=1)
