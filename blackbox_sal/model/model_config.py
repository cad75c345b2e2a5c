"""What a model folder's ``config.json`` says, read once into typed fields.

Keys read (all optional): ``name``, ``id2label`` (or ``labels``, a list), ``max_length`` /
``max_position_embeddings`` / ``n_positions`` (the token limit), ``gradient_model`` (a shipped
gradient graph, a file in the folder), ``prepared`` (a folder written by ``blackbox-sal grad
--folder``: what loading it needs, see :class:`Prepared`), ``inputs`` (the inputs by role,
see :mod:`blackbox_sal.surgery.roles`), ``channels`` (a second id channel: where its ids come
from, see :class:`ChannelConfig`). Anything malformed is a ModelError
(exit 3); unknown keys are ignored (Hugging Face configs carry many).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blackbox_sal.surgery.names import INPUT_ROLES
from blackbox_sal.vocabulary.errors import ModelError

#: config keys that give the token limit, in the order they are tried
LENGTH_KEYS = ("max_length", "max_position_embeddings", "n_positions")


#: the prepared-folder format this version writes and reads
PREPARED_FORMAT = 1
#: what a prepared model's explained output is (TextModel.task)
PREPARED_TASKS = ("classification", "next-token", "multiple-choice", "embedding", "answer-span", "per-token")


@dataclass(frozen=True)
class Prepared:
    """The ``"prepared"`` block of a prepared folder's config.json: what loading the folder
    needs to give the same model as the original folder, where every load-time rewrite was
    done (split, dequantized, one choice at a time, last position, pooled) and is now in
    ``model.onnx``. ``fixed_length``, ``fixed_batch`` and ``pad_id`` are what the original
    had; loading checks that the files still say the same.

    output: the explained output of model.onnx. task: classification, next-token,
    multiple-choice or embedding. origin: how the embeddings input was obtained in the
    original (the split lookup, or given). pooling: how token states were pooled (the note
    explanations carry), or None. quantized / twin_of / weight_only: the integer op types the
    original had, replaced or dequantized (the notes explanations carry). by: the writer.
    """

    output: str
    task: str = "classification"
    origin: str = "given"
    pooling: str | None = None
    quantized: tuple[str, ...] = ()
    twin_of: tuple[str, ...] = ()
    weight_only: tuple[str, ...] = ()
    fixed_length: int | None = None
    fixed_batch: int | None = None
    pad_id: int | None = None
    #: a model with a second id channel: (name, input, start, stop) of each channel's dimensions
    channels: tuple[tuple[str, str, int, int], ...] = ()
    format: int = PREPARED_FORMAT
    by: str = field(default="", compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "by": self.by, "output": self.output, "task": self.task,
                "origin": self.origin, "pooling": self.pooling, "quantized": list(self.quantized),
                "twin_of": list(self.twin_of), "weight_only": list(self.weight_only),
                "fixed_length": self.fixed_length, "fixed_batch": self.fixed_batch, "pad_id": self.pad_id,
                **({"channels": [list(c) for c in self.channels]} if self.channels else {})}

    @classmethod
    def parse(cls, raw: Any) -> Prepared:
        """The block as written by :meth:`to_json`; ModelError for anything else."""
        def bad(key: str, want: str) -> ModelError:
            return ModelError(f"config.json: prepared.{key} must be {want}")

        if not isinstance(raw, dict):
            raise ModelError("config.json: 'prepared' must be an object")
        fmt = raw.get("format")
        if not isinstance(fmt, int) or isinstance(fmt, bool):
            raise bad("format", "an integer")
        if fmt != PREPARED_FORMAT:
            raise ModelError(f"the folder was prepared in format {fmt}; this blackbox-sal reads format "
                             f"{PREPARED_FORMAT}: prepare it again with this version")

        def text(key: str, optional: bool = False) -> str | None:
            value = raw.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, str) or not value:
                raise bad(key, "a non-empty string" + (" or null" if optional else ""))
            return value

        def names(key: str) -> tuple[str, ...]:
            value = raw.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad(key, "a list of strings")
            return tuple(value)

        def count(key: str, low: int) -> int | None:
            value = raw.get(key)
            if value is None:
                return None
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise bad(key, f"an integer >= {low} or null")
            return value

        channels = raw.get("channels", [])
        if not isinstance(channels, list) or not all(
                isinstance(c, list) and len(c) == 4 and all(isinstance(v, str) for v in c[:2])
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in c[2:]) for c in channels):
            raise bad("channels", "a list of [name, input, start, stop]")
        task = text("task")
        if task not in PREPARED_TASKS:
            raise bad("task", "one of " + ", ".join(PREPARED_TASKS))
        by = raw.get("by", "")
        return cls(output=str(text("output")), task=str(task), origin=str(text("origin")),
                   pooling=text("pooling", optional=True), quantized=names("quantized"), twin_of=names("twin_of"),
                   weight_only=names("weight_only"), fixed_length=count("fixed_length", 1),
                   fixed_batch=count("fixed_batch", 1), pad_id=count("pad_id", 0), format=fmt,
                   channels=tuple((str(c[0]), str(c[1]), int(c[2]), int(c[3])) for c in channels),
                   by=by if isinstance(by, str) else "")


@dataclass(frozen=True)
class ChannelConfig:
    """One entry of config.json's ``"channels"``: a second id input (character classes, say)
    whose id at each position is a function of the token there::

        "channels": {"classes": {"input": "cls", "map": {"a": 1, "7": 2}, "default": 0}}
        "channels": {"classes": {"input": "cls", "file": "classes.json", "default": 0}}

    name: what the channel's scores are called. input: the model's input that takes its ids.
    map: token (as the tokenizer spells it) -> id; or file: a JSON object of the same, a file
    in the model folder. default: the id of every token the map leaves out (None: the map must
    cover the whole vocabulary)."""

    name: str
    input: str
    map: dict[str, int] | None = None
    file: str | None = None
    default: int | None = None


@dataclass(frozen=True)
class ModelConfig:
    """name: what results report (None: the folder's name). labels: class names by index.
    max_length: the token limit the config states. gradient_model: a shipped gradient graph's
    file name. raw: the whole parsed object."""

    name: str | None = None
    labels: tuple[str, ...] | None = None
    max_length: int | None = None
    gradient_model: str | None = None
    #: how a feature-extraction export's token states become one embedding (mean, cls, max)
    pooling: str | None = None
    normalize: bool | None = None
    #: text (the default), bag-of-words (a float [batch, F] input fed from tokenizer ids) or
    #: features (a float [batch, F] input of numbers)
    input_kind: str = "text"
    #: bag-of-words: presence (true, the default) or counts
    binary: bool = True
    feature_names: tuple[str, ...] | None = None
    #: a prepared folder (blackbox-sal grad --folder): what loading it needs; None for any other
    prepared: Prepared | None = None
    #: role -> input name (ids, mask, padding_mask, token_types, positions, lengths), where the
    #: graph leaves the inputs' roles ambiguous (see blackbox_sal.surgery.roles); None: found
    inputs: dict[str, str] | None = None
    #: second id channels by name (see :class:`ChannelConfig`); () for a model with one
    channels: tuple[ChannelConfig, ...] = ()

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ModelConfig:
        name = raw.get("name")
        shipped = raw.get("gradient_model")
        if shipped is not None and (not isinstance(shipped, str) or not shipped):
            raise ModelError("config.json gradient_model must be a file name in the model folder")
        return cls(
            name=name if isinstance(name, str) and name.strip() else None,
            labels=_labels(raw),
            max_length=_max_length(raw),
            gradient_model=shipped,
            pooling=_pooling(raw.get("pooling")),
            normalize=raw.get("normalize") if isinstance(raw.get("normalize"), bool) else None,
            input_kind=str(raw.get("input_kind") or "text"),
            binary=raw.get("binary") is not False,
            feature_names=tuple(raw["feature_names"]) if isinstance(raw.get("feature_names"), list) else None,
            prepared=Prepared.parse(raw["prepared"]) if raw.get("prepared") is not None else None,
            inputs=_inputs(raw.get("inputs")),
            channels=_channels(raw.get("channels")),
        )


#: what config.json "channels" must look like, said by every complaint about it
CHANNELS_FORM = ('"channels": {"NAME": {"input": INPUT, "map": {TOKEN: ID, ...} or "file": FILE, '
                 '"default": ID}}')


def _channels(value: Any) -> tuple[ChannelConfig, ...]:
    """config.json's ``"channels"`` (see :class:`ChannelConfig`); ModelError naming the form."""
    if value is None:
        return ()

    def bad(why: str) -> ModelError:
        return ModelError(f"config.json channels: {why} (the form: {CHANNELS_FORM})")

    if not isinstance(value, dict) or not value:
        raise bad("must be an object of channels by name")
    found = []
    for name, spec in value.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("input"), str) or not spec["input"]:
            raise bad(f"{name!r} must be an object naming its input")
        unknown = sorted(set(spec) - {"input", "map", "file", "default"})
        if unknown:
            raise bad(f"{name!r} has an unknown key {unknown[0]!r}")
        if ("map" in spec) == ("file" in spec):
            raise bad(f"{name!r} needs a map or a file, one of them")
        mapping = spec.get("map")
        if mapping is not None and (not isinstance(mapping, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in mapping.values())):
            raise bad(f"{name!r}: map must be an object of token -> id (an integer >= 0)")
        file = spec.get("file")
        if file is not None and (not isinstance(file, str) or not file):
            raise bad(f"{name!r}: file must be the name of a JSON file in the model folder")
        default = spec.get("default")
        if default is not None and (not isinstance(default, int) or isinstance(default, bool) or default < 0):
            raise bad(f"{name!r}: default must be an id (an integer >= 0)")
        found.append(ChannelConfig(str(name), spec["input"], mapping, file, default))
    if len({c.input for c in found}) != len(found):
        raise bad("two channels name the same input")
    return tuple(found)


