"""What the server's routes take and give, independent of the web framework.

Requests (KServe V1, and the V2 inference protocol's "explainer as a model" form, as MLServer
runs explainers) become rows and an :class:`~blackbox_sal.config.ExplainConfig`; results
become the CLI's JSON objects with the version and the time each took. Every failure is an
:class:`HttpError` with its status and a one-line message, never a traceback:

======  ============================================================================
status  when
======  ============================================================================
400     malformed JSON or request, unknown parameter or value, a text the model cannot
        take (empty, not the model's kind), unknown label
404     unknown model or route
413     body over the limit; a text over the character or token limit
422     the model cannot explain this text (it fails when run, its output is not finite)
429     the queue is full (Retry-After)
503     not ready, or draining on SIGTERM (Retry-After)
504     the request's deadline passed (the work in flight was stopped)
======  ============================================================================
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from blackbox_sal import __version__
from blackbox_sal.config import ExplainConfig
from blackbox_sal.datasets import Row
from blackbox_sal.errors import InputError, ModelError, SalError, TooLongError, UnavailableError, UsageError
from blackbox_sal.render.json import document

#: request parameters that map onto ExplainConfig fields (the rest are refused)
PARAMETERS = frozenset(f.name for f in dataclasses.fields(ExplainConfig)) - {"progress", "max_chars",
                                                                             "batch_size", "tokens_per_run"}


class HttpError(Exception):
    """A failure with its HTTP status (and, for 429/503, when to come back)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def status_of(error: SalError) -> int:
    """The HTTP status of a library error."""
    if isinstance(error, TooLongError):
        return 413
    if isinstance(error, (InputError, UsageError, UnavailableError)):
        return 400
    if isinstance(error, ModelError):
        return 422
    return 500


