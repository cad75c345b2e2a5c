"""What the OpenAPI fuzzer (tests/test_server_fuzz.py) found in the server, each kept as the
request that showed it: requests that hung, answers that were not what the document says."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, MutableMapping
from concurrent.futures import Future
from typing import Any, cast

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the server needs starlette (the serve extra)")
pytest.importorskip("httpx", reason="the server's tests need httpx")

from starlette.testclient import TestClient

from blackbox_sal.engine.runner import Runner
from blackbox_sal.engine.service import EngineService
from blackbox_sal.model.files import default_model_path
from blackbox_sal.model.loading import load_model
from blackbox_sal.server.app import Server
from blackbox_sal.server.protocol import Limits
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.runs import ArrayPoints, Forward, Request, Seq, Work

EXPLAIN = "/v1/models/default:explain"


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server({"default": load_model(default_model_path())}, ExplainConfig(progress=False), Limits(deadline=10.0))
    yield s
    s.stop(drain=False)


@pytest.fixture(scope="module")
def client(server: Server) -> TestClient:
    return TestClient(server.app)


def _post(client: TestClient, url: str, body: str) -> Any:
    return client.post(url, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize(("url", "body"), [
    # the tokenizer raised TypeError in the engine's thread, outside the works it was stepping:
    # the request waited for ever, and the works in flight with it failed
    (EXPLAIN, '{"instances": ["a \\udc00 movie"]}'),
    ("/v1/models/default:predict", '{"instances": ["a \\udc00 movie"]}'),
    ("/v2/models/default/infer", '{"inputs": [{"name": "t", "datatype": "BYTES", "shape": [1], "data": ["\\udc00"]}]}'),
    (EXPLAIN, '{"instances": ["good"], "parameters": {"baseline": "\\udc00"}}'),  # UnicodeEncodeError
    # echoed, it could not be encoded: a 500
    ("/v2/models/default/infer", '{"id": "\\ud800", "inputs": [{"datatype": "BYTES", "data": ["good"]}]}'),
])
def test_a_lone_surrogate_is_400(client: TestClient, url: str, body: str) -> None:
    r = _post(client, url, body)
    assert r.status_code == 400 and "surrogate" in r.json()["error"], r.text


@pytest.mark.parametrize("body", [
    '{"instances": [{"text": "good", "id": ' + "9" * 5000 + "}]}",  # json.loads: ValueError, not JSONDecodeError
    '{"instances": ["good"], "parameters": {"steps": ' + "1" * 4301 + "}}",
])
def test_an_integer_over_pythons_digit_limit_is_400(client: TestClient, body: str) -> None:
    """Found by hand: an instance id of 5,000 digits was a 500 (Python refuses to parse
    integers of over 4,300 digits, with a ValueError the JSON check did not expect)."""
    r = _post(client, EXPLAIN, body)
    assert r.status_code == 400 and "4300 digits" in r.json()["error"], r.text


def test_a_pair_and_choices_together_are_400(client: TestClient) -> None:
    """Found by a probe: the pair was silently dropped when choices were given."""
    r = _post(client, EXPLAIN, '{"instances": [{"text": "good", "pair": "bad", "choices": ["a", "b"]}]}')
    assert r.status_code == 400 and "a pair or choices, not both" in r.json()["error"], r.text


def test_surrogate_pairs_and_escaped_backslashes_are_text(client: TestClient) -> None:
    r = _post(client, EXPLAIN, '{"instances": ["great \\ud83d\\ude00", "a \\\\udc00 path"]}')
    assert r.status_code == 200, r.text
    assert [e["text"] for e in r.json()["explanations"]] == ["great \U0001f600", "a \\udc00 path"]


def test_a_body_not_utf8_is_400(client: TestClient) -> None:
    for body in (b'{"instances": ["\xed\xb0\x80"]}', '{"instances": ["good"]}'.encode("utf-16")):
        r = client.post(EXPLAIN, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "UTF-8" in r.json()["error"], r.text


@pytest.mark.parametrize(("url", "body"), [
    (EXPLAIN, '{"instances": ["good"], "parameters": {"words": "yes"}}'),  # was taken as true
    (EXPLAIN, '{"instances": ["good"], "parameters": {"richardson": 1, "backend": "fd"}}'),
    (EXPLAIN, '{"instances": ["good"], "parameters": {"direction": [true, false]}}'),  # was 200
    (EXPLAIN, '{"instances": ["good"], "parameters": {"noise": "NaN"}}'),  # was a TypeError's text
    (EXPLAIN, '{"instances": ["good"], "id": 5}'),
    (EXPLAIN, '{"instances": [{"text": "good", "id": [1]}]}'),
    ("/v2/models/default/infer", '{"inputs": [{"datatype": "BYTES", "data": ["good"]}], "outputs": "x"}'),
    ("/v2/models/default/infer", '{"inputs": [{"datatype": "BYTES", "shape": ["1"], "data": ["good"]}]}'),
    # an empty text next to a request's own short deadline was a 504 before it was a 400
    ("/v2/models/default/infer", '{"inputs": [{"datatype": "BYTES", "data": ["a", ""]}], '
                                 '"parameters": {"deadline": 1e-300}}'),
])
def test_what_the_document_forbids_is_400(client: TestClient, url: str, body: str) -> None:
    r = _post(client, url, body)
    assert r.status_code == 400, r.text


def test_a_content_length_of_other_digits_is_400(server: Server) -> None:
    """'²'.isdigit() is true but int('²') fails: it was a 500 (uvicorn refuses the header
    itself; another ASGI server may not)."""
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b'{"instances": ["good"]}', "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": EXPLAIN, "raw_path": EXPLAIN.encode(), "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", "²".encode("latin-1"))],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    asyncio.run(server.app(scope, receive, send))
    assert sent[0]["status"] == 400, sent
    assert json.loads(sent[1]["body"])["status"] == 400


def _allowed(r: Any) -> set[str]:
    return {m.strip() for m in r.headers["allow"].split(",")}


def test_a_405_names_the_allowed_methods(client: TestClient) -> None:
    assert _allowed(client.request("TRACE", "/v2/models")) == {"GET", "HEAD"}
    r = client.get(EXPLAIN)  # was 404 (no model named 'default:explain'), with Allow: GET, POST on OPTIONS
    assert r.status_code == 405 and _allowed(r) == {"POST"}, r.text
    assert _allowed(client.post("/v1/models/default", json={})) == {"GET", "HEAD"}
    assert client.get("/v1/models/other:thing").status_code == 404  # no such model, as the template says


class _Echo:
    """A runner stand-in: every request's result is an empty array."""

    def capacity(self, length: int, forward: bool = False) -> int:
        return 64

    def execute(self, requests: list[Request]) -> list[np.ndarray]:
        return [np.zeros(0) for _ in requests]


