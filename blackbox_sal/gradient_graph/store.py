"""Where a model's gradient graph comes from, in order:

1. the model folder declares one: ``"gradient_model": "grad.onnx"`` in config.json (built by
   ``blackbox-sal grad`` or exported by other means with the same interface);
2. the user cache, keyed by the SHA-256 of the model body, the output and the builder version
   (``$BLACKBOX_SAL_CACHE``, else ``$XDG_CACHE_HOME/blackbox-sal``, else ``~/.cache/blackbox-sal``);
3. built now (:mod:`.build`), verified (:mod:`.verify`), then cached. A graph that cannot be
   built or fails the check is refused, and the reason is cached too (``grad-<key>.failed``),
   so ``auto`` does not rebuild it every run; ``blackbox-sal grad`` always builds afresh.

Every graph is verified with the session (and device) that will run it before first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import onnx

from blackbox_sal.errors import ModelError, SalError, UsageError
from blackbox_sal.gradient_graph.build import build_gradient
from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.verify import verify
from blackbox_sal.model import files
from blackbox_sal.model.session import first_line
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.surgery.gradient import BUILDER_VERSION
from blackbox_sal.surgery.names import GRAD, WEIGHTS

log = logging.getLogger("blackbox_sal")


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


def gradient_session(model: TextModel) -> GradientSession:
    """The model's verified gradient graph: shipped, cached or built once, then kept with the
    model. Raises ModelError when no verified graph can be had."""
    if "gradient" in model.cache:
        cached: GradientSession = model.cache["gradient"]
        return cached
    session = _shipped(model, model.config.gradient_model) if model.config.gradient_model else _cached_or_built(model)
    model.cache["gradient"] = session
    return session


def _shipped(model: TextModel, name: str) -> GradientSession:
    path = files.gradient_model_path(model.folder or Path("."), name)
    graph = GradientSession.create(files.read_onnx(path).SerializeToString(), model)
    _check_interface(model, graph)
    verify(model, graph)
    return graph


def _cache_path(model: TextModel) -> Path:
    if model.body is None:
        raise ModelError("this model keeps no graph to differentiate")
    return cache_dir() / f"grad-{cache_key(model.body, model.output)[:32]}.onnx"


def _cached_or_built(model: TextModel) -> GradientSession:
    path = _cache_path(model)
    failed = path.with_suffix(".failed")
    if not path.is_file() and failed.is_file():  # no graph can be had: say so, don't retry
        raise ModelError(failed.read_text(encoding="utf-8", errors="replace").strip())
    if path.is_file():
        try:
            graph = GradientSession.create(path.read_bytes(), model)
            _check_interface(model, graph)
            log.debug("gradient graph from the cache: %s", path)
            return graph
        except (ModelError, OSError):
            log.info("ignoring an unreadable cached gradient graph: %s", path)
    try:
        proto, graph = _built_and_verified(model)
    except ModelError as exc:
        _store(str(exc).encode("utf-8"), failed)
        raise
    _store(proto.SerializeToString(), path)
    return graph


def _built_and_verified(model: TextModel) -> tuple[onnx.ModelProto, GradientSession]:
    try:
        proto = build_gradient(model)
    except SalError:
        raise
    except Exception as exc:  # a rule that fails on an unusual graph: report it, let auto fall back
        raise ModelError(f"building the gradient graph failed ({type(exc).__name__}: {first_line(exc)}); "
                         f"please report it") from exc
    graph = GradientSession.create(proto.SerializeToString(), model)
    verify(model, graph)
    return proto, graph


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


def _store(data: bytes, path: Path) -> None:
    """Write atomically; a cache that cannot be written is only a missed speed-up."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
            fh.write(data)
        os.replace(fh.name, path)
    except OSError as exc:
        log.info("could not write to the gradient-graph cache %s: %s", path.parent, exc.strerror)


def _check_interface(model: TextModel, graph: GradientSession) -> None:
    names, outs = graph.input_names(), graph.output_names()
    embeds = {"path_anchor"} if graph.path_form else {"inputs_embeds"}
    missing = ({WEIGHTS, *embeds, *model.int_inputs} - names) | ({GRAD} - outs)
    if missing:
        raise ModelError(f"the gradient graph lacks {', '.join(sorted(missing))}: it must take "
                         f"inputs_embeds, the model's inputs and {WEIGHTS!r}, and return {GRAD!r}")
