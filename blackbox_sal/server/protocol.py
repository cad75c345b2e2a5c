"""What the server's routes take and give, independent of the web framework.

Requests (KServe V1, and the V2 inference protocol's "explainer as a model" form, as MLServer
runs explainers) become rows and an :class:`~blackbox_sal.vocabulary.config.ExplainConfig`; results
become the CLI's JSON objects with the version and the time each took. Every failure is an
:class:`HttpError` with its status and a one-line message, never a traceback:

======  ============================================================================
status  when
======  ============================================================================
400     malformed JSON or request, unknown parameter or value, a text the model cannot
        take (empty, not the model's kind), unknown label
404     unknown model or route
408     the body did not arrive in full within ``read_timeout`` seconds
413     body over the limit; a text over the character or token limit
415     the body is not declared ``application/json``
422     the model cannot explain this text (it fails when run, its output is not finite)
429     the queue is full (Retry-After)
503     not ready, or draining on SIGTERM, or too many bytes of bodies being read (Retry-After)
504     the request's deadline passed (the work in flight was stopped)
======  ============================================================================

A request of several instances answers each alone: when some fail and others do not, the
status is 200 and a failed instance's place holds ``{"error": message, "status": code}`` (V1,
and the V2 explainer's JSON strings), or, for V2 predictions, a row of null scores, the label
"" and an ``error`` output of one message per instance ("" where it succeeded). When every
instance fails, the first failure is the request's status, as one JSON error.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from blackbox_sal import __version__
from blackbox_sal.jobs.datasets import Row
from blackbox_sal.render.json import document
from blackbox_sal.vocabulary.config import SETTINGS, ExplainConfig
from blackbox_sal.vocabulary.config import Limits as Limits  # the server's limits live with the settings spec
from blackbox_sal.vocabulary.errors import (
    DeadlineError,
    InputError,
    ModelError,
    SalError,
    TooLongError,
    UnavailableError,
    UsageError,
)
from blackbox_sal.vocabulary.settings import Setting, request_value

#: what a request's ``parameters`` may hold, by name (the settings spec's ``request`` entries;
#: ``deadline`` is the server's, the rest ExplainConfig's); the rest are refused
REQUEST: dict[str, Setting] = {e.name: e for e in SETTINGS if e.request}
#: request parameters that map onto ExplainConfig fields
PARAMETERS = frozenset(name for name, e in REQUEST.items() if e.owner == ExplainConfig.__name__)


class HttpError(Exception):
    """A failure with its HTTP status (and, for 429/503, when to come back)."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after
        self.close = close  # the body was left half-read: the connection ends with the answer


def check_json_type(content_type: str | None) -> None:
    """415 unless the body is declared ``application/json`` (with, at most, ``charset=utf-8``):
    ``text/plain``, a form or no type at all is what a web page can post to another origin
    without a preflight, so taking them as JSON would let any page drive a server on loopback."""
    media, _, params = (content_type or "").partition(";")
    charset = params.strip().lower()
    if media.strip().lower() != "application/json" or charset not in ("", "charset=utf-8", 'charset="utf-8"'):
        shown = json.dumps((content_type or "")[:80])
        raise HttpError(415, f"the body must be JSON, sent as Content-Type: application/json (got {shown})")


def status_of(error: SalError) -> int:
    """The HTTP status of a library error."""
    if isinstance(error, TooLongError):
        return 413
    if isinstance(error, (InputError, UsageError, UnavailableError)):
        return 400
    if isinstance(error, ModelError):
        return 422
    if isinstance(error, DeadlineError):  # a model run past --timeout, stopped
        return 504
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


