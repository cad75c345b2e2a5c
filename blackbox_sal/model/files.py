"""Find and safely read the files of a model directory.

A model is a directory holding::

    model.onnx        the network; takes input_ids (split here at the lookup) or inputs_embeds
    tokenizer.json    a Hugging Face `tokenizers` file
    config.json       optional: id2label, max_length / max_position_embeddings
    embeddings.npy    required when model.onnx takes inputs_embeds: the [vocab, dim] table

or a path to a ``.onnx`` file with ``tokenizer.json`` (and the optional files) beside it.

Model folders are untrusted input. Every file read from the folder must lie in it: a link may
point only inside the folder (the path the user names is taken as given). External tensor
data is resolved here, against the folder only, with no links at all, and put inline
(:mod:`blackbox_sal.model.external_data`), so onnx and onnxruntime never resolve a file
themselves. Files are size-capped and read capped (2 GiB ONNX, 64 MiB tokenizer.json and
config.json; the embedding table is checked against its header and its file before it is
read); only standard operator domains are accepted, in function bodies and subgraphs too; no
custom-op library is ever loaded. Every failure to read a model file is a ModelError (exit 3).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from blackbox_sal.model import external_data, wire
from blackbox_sal.text.normalization import check_normalizer
from blackbox_sal.vocabulary.errors import ModelError

if TYPE_CHECKING:  # onnx is imported where a model is parsed: an edge install has none
    import onnx

#: protobuf's own limit; a larger model must keep its weights in external data files
MAX_ONNX_BYTES = 2 * 1024**3
MAX_SIDE_FILE_BYTES = 64 * 1024**2  # tokenizer.json / config.json
#: Operator domains a model may use: ONNX itself, ONNX-ML, and onnxruntime's built-in
#: contrib ops (code inside onnxruntime, not a library shipped with the model).
ALLOWED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml", "com.microsoft"})
#: config.json keys read as token limits (positive integers where given)
LENGTH_KEYS = ("max_length", "max_position_embeddings", "n_positions")


@dataclass(frozen=True)
class ModelFiles:
    """Paths and parsed side files of one model. ``name`` is what results report."""

    name: str
    onnx_path: Path
    tokenizer_path: Path | None  # None: the folder has none (a model that tokenizes itself, or takes numbers)
    config: dict[str, Any]
    embeddings_path: Path | None


def locate(path: str | os.PathLike[str]) -> ModelFiles:
    """Resolve a model directory or ``.onnx`` file; check that the needed files exist, lie in
    the folder (links only within it) and that config.json holds what it should."""
    p = Path(path).expanduser()
    try:
        exists, is_dir = p.exists(), p.is_dir()
    except (OSError, ValueError) as exc:
        raise ModelError(f"model not found: {str(path)!r} cannot be opened ({exc})") from exc
    if not exists:
        raise ModelError(f"model not found: {str(path)!r} does not exist")
    if is_dir:
        folder = p
        onnx_path = _in_folder(folder, "model.onnx")
        if onnx_path is None:
            found = sorted(x.name for x in p.glob("*.onnx"))
            hint = f" (found {', '.join(found)}: pass the file itself)" if found else ""
            raise ModelError(f"no model.onnx in {str(p)!r}{hint}")
    else:
        folder, onnx_path = p.parent, p
    tokenizer_path = _in_folder(folder, "tokenizer.json")
    config: dict[str, Any] = {}
    config_path = _in_folder(folder, "config.json")
    if config_path is not None:
        try:
            config = json.loads(_read_capped(config_path))
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting
            raise ModelError(f"{str(config_path)!r} is not valid JSON: {str(exc)[:200]}") from exc
        if not isinstance(config, dict):
            raise ModelError(f"{str(config_path)!r} must hold a JSON object")
        _check_config(config, folder)
    named = config.get("name")
    return ModelFiles(
        name=named if isinstance(named, str) and named else (p.name if is_dir else p.stem) or str(p),
        onnx_path=onnx_path,
        tokenizer_path=tokenizer_path,
        config=config,
        embeddings_path=_in_folder(folder, "embeddings.npy"),
    )


def _check_config(config: dict[str, Any], folder: Path) -> None:
    """The keys blackbox-sal reads must have the types it reads them as."""
    def bad(key: str, want: str) -> ModelError:
        try:
            shown = " " + json.dumps(config[key])[:60]
        except (ValueError, RecursionError):
            shown = ""
        return ModelError(f"config.json: {key!r} must be {want}, not {type(config[key]).__name__}{shown}")

    if config.get("name") is not None and not isinstance(config["name"], str):
        raise bad("name", "a string")
    labels = config.get("id2label")
    if labels is not None and not (isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values())):
        raise bad("id2label", 'an object of label names by index ({"0": "negative", ...})')
    for key in LENGTH_KEYS:
        value = config.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise bad(key, "an integer")
    kind = config.get("input_kind")
    if kind is not None and kind not in ("text", "bag-of-words", "features"):
        raise bad("input_kind", 'one of "text", "bag-of-words", "features"')
    names = config.get("feature_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(v, str) for v in names)):
        raise bad("feature_names", "a list of strings")
    if config.get("binary") is not None and not isinstance(config["binary"], bool):
        raise bad("binary", "true or false")
    grad = config.get("gradient_model")
    if grad is not None:
        if not isinstance(grad, str):
            raise bad("gradient_model", "a file name")
        _in_folder(folder, grad, what="config.json's gradient_model")


def _in_folder(folder: Path, name: str, what: str | None = None) -> Path | None:
    """``folder/name`` if it exists: a regular file whose real path lies inside the folder
    (a link may point only within it); None if there is no such entry. ModelError for a
    name that leaves the folder, a link out of it, or something that is not a file."""
    label = what or name
    parts = external_data.confined_parts(name, label)
    path = folder.joinpath(*parts)
    try:
        path.lstat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ModelError(f"{label} in {str(folder)!r} cannot be opened ({exc.strerror})") from exc
    try:
        real, root = path.resolve(strict=True), folder.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError) as exc:  # a dangling link or a link loop
        raise ModelError(f"{label} in {str(folder)!r} is a broken link ({exc})") from exc
    if root not in real.parents:
        raise ModelError(f"{label} in {str(folder)!r} is a link to a file outside the model folder; "
                         f"refused (copy the file into the folder)")
    if not stat.S_ISREG(mode):
        raise ModelError(f"{label} in {str(folder)!r} is not a regular file")
    return path


def gradient_model_path(folder: Path | None, name: str) -> Path:
    """The file config.json's ``gradient_model`` names, checked as :func:`locate` checks it."""
    if folder is None:
        raise ModelError(f"config.json names gradient_model {name!r}, but the model has no folder to find it in")
    path = _in_folder(folder, name, what="config.json's gradient_model")
    if path is None:
        raise ModelError(f"config.json names gradient_model {name!r}, which is not a file in the model folder")
    return path


