"""The server against hostile clients and models (issue 22): clients that open a request and stop
sending, a tokenizer that panics (a ``BaseException`` from Rust), a graph that loops 2^62 times,
bodies that are not JSON or whose V2 shapes lie, and requests whose instances fail one by one.
Each case asserts the status and the message; the stalled-client cases run a real uvicorn (the
same settings ``serve`` uses) on a loopback port, with raw sockets."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

pytest.importorskip("starlette", reason="the server needs the [serve] extra")
uvicorn = pytest.importorskip("uvicorn")

import crafted  # noqa: E402
import tiny  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402
from tokenizers import Regex, pre_tokenizers  # noqa: E402

from blackbox_sal.api.explaining import prediction_work, runner  # noqa: E402
from blackbox_sal.engine.service import EngineService, Stopped, _Job  # noqa: E402
from blackbox_sal.model.loading import load_model  # noqa: E402
from blackbox_sal.model.text_model import TextModel  # noqa: E402
from blackbox_sal.server.app import Server  # noqa: E402
from blackbox_sal.server.process import uvicorn_config  # noqa: E402
from blackbox_sal.server.protocol import Limits  # noqa: E402
from blackbox_sal.vocabulary.config import ExplainConfig  # noqa: E402

GOOD = "the film was good"
#: 30 a's then b: the pattern (a+)+$ backtracks past Oniguruma's retry limit and Rust panics
PANIC = "a" * 30 + "b"
#: over 39 tokens: the runaway model's Loop then runs 2^62 times (the load-time probe has 14)
LONG = " ".join([GOOD] * 12)
JSON = {"content-type": "application/json"}


def runaway_model(root: Path) -> Path:
    """crafted.mlp() whose logits pass through a Loop of 2^62 empty iterations when the text has
    over 39 tokens (0 iterations otherwise, so it loads and answers short texts)."""
    m = crafted.mlp()
    g = m.graph
    next(n for n in g.node if n.output[0] == "logits").output[0] = "logits0"
    scalar = helper.make_tensor_value_info
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond"], ["cond_out"]), helper.make_node("Identity", ["v"], ["v_out"])],
        "spin", [scalar("i", TensorProto.INT64, []), scalar("cond", TensorProto.BOOL, []),
                 scalar("v", TensorProto.FLOAT, [1])],
        [scalar("cond_out", TensorProto.BOOL, []), scalar("v_out", TensorProto.FLOAT, [1])])
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in {
        "long": np.array(39, np.int64), "trips_big": np.array(2**62, np.int64), "yes": np.array(True),
        "v0": np.zeros(1, np.float32), "one": np.array([1], np.int64), "two": np.array([2], np.int64)}.items())
    g.node.extend([
        helper.make_node("Shape", ["input_ids"], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "two"], ["seq1"]),
        helper.make_node("Squeeze", ["seq1"], ["seq"]),
        helper.make_node("Greater", ["seq", "long"], ["is_long"]),
        helper.make_node("Cast", ["is_long"], ["is_long64"], to=TensorProto.INT64),
        helper.make_node("Mul", ["is_long64", "trips_big"], ["trips"]),
        helper.make_node("Loop", ["trips", "yes", "v0"], ["v_final"], body=body),
        helper.make_node("Add", ["logits0", "v_final"], ["logits"])])
    onnx.checker.check_model(m)
    return crafted.write(root, m, name="runaway")


def panicking_model(root: Path) -> Path:
    """crafted.mlp() with a tokenizer.json whose pre-tokenizer splits on ``(a+)+$``: on PANIC
    the Rust tokenizer raises pyo3's PanicException, a BaseException."""
    folder = crafted.write(root, crafted.mlp(), name="panicky")
    tok = tiny.tokenizer()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Split(Regex("(a+)+$"), behavior="isolated")])
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TextModel]:
    root = tmp_path_factory.mktemp("hostile")
    return {"default": load_model(crafted.write(root, crafted.mlp())),
            "panicky": load_model(panicking_model(root)), "runaway": load_model(runaway_model(root))}


@pytest.fixture(scope="module")
def server(models: dict[str, TextModel]) -> Iterator[Server]:
    s = Server(models, limits=Limits(deadline=2, max_body=4096, read_timeout=1.5, max_reading=2))
    yield s
    s.stop(drain=False)


@pytest.fixture(scope="module")
def client(server: Server) -> TestClient:
    return TestClient(server.app)


