"""The server's OpenAPI 3.1 document, served at ``/openapi.json``. The explanation objects are
described by the result schema the CLI's JSON follows (``render/explanation.schema.json``)."""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from blackbox_sal import __version__
from blackbox_sal.gradients.backend import BACKENDS
from blackbox_sal.methods import METHODS

if TYPE_CHECKING:
    from blackbox_sal.server.app import Server

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _answers(ok: str, *statuses: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(ok)}}}}
    for status in statuses:
        out[str(status)] = {"description": _STATUS[status], "content": {"application/json": {"schema": _ref("Error")}}}
    return out


_STATUS = {
    400: "malformed request, unknown parameter or value, a text the model cannot take, unknown label",
    404: "unknown model or route",
    413: "body over the limit, or a text over the character or token limit",
    422: "the model cannot explain this text (it fails when run, or its output is not finite)",
    429: "the queue is full; Retry-After says when to come back",
    503: "not ready, or stopping (SIGTERM); Retry-After",
    504: "the request's deadline passed and its work was stopped",
}
_WORK = (400, 404, 413, 422, 429, 503, 504)


def _parameters_schema(server: Server) -> dict[str, Any]:
    """The options a request may give in ``parameters``: the ExplainConfig fields, and deadline."""
    d = server.defaults
    text_or_int: dict[str, Any] = {"type": ["string", "integer", "null"]}
    return {
        "type": "object", "additionalProperties": False,
        "description": "Options (the CLI's, without dashes); the server's settings are the defaults.",
        "properties": {
            "method": {"enum": list(METHODS), "default": d.method},
            "backend": {"enum": list(BACKENDS), "default": d.backend},
            "target": {**text_or_int, "description": "the explained class: label or index (default: the prediction)"},
            "score": {"type": "string", "default": d.score},
            "steps": {"type": ["integer", "string"], "description": "integrated-gradients nodes, or 'auto'"},
            "tolerance": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "quadrature": {"type": "string"},
            "baseline": {"type": "string"},
            "reduce": {"type": ["string", "null"]},
            "words": {"type": "boolean"},
            "fd_step": {"type": ["number", "null"]},
            "richardson": {"type": "boolean"},
            "fd_scheme": {"type": "string"},
            "samples": {"type": "integer", "minimum": 1},
            "noise": {"type": "number", "minimum": 0},
            "seed": {"type": "integer", "minimum": 0},
            "long": {"type": "string"},
            "window_overlap": {"type": "integer", "minimum": 0},
            "direction": {"type": ["array", "null"], "items": {"type": "number"}},
            "deadline": {"type": "number", "exclusiveMinimum": 0, "maximum": server.limits.deadline,
                         "description": "seconds this request may take (at most the server's deadline)"},
        },
    }


def _result_schemas() -> dict[str, Any]:
    """The CLI's result schema, its $defs moved into components (OpenAPI 3.1 is JSON Schema)."""
    text = resources.files("blackbox_sal.render").joinpath("explanation.schema.json").read_text("utf-8")
    result = json.loads(text.replace("#/$defs/", _REF))
    schemas: dict[str, Any] = dict(result.pop("$defs"))
    for key in ("$schema", "$id"):
        result.pop(key, None)
    schemas["result"] = result
    return schemas