def settings_of(parameters: Any, defaults: ExplainConfig, limits: Limits) -> tuple[ExplainConfig, float]:
    """The request's ExplainConfig (the server's defaults with the request's parameters) and its
    deadline in seconds (``parameters.deadline``, above 0 and at most the server's)."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise HttpError(400, "parameters must be a JSON object")
    unknown = sorted(set(parameters) - set(REQUEST))
    if unknown:
        raise HttpError(400, f"unknown parameter {', '.join(map(repr, unknown))} "
                             f"(known: {', '.join(sorted(REQUEST))})")
    try:
        values = {name: request_value(REQUEST[name], value) for name, value in parameters.items()}
        deadline = values.pop("deadline", None)
        if deadline is not None and not 0 < deadline <= limits.deadline:
            raise UsageError(f"deadline must be a number of seconds above 0 and at most {limits.deadline:g}")
        config = dataclasses.replace(defaults, **values, max_chars=limits.max_chars).validated()
    except SalError as exc:
        raise HttpError(400, str(exc)) from None
    return config, limits.deadline if deadline is None else float(deadline)


def _text(value: Any, where: str, max_chars: int) -> str:
    if not isinstance(value, str):
        raise HttpError(400, f"{where} must be a string")
    if not value:  # before any work, so that no other outcome (a 504) can come first
        raise HttpError(400, f"{where} is empty")
    if len(value) > max_chars:  # before tokenizing: a tokenizer's work grows with the text
        raise HttpError(413, f"{where} has {len(value):,} characters; at most {max_chars:,} are accepted")
    return value


#: what an instance may set for itself (its values override the request's parameters of the same
#: names): a text's, and a question's (answer span)
TEXT_OWN = ("target", "at", "contrast")
QUESTION_OWN = ("answer",)


def instance_rows(data: dict[str, Any], max_instances: int, max_chars: int) -> list[Row]:
    """KServe V1 ``{"instances": [...]}``: each a text, ``{"text", "target", "at", "contrast",
    "pair", "choices"}``, or ``{"question", "context", "answer"}`` (an answer span). An
    instance's ``target``, ``at``, ``contrast`` and ``answer`` override the request's
    parameters for it alone; their JSON types are the parameters' (the settings spec's), and
    :func:`check_instances` checks their values."""
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
        if "question" in item or "context" in item:  # extractive question answering
            rows.append(_question_row(k, item, where, max_chars))
            continue
        extra = set(item) - {"text", "pair", "choices", "id", *TEXT_OWN}
        if extra:
            raise HttpError(400, f"{where} has unknown fields {', '.join(sorted(extra))}")
        if not isinstance(item.get("id"), str | int | None) or isinstance(item.get("id"), bool):
            raise HttpError(400, f"{where}: id must be a string, an integer or null")
        own = _own(item, where, TEXT_OWN)
        target = own.get("target")
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
                        None if choices is None else tuple(_text(c, f"{where} choice", max_chars) for c in choices),
                        at=own.get("at"), contrast=own.get("contrast")))
    return rows


def _own(item: dict[str, Any], where: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The settings an instance gives for itself, of the JSON types the settings spec gives
    those parameters (null: the request's); 400 naming the instance otherwise."""
    own = {}
    for name in names:
        value = item.get(name)
        if value is None:
            continue
        entry = REQUEST[name]
        if not entry.kind.json_ok(value):
            raise HttpError(400, f"{where}: {name} must be {entry.kind.json_what} or null, got "
                                 f"{json.dumps(value)[:80]}")
        own[name] = entry.kind.from_json(value)
    return own


def check_instances(rows: list[Row], cfg: ExplainConfig) -> None:
    """400 naming the instance whose own settings the settings spec refuses with the request's
    (:func:`blackbox_sal.jobs.batch.row_config`, as a batch row's are checked). Whether a value
    fits the instance's text (an ``at`` in it, a label the model has) is decided when it is
    explained: that instance's error (the request's 400 when every instance fails)."""
    from blackbox_sal.jobs.batch import row_config  # the batch job's rule, imported late: it imports the engine

    for row in rows:
        try:
            row_config(row, cfg)
        except SalError as exc:
            raise HttpError(400, f"instance {row.index}: {exc}") from None


def _question_row(k: int, item: dict[str, Any], where: str, max_chars: int) -> Row:
    """``{"question", "context", "id"}``: the answer span of the question in the context."""
    extra = set(item) - {"question", "context", "id", *QUESTION_OWN}
    if extra:
        raise HttpError(400, f"{where} has fields {', '.join(sorted(extra))} beside a question: a question instance "
                             f"is {{\"question\", \"context\", \"answer\", \"id\"}}")
    if not isinstance(item.get("id"), str | int | None) or isinstance(item.get("id"), bool):
        raise HttpError(400, f"{where}: id must be a string, an integer or null")
    return Row(k, _text(item.get("context"), f"{where} context", max_chars),
               str(item["id"]) if item.get("id") is not None else None,
               question=_text(item.get("question"), f"{where} question", max_chars),
               answer=_own(item, where, QUESTION_OWN).get("answer"))