@contextmanager
def serving(server: Server) -> Iterator[int]:
    """``server`` behind a real uvicorn with serve's settings, on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    u = uvicorn.Server(uvicorn_config(server, "127.0.0.1", port))
    thread = threading.Thread(target=u.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not u.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield port
    finally:
        u.should_exit = True
        thread.join(10)
        sock.close()


def post(port: int, path: str, body: Any, timeout: float = 10) -> tuple[int, dict[str, Any], float]:
    """(status, JSON answer, seconds) of one POST over a new connection."""
    start = time.monotonic()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers=JSON)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), time.monotonic() - start


def stalled(port: int, sent: bytes, length: int = 1000) -> socket.socket:
    """A connection that sends a POST's headers and ``sent`` of a ``length``-byte body, then nothing."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/models/default:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % length + sent)
    return s


def answer(s: socket.socket, timeout: float = 5) -> bytes:
    """Everything the server sends on ``s`` until it closes it (or ``timeout``)."""
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


# -- stalled clients ---------------------------------------------------------------------------

def test_forty_stalled_clients_block_no_one(server: Server) -> None:
    """40 connections that send headers and part of a body, and 40 that send part of a request
    line, then stop: other clients are answered within a second each while they stall; after
    read_timeout (1.5 s) each stalled body gets a 408 in JSON and every stalled connection is closed.
    Before the fix, four such clients held the four body-reading slots and every POST waited."""
    with serving(server) as port:
        bodies = [stalled(port, b'{"instances": ["the') for _ in range(40)]
        lines = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        for s in lines:
            s.sendall(b"POST /v1/models/default:pre")
        time.sleep(0.2)
        for _ in range(5):
            status, data, seconds = post(port, "/v1/models/default:predict", {"instances": [GOOD]})
            assert status == 200 and data["predictions"][0]["label"] in crafted.LABELS
            assert seconds < 1.0, f"a normal client waited {seconds:.2f} s behind stalled ones"
        got = answer(bodies[0])
        head, _, rest = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower(), got
        assert json.loads(rest) == {"error": "the body did not arrive within 1.5 s", "status": 408}
        for s in bodies + lines:
            answer(s, timeout=3)  # returns when the server closes the connection
            s.settimeout(0.1)
            assert s.recv(1) == b"", "a stalled connection was left open"
            s.close()
        assert server.buffered == 0


def test_bodies_in_flight_are_bounded_in_bytes(server: Server) -> None:
    """max_reading=2 × max_body=4096: bodies being read hold at most 8,192 bytes. Two clients
    that sent 3,900 bytes each and stalled leave room for a small request, not for a third big one
    (503, Retry-After); once they are gone (408) the budget is whole again."""
    with serving(server) as port:
        big = b'{"instances": ["' + b"x" * 3884
        holders = [stalled(port, big, 4000) for _ in range(2)]
        time.sleep(0.3)
        third = stalled(port, big, 4000)
        got = answer(third)
        assert got.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in got.lower(), got
        assert b"bytes of request bodies" in got
        status, _, seconds = post(port, "/v1/models/default:predict", {"instances": [GOOD]})
        assert status == 200 and seconds < 1.0
        third.close()
        for s in holders:
            assert answer(s).startswith(b"HTTP/1.1 408")
            s.close()
        assert server.buffered == 0


def test_a_client_gone_mid_body_is_no_server_error(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    """A client that closes its connection halfway through a body: before, Starlette's
    ClientDisconnect escaped as an ASGI exception (a traceback in the server's log, a 500 in the
    access log); now it is one 400 line in the access log."""
    with caplog.at_level(logging.INFO, logger="blackbox_sal.access"), serving(server) as port:
        stalled(port, b'{"instances": ["the').close()
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.02)
    (entry,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "blackbox_sal.access"]
    assert (entry["route"], entry["status"]) == ("/v1/models/{name}:{verb}", 400)
    assert server.buffered == 0


# -- a tokenizer that panics, a worker that is gone ---------------------------------------------

#: what the panicking tokenizer's text is answered with, in a request or in its instance's place
PANIC_MESSAGE = ("the tokenizer failed on the text (a panic in the tokenizers library: Onig: Regex search error: "
                 "retry-limit-in-match over)")