def _read_capped(path: Path, cap: int = MAX_SIDE_FILE_BYTES) -> bytes:
    """The whole of a regular file of at most ``cap`` bytes (read capped: a file that grows
    or lies about its size is not read past the cap)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ModelError(f"{str(path)!r} is not a regular file")
            if st.st_size > cap:
                raise ModelError(f"{str(path)!r} is larger than {_size(cap)}")
            data = fh.read(cap + 1)
    except OSError as exc:
        raise ModelError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    if len(data) > cap:
        raise ModelError(f"{str(path)!r} is larger than {_size(cap)}")
    return data


def _size(n: int) -> str:
    return f"{n // 1024**3} GiB" if n >= 1024**3 else f"{n // 1024**2} MiB"


def require_tokenizer(found: ModelFiles) -> Path:
    """The folder's tokenizer.json; ModelError when it has none."""
    if found.tokenizer_path is None:
        raise ModelError(f"no tokenizer.json beside the model in {str(found.onnx_path.parent)!r}")
    return found.tokenizer_path


def read_tokenizer(path: Path) -> Tokenizer:
    """A ``tokenizers`` file, read capped (:data:`MAX_SIDE_FILE_BYTES`); ModelError if it
    cannot be parsed (tokenizers raises bare Exceptions, and panics for some input)."""
    data = _read_capped(path)
    try:
        tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(f"cannot read {str(path)!r}: {first}") from exc
    check_normalizer(tokenizer, repr(str(path)))  # a normalizer expanding each character by thousands
    return tokenizer


def read_onnx(path: Path) -> onnx.ModelProto:
    """Parse an ONNX file, resolve every external tensor against its folder only (and put it
    inline), and check the operator domains everywhere, function bodies and subgraphs
    included. Fields this onnx version does not know are dropped: onnxruntime gets only what
    was checked."""
    import onnx

    data = _read_capped(path, MAX_ONNX_BYTES)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError and friends, none of them exported
        raise ModelError(f"{str(path)!r} is not a readable ONNX model ({type(exc).__name__})") from exc
    size = len(data)
    del data
    model.DiscardUnknownFields()
    if not model.graph.node and not model.graph.output:
        raise ModelError(f"{str(path)!r} is not a readable ONNX model (empty graph)")
    bad = _invalid_text(model)
    if bad:
        raise ModelError(f"{str(path)!r} is not a readable ONNX model (invalid UTF-8 in a {bad} field)")
    found = external_data.walk(model)
    _check_domains(found)
    external_data.resolve(model, path.parent, found, size)
    return model


def _invalid_text(model: onnx.ModelProto) -> str | None:
    """The first string field that is not valid UTF-8 (protobuf hands such proto2 strings
    over as bytes, which onnx's checker and the graph code choke on), or None."""
    import onnx

    stack: list[Any] = [model]
    while stack:
        message = stack.pop()
        if isinstance(message, onnx.TensorProto):  # skip its data (ListFields would copy it)
            entries = [*message.external_data, *getattr(message, "metadata_props", [])]
            texts = [message.name, message.doc_string, *(e.key for e in entries), *(e.value for e in entries)]
            if not all(isinstance(t, str) for t in texts):
                return "onnx.TensorProto"
            continue
        for fd, value in message.ListFields():
            repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
            if fd.type == fd.TYPE_MESSAGE:
                stack.extend(value) if repeated else stack.append(value)
            elif fd.type == fd.TYPE_STRING and not all(isinstance(v, str) for v in (value if repeated else [value])):
                return str(fd.full_name)
    return None


