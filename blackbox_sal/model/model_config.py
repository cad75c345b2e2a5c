"""What a model folder's ``config.json`` says, read once into typed fields.

Keys read (all optional): ``name``, ``id2label`` (or ``labels``, a list), ``max_length`` /
``max_position_embeddings`` / ``n_positions`` (the token limit), ``gradient_model`` (a shipped
gradient graph, a file in the folder). Anything malformed is a ModelError (exit 3); unknown
keys are ignored (Hugging Face configs carry many).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from blackbox_sal.errors import ModelError

#: config keys that give the token limit, in the order they are tried
LENGTH_KEYS = ("max_length", "max_position_embeddings", "n_positions")


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

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> ModelConfig:
        name = raw.get("name")
        shipped = raw.get("gradient_model")
        if shipped is not None and (not isinstance(shipped, str) or not shipped):
            raise ModelError("config.json gradient_model must be a file name in the model folder")
        return cls(
            name=name if isinstance(name, str) and name.strip() else None,
            labels=_labels(raw),
            max_length=next((v for k in LENGTH_KEYS if isinstance(v := raw.get(k), int)
                             and not isinstance(v, bool) and v > 0), None),
            gradient_model=shipped,
            pooling=_pooling(raw.get("pooling")),
            normalize=raw.get("normalize") if isinstance(raw.get("normalize"), bool) else None,
            input_kind=str(raw.get("input_kind") or "text"),
            binary=raw.get("binary") is not False,
            feature_names=tuple(raw["feature_names"]) if isinstance(raw.get("feature_names"), list) else None,
        )


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


def _labels(raw: dict[str, Any]) -> tuple[str, ...] | None:
    listed = raw.get("labels")
    if isinstance(listed, list) and listed and "id2label" not in raw:
        return tuple(str(v) for v in listed)
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
    return tuple(v for _, v in pairs)
