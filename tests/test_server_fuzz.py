"""A schema fuzzer on the server's OpenAPI document: schemathesis generates requests for every
operation of ``/openapi.json`` (valid ones, and invalid ones for the negative checks) and sends
them to the ASGI app in-process. No answer may be a 5xx (a 504 only when the request asked for
its own deadline), every answer is JSON, and every documented answer conforms to its status,
content type, headers and schema; invalid requests are refused with a 4xx.

The server is small on purpose (short texts, few per request) so that the document's limits
keep every generated request cheap; the bundled model answers. Needs schemathesis (the ``dev``
extra); skipped without it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

schemathesis = pytest.importorskip(
    "schemathesis", reason="the OpenAPI fuzz test needs schemathesis (the dev extra: pip install -e '.[dev]')")
pytest.importorskip("starlette", reason="the server needs starlette (the serve extra)")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from starlette.testclient import TestClient  # noqa: E402

from blackbox_sal.model.files import default_model_path  # noqa: E402
from blackbox_sal.model.loading import load_model  # noqa: E402
from blackbox_sal.server.app import Server  # noqa: E402
from blackbox_sal.server.protocol import Limits  # noqa: E402
from blackbox_sal.vocabulary.config import ExplainConfig  # noqa: E402

#: examples per operation and mode (12 operations); BLACKBOX_SAL_FUZZ_EXAMPLES=500 for a longer hunt
EXAMPLES = int(os.environ.get("BLACKBOX_SAL_FUZZ_EXAMPLES", "50"))
#: BLACKBOX_SAL_FUZZ_RANDOM=1: new examples each run (by default the same ones, from a fixed seed)
RANDOM = os.environ.get("BLACKBOX_SAL_FUZZ_RANDOM")
#: the server's limits: the document carries them, so generated texts stay short and few
LIMITS = Limits(max_chars=80, max_instances=3, deadline=20.0, max_body=64 * 1024)
#: statuses an invalid request may get (413: a text or a list over the document's limits)
REJECTED = ["400", "404", "405", "413", "422"]


@pytest.fixture(scope="module")
def api() -> Iterator[Any]:
    server = Server({"default": load_model(default_model_path())}, ExplainConfig(progress=False), LIMITS)
    config = schemathesis.Config.from_dict({
        "checks": {"negative_data_rejection": {"expected-statuses": REJECTED}},
        "generation": {"max-examples": EXAMPLES},
    })
    try:
        yield schemathesis.openapi.from_asgi("/openapi.json", server.app, config=config)
    finally:
        server.stop(drain=False)


def no_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx: the server is ready (no 503) and the deadline generous (a 504 only when the
    request set a shorter one itself)."""
    status = response.status_code
    if status < 500:
        return None
    parameters = case.body.get("parameters") if isinstance(case.body, dict) else None
    asked = isinstance(parameters, dict) and "deadline" in parameters
    if status == 504 and asked:
        return None
    raise AssertionError(f"{status} for {case.method} {case.formatted_path}: {response.text[:500]}")


def json_answer(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every answer, documented or not (404, 405), is JSON: an object; an error says its status."""
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
    data = json.loads(response.content)
    assert isinstance(data, dict), data
    if response.status_code >= 400:
        assert data.get("status") == response.status_code and isinstance(data.get("error"), str), data
    return None


CHECKS = [no_server_error, json_answer, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance, negative_data_rejection, unsupported_method]


# a direction beyond float32's range (3.4e38) overflows in the model's float32 feeds: the answer
# says its scores are not finite (null), and numpy warns, which the test suite's warnings-as-errors
# would turn into a 500
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_no_server_error_and_documented_answers(api: Any, mode: str) -> None:
    """Every operation, with requests the document allows (positive) or forbids (negative).
    Driven through hypothesis directly: schemathesis's pytest plugin does not run on pytest 9."""
    operations = [result.ok() for result in api.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/models/default:explain", "POST /v2/models/default-explainer/infer"} <= labels, labels
    for operation in operations:
        if mode == "negative" and not operation.body and not list(operation.iter_parameters()):
            continue  # nothing to make invalid
        _fuzz(operation.as_strategy(generation_mode=GenerationMode(mode)), f"{operation.label} ({mode})")


def _fuzz(strategy: Any, label: str) -> None:
    # hypothesis is typed, but absent where only the test extra is installed (mypy sees Any)
    @given(case=strategy)  # type: ignore[untyped-decorator, unused-ignore]
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),  # type: ignore[untyped-decorator, unused-ignore]
              derandomize=RANDOM is None, database=None)
    def fuzz(case: Any) -> None:
        try:
            case.call_and_validate(checks=CHECKS)
        except AssertionError as exc:  # name the request, to replay it on a live server
            raise AssertionError(f"{label}: {exc}\n{case.as_curl_command()}") from exc

    fuzz()


def test_other_methods_are_405_with_the_documented_allow(api: Any) -> None:
    """A method a path does not document is 405 (JSON), its Allow header naming exactly the
    documented ones (and HEAD with GET)."""
    client = TestClient(api.app)
    for path, item in api.raw_schema["paths"].items():
        url = path.replace("{name}", "default")
        documented = {m.upper() for m in item} | ({"HEAD"} if "get" in item else set())
        for method in sorted({"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"} - documented):
            r = client.request(method, url)
            assert r.status_code == 405, (method, url, r.status_code, r.text)
            assert r.json()["status"] == 405
            assert {m.strip() for m in r.headers["allow"].split(",")} == documented, (method, url, r.headers)


# -- raw requests: bodies, content types, shapes and instances the document does not describe -----