def _inputs(value: Any) -> dict[str, str] | None:
    """config.json's ``"inputs": {"ids": "x", "mask": "m", ...}``: role -> input name."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value or not all(isinstance(v, str) and v for v in value.values()):
        raise ModelError('config.json inputs must be an object of input names by role, e.g. '
                         '{"ids": "x", "mask": "m"}')
    unknown = sorted(set(value) - set(INPUT_ROLES))
    if unknown:
        raise ModelError(f"config.json inputs: unknown role {unknown[0]!r} (roles: {', '.join(INPUT_ROLES)})")
    if len(set(value.values())) != len(value):
        raise ModelError("config.json inputs: one input named for two roles")
    return {str(k): str(v) for k, v in value.items()}


def _pooling(value: Any) -> str | None:
    if value is None:
        return None
    if value not in ("mean", "cls", "max"):
        raise ModelError(f"config.json pooling must be mean, cls or max, got {value!r}")
    return str(value)


def sentence_transformers_pooling(modules: Any, pooling: Any) -> tuple[str, bool] | None:
    """(mode, normalize) from a sentence-transformers folder's ``modules.json`` and its pooling
    module's ``config.json``; None when the folder has no such files. ModelError for a pooling
    blackbox-sal does not compute (several modes at once, mean over sqrt(length))."""
    if not isinstance(modules, list) or not isinstance(pooling, dict):
        return None
    modes = [mode for key, mode in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                    ("pooling_mode_max_tokens", "max")) if pooling.get(key) is True]
    other = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True
             and k not in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_max_tokens")]
    if other or len(modes) != 1:
        raise ModelError(f"the model's sentence-transformers pooling ({', '.join(modes + other) or 'none'}) is not "
                         f"one of mean, cls, max: choose one with --pooling")
    normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith(".Normalize") for m in modules)
    return modes[0], normalize


def pooling_folder(modules: Any) -> str | None:
    """The folder of the pooling module named in a sentence-transformers ``modules.json``."""
    if not isinstance(modules, list):
        return None
    for m in modules:
        if isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling") and isinstance(m.get("path"), str):
            return str(m["path"])
    return None


def _max_length(raw: dict[str, Any]) -> int | None:
    """The first token limit among LENGTH_KEYS that is an integer; ModelError for one of 0 or
    less (every text would be refused, or the limit silently dropped)."""
    for key in LENGTH_KEYS:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            if value <= 0:
                raise ModelError(f"config.json {key} must be a positive number of tokens, not {value}")
            return value
    return None


def _distinct(labels: tuple[str, ...]) -> tuple[str, ...]:
    """``labels`` when no two are the same (up to surrounding spaces, which the target's name
    is read without): else --target LABEL would pick one of them. ModelError naming them."""
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        key = label.strip()
        if key in seen:
            first = labels[seen[key]]
            same = f"both {label!r}" if first == label else f"{first!r} and {label!r}, the same up to spaces"
            raise ModelError(f"config.json labels {seen[key]} and {index} are {same}: a target label could not "
                             f"tell them apart; give each class its own name")
        seen[key] = index
    return labels


def _labels(raw: dict[str, Any]) -> tuple[str, ...] | None:
    listed = raw.get("labels")
    if isinstance(listed, list) and listed and "id2label" not in raw:
        return _distinct(tuple(str(v) for v in listed))
    table = raw.get("id2label")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ModelError("config.json id2label must be an object {\"0\": \"label\", ...}")
    if not table:
        return None
    try:
        pairs = sorted((int(k), str(v)) for k, v in table.items())
    except ValueError as exc:
        raise ModelError("config.json id2label keys must be integers") from exc
    if [k for k, _ in pairs] != list(range(len(pairs))):
        raise ModelError("config.json id2label must number the labels 0..n-1")
    return _distinct(tuple(v for _, v in pairs))
