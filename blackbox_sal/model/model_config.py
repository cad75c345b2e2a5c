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
        )


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
