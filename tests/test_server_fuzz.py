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