def test_a_panicking_tokenizer_fails_its_request_alone(server: Server, client: TestClient) -> None:
    """pyo3's PanicException is a BaseException: before the fix it ended the engine's thread and
    every later request to the model was a 504. Now the tokenizer's panic is caught where the
    text is encoded (an InputError: 400 naming it), the same thread answers the next request,
    and a panic beside good instances fails only its own. (A BaseException escaping anywhere
    else in a work is caught by the worker: see the ended-worker test below.)"""
    service = server.served["panicky"].service
    thread = service.thread
    for path in ("/v1/models/panicky:predict", "/v1/models/panicky:explain"):
        got = client.post(path, json={"instances": [PANIC]})
        assert got.status_code == 400, got.text
        assert got.json() == {"status": 400, "error": PANIC_MESSAGE}
    got = client.post("/v1/models/panicky:predict", json={"instances": [GOOD, PANIC, GOOD]})
    assert got.status_code == 200, got.text
    first, failed, last = got.json()["predictions"]
    assert first == last and first["label"] in crafted.LABELS
    assert failed["status"] == 400 and failed["error"] == f"instance 1: {PANIC_MESSAGE}"
    assert service.thread is thread and thread.is_alive() and service.restarts == 0
    assert client.get("/v2/health/ready").json() == {"ready": True}


def test_a_worker_that_is_gone_is_reported_and_replaced(models: dict[str, TextModel]) -> None:
    """Should the worker thread end anyway, readiness says so at once (503 naming the model)
    instead of waiting on it, and the next request starts a new one."""
    s = Server({"default": models["default"]})
    try:
        c = TestClient(s.app)
        service = s.served["default"].service
        service.running = False  # the thread leaves its loop, as a thread that died would
        service.thread.join(5)
        service.running = True
        got = c.get("/v2/health/ready")
        assert got.status_code == 503 and got.json() == {
            "ready": False, "models": {"default": "not ready: its worker thread has ended"}}
        got = c.get("/v2/models/default/ready")
        assert got.status_code == 503
        assert got.json()["error"] == "the model is not ready: its worker thread has ended"
        assert c.post("/v1/models/default:predict", json={"instances": [GOOD]}).status_code == 200
        assert service.restarts == 1 and c.get("/v2/health/ready").status_code == 200
    finally:
        s.stop(drain=False)


def test_a_worker_stuck_in_one_step_is_reported() -> None:
    """A step that does not return (a run that ignores terminate, a tokenizer that never ends)
    past stall_after seconds is reported, read from the clock, not by waiting on the thread."""
    now = [100.0]
    service = EngineService(runner=None, clock=lambda: now[0], stall_after=5)  # type: ignore[arg-type]
    try:
        service.beat = 100.0
        service.jobs = [object()]  # type: ignore[list-item]
        now[0] = 104.0
        assert service.health() is None
        now[0] = 107.5
        assert service.health() == "its worker has been in one step for 8 s"
    finally:
        service.jobs = []
        service.stop(drain=False)


def test_stop_does_not_wait_on_a_worker_that_is_gone(models: dict[str, TextModel]) -> None:
    """Before the fix, SIGTERM took twice the deadline: the drain waited for work no thread
    would do. Now stop() returns at once when the worker is gone, whatever the timeout."""
    service = EngineService(runner(models["default"], ExplainConfig()))
    service.running = False
    service.thread.join(5)
    service.running = True
    job = _Job(prediction_work(models["default"], GOOD, ExplainConfig()), Future(), None)
    service.waiting.put_nowait(job)  # work no thread will take
    start = time.monotonic()
    service.stop(drain=True, timeout=30)
    assert time.monotonic() - start < 3
    assert isinstance(job.future.exception(), Stopped)


# -- a runaway model ------------------------------------------------------------------------------

def test_a_runaway_model_ends_at_the_deadline_and_others_are_served(server: Server) -> None:
    """A Loop of 2^62 iterations: its request is 504 in JSON at the 2-second deadline, the run
    is really terminated (the same worker answers the model's short texts at once afterwards),
    and other models are answered within a second while it runs."""
    with serving(server) as port, ThreadPoolExecutor(1) as pool:
        spinning = pool.submit(post, port, "/v1/models/runaway:predict", {"instances": [LONG]})
        time.sleep(0.3)
        for _ in range(3):
            status, _, seconds = post(port, "/v1/models/default:predict", {"instances": [GOOD]})
            assert status == 200 and seconds < 1.0
        status, data, seconds = spinning.result(timeout=30)
        assert status == 504 and data == {"error": "the request's deadline passed; its work was stopped",
                                          "status": 504}
        assert 1.9 < seconds < 4, seconds
        status, data, seconds = post(port, "/v1/models/runaway:predict", {"instances": [GOOD]})
        assert status == 200 and seconds < 1.0, "the Loop was not terminated: the worker is still in it"
        assert server.served["runaway"].service.health() is None


# -- strict input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json; charset=latin-1",
                                          "application/jsonx"])
