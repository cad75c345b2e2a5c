"""Find and safely read the files of a model directory.

A model is a directory holding::

    model.onnx        the network; takes input_ids (split here at the lookup) or inputs_embeds
    tokenizer.json    a Hugging Face `tokenizers` file
    config.json       optional: id2label, max_length / max_position_embeddings
    embeddings.npy    required when model.onnx takes inputs_embeds: the [vocab, dim] table

or a path to a ``.onnx`` file with ``tokenizer.json`` (and the optional files) beside it.

Untrusted files: the onnx package has had path-traversal bugs in external-data handling, so
external tensors are resolved here, must lie inside the model directory and must not be
links; files are size-capped; only standard operator domains are accepted; no custom-op
library is ever loaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from blackbox_sal.errors import ModelError

#: protobuf's own limit; a larger model must keep its weights in external data files
MAX_ONNX_BYTES = 2 * 1024**3
MAX_SIDE_FILE_BYTES = 64 * 1024**2  # tokenizer.json / config.json
#: Operator domains a model may use: ONNX itself, ONNX-ML, and onnxruntime's built-in
#: contrib ops (code inside onnxruntime, not a library shipped with the model).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})


@dataclass(frozen=True)
class ModelFiles:
    """Paths and parsed side files of one model. ``name`` is what results report."""

    name: str
    onnx_path: Path
    tokenizer_path: Path
    config: dict[str, Any]
    embeddings_path: Path | None


def locate(path: str | os.PathLike[str]) -> ModelFiles:
    """Resolve a model directory or ``.onnx`` file; check that the needed files exist."""
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(f"model not found: {str(path)!r} does not exist")
    if p.is_dir():
        folder, onnx_path = p, p / "model.onnx"
        if not onnx_path.is_file():
            found = sorted(x.name for x in p.glob("*.onnx"))
            hint = f" (found {', '.join(found)}: pass the file itself)" if found else ""
            raise ModelError(f"no model.onnx in {str(p)!r}{hint}")
    else:
        folder, onnx_path = p.parent, p
    tokenizer_path = folder / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelError(f"no tokenizer.json beside the model in {str(folder)!r}")
    config: dict[str, Any] = {}
    config_path = folder / "config.json"
    if config_path.is_file():
        try:
            config = json.loads(_read_capped(config_path))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{str(config_path)!r} is not valid JSON: {exc}") from exc
        if not isinstance(config, dict):
            raise ModelError(f"{str(config_path)!r} must hold a JSON object")
    emb = folder / "embeddings.npy"
    named = config.get("name")
    return ModelFiles(
        name=named if isinstance(named, str) and named else (p.name if p.is_dir() else p.stem) or str(p),
        onnx_path=onnx_path,
        tokenizer_path=tokenizer_path,
        config=config,
        embeddings_path=emb if emb.is_file() else None,
    )


def _read_capped(path: Path, cap: int = MAX_SIDE_FILE_BYTES) -> bytes:
    if path.stat().st_size > cap:
        raise ModelError(f"{str(path)!r} is larger than {cap // 1024**2} MiB")
    return path.read_bytes()


def read_onnx(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file with external data confined to its folder; validate domains."""
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ModelError(f"{str(path)!r} is {size / 1024**3:.1f} GiB, over the 2 GiB ONNX limit")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends, none of them exported
        raise ModelError(f"{str(path)!r} is not a readable ONNX model ({type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{str(path)!r} is not a readable ONNX model (empty graph)")
    _load_external_data(model, path.parent.resolve())
    domains = {op.domain for op in model.opset_import} | {n.domain for n in model.graph.node}
    bad = sorted(d for d in domains if d not in ALLOWED_DOMAINS)
    if bad:
        raise ModelError(
            f"the model uses operator domains {', '.join(bad)}; only standard ONNX "
            f"(and onnxruntime's built-in com.microsoft) operators are accepted")
    if any(f.domain not in ALLOWED_DOMAINS for f in model.functions):
        raise ModelError("the model defines functions in a non-standard domain")
    return model


def _tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor a graph holds: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in [*attr.graphs, *([attr.g] if attr.HasField("g") else [])]:
                yield from _tensors(sub)


def _load_external_data(model: onnx.ModelProto, folder: Path) -> None:
    """Load external tensors ourselves, refusing any outside ``folder`` or behind a link."""
    from onnx.external_data_helper import ExternalDataInfo

    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = ExternalDataInfo(tensor)
        rel = Path(info.location)
        target = folder / rel
        if rel.is_absolute() or ".." in rel.parts or target.is_symlink():
            raise ModelError(f"external data {info.location!r} is outside the model folder or a link")
        resolved = target.resolve()
        if folder not in resolved.parents or not resolved.is_file():
            raise ModelError(f"external data {info.location!r} is missing or outside the model folder")
        if os.stat(resolved).st_nlink > 1:
            raise ModelError(f"external data {info.location!r} is a hard link; refusing it")
        with open(resolved, "rb") as fh:
            fh.seek(info.offset or 0)
            data = fh.read(info.length) if info.length else fh.read()
        tensor.raw_data = data
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def read_table(path: Path) -> np.ndarray:
    """The embedding table of an inputs_embeds model: float32 [vocab, dim], no pickles."""
    try:
        table = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ModelError(f"{str(path)!r} is not a readable .npy array: {exc}") from exc
    if table.ndim != 2 or not np.issubdtype(table.dtype, np.floating):
        raise ModelError(f"{str(path)!r} must hold a 2-D float array, got {table.dtype} {table.shape}")
    return np.ascontiguousarray(table, dtype=np.float32)


def default_model_path() -> Path:
    """The bundled default model: packaged inside the wheel as ``blackbox_sal/default_model``,
    or ``models/sentiment-cnn`` in a source checkout (editable installs)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "default_model", package.parent / "models" / "sentiment-cnn"):
        if (candidate / "model.onnx").is_file():
            return candidate
    raise ModelError("the bundled default model is missing from this installation; "
                     "pass --model PATH (or rebuild it with models/train_sentiment_cnn.py)")
