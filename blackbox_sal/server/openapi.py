"""The server's OpenAPI 3.1 document, served at ``/openapi.json``. The explanation objects are
described by the result schema the CLI's JSON follows (``render/explanation.schema.json``)."""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources
from typing import Any

from blackbox_sal import __version__
from blackbox_sal.server.protocol import QUESTION_OWN, TEXT_OWN
from blackbox_sal.vocabulary.choices import BACKENDS
from blackbox_sal.vocabulary.config import SETTINGS, ExplainConfig, Limits
from blackbox_sal.vocabulary.settings import Number

_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF + name}


def _json_body(schema: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema)}}}


def _answers(ok: str, *statuses: int, unready: str = "Error") -> dict[str, Any]:
    """200 with ``ok``, and each of ``statuses`` with an Error (503: with ``unready``, which the
    readiness routes answer with their own object)."""
    out: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": {"schema": _ref(ok)}}}}
    for status in statuses:
        out[str(status)] = {"description": _STATUS[status],
                            "content": {"application/json": {"schema": _ref(unready if status == 503 else "Error")}}}
        if status in (429, 503):
            out[str(status)]["headers"] = {"Retry-After": {"description": "seconds to wait before trying again",
                                                           "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    return out


_STATUS = {
    400: "malformed request, unknown parameter or value, a text the model cannot take, unknown label",
    404: "unknown model or route",
    408: "the body did not arrive in full within the server's read timeout",
    413: "body over the limit, or a text over the character or token limit",
    415: "the body is not declared Content-Type: application/json",
    422: "the model cannot explain this text (it fails when run, or its output is not finite)",
    429: "the queue is full; Retry-After says when to come back",
    503: "not ready, or stopping (SIGTERM); Retry-After",
    504: "the request's deadline passed and its work was stopped",
}
_WORK = (400, 404, 408, 413, 415, 422, 429, 503, 504)


def parameters_schema(defaults: ExplainConfig, limits: Limits) -> dict[str, Any]:
    """What a request may give in ``parameters``: the settings spec's request entries, with the
    server's settings as their defaults. Names are enums and numbers have the ranges
    ExplainConfig.validated checks, so a request the document allows is refused only for what a
    schema cannot say (a label or baseline token the model lacks, combinations: steps 'auto'
    with a rule other than gauss-legendre or clenshaw-curtis, trapezoid or clenshaw-curtis with
    1 step, richardson with forward)."""
    properties: dict[str, Any] = {}
    for entry in SETTINGS:
        if not entry.request:
            continue
        if entry.name == "deadline":  # a request may ask for less than the server's deadline
            entry = replace(entry, kind=Number(0, limits.deadline, low_open=True))
            properties[entry.name] = entry.json_schema()
        else:
            properties[entry.name] = entry.json_schema(getattr(defaults, entry.name))
    return {"type": "object", "additionalProperties": False,
            "description": "Options (the CLI's, without dashes); the server's settings are the defaults.",
            "properties": properties}


def _result_schemas() -> dict[str, Any]:
    """The CLI's result schema, its $defs moved into components (OpenAPI 3.1 is JSON Schema)."""
    text = resources.files("blackbox_sal.render").joinpath("explanation.schema.json").read_text("utf-8")
    result = json.loads(text.replace("#/$defs/", _REF))
    schemas: dict[str, Any] = dict(result.pop("$defs"))
    for key in ("$schema", "$id"):
        result.pop(key, None)
    schemas["result"] = result
    return schemas


def _explainer_request(text: dict[str, Any], parameters: dict[str, Any], limits: Limits) -> dict[str, Any]:
    """The V2 explainer's request: the texts' input, and inputs named after :data:`TEXT_OWN`
    holding each text's own value ("": the request's parameter)."""
    shape = {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer", "minimum": 0},
             "description": "[n] or [n, 1] for n texts"}
    texts = {"type": "object", "required": ["datatype", "data"],
             "description": "the texts; name and shape may be left out (the texts' count is their shape)",
             "properties": {
                 "name": {"type": "string"}, "datatype": {"const": "BYTES"}, "shape": shape,
                 "data": {"type": "array", "minItems": 1, "maxItems": limits.max_instances, "items": text}}}
    own = {"type": "object", "required": ["name", "datatype", "data"],
           "description": "each text's own target, at or contrast, one element per text in order (\"\": the "
                          "request's parameter); an index as its digits",
           "properties": {"name": {"enum": list(TEXT_OWN)}, "datatype": {"const": "BYTES"},
                          "shape": shape,
                          "data": {"type": "array", "maxItems": limits.max_instances, "items": {"type": "string"}}}}
    return {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
        "id": {"type": "string"}, "parameters": parameters,
        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"enum": ["scores", "label", "error", "explanation"]}}},
            "description": "names are checked, then ignored: the explanation output comes"},
        "inputs": {"type": "array", "minItems": 1, "maxItems": 1 + len(TEXT_OWN),
                   "items": {"anyOf": [own, texts]}}}}