def test_a_body_not_declared_json_is_415(client: TestClient, content_type: str | None) -> None:
    body = json.dumps({"instances": [GOOD]}).encode()
    got = client.post("/v1/models/default:predict", content=body,
                      headers={"content-type": content_type} if content_type else {})
    assert got.status_code == 415, got.text
    assert got.json()["error"] == ("the body must be JSON, sent as Content-Type: application/json "
                                   f"(got {json.dumps(content_type or '')})")


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON", "application/json; charset=utf-8",
                                          "application/json;charset=UTF-8"])
def test_json_with_or_without_utf8_charset_is_taken(client: TestClient, content_type: str) -> None:
    got = client.post("/v1/models/default:predict", content=json.dumps({"instances": [GOOD]}).encode(),
                      headers={"content-type": content_type})
    assert got.status_code == 200, got.text


def infer(client: TestClient, tensor: dict[str, Any], **extra: Any) -> Any:
    return client.post("/v2/models/default/infer", json={"inputs": [tensor], **extra})


@pytest.mark.parametrize(("tensor", "message"), [
    ({"name": "t", "datatype": "BYTES", "shape": [3], "data": [GOOD, GOOD]},
     "the input's shape [3] holds 3 elements but its data has 2"),
    ({"name": "t", "datatype": "BYTES", "shape": [1, 2], "data": [GOOD, GOOD]},
     "the input's shape must be [n] or [n, 1] for n texts, got [1, 2]"),
    ({"name": "t", "datatype": "BYTES", "shape": [2, 1, 1], "data": [GOOD, GOOD]},
     "the input's shape must be [n] or [n, 1] for n texts, got [2, 1, 1]"),
    ({"name": "t", "datatype": "BYTES", "shape": [-2], "data": [GOOD, GOOD]},
     "the input's shape [-2] has a negative dimension"),
    ({"name": "t", "datatype": "BYTES", "shape": [], "data": [GOOD]},
     "the input's shape must be a non-empty list of integers, got []"),
    ({"name": "t", "datatype": "BYTES", "shape": [1.5], "data": [GOOD]},
     "the input's shape must be a non-empty list of integers, got [1.5]"),
    ({"name": "t", "datatype": "BYTES", "shape": "2", "data": [GOOD]},
     'the input\'s shape must be a non-empty list of integers, got "2"'),
    ({"name": "t", "datatype": "FP32", "shape": [1], "data": [1.0]},
     'the input\'s datatype must be BYTES (texts), got "FP32"'),
    ({"name": "t", "datatype": "BYTES", "shape": [2], "data": [GOOD, 7]},
     "the input's datatype is BYTES but element 1 is a number, not a string (the data are flat: one text each)"),
    ({"name": "t", "datatype": "BYTES", "shape": [1, 1], "data": [[GOOD]]},
     "the input's datatype is BYTES but element 0 is a list, not a string (the data are flat: one text each)"),
])
def test_v2_shapes_and_datatypes_are_checked(client: TestClient, tensor: dict[str, Any], message: str) -> None:
    got = infer(client, tensor)
    assert got.status_code == 400 and got.json() == {"error": message, "status": 400}


def test_v2_takes_n_and_n_by_1_and_no_shape(client: TestClient) -> None:
    answers = [infer(client, {"name": "t", "datatype": "BYTES", **shape, "data": [GOOD, "the film was bad"]})
               for shape in ({"shape": [2]}, {"shape": [2, 1]}, {})]
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert answers[0].json() == answers[1].json() == answers[2].json()


def test_v2_unknown_output_is_400(client: TestClient) -> None:
    got = infer(client, {"name": "t", "datatype": "BYTES", "shape": [1], "data": [GOOD]}, outputs=[{"name": "logits"}])
    assert got.status_code == 400
    assert got.json()["error"] == 'unknown output "logits" (known: error, explanation, label, scores, text)'


# -- per-instance errors --------------------------------------------------------------------------

def test_v1_instances_fail_one_by_one(client: TestClient) -> None:
    """An unknown target label fails its own instance (400 in its place); the others are
    answered as they would be alone."""
    alone = client.post("/v1/models/default:explain", json={"instances": [GOOD]}).json()["explanations"][0]
    got = client.post("/v1/models/default:explain",
                      json={"instances": [{"text": GOOD, "id": "a"}, {"text": GOOD, "target": "zzz", "id": "b"}]})
    assert got.status_code == 200, got.text
    ok, failed = got.json()["explanations"]
    assert ok["id"] == "a" and ok["tokens"] == alone["tokens"]
    assert failed["id"] == "b" and failed["status"] == 400 and set(failed) == {"id", "error", "status"}
    assert failed["error"].startswith("instance 1: unknown target label 'zzz'")