#: a JSON escape of a UTF-16 surrogate, \ud800 to \udfff: in a body that is UTF-8, the only way to
#: a string with a lone surrogate
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(body: bytes) -> dict[str, Any]:
    """The body's JSON object; 400 when it is not one, not UTF-8 (RFC 8259), or when a string
    in it holds a lone surrogate (``"\\udc00"``): such a string is not text, the tokenizer
    refuses it and no answer echoing it could be encoded."""
    try:
        text = body.decode("utf-8")  # strict: json.loads(bytes) would let encoded surrogates through
        data = json.loads(text)
    except UnicodeDecodeError:
        raise HttpError(400, "the body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and an integer over Python's 4,300 digits
        raise HttpError(400, f"the body is not valid JSON: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(data, dict):
        raise HttpError(400, "the body must be a JSON object")
    if _SURROGATE_ESCAPE.search(text) and not _unicode(data):  # escaped pairs (emoji) are fine
        raise HttpError(400, "the body holds a string with a lone UTF-16 surrogate (an escape \\ud800 to "
                             "\\udfff not in a pair): it is not text")
    return data


def _unicode(data: Any) -> bool:
    """Whether every string in ``data`` (keys too) can be encoded as UTF-8."""
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


_STR, _NUM = (str,), (int, float)
#: each parameter's JSON types (bool is not a number here); ExplainConfig.validated checks the values
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    **{name: (_STR, "a string") for name in ("method", "backend", "score", "quadrature", "baseline",
                                             "fd_scheme", "long", "players")},
    "reduce": ((str, type(None)), "a string or null"),
    "target": ((str, int, type(None)), "a label, an index or null"),
    "steps": ((str, int), "an integer or 'auto'"),
    **{name: (_NUM, "a number") for name in ("tolerance", "noise")},
    "fd_step": ((int, float, type(None)), "a number or null"),
    **{name: ((bool,), "true or false") for name in ("words", "richardson")},
    **{name: ((int,), "an integer") for name in ("samples", "seed")},
    "window_overlap": ((int, type(None)), "an integer or null"),
    "direction": ((list, type(None)), "a list of numbers or null"),
}


def config_of(parameters: Any, defaults: ExplainConfig, max_chars: int) -> ExplainConfig:
    """The request's ExplainConfig: the server's defaults with the request's parameters."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise HttpError(400, "parameters must be a JSON object")
    unknown = sorted(set(parameters) - PARAMETERS)
    if unknown:
        raise HttpError(400, f"unknown parameter {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(sorted(PARAMETERS))})")
    values = dict(parameters)
    for name, value in values.items():
        kinds, what = _KINDS.get(name, ((), ""))
        if kinds and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            raise HttpError(400, f"parameter {name} must be {what}, got {json.dumps(value)[:80]}")
    if "direction" in values and values["direction"] is not None:
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values["direction"]):
            raise HttpError(400, "direction must be a list of numbers")
        values["direction"] = tuple(values["direction"])
    try:
        return dataclasses.replace(defaults, **values, max_chars=max_chars).validated()
    except SalError as exc:
        raise HttpError(400, str(exc)) from None
    except TypeError as exc:
        raise HttpError(400, f"a parameter has the wrong type: {exc}") from None


def _text(value: Any, where: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise HttpError(400, f"{where} must be a string")
    if not value:  # before any work, so that no other outcome (a 504) can come first
        raise HttpError(400, f"{where} is empty")
    if len(value) > max_chars:  # before tokenizing: a tokenizer's work grows with the text
        raise HttpError(413, f"{where} has {len(value):,} characters; at most {max_chars:,} are accepted")
    return value


def instance_rows(data: dict[str, Any], max_instances: int, max_chars: int) -> list[Row]:
    """KServe V1 ``{"instances": [...]}``: each a text, or ``{"text", "target", "pair", "choices"}``."""
    _request_id(data)
    instances = data.get("instances")
    if not isinstance(instances, list) or not instances:
        raise HttpError(400, 'the body must hold "instances": a non-empty list of texts or objects')
    if len(instances) > max_instances:
        raise HttpError(413, f"{len(instances):,} instances; at most {max_instances:,} per request")
    rows = []
    for k, item in enumerate(instances):
        where = f"instance {k}"
        if isinstance(item, str):
            rows.append(Row(k, _text(item, where, max_chars)))
            continue
        if not isinstance(item, dict):
            raise HttpError(400, f"{where} must be a text or an object with a text")
        extra = set(item) - {"text", "target", "pair", "choices", "id"}
        if extra:
            raise HttpError(400, f"{where} has unknown fields {', '.join(sorted(extra))}")
        if not isinstance(item.get("id"), str | int | None) or isinstance(item.get("id"), bool):
            raise HttpError(400, f"{where}: id must be a string, an integer or null")
        target = item.get("target")
        if target is not None and not isinstance(target, str | int):
            raise HttpError(400, f"{where}: target must be a label or an index")
        pair = item.get("pair")
        choices = item.get("choices")
        if pair is not None and choices is not None:
            raise HttpError(400, f"{where}: give a pair or choices, not both")
        if choices is not None and not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            raise HttpError(400, f"{where}: choices must be a list of texts")
        rows.append(Row(k, _text(item.get("text"), f"{where} text", max_chars),
                        str(item["id"]) if item.get("id") is not None else None, None,
                        None if target is None else str(target),
                        None if pair is None else _text(pair, f"{where} pair", max_chars),
                        None if choices is None else tuple(_text(c, f"{where} choice", max_chars) for c in choices)))
    return rows


def infer_rows(data: dict[str, Any], max_instances: int, max_chars: int) -> list[Row]:
    """The V2 inference protocol: one BYTES input holding the texts."""
    _request_id(data)
    outputs = data.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise HttpError(400, '"outputs" must be a list of objects')
    inputs = data.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise HttpError(400, 'the body must hold "inputs": one BYTES input with the texts')
    tensor = inputs[0]
    shape = tensor.get("shape", [])
    if (tensor.get("datatype") != "BYTES" or not isinstance(tensor.get("data"), list)
            or not isinstance(tensor.get("name", ""), str)
            or not (isinstance(shape, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in shape))):
        raise HttpError(400, 'the input must be {"name", "datatype": "BYTES", "shape": [n], "data": [texts]}')
    texts = tensor["data"]
    if not texts:
        raise HttpError(400, "the input holds no texts")
    if len(texts) > max_instances:
        raise HttpError(413, f"{len(texts):,} texts; at most {max_instances:,} per request")
    return [Row(k, _text(t, f"text {k}", max_chars)) for k, t in enumerate(texts)]


def _request_id(data: dict[str, Any]) -> None:
    if not isinstance(data.get("id", ""), str):
        raise HttpError(400, "the request's id must be a string")


def explanation_object(result: object, seconds: float) -> dict[str, Any]:
    """The CLI's JSON object of a result, with the version that made it and the time it took."""
    return {**document(result), "producer": {"version": __version__, "seconds": round(seconds, 6)}}


@dataclass(frozen=True)
class Limits:
    """What the server accepts, per request and in all (see the README's server section).

    max_body: bytes per request body. max_chars: characters per text. max_instances: texts
    per request. max_active: works (texts) the engine runs together. queue_size: works waiting
    beyond those (429 beyond). deadline: seconds a request may take at most (504 beyond).
    batch_window: seconds the engine waits after a first text for others to share its runs.
    max_reading: request bodies read and parsed at the same time (the rest wait their turn).
    max_connections: requests answered at the same time (503 beyond).
    """

    max_body: int = 64 * 1024**2
    max_chars: int = 100_000
    max_instances: int = 256
    max_active: int = 64
    queue_size: int = 256
    deadline: float = 30.0
    batch_window: float = 0.005
    max_reading: int = 4
    max_connections: int = 256

    def validated(self) -> Limits:
        """Itself, or UsageError naming the setting out of range."""
        ranges: dict[str, tuple[float, float]] = {
            "max_body": (1, 2**31), "max_chars": (1, 10_000_000), "max_instances": (1, 4096),
            "max_active": (1, 4096), "queue_size": (1, 1_000_000), "deadline": (0.001, 3600),
            "batch_window": (0, 1), "max_reading": (1, 1024), "max_connections": (1, 100_000)}
        for name, (low, high) in ranges.items():
            value = getattr(self, name)
            if not low <= value <= high:
                flag = "--" + {"queue_size": "queue"}.get(name, name).replace("_", "-")
                raise UsageError(f"{flag} must be from {low:g} to {high:g}, got {value}")
        return self