V1_ROUTES = ["/v1/models/default:predict", "/v1/models/default:explain"]
V2_ROUTES = ["/v2/models/default/infer", "/v2/models/default-explainer/infer"]
#: statuses a raw request may get: refusals, and 504 only when it asked for its own deadline
RAW_STATUSES = {200, 400, 404, 408, 413, 415, 422}


def _raw_requests() -> Any:
    """(route, body, content type): mostly JSON of the route's own protocol with something
    wrong in it (or nothing), some bytes that are not JSON, some content types that are not JSON."""
    from hypothesis import strategies as st

    def pick(*choices: tuple[int, Any]) -> Any:  # one of the strategies, by weight (one_of weighs them alike)
        return st.sampled_from([c for w, c in choices for _ in range(w)]).flatmap(lambda c: c)

    words = st.sampled_from(["the film", "was good", "", " ", "dull", "\u00e9t\u00e9", "\ud83d\ude00", "x" * 81,
                             "\x1b[31m", "a\u0000b"])
    text = st.lists(words, min_size=1, max_size=3).map(" ".join)
    scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False))
    instance = pick((4, text), (1, scalar), (2, st.fixed_dictionaries({"text": text}, optional={
        "target": st.one_of(st.sampled_from(["POSITIVE", "NEGATIVE", "zzz"]), st.integers(-2, 3)),
        "pair": text, "choices": st.lists(text, max_size=3), "id": st.one_of(text, st.integers()),
        "colour": scalar})))
    parameters = st.fixed_dictionaries({}, optional={
        "method": st.sampled_from(["gradient", "occlusion", "integrated-gradients", "nope"]),
        "steps": st.one_of(st.integers(-1, 12), text), "deadline": st.floats(-1, 30), "bogus": scalar})
    v1 = st.fixed_dictionaries({"instances": pick((8, st.lists(instance, min_size=1, max_size=4)), (1, scalar))},
                               optional={"parameters": pick((4, parameters), (1, scalar)),
                                         "id": pick((4, text), (1, scalar))})
    data = pick((6, st.lists(pick((6, text), (1, scalar)), min_size=1, max_size=4)), (1, scalar))
    shape = pick((1, st.lists(st.integers(-3, 2**63), min_size=1, max_size=3)), (1, st.lists(st.integers(0, 4),
                                                                                          max_size=2)),
                 (3, st.integers(1, 4).map(lambda n: [n])), (1, st.integers(1, 4).map(lambda n: [n, 1])), (1, scalar))
    tensor = st.fixed_dictionaries({"data": data, "datatype": st.sampled_from(["BYTES"] * 8 + ["FP32", "bytes"])},
                                   optional={"name": pick((6, text), (1, scalar)), "shape": shape})
    one = st.lists(tensor, min_size=1, max_size=1)
    v2 = st.fixed_dictionaries({"inputs": pick((8, one), (1, st.lists(tensor, min_size=2, max_size=2)), (1, scalar))},
                               optional={
        "outputs": st.lists(st.fixed_dictionaries({"name": pick((1, text), (4, st.sampled_from(
            ["scores", "label", "error", "explanation"])))}), max_size=2), "parameters": parameters})
    def encoded(kind: Any) -> Any:
        return kind.map(lambda d: json.dumps(d).encode())

    json_type = st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
    content_type = pick((12, json_type), (1, st.none()), (2, st.sampled_from(
        ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b",
         "application/json; charset=latin-1", ""])), (1, st.text(st.characters(min_codepoint=32, max_codepoint=126),
                                                                  max_size=20)))
    body = pick((4, st.tuples(st.sampled_from(V1_ROUTES), encoded(v1))),
                (4, st.tuples(st.sampled_from(V2_ROUTES), encoded(v2))),
                (1, st.tuples(st.sampled_from(V1_ROUTES + V2_ROUTES), st.binary(max_size=64))))
    return st.tuples(body, content_type)


def test_raw_requests_are_answered_or_refused_never_a_500(api: Any) -> None:
    """Hypothesis posts raw bodies (V1 and V2 objects with wrong types, shapes that lie, texts
    the model refuses, bytes that are not JSON) under any content type: each answer is JSON,
    200 or a documented refusal; a 200 answers every instance, each a result or its own error."""
    client = TestClient(api.app)

    @given(request=_raw_requests())  # type: ignore[untyped-decorator, unused-ignore]
    @settings(max_examples=EXAMPLES * 2, deadline=None, suppress_health_check=list(HealthCheck),  # type: ignore[untyped-decorator, unused-ignore]
              derandomize=RANDOM is None, database=None)
    def fuzz(request: tuple[tuple[str, bytes], str | None]) -> None:
        (route, body), content_type = request
        got = client.post(route, content=body, headers={} if content_type is None else {"content-type": content_type})
        data = got.json()
        asked = b'"deadline"' in body
        assert got.status_code in RAW_STATUSES or (asked and got.status_code == 504), (route, body, got.text)
        if got.status_code >= 400:
            assert data["status"] == got.status_code and isinstance(data["error"], str), data
            return
        assert got.headers["content-type"] == "application/json"
        sent = json.loads(body)
        if route.startswith("/v1"):
            answers = data["predictions" if route.endswith("predict") else "explanations"]
            assert len(answers) == len(sent["instances"])
            assert all(("error" in a) == ("tokens" not in a and "scores" not in a) for a in answers), answers
            assert any("error" not in a for a in answers)  # when all fail the request fails
            return
        n = len(sent["inputs"][0]["data"])
        for out in data["outputs"]:
            assert int(np.prod(out["shape"])) == len(out["data"]) and out["shape"][0] == n, out

    fuzz()