def test_when_every_instance_fails_the_first_failure_is_the_status(client: TestClient) -> None:
    got = client.post("/v1/models/panicky:predict", json={"instances": [PANIC, PANIC]})
    assert got.status_code == 400 and got.json()["error"].startswith("instance 0: the tokenizer failed on the text")


def test_v2_instances_fail_one_by_one(client: TestClient) -> None:
    """V2 predictions: a failed instance has a row of null scores, the label "" and its message
    in an "error" output (present only when some instance failed); the explainer puts an
    {"error", "status"} object in the failed instance's JSON string."""
    tensor = {"name": "t", "datatype": "BYTES", "shape": [2], "data": [GOOD, PANIC]}
    alone = client.post("/v2/models/panicky/infer", json={"inputs": [{**tensor, "shape": [1], "data": [GOOD]}]})
    assert [o["name"] for o in alone.json()["outputs"]] == ["scores", "label"]
    got = client.post("/v2/models/panicky/infer", json={"inputs": [tensor]})
    assert got.status_code == 200, got.text
    scores, labels, errors = got.json()["outputs"]
    assert scores["shape"] == [2, 2] and scores["data"][:2] == alone.json()["outputs"][0]["data"]
    assert scores["data"][2:] == [None, None] and labels["data"][1] == ""
    assert errors["name"] == "error" and errors["shape"] == [2] and errors["data"][0] == ""
    assert errors["data"][1].startswith("instance 1: the tokenizer failed on the text")
    got = client.post("/v2/models/panicky-explainer/infer", json={"inputs": [tensor]})
    ok, failed = (json.loads(d) for d in got.json()["outputs"][0]["data"])
    assert "tokens" in ok and failed["status"] == 400 and failed["error"].startswith("instance 1: ")


# -- the access log -------------------------------------------------------------------------------

def test_the_access_log_is_one_json_line_a_request(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    """Route (the template), model, status, milliseconds; nothing from the body; every
    character of a path escaped (an ANSI escape in a model name reaches no terminal)."""
    with caplog.at_level(logging.INFO, logger="blackbox_sal.access"):
        client.post("/v1/models/default:predict", json={"instances": ["secret words"]})
        client.post("/v1/models/%1B%5B31mred:predict", json={"instances": [GOOD]})
        client.post("/v1/models/default:predict", content=b"{}", headers={"content-type": "text/plain"})
        client.get("/nothing")
    lines = [r.getMessage() for r in caplog.records if r.name == "blackbox_sal.access"]
    assert len(lines) == 4
    entries = [json.loads(line) for line in lines]
    assert [(e["route"], e["model"], e["status"]) for e in entries] == [
        ("/v1/models/{name}:{verb}", "default", 200), ("/v1/models/{name}:{verb}", "\x1b[31mred", 404),
        ("/v1/models/{name}:{verb}", "default", 415), ("(none)", None, 404)]
    assert all(e["method"] in ("GET", "POST") and 0 < e["ms"] < 10_000 for e in entries)
    assert "secret" not in "".join(lines) and "\x1b" not in "".join(lines)


def test_read_timeout_out_of_range_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from blackbox_sal.cli import main
    assert main(["serve", "--read-timeout", "0"]) == 2
    assert capsys.readouterr().err.strip() == "blackbox-sal: error: --read-timeout must be from 0.01 to 3,600, got 0.0"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread ends so, on purpose
def test_a_worker_that_ends_anyway_leaves_no_request_waiting(models: dict[str, TextModel],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Should even the loop's own handler raise (here: a step and the error conversion both
    do), the thread ends, and the works it held are failed at once (a 422 naming it), not left
    to their deadlines; the next request starts a new thread."""
    import blackbox_sal.engine.service as service_module
    s = Server({"default": models["default"]})
    service = s.served["default"].service
    try:
        c = TestClient(s.app)

        def broken(exc: BaseException) -> Exception:
            raise RuntimeError("the handler broke")
        monkeypatch.setattr(service, "_round", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
        monkeypatch.setattr(service_module, "_as_error", broken)
        start = time.monotonic()
        got = c.post("/v1/models/default:predict", json={"instances": [GOOD]})
        assert time.monotonic() - start < 5 and not service.thread.is_alive()
        assert got.status_code == 422
        assert got.json()["error"] == "the engine's worker ended while this request waited; try again"
        monkeypatch.undo()
        assert c.post("/v1/models/default:predict", json={"instances": [GOOD]}).status_code == 200
        assert service.restarts == 1
    finally:
        s.stop(drain=False)
