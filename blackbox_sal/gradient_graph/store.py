"""Where a model's gradient graph comes from, in order:

1. the model folder declares one: ``"gradient_model": "grad.onnx"`` in config.json (built by
   ``blackbox-sal grad`` or exported by other means with the same interface);
2. the user cache, keyed by the SHA-256 of the model body, the output and the builder version
   (``$BLACKBOX_SAL_CACHE``, else ``$XDG_CACHE_HOME/blackbox-sal``, else ``~/.cache/blackbox-sal``);
3. built now (:mod:`.build`), verified (:mod:`.verify`), then cached. A graph that cannot be
   built or fails the check is refused, and the reason is cached too (``grad-<key>.failed``),
   so ``auto`` does not rebuild it every run; ``blackbox-sal grad`` always builds afresh.

Every graph is verified with the session (and device) that will run it before first use.

The cache is as untrusted as a model folder: anyone who can write to it could change the scores.
Each cached graph has a digest beside it (``grad-<key>.digest``: the SHA-256 of the model's body
and output, the full cache key, and of the graph's bytes). A cached graph is used only when its
digest matches *and* it passes the check against finite differences (:mod:`.verify`, a few model
runs: far less than building the graph); otherwise it is logged, rebuilt and cached again,
never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from blackbox_sal.gradient_graph.session import GradientSession
from blackbox_sal.gradient_graph.verify import FAILED_SUFFIX, verify
from blackbox_sal.model import files
from blackbox_sal.model.session import first_line
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.surgery.names import GRAD, WEIGHTS
from blackbox_sal.text.printable import printable
from blackbox_sal.vocabulary.errors import ModelError, SalError, UsageError

if TYPE_CHECKING:  # onnx is imported where a graph is built: an edge install runs shipped graphs only
    import onnx

log = logging.getLogger("blackbox_sal")


def cache_dir() -> Path:
    """Where built gradient graphs are kept."""
    env = os.environ.get("BLACKBOX_SAL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "blackbox-sal"


def cache_key(body: onnx.ModelProto, output: str, rules: str = "gradient") -> str:
    """SHA-256 of what determines the gradient graph: the body, the output, the builder, and
    the rule set (the gradient's, or an LRP set: name and version)."""
    from blackbox_sal.surgery.gradient import BUILDER_VERSION
    from blackbox_sal.surgery.lrp_rules import RULE_SETS

    h = hashlib.sha256()
    h.update(f"builder={BUILDER_VERSION};output={output};".encode())
    if rules != "gradient":  # the plain graph's key stays what it was
        h.update(f"rules={rules}@{RULE_SETS[rules].version};".encode())
    h.update(body.SerializeToString(deterministic=True))
    return h.hexdigest()


def rules_session(model: TextModel, rules: str) -> GradientSession:
    """The graph of the model's modified gradient under an LRP rule set (``rules`` a name in
    :data:`~blackbox_sal.surgery.lrp_rules.RULE_SETS`; "gradient": :func:`gradient_session`).

    Built from the model's body like the gradient graph, once the plain gradient graph exists
    and is verified (it shares every rule but the overrides), then cached under its own key.
    It is not checked against finite differences: a modified gradient is not a derivative.
    ModelError when it cannot be had."""
    if rules == "gradient":
        return gradient_session(model)
    gradient_session(model)  # the plain graph first: ModelError says why there is none
    return model.runtime.kept(f"gradient:{rules}", lambda: _rules_built(model, rules))


def _rules_built(model: TextModel, rules: str) -> GradientSession:
    if model.body is None:
        raise ModelError(f"{rules} builds its own graph from the model's ONNX body, which {model.name!r} does not "
                         f"keep (a prepared folder): explain the original model folder")
    path = _cache_path(model, rules)
    if path.is_file():
        try:
            return GradientSession.create(path.read_bytes(), model)
        except (ModelError, OSError):
            log.info("ignoring an unreadable cached %s graph: %s", rules, path)
    try:
        from blackbox_sal.gradient_graph.build import build_gradient as build
        from blackbox_sal.surgery.lrp_rules import RULE_SETS
    except ImportError as exc:  # an edge install runs shipped graphs only
        raise ModelError(f"{rules} builds its graph from the model, which needs the onnx package") from exc
    try:
        proto = build(model, RULE_SETS[rules])
    except SalError:
        raise
    except Exception as exc:  # a rule that fails on an unusual graph: report it
        raise ModelError(f"building the {rules} graph failed ({type(exc).__name__}: {first_line(exc)}); "
                         f"please report it") from exc
    data = proto.SerializeToString()
    session = GradientSession.create(data, model)
    store(data, path)
    return session


def gradient_session(model: TextModel) -> GradientSession:
    """The model's verified gradient graph: shipped, cached or built once (by one thread, under
    the model's own lock), then kept with the model's runtime. Raises ModelError when no
    verified graph can be had."""
    return model.runtime.kept("gradient", lambda: _shipped(model, model.config.gradient_model)
                              if model.config.gradient_model else _cached_or_built(model))


def _shipped(model: TextModel, name: str) -> GradientSession:
    path = files.gradient_model_path(model.folder or Path("."), name)
    if model.config.prepared is not None:  # checked without onnx, run in its plain form (as on the edge)
        graph = GradientSession.create(files.read_plain_onnx(path), model, path_form=False)
    else:
        graph = GradientSession.create(files.read_onnx(path).SerializeToString(), model)
    _check_interface(model, graph)
    verify(model, graph)
    return graph


def build_gradient(model: TextModel) -> onnx.ModelProto:
    """The (unverified) gradient graph of the model (:mod:`.build`, imported here on first use:
    building needs the onnx package)."""
    from blackbox_sal.gradient_graph.build import build_gradient as build

    return build(model)


def graph_source(model: TextModel, rules: str = "gradient") -> bytes | None:
    """The serialized gradient graph (plain form) the model's session for ``rules`` was made
    from, read again where it lies (shipped in the folder, or in the cache); None where it
    cannot be read (a cache that could not be written). For derived forms (:mod:`.fan`), which
    are checked against the session in use, so a file changed since is caught there."""
    try:
        if rules == "gradient" and model.config.gradient_model:
            return files.read_onnx(files.gradient_model_path(model.folder or Path("."),
                                                             model.config.gradient_model)).SerializeToString()
        return _cache_path(model, rules).read_bytes()
    except (ModelError, OSError):
        return None


def _cache_path(model: TextModel, rules: str = "gradient") -> Path:
    if model.body is None:
        raise ModelError("this model keeps no graph to differentiate")
    return cache_dir() / f"grad-{cache_key(model.body, model.output, rules)[:32]}.onnx"


def _cached_or_built(model: TextModel) -> GradientSession:
    path = _cache_path(model)
    failed = path.with_suffix(FAILED_SUFFIX)  # the verdict of the check as it is now
    if not path.is_file() and failed.is_file():  # no graph can be had: say so, don't retry
        raise ModelError(failed.read_text(encoding="utf-8", errors="replace").strip())
    if path.is_file():
        cached = _trusted(model, path)
        if cached is not None:
            return cached
    try:
        proto, graph = _built_and_verified(model)
    except ModelError as exc:
        store(str(exc).encode("utf-8"), failed)
        raise
    data = proto.SerializeToString()
    store(data, path)
    store(_digest(model, data).encode(), path.with_suffix(".digest"))
    return graph


def _digest(model: TextModel, graph: bytes) -> str:
    """What a cached graph's digest file holds: the full cache key, and the graph's SHA-256."""
    assert model.body is not None
    return json.dumps({"model": cache_key(model.body, model.output), "graph": hashlib.sha256(graph).hexdigest()})


def _trusted(model: TextModel, path: Path) -> GradientSession | None:
    """The cached graph at ``path`` if its digest matches and it passes the check against
    finite differences; else None (said in the log), and the caller rebuilds it."""
    try:
        data = path.read_bytes()
        digest = path.with_suffix(".digest").read_text(encoding="utf-8", errors="replace")
    except OSError:
        log.warning("the cached gradient graph %s has no readable digest: building it again", path)
        return None
    if digest.strip() != _digest(model, data):
        log.warning("the cached gradient graph %s does not match its digest (changed since it was written): "
                    "building it again", path)
        return None
    try:
        cached = GradientSession.create(data, model)
        _check_interface(model, cached)
        verify(model, cached)  # a graph changed digest and all is still caught here
    except ModelError as exc:
        log.warning("the cached gradient graph %s fails its check (%s): building it again", path, printable(str(exc)))
        return None
    log.debug("gradient graph from the cache: %s", path)
    return cached


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
        data = proto.SerializeToString()
        path.write_bytes(data)
        if out is None:  # the cache's graphs carry their digest (see the module docstring)
            path.with_suffix(".digest").write_text(_digest(model, data), encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write {str(path)!r}: {exc.strerror}") from exc
    return path


def prepare(model: TextModel, out: str | os.PathLike[str]) -> Path:
    """Write a prepared folder for ``model`` at ``out`` (a new or empty folder): its body, table,
    verified gradient graph (the folder's own shipped graph if it has one, else built now),
    tokenizer.json and a config.json with the ``prepared`` block, so that an install without
    onnx loads the same model (:mod:`blackbox_sal.model.prepared`). The folder is written beside
    ``out`` and renamed into place once it loads and gives the model's outputs. Returns ``out``.
    ModelError when the model cannot be prepared (no graph to write, no verified gradient
    graph), UsageError when ``out`` cannot be written."""
    import shutil

    import numpy as np

    from blackbox_sal import __version__
    from blackbox_sal.model import prepared
    from blackbox_sal.model.loading import load_model

    if model.config.prepared is not None or model.body is None:
        raise ModelError(f"{model.name!r} was loaded from a prepared folder (or keeps no graph): "
                         f"prepare the original model folder instead")
    if model.features is not None:
        raise ModelError("a prepared folder holds a text model taking token embeddings; "
                         f"{model.name!r} is a {model.features.kind} model")
    tokenizer = files.read_side_file(model.folder, prepared.TOKENIZER) if model.folder is not None else None
    if tokenizer is None:  # read from another form (vocab.txt, SentencePiece, a character map): written out
        tokenizer = model.tokenizer.to_str().encode("utf-8")
    if model.config.gradient_model:
        graph = gradient_session(model)  # checked and verified as the model uses it
        proto = files.read_onnx(files.gradient_model_path(model.folder or Path("."), model.config.gradient_model))
    else:
        proto, graph = _built_and_verified(model)
    del graph
    target = Path(out)
    try:
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise UsageError(f"{str(target)!r} exists and is not an empty folder: choose a new one")
        target.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        umask = os.umask(0o022)
        os.umask(umask)
        work.chmod(0o777 & ~umask)  # mkdtemp's is 0700: the folder is meant to be shipped
    except OSError as exc:
        raise UsageError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
    config: dict[str, object] = {"name": model.name}
    if model.labels is not None:
        config["id2label"] = {str(i): label for i, label in enumerate(model.labels)}
    if model.max_length is not None:
        config["max_length"] = model.max_length
    config["gradient_model"] = prepared.GRAD
    config["prepared"] = prepared.block_of(model, f"blackbox-sal {__version__}").to_json()
    try:
        try:
            (work / prepared.MODEL).write_bytes(model.body.SerializeToString())
            np.save(work / prepared.TABLE, np.ascontiguousarray(model.table, dtype=np.float32), allow_pickle=False)
            (work / prepared.GRAD).write_bytes(proto.SerializeToString())
            (work / prepared.TOKENIZER).write_bytes(tokenizer)
            (work / prepared.CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {str(target)!r}: {exc.strerror or exc}") from exc
        again = load_model(work, device=model.device_request, threads=model.threads)
        gradient_session(again)  # the written graph, read and verified as an edge install will
        ids, types, mask = model.probe()
        x = model.embed(ids)[None]
        want, got = model.forward(x, ids, types, mask), again.forward(x, ids, types, mask)
        if not np.allclose(got, want, rtol=1e-6, atol=1e-7):
            raise ModelError(f"the prepared folder computes other outputs than the model "
                             f"(max difference {float(np.max(np.abs(got - want))):.3g}); please report it")
        if target.exists():
            target.rmdir()
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


def store(data: bytes, path: Path) -> None:
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