def openapi_document(server: Server) -> dict[str, Any]:
    """The document for this server (its models are named in the path's enum)."""
    limits = server.limits
    names = list(server.served)
    explainers = [n + "-explainer" for n in names]
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_chars}
    instance = {"oneOf": [text, {
        "type": "object", "required": ["text"], "additionalProperties": False,
        "properties": {"text": text, "id": {"type": ["string", "integer", "null"]},
                       "target": {"type": ["string", "integer", "null"]}, "pair": text,
                       "choices": {"type": "array", "items": text, "minItems": 2}}}]}
    schemas: dict[str, Any] = {
        **_result_schemas(),
        "Error": {"type": "object", "required": ["error", "status"],
                  "properties": {"error": {"type": "string"}, "status": {"type": "integer"}}},
        "Parameters": _parameters_schema(server),
        "Instances": {"type": "object", "required": ["instances"], "additionalProperties": False,
                      "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": limits.max_instances,
                                                   "items": instance},
                                     "parameters": _ref("Parameters"), "id": {"type": "string"}}},
        "Prediction": {"type": "object", "required": ["index", "label", "scores", "top"], "properties": {
            "index": {"type": "integer"}, "label": {"type": ["string", "null"]},
            "scores": {"type": "array", "items": {"type": ["number", "null"]}},
            "top": {"type": "array", "items": _ref("label")}}},
        "Predictions": {"type": "object", "required": ["predictions"],
                        "properties": {"predictions": {"type": "array", "items": _ref("Prediction")}}},
        "Explanations": {"type": "object", "required": ["explanations"],
                         "properties": {"explanations": {"type": "array", "items": _ref("result")}}},
        "InferRequest": {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
            "id": {"type": "string"}, "parameters": _ref("Parameters"),
            "outputs": {"type": "array", "items": {"type": "object"}},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["name", "datatype", "shape", "data"], "properties": {
                    "name": {"type": "string"}, "datatype": {"const": "BYTES"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "data": {"type": "array", "minItems": 1, "maxItems": limits.max_instances, "items": text}}}}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape", "data"],
                                                   "properties": {"name": {"type": "string"},
                                                                  "datatype": {"type": "string"},
                                                                  "shape": {"type": "array"},
                                                                  "data": {"type": "array"}}}}}},
        "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"]},
        "Models": {"type": "object", "required": ["models"],
                   "properties": {"models": {"type": "array", "items": {"type": "string"}}}},
        "Health": {"type": "object"},
    }

    def name_param(values: list[str]) -> list[dict[str, Any]]:
        return [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": values}}]

    def get(summary: str, ok: str, *statuses: int, params: list[str] | None = None) -> dict[str, Any]:
        op: dict[str, Any] = {"get": {"summary": summary, "responses": _answers(ok, *statuses)}}
        if params is not None:
            op["get"]["parameters"] = name_param(params)
        return op

    def post(summary: str, body: str, ok: str) -> dict[str, Any]:
        return {"post": {"summary": summary, "requestBody": _json_body(body), "responses": _answers(ok, *_WORK)}}

    paths: dict[str, Any] = {
        "/v2/health/live": get("the process answers", "Health"),
        "/v2/health/ready": get("the models are loaded and the server is not stopping", "Health", 503),
        "/v2/models": get("the models served", "Models"),
        "/v1/models": get("the models served (KServe V1)", "Models"),
        "/v2/models/{name}": get("a model's metadata: inputs, labels, methods, backends, device", "ModelMetadata",
                                 404, params=names + explainers),
        "/v2/models/{name}/ready": get("whether a model is ready", "Health", 404, 503, params=names + explainers),
    }
    for name in names:  # KServe V1's verbs follow a colon in the path segment, so each is its own path
        paths[f"/v1/models/{name}:predict"] = post(
            "predict (KServe V1): instances are texts", "Instances", "Predictions")
        paths[f"/v1/models/{name}:explain"] = post(
            "explain (KServe V1): instances are texts, or {text, target, pair, choices}", "Instances",
            "Explanations")
        paths[f"/v2/models/{name}/infer"] = post(
            "predict (V2 inference protocol): scores FP32 [n, classes] and label BYTES [n]", "InferRequest",
            "InferResponse")
        paths[f"/v2/models/{name}-explainer/infer"] = post(
            "explain (V2, the explainer as a model): one BYTES output of explanation objects (JSON)",
            "InferRequest", "InferResponse")
    return {
        "openapi": "3.1.0",
        "info": {"title": "blackbox-sal", "version": __version__,
                 "description": "Token attributions for ONNX text models. Errors are JSON {error, status}. "
                                f"Limits: body {limits.max_body:,} bytes, {limits.max_chars:,} characters per text, "
                                f"{limits.max_instances:,} texts per request, deadline {limits.deadline:g} s."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


__all__ = ["openapi_document"]