def _request() -> Request:
    return Forward(Seq(np.zeros(2, np.int64), np.zeros(2, np.int64)), ArrayPoints(np.zeros((1, 2, 3), np.float32)))


def _good() -> Work[str]:
    yield _request()
    return "done"


def _bad_at_once() -> Work[str]:
    raise TypeError("TextInputSequence must be str")
    yield  # a generator


def _bad_later() -> Work[str]:
    yield _request()
    raise UnicodeEncodeError("utf-8", "\udc00", 0, 1, "surrogates not allowed")


def test_a_work_that_raises_fails_alone() -> None:
    """A work ending with an error that is not a SalError ends with it, alone: the others in
    flight, before and after it, finish."""
    service = EngineService(cast(Runner, _Echo()), batch_window=0.05)
    try:
        futures = service.submit_all([_good(), _bad_at_once(), _good(), _bad_later(), _good()])
        done = threading.Event()
        futures[-1].add_done_callback(lambda f: done.set())
        assert done.wait(10), "the engine left a work unanswered"
        assert [f.result(timeout=10) for f in futures[::2]] == ["done"] * 3
        assert isinstance(futures[1].exception(timeout=10), TypeError)
        assert isinstance(futures[3].exception(timeout=10), UnicodeEncodeError)
    finally:
        service.stop(drain=False)


def test_a_request_is_answered_by_its_deadline_whatever_the_engine_does(
        server: Server, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that never answers (as the one above did) still gives a 504, a second after
    the request's deadline, not a request open for ever."""

    def never(works: list[Work[Any]], deadline: float | None = None) -> list[Future[Any]]:
        return [Future() for _ in works]

    monkeypatch.setattr(server.served["default"].service, "submit_all", never)
    start = time.monotonic()
    r = client.post(EXPLAIN, json={"instances": ["good"], "parameters": {"deadline": 0.2}})
    assert r.status_code == 504 and r.json()["status"] == 504, r.text
    assert time.monotonic() - start < 5