def _check_domains(found: external_data.Contents) -> None:
    wire.refuse_domains(((d if isinstance(d, str) else d.decode("utf-8", "replace"), w)
                         for d, w in [*found.domains, *((n.domain, w) for n, w in found.nodes)]), ALLOWED_DOMAINS)


def read_plain_onnx(path: Path) -> bytes:
    """The bytes of a prepared model's ONNX file (see :mod:`blackbox_sal.model.prepared`),
    checked without the onnx package (:mod:`blackbox_sal.model.wire`): read capped, every
    tensor inline (none external, none sparse), operator domains allowed everywhere, strings
    UTF-8. The bytes go to onnxruntime as they are: nothing is left for it to resolve."""
    data = _read_capped(path, MAX_ONNX_BYTES)
    wire.check_model(data, repr(str(path)), ALLOWED_DOMAINS)
    return data


def read_table(path: Path, model: onnx.ModelProto | None = None, width: int | None = None) -> np.ndarray:
    """The embedding table of an inputs_embeds model: float32 [vocab, dim], no pickles.

    The header is checked against the file (memory-mapped, not read) and the size cap
    before any row is read; with ``model`` (or ``width``), the width must match its
    ``inputs_embeds``."""
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        why = "its header promises more data than the file holds" if "mmap length" in str(exc) else str(exc)[:200]
        raise ModelError(f"{str(path)!r} is not a readable .npy array: {why}") from exc
    if not isinstance(mapped, np.ndarray):  # an .npz archive
        raise ModelError(f"{str(path)!r} is not a .npy array")
    shape = tuple(int(d) for d in mapped.shape)
    if mapped.ndim != 2 or not np.issubdtype(mapped.dtype, np.floating) or 0 in shape:
        raise ModelError(f"{str(path)!r} must hold a 2-D float array, got {mapped.dtype} {list(shape)}")
    nbytes = shape[0] * shape[1] * 4
    if nbytes > external_data.MAX_TENSOR_BYTES:
        raise ModelError(f"{str(path)!r} holds a {shape[0]} x {shape[1]} table, "
                         f"{nbytes / 1024**3:.3g} GiB as float32: over the "
                         f"{external_data.MAX_TENSOR_BYTES / 1024**3:g} GiB limit")
    if model is not None:
        width = _embeds_width(model)
    if width is not None and shape[1] != width:
        raise ModelError(f"{str(path)!r} has rows of {shape[1]} values but the model's inputs_embeds "
                         f"takes {width}: they do not belong together")
    try:
        table = np.array(mapped, dtype=np.float32, order="C")
    except OSError as exc:
        raise ModelError(f"cannot read {str(path)!r}: {exc}") from exc
    finally:
        del mapped
    return table


def _embeds_width(model: onnx.ModelProto) -> int | None:
    """The static last dimension of the model's ``inputs_embeds`` input, if it has one."""
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if inp.name == "inputs_embeds" and dims and dims[-1].dim_value > 0:
            return int(dims[-1].dim_value)
    return None


def default_model_path() -> Path:
    """The bundled default model: packaged inside the wheel as ``blackbox_sal/default_model``,
    or ``models/sentiment-cnn`` in a source checkout (editable installs). Where onnx is not
    installed (the edge profile), its prepared copy ``prepared/`` inside it (written by
    ``models/prepare_default.py``), which loads without graph surgery."""
    import importlib.util

    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "default_model", package.parent / "models" / "sentiment-cnn"):
        if (candidate / "model.onnx").is_file():
            prepared = candidate / "prepared"
            if (prepared / "model.onnx").is_file() and importlib.util.find_spec("onnx") is None:
                return prepared
            return candidate
    raise ModelError("the bundled default model is missing from this installation; "
                     "pass --model PATH (or rebuild it with models/train_sentiment_cnn.py)")


def read_side_file(folder: Path, name: str) -> bytes | None:
    """A file of the model folder (``tokenizer.json``, say), read capped with the checks of
    config.json (:data:`MAX_SIDE_FILE_BYTES`, links only within the folder); None when absent."""
    path = _in_folder(folder, name)
    return None if path is None else _read_capped(path)


def read_side_json(folder: Path, name: str) -> Any:
    """A JSON side file of the model folder (``1_Pooling/config.json``, say), read with the same
    checks as config.json; None when the folder has none. ModelError when it is unreadable."""
    path = _in_folder(folder, name)
    if path is None:
        return None
    try:
        return json.loads(_read_capped(path))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 4,301-digit integer
        raise ModelError(f"{str(path)!r} is not valid JSON: {str(exc).splitlines()[0][:200]}") from exc