def openapi_document(names: list[str], defaults: ExplainConfig, limits: Limits,
                     pairs: list[str] | None = None) -> dict[str, Any]:
    """The document for a server of the models ``names`` and the encoder/decoder ``pairs``
    (named in the paths' enums), its defaults and limits."""
    pairs = list(pairs or [])
    explainers = [n + "-explainer" for n in names]
    text = {"type": "string", "minLength": 1, "maxLength": limits.max_chars}
    parameters = {"anyOf": [_ref("Parameters"), {"type": "null"}], "description": "null: the defaults"}
    echoed = {"type": "string", "description": "the request's id, where it gave one"}
    ident = {"type": ["string", "integer", "null"],
             "description": "yours: echoed (as a string) in this instance's answer"}
    request = {e.name: e for e in SETTINGS if e.request}

    def own(name: str) -> dict[str, Any]:  # an instance's own value of a request parameter
        schema = request[name].json_schema()
        return {**schema, "description": f"this instance's own, in place of the parameter's: {schema['description']}"}

    instance = {"oneOf": [text, {
        "type": "object", "required": ["text"], "additionalProperties": False,
        "properties": {"text": text, "id": ident, **{name: own(name) for name in TEXT_OWN},
                       "pair": {"anyOf": [text, {"type": "null"}]},
                       "choices": {"type": ["array", "null"], "items": text, "minItems": 2}}}, {
        "type": "object", "required": ["question", "context"], "additionalProperties": False,
        "description": "question answering: the answer span of the question in the context",
        "properties": {"question": text, "context": text, "id": ident, **{name: own(name) for name in QUESTION_OWN}}}]}
    text_only = {"oneOf": [text, {"type": "object", "required": ["text"], "additionalProperties": False,
                                  "properties": {"text": text, "id": ident}}]}

    def instances(item: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": ["instances"], "additionalProperties": False,
                "properties": {"instances": {"type": "array", "minItems": 1, "maxItems": limits.max_instances,
                                             "items": item},
                               "parameters": parameters, "id": {"type": "string"}}}

    tensor = {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
        "name": {"type": "string"}, "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}}}}
    schemas: dict[str, Any] = {
        **_result_schemas(),
        "Error": {"type": "object", "required": ["error", "status"], "additionalProperties": False,
                  "properties": {"error": {"type": "string"}, "status": {"type": "integer", "minimum": 400,
                                                                          "maximum": 599}}},
        "InstanceError": {"type": "object", "required": ["error", "status"], "additionalProperties": False,
                          "description": "in place of an instance that failed while others succeeded",
                          "properties": {"id": {"type": "string"}, "error": {"type": "string"},
                                         "status": {"type": "integer", "minimum": 400, "maximum": 599}}},
        "Parameters": parameters_schema(defaults, limits),
        "Instances": instances(instance),
        "PredictInstances": instances(text_only),
        "Prediction": {"type": "object", "required": ["index", "label", "scores", "top"],
                       "additionalProperties": False, "properties": {
                           "id": {"type": "string", "description": "the instance's id, where it gave one"},
                           "index": {"type": "integer", "minimum": 0}, "label": {"type": ["string", "null"]},
                           "scores": {"type": "array", "items": {"type": ["number", "null"]}},
                           "top": {"type": "array", "items": _ref("label")}}},
        "Predictions": {"type": "object", "required": ["predictions"], "additionalProperties": False,
                        "properties": {"predictions": {"type": "array", "items": {
                            "anyOf": [_ref("Prediction"), _ref("InstanceError")]}},
                                       "id": echoed}},
        "Explanations": {"type": "object", "required": ["explanations"], "additionalProperties": False,
                         "properties": {"explanations": {"type": "array", "items": {
                             "anyOf": [_ref("result"), _ref("InstanceError")]}},
                                        "id": echoed}},
        "InferRequest": {"type": "object", "required": ["inputs"], "additionalProperties": False, "properties": {
            "id": {"type": "string"}, "parameters": parameters,
            "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                "name": {"enum": ["scores", "label", "error", "explanation", "text"]}}},
                "description": "names are checked, then ignored: every output comes"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                "type": "object", "required": ["datatype", "data"],
                "description": "the texts; name and shape may be left out (the texts' count is their shape)",
                "properties": {
                    "name": {"type": "string"}, "datatype": {"const": "BYTES"},
                    "shape": {"type": "array", "minItems": 1, "maxItems": 2, "items": {"type": "integer", "minimum": 0},
                              "description": "[n] or [n, 1] for n texts"},
                    "data": {"type": "array", "minItems": 1, "maxItems": limits.max_instances, "items": text}}}}}},
        "ExplainerRequest": _explainer_request(text, parameters, limits),
        "InferResponse": {"type": "object", "required": ["model_name", "model_version", "outputs"],
                          "additionalProperties": False, "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name", "datatype", "shape", "data"], "additionalProperties": False,
                "properties": {"name": {"enum": ["scores", "label", "error", "explanation", "text"]},
                               "datatype": {"enum": ["FP32", "BYTES"]},
                               "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                               "data": {"type": "array", "items": {"type": ["number", "string", "null"]}}}}}}},
        "PairInstances": instances({"oneOf": [text, {
            "type": "object", "required": ["text"], "additionalProperties": False,
            "description": "an encoder/decoder's source; with target_text that output is explained (teacher "
                           "forcing), without it the greedy generation",
            "properties": {"text": text, "id": ident, "target_text": {"anyOf": [text, {"type": "null"}]}}}]}),
        "Generation": {"type": "object", "required": ["kind", "source_tokens", "output_tokens", "log_probs",
                                                      "source_scores", "prefix_scores"],
                       "description": "an encoder/decoder's output explained step by step (kind 'generation', "
                                      "docs/seq2seq.md): output steps x source tokens, output steps x decoder "
                                      "input tokens",
                       "properties": {"id": {"type": "string"}, "kind": {"const": "generation"},
                                      "source_tokens": {"type": "array", "items": {"type": "string"}},
                                      "output_tokens": {"type": "array", "items": {"type": "string"}},
                                      "log_probs": {"type": "array", "items": {"type": "number"}},
                                      "source_scores": {"type": "array", "items": {"type": "array"}},
                                      "prefix_scores": {"type": "array", "items": {"type": "array"}}}},
        "Generated": {"type": "object", "required": ["predictions"], "additionalProperties": False,
                      "properties": {"predictions": {"type": "array", "items": {"anyOf": [
                          {"type": "object", "required": ["text"], "additionalProperties": False,
                           "properties": {"id": {"type": "string"}, "text": {"type": "string"}}},
                          _ref("InstanceError")]}}, "id": echoed}},
        "Generations": {"type": "object", "required": ["explanations"], "additionalProperties": False,
                        "properties": {"explanations": {"type": "array", "items": {
                            "anyOf": [_ref("Generation"), _ref("InstanceError")]}}, "id": echoed}},
        "ModelMetadata": {"type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
                          "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"}, "inputs": {"type": "array", "items": tensor},
            "outputs": {"type": "array", "items": tensor}, "task": {"type": "string"}, "output": {"type": "string"},
            "labels": {"type": ["array", "null"], "items": {"type": "string"}},
            "max_length": {"type": ["integer", "null"]}, "device": {"type": "string"},
            "methods": {"type": "object", "additionalProperties": {"type": "string"}},
            "backends": {"type": "array", "items": {"enum": list(BACKENDS)}},
            "explainer": {"type": "string", "description": "the name of this model's explainer (V2)"},
            "explains": {"type": "string", "description": "on an explainer: the model it explains"},
            "kind": {"enum": ["encoder-decoder"], "description": "on an encoder/decoder pair (the web page reads it)"},
            "generate": {"type": "integer", "description": "on a pair: the tokens :explain generates without a "
                                                          "target_text"}}},
        "Models": {"type": "object", "required": ["models"], "additionalProperties": False,
                   "properties": {"models": {"type": "array", "items": {"type": "string"}}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"],
                           "additionalProperties": False, "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "Live": {"type": "object", "required": ["live"], "additionalProperties": False,
                 "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "additionalProperties": False,
                  "properties": {"ready": {"type": "boolean"}, "models": {
                     "type": "object", "additionalProperties": {"type": "string"},
                     "description": "each model whose worker is not taking work, and why"}}},
        "ModelReady": {"type": "object", "required": ["name", "ready"], "additionalProperties": False,
                       "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"},
                                      "error": {"type": "string"}}},
    }

    def name_param(values: list[str]) -> list[dict[str, Any]]:
        return [{"name": "name", "in": "path", "required": True, "schema": {"type": "string", "enum": values}}]

    def get(summary: str, ok: str, *statuses: int, params: list[str] | None = None,
            unready: str = "Error") -> dict[str, Any]:
        op: dict[str, Any] = {"get": {"summary": summary, "responses": _answers(ok, *statuses, unready=unready)}}
        if params is not None:
            op["get"]["parameters"] = name_param(params)
        return op

    def post(summary: str, body: str, ok: str) -> dict[str, Any]:  # every status of a request with work
        return {"post": {"summary": summary, "requestBody": _json_body(body), "responses": _answers(ok, *_WORK)}}

    everything = names + pairs
    every_explainer = explainers + [p + "-explainer" for p in pairs]
    paths: dict[str, Any] = {
        "/openapi.json": {"get": {"summary": "this document", "responses": {"200": {
            "description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/v2": get("the server's name, version and extensions", "ServerMetadata"),
        "/v2/health/live": get("the process answers", "Live"),
        "/v2/health/ready": get("the models are loaded and the server is not stopping", "Ready", 503,
                                unready="Ready"),
        "/v2/models": get("the models served", "Models"),
        "/v1/models": get("the models served (KServe V1)", "Models"),
        "/v1/models/{name}": get("whether a model is served and ready (KServe V1)", "ModelReady", 404,
                                 params=everything),
        "/v2/models/{name}": get("a model's metadata: inputs, labels, methods, backends, device", "ModelMetadata",
                                 404, params=everything + every_explainer),
        "/v2/models/{name}/ready": get("whether a model is ready", "ModelReady", 404, 503,
                                       params=everything + every_explainer, unready="ModelReady"),
    }
    for name in names:  # KServe V1's verbs follow a colon in the path segment, so each is its own path
        paths[f"/v1/models/{name}:predict"] = post(
            "predict (KServe V1): instances are texts ({text, id} objects at most)", "PredictInstances",
            "Predictions")
        paths[f"/v1/models/{name}:explain"] = post(
            "explain (KServe V1): instances are texts, {text, target, at, contrast, pair, choices} or {question, "
            "context, answer}",
            "Instances",
            "Explanations")
        paths[f"/v2/models/{name}/infer"] = post(
            "predict (V2 inference protocol): scores FP32 [n, classes] and label BYTES [n]", "InferRequest",
            "InferResponse")
        paths[f"/v2/models/{name}-explainer/infer"] = post(
            "explain (V2, the explainer as a model): one BYTES output of explanation objects (JSON); beside the "
            "texts, inputs target, at, contrast give each text its own", "ExplainerRequest", "InferResponse")
    for name in pairs:  # encoder/decoder pairs: a text in, a generated text (or its explanation) out
        paths[f"/v1/models/{name}:predict"] = post(
            "generate (KServe V1, an encoder/decoder): instances are source texts; the greedy output text",
            "PredictInstances", "Generated")
        paths[f"/v1/models/{name}:explain"] = post(
            "explain a generation (KServe V1, an encoder/decoder): instances are source texts or {text, "
            "target_text}", "PairInstances", "Generations")
        paths[f"/v2/models/{name}/infer"] = post(
            "generate (V2, an encoder/decoder): text BYTES [n], the greedy outputs", "InferRequest", "InferResponse")
        paths[f"/v2/models/{name}-explainer/infer"] = post(
            "explain the generations (V2, an encoder/decoder's explainer): one BYTES output of generation "
            "objects (JSON)", "InferRequest", "InferResponse")
    return {
        "openapi": "3.1.0",
        "info": {"title": "blackbox-sal", "version": __version__,
                 "description": "Token attributions for ONNX text models. Errors are JSON {error, status}. "
                                f"Limits: body {limits.max_body:,} bytes, {limits.max_chars:,} characters per text, "
                                f"{limits.max_instances:,} texts per request, deadline {limits.deadline:g} s."},
        "paths": paths,
        "components": {"schemas": schemas},
    }


__all__ = ["openapi_document", "parameters_schema"]