def infer_rows(data: dict[str, Any], max_instances: int, max_chars: int, explainer: bool = False) -> list[Row]:
    """The V2 inference protocol: one BYTES input holding the texts; for the explainer, also
    inputs named ``target``, ``at`` or ``contrast`` (:data:`TEXT_OWN`), BYTES [n] as the texts,
    each element that text's own value ("": the request's parameter)."""
    _request_id(data)
    outputs = data.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise HttpError(400, '"outputs" must be a list of objects')
    inputs = data.get("inputs")
    own = [t for t in inputs if isinstance(t, dict) and t.get("name") in TEXT_OWN] if explainer and \
        isinstance(inputs, list) else []
    if not isinstance(inputs, list) or len(inputs) - len(own) != 1 or not all(isinstance(t, dict) for t in inputs):
        raise HttpError(400, 'the body must hold "inputs": one BYTES input with the texts' +
                        (f" (and, per text, {', '.join(TEXT_OWN)})" if explainer else ""))
    _known_outputs(outputs)
    tensor = next(t for t in inputs if t not in own)
    if not isinstance(tensor.get("data"), list) or not isinstance(tensor.get("name", ""), str):
        raise HttpError(400, 'the input must be {"name", "datatype": "BYTES", "shape": [n], "data": [texts]}')
    texts = tensor["data"]
    if len(texts) > max_instances:  # before the shape's product, which is bounded by it then
        raise HttpError(413, f"{len(texts):,} texts; at most {max_instances:,} per request")
    check_datatype(tensor.get("datatype"), texts)
    check_shape(tensor.get("shape"), len(texts))
    if not texts:
        raise HttpError(400, "the input holds no texts")
    values: dict[str, list[Any]] = {}
    for t in own:
        name = t["name"]
        if name in values:
            raise HttpError(400, f"the input {name} is given twice")
        column = t.get("data")
        if not isinstance(column, list) or len(column) != len(texts):
            raise HttpError(400, f"the input {name} must hold one element per text ({len(texts):,}): \"\" where "
                                 f"the text takes the request's parameter")
        check_datatype(t.get("datatype"), column)
        check_shape(t.get("shape"), len(column))
        values[name] = column
    return [Row(k, _text(t, f"text {k}", max_chars), **{name: column[k] or None for name, column in values.items()})
            for k, t in enumerate(texts)]


#: the V2 outputs a request may ask for by name (of the model, and of its explainer)
OUTPUTS = frozenset({"scores", "label", "error", "explanation", "text"})


def _known_outputs(outputs: list[dict[str, Any]]) -> None:
    for output in outputs:
        name = output.get("name")
        if not isinstance(name, str) or name not in OUTPUTS:
            raise HttpError(400, f"unknown output {json.dumps(name)[:80]} (known: {', '.join(sorted(OUTPUTS))})")


def check_datatype(datatype: Any, data: list[Any]) -> None:
    """400 unless the V2 input is ``BYTES`` and its data are strings (texts, flat)."""
    if datatype != "BYTES":
        raise HttpError(400, f"the input's datatype must be BYTES (texts), got {json.dumps(datatype)[:80]}")
    bad = next((k for k, v in enumerate(data) if not isinstance(v, str)), None)
    if bad is not None:
        raise HttpError(400, f"the input's datatype is BYTES but element {bad} is "
                             f"{_json_kind(data[bad])}, not a string (the data are flat: one text each)")


def check_shape(shape: Any, count: int) -> None:
    """400 unless ``shape`` is a list of non-negative integers whose product is ``count``, the
    number of data elements: ``[n]`` or ``[n, 1]`` for n texts (a missing shape is ``[n]``)."""
    if shape is None:
        return
    if not (isinstance(shape, list) and shape and all(isinstance(v, int) and not isinstance(v, bool) for v in shape)):
        raise HttpError(400, f"the input's shape must be a non-empty list of integers, got {json.dumps(shape)[:80]}")
    if any(v < 0 for v in shape):
        raise HttpError(400, f"the input's shape {shape} has a negative dimension")
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise HttpError(400, f"the input's shape must be [n] or [n, 1] for n texts, got {shape}")
    if shape[0] != count:
        raise HttpError(400, f"the input's shape {shape} holds {shape[0]:,} elements but its data has {count:,}")


def _json_kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), "not a string")


def _request_id(data: dict[str, Any]) -> None:
    if not isinstance(data.get("id", ""), str):
        raise HttpError(400, "the request's id must be a string")


def explanation_object(result: object, seconds: float) -> dict[str, Any]:
    """The CLI's JSON object of a result, with the version that made it and the time it took."""
    return {**document(result), "producer": {"version": __version__, "seconds": round(seconds, 6)}}
