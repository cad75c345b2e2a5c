"""The HTTP server: every documented status provoked on purpose, answers equal to the library's
(explain == bs.explain, predict == the model's outputs), concurrent requests packed into shared
runs, deadlines that stop the work, and SIGTERM that turns readiness off and drains."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the server needs the [serve] extra")
httpx = pytest.importorskip("httpx")

import crafted  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

import blackbox_sal as bs  # noqa: E402
from blackbox_sal.api.explaining import prediction_work, runner, text_explanation  # noqa: E402
from blackbox_sal.engine.service import EngineService  # noqa: E402
from blackbox_sal.methods import METHODS  # noqa: E402
from blackbox_sal.model.files import default_model_path  # noqa: E402
from blackbox_sal.model.loading import load_model  # noqa: E402
from blackbox_sal.model.text_model import TextModel  # noqa: E402
from blackbox_sal.server.app import Server  # noqa: E402
from blackbox_sal.server.protocol import Limits, status_of  # noqa: E402
from blackbox_sal.vocabulary.errors import InputError, ModelError, TooLongError, UnavailableError, UsageError  # noqa: E402

TEXTS = ["a fine film", "the plot was dull but the acting was fine", "dull and boring", "a moving, funny story"]
LONG = " ".join(["the plot was dull but the acting was fine"] * 10)


@pytest.fixture(scope="module")
def model() -> TextModel:
    return load_model(default_model_path())


@pytest.fixture(scope="module")
def server(model: TextModel) -> Iterator[Server]:
    s = Server({"default": model}, limits=Limits(max_body=4096, max_chars=2000, max_instances=8))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> TestClient:
    return TestClient(server.app)


def explain(client: TestClient, instances: list[Any], **parameters: Any) -> Any:
    return client.post("/v1/models/default:explain", json={"instances": instances, "parameters": parameters})


def scores(obj: dict[str, Any]) -> np.ndarray:
    return np.array([t["score"] for t in obj["tokens"]])


def test_health_and_metadata(client: TestClient, model: TextModel) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models").json() == {"models": ["default"]}
    meta = client.get("/v2/models/default").json()
    assert meta["labels"] == list(model.labels or ())
    assert set(meta["methods"]) == set(METHODS) and "graph" in meta["backends"] and meta["device"] == "cpu"
    assert meta["max_length"] == model.max_length
    assert client.get("/v2/models/default-explainer").json()["explains"] == "default"
    assert client.get("/v2/models/default/ready").json() == {"name": "default", "ready": True}
    assert client.get("/v1/models/default").json() == {"name": "default", "ready": True}
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1") and "/v1/models/default:explain" in doc["paths"]
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("method", ["saliency", "grad-x-input", "ig", "occlusion", "smoothgrad", "shapley",
                                    "kernel-shap", "permutation", "lime", "owen"])
def test_explain_equals_the_library(client: TestClient, model: TextModel, method: str) -> None:
    got = explain(client, TEXTS[:2], method=method, seed=1)
    assert got.status_code == 200, got.text
    objects = got.json()["explanations"]
    for text, obj in zip(TEXTS[:2], objects, strict=True):
        ref = bs.explain(model, text, bs.ExplainConfig(method=method, seed=1))
        assert obj["text"] == text and obj["method"] == method and obj["backend"] == ref.backend
        np.testing.assert_allclose(scores(obj), [t.score for t in ref.tokens], rtol=1e-5, atol=1e-6)
        assert [(t["start"], t["end"]) for t in obj["tokens"]] == [(t.start, t.end) for t in ref.tokens]
        assert obj["target_value"] == pytest.approx(ref.target_value, rel=1e-6)
        assert obj["prediction"]["label"] == ref.prediction.label
        assert obj["producer"]["version"] == bs.__version__ and obj["producer"]["seconds"] > 0
        if method in ("kernel-shap", "permutation", "lime"):  # a standard error per token
            assert [t["std_error"] for t in obj["tokens"]] == pytest.approx(list(ref.token_errors or ()), nan_ok=True)
        if method == "ig":  # f(x') and the completeness delta come along
            assert obj["baseline_value"] == pytest.approx(ref.baseline_value, rel=1e-5)
            assert abs(obj["convergence_delta"]) < 0.05


def test_explanations_follow_the_result_schema(client: TestClient) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(bs.__file__).parent / "render" / "explanation.schema.json").read_text())
    for obj in explain(client, TEXTS, method="ig").json()["explanations"]:
        jsonschema.validate(obj, schema)


def test_per_instance_target(client: TestClient, model: TextModel) -> None:
    objects = explain(client, [{"text": TEXTS[0], "target": "rotten"}, {"text": TEXTS[0], "target": 1}]).json()
    assert [o["target"]["label"] for o in objects["explanations"]] == ["rotten", model.label(1)]
    ref = bs.explain(model, TEXTS[0], bs.ExplainConfig(target="rotten"))
    np.testing.assert_allclose(scores(objects["explanations"][0]), [t.score for t in ref.tokens], rtol=1e-5)


def test_ids_are_echoed(client: TestClient) -> None:
    """An instance's id comes back beside its own answer (as a string; none where it gave
    none), and the request's id at the top, for :explain and :predict alike."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(bs.__file__).parent / "render" / "explanation.schema.json").read_text())
    instances = [{"text": TEXTS[0], "id": "a"}, TEXTS[1], {"text": TEXTS[2], "id": 7}]
    for verb, key in ((":explain", "explanations"), (":predict", "predictions")):
        got = client.post(f"/v1/models/default{verb}", json={"instances": instances, "id": "req-1"}).json()
        assert got["id"] == "req-1"
        assert [o.get("id") for o in got[key]] == ["a", None, "7"]
        assert "id" not in client.post(f"/v1/models/default{verb}", json={"instances": TEXTS[:1]}).json()
    for obj in got["predictions"]:
        assert obj["label"] in ("rotten", "fresh")
    explained = client.post("/v1/models/default:explain", json={"instances": instances}).json()["explanations"]
    assert [o["text"] for o in explained] == [TEXTS[0], TEXTS[1], TEXTS[2]]
    for obj in explained:
        jsonschema.validate(obj, schema)


def test_predict_equals_the_model(client: TestClient, model: TextModel) -> None:
    got = client.post("/v1/models/default:predict", json={"instances": TEXTS}).json()["predictions"]
    for text, p in zip(TEXTS, got, strict=True):
        ref = bs.explain(model, text).prediction
        assert p["label"] == ref.label and p["index"] == ref.index
        np.testing.assert_allclose(p["scores"], ref.scores, rtol=1e-5, atol=1e-5)


def test_v2_infer(client: TestClient) -> None:
    body = {"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": TEXTS[:2]}],
            "parameters": {"method": "ig"}}
    got = client.post("/v2/models/default-explainer/infer", json=body).json()
    assert got["model_name"] == "default-explainer" and got["id"] == "r1"
    (out,) = got["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [2]
    v1 = explain(client, TEXTS[:2], method="ig").json()["explanations"]
    for text, obj, ref in zip(TEXTS[:2], [json.loads(d) for d in out["data"]], v1, strict=True):
        assert obj["text"] == text
        np.testing.assert_allclose(scores(obj), scores(ref), rtol=1e-5, atol=1e-6)
    pred = client.post("/v2/models/default/infer", json=body).json()
    scores_out, labels_out = pred["outputs"]
    v1p = client.post("/v1/models/default:predict", json={"instances": TEXTS[:2]}).json()["predictions"]
    assert scores_out["shape"] == [2, 2] and labels_out["data"] == [p["label"] for p in v1p]
    np.testing.assert_allclose(scores_out["data"], [v for p in v1p for v in p["scores"]], rtol=1e-6)


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"[1]", 400, "JSON object"),
    (b"[" * 100_000, 413, "bytes"),  # over max_body before it is parsed
    (json.dumps({"instances": []}).encode(), 400, "non-empty list"),
    (json.dumps({"instances": ["ok"], "extra": 1}).encode(), 400, "unknown field 'extra'"),
    (json.dumps({"instances": [3]}).encode(), 400, "a text or an object"),
    (json.dumps({"instances": [""]}).encode(), 400, "empty"),
    (json.dumps({"instances": [{"text": "ok", "colour": 1}]}).encode(), 400, "unknown fields colour"),
    (json.dumps({"instances": ["ok"] * 9}).encode(), 413, "at most 8 per request"),
    (json.dumps({"instances": ["x" * 2001]}).encode(), 413, "2,001 characters"),
    (json.dumps({"instances": ["ok"], "parameters": {"method": "nope"}}).encode(), 400, "unknown method"),
    (json.dumps({"instances": ["ok"], "parameters": {"steps": 10**9}}).encode(), 400, "steps"),
    (json.dumps({"instances": ["ok"], "parameters": {"bogus": 1}}).encode(), 400, "unknown parameter 'bogus'"),
    (json.dumps({"instances": ["ok"], "parameters": {"deadline": -1}}).encode(), 400, "deadline"),
    (json.dumps({"instances": ["ok"], "parameters": {"samples": "many"}}).encode(), 400, None),
    (json.dumps({"instances": [{"text": "ok", "target": "zzz"}]}).encode(), 400, "unknown target label"),
    (json.dumps({"instances": ["ok", ""]}).encode(), 400, "instance 1 is empty"),
])
def test_bad_requests(client: TestClient, body: bytes, status: int, message: str | None) -> None:
    got = client.post("/v1/models/default:explain", content=body, headers={"content-type": "application/json"})
    assert got.status_code == status, got.text
    data = got.json()
    assert data["status"] == status and (message is None or message in data["error"]), data
    assert "Traceback" not in got.text


def test_token_limit_is_413(model: TextModel) -> None:
    s = Server({"default": model}, limits=Limits(max_chars=100_000))
    try:
        text = " ".join(["fine"] * ((model.max_length or 512) + 10))
        got = TestClient(s.app).post("/v1/models/default:explain", json={"instances": [text]})
        assert got.status_code == 413 and "tokens" in got.json()["error"]
    finally:
        s.stop()


def test_body_limit_holds_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ["'
        for _ in range(100):
            yield b"x" * 100
        yield b'"]}'
    got = client.post("/v1/models/default:explain", content=chunks(), headers={"content-type": "application/json"})
    assert got.status_code == 413 and "4,096" in got.json()["error"]


def test_unknown_model_route_and_method(client: TestClient) -> None:
    for got in (client.get("/v2/models/nope"), client.post("/v1/models/nope:explain", json={"instances": ["ok"]}),
                client.post("/v2/models/nope-explainer/infer", json={}), client.get("/v2/models/nope/ready"),
                client.post("/v1/models/default:train", json={}), client.get("/nothing")):
        assert got.status_code == 404 and got.json()["status"] == 404
    got = client.get("/v1/models/default:explain")
    assert got.status_code == 405 and got.headers["allow"] == "POST"
    got = client.put("/v2/models/default/infer")
    assert got.status_code == 405 and "not allowed" in got.json()["error"]


def test_model_that_cannot_explain_is_422(tmp_path: Path) -> None:
    broken = crafted.embeds_model()
    w2 = crafted.initializer(broken, "W2")
    w2.CopyFrom(bs_array(np.sign(crafted.W2) * np.float32(3e38), "W2"))  # logits overflow to inf
    folder = crafted.write(tmp_path, broken)
    np.save(folder / "embeddings.npy", crafted.TABLE)
    s = Server({"broken": load_model(folder)})
    try:
        got = TestClient(s.app).post("/v1/models/broken:explain", json={"instances": [crafted.TEXT]})
        assert got.status_code == 422 and "not finite" in got.json()["error"], got.text
    finally:
        s.stop()


def bs_array(values: np.ndarray, name: str) -> Any:
    from onnx import numpy_helper
    return numpy_helper.from_array(values.astype(np.float32), name)


def test_queue_full_is_429(model: TextModel) -> None:
    s = Server({"default": model}, limits=Limits(queue_size=2))
    try:
        got = TestClient(s.app).post("/v1/models/default:explain", json={"instances": TEXTS[:3]})
        assert got.status_code == 429 and got.headers["retry-after"] == "1"
    finally:
        s.stop()


def test_not_ready_is_503(model: TextModel) -> None:
    s = Server({"default": model})
    c = TestClient(s.app)
    s.drain_started()
    try:
        assert c.get("/v2/health/ready").status_code == 503
        assert c.get("/v2/health/live").status_code == 200
        got = c.post("/v1/models/default:predict", json={"instances": ["ok"]})
        assert got.status_code == 503 and got.headers["retry-after"] == "5"
    finally:
        s.stop()


def test_more_requests_than_the_limit_is_503(model: TextModel) -> None:
    s = Server({"default": model}, limits=Limits(max_connections=1))

    async def two_at_once() -> list[Any]:
        transport = httpx.ASGITransport(app=s.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            body = {"instances": [LONG], "parameters": {"method": "smoothgrad", "samples": 200}}
            return await asyncio.gather(*(c.post("/v1/models/default:explain", json=body) for _ in range(2)))
    try:
        statuses = sorted(r.status_code for r in asyncio.run(two_at_once()))
        assert statuses == [200, 503]
    finally:
        s.stop()


def test_deadline_stops_the_work(model: TextModel) -> None:
    """SmoothGrad with 10,000 samples on 90 tokens takes half a minute here; a 1-second
    deadline answers 504 near it (the run is stopped by RunOptions.terminate), and the engine
    answers the next request."""
    s = Server({"default": model})
    c = TestClient(s.app)
    try:
        start = time.monotonic()
        got = c.post("/v1/models/default:explain",
                     json={"instances": [LONG], "parameters": {"method": "smoothgrad", "samples": 10_000,
                                                               "deadline": 1}})
        took = time.monotonic() - start
        assert got.status_code == 504 and "deadline" in got.json()["error"]
        assert took < 10, f"the late work went on for {took:.1f} s"
        assert explain(c, TEXTS[:1]).status_code == 200
    finally:
        s.stop()


def test_concurrent_requests_share_runs(model: TextModel) -> None:
    """Eight requests at once: the engine packs them (fewer rounds than requests x steps) and
    each answer equals the library's."""
    s = Server({"default": model}, limits=Limits(batch_window=0.05))

    async def all_at_once() -> list[Any]:
        transport = httpx.ASGITransport(app=s.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            return await asyncio.gather(*(c.post("/v1/models/default:explain",
                                                 json={"instances": [t], "parameters": {"method": "ig"}})
                                          for t in TEXTS * 2))
    try:
        answers = asyncio.run(all_at_once())
        service = s.served["default"].service
        assert service.packed >= 2, "no round held more than one request"
        for text, got in zip(TEXTS * 2, answers, strict=True):
            (obj,) = got.json()["explanations"]
            ref = bs.explain(model, text, bs.ExplainConfig(method="ig"))
            np.testing.assert_allclose(scores(obj), [t.score for t in ref.tokens], rtol=1e-5, atol=1e-6)
    finally:
        s.stop()


def test_service_all_or_nothing_and_drain(model: TextModel) -> None:
    cfg = bs.ExplainConfig(method="ig").validated()
    service = EngineService(runner(model, cfg), queue_size=3, batch_window=0.0)
    futures = service.submit_all([text_explanation(model, t, cfg) for t in TEXTS[:3]])
    service.stop(drain=True)
    for text, f in zip(TEXTS[:3], futures, strict=True):
        np.testing.assert_allclose([t.score for t in f.result().tokens],
                                   [t.score for t in bs.explain(model, text, cfg).tokens], rtol=1e-5, atol=1e-6)
    with pytest.raises(Exception, match="stopping"):
        service.submit(text_explanation(model, TEXTS[0], cfg))


def test_status_of_errors() -> None:
    assert status_of(TooLongError("x")) == 413
    assert status_of(InputError("x")) == status_of(UsageError("x")) == status_of(UnavailableError("x")) == 400
    assert status_of(ModelError("x")) == 422


# -- the real process: uvicorn, SIGTERM ----------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_sigterm_turns_readiness_off_and_drains() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "blackbox_sal", "serve", "--port", str(port), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "NO_COLOR": "1"})
    try:
        for _ in range(600):
            try:
                if get(base + "/v2/health/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("the server did not get ready")
        slow: dict[str, Any] = {}

        def ask_slow() -> None:
            slow["answer"] = get(base + "/v1/models/default:explain",
                                 {"instances": [LONG], "parameters": {"method": "smoothgrad", "samples": 4000}})
        thread = threading.Thread(target=ask_slow)
        thread.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert get(base + "/v2/health/ready")[0] == 503
        status, refused = get(base + "/v1/models/default:predict", {"instances": ["ok"]})
        assert status == 503 and "not ready" in refused["error"]
        thread.join(timeout=120)
        status, answer = slow["answer"]
        assert status == 200 and answer["explanations"][0]["settings"]["samples"] == 4000
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_service_cuts_big_requests_into_pieces_and_the_results_are_whole(model: TextModel,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of 3 rows, one per job per round: more rounds, and every method's answers equal
    the library's."""
    def served(cfg: bs.ExplainConfig) -> tuple[list[list[float]], int]:
        service = EngineService(runner(model, cfg), batch_window=0.0)
        try:
            futures = service.submit_all([text_explanation(model, t, cfg) for t in TEXTS])
            return [[t.score for t in f.result(timeout=60).tokens] for f in futures], service.rounds
        finally:
            service.stop(drain=False)

    for cfg in (bs.ExplainConfig(method="ig", steps=10), bs.ExplainConfig(method="occlusion"),
                bs.ExplainConfig(method="grad-x-input", backend="fd"),
                bs.ExplainConfig(method="smoothgrad", samples=4, seed=2)):
        cfg = cfg.validated()
        _, whole_rounds = served(cfg)
        with monkeypatch.context() as m:
            m.setattr(EngineService, "_piece", lambda self, request: 3)
            got, rounds = served(cfg)
        assert rounds > whole_rounds
        for text, scores_ in zip(TEXTS, got, strict=True):
            np.testing.assert_allclose(scores_, [t.score for t in bs.explain(model, text, cfg).tokens],
                                       rtol=1e-6, atol=1e-7)


def test_a_heavy_request_does_not_hold_up_a_light_one(model: TextModel) -> None:
    """A text explained by finite differences with 1,024 nodes and Richardson (tens of
    thousands of rows) runs a few runs per round; a prediction submitted after it is answered
    while it is still running."""
    heavy_cfg = bs.ExplainConfig(method="ig", backend="fd", steps=1024, richardson=True).validated()
    service = EngineService(runner(model, heavy_cfg), batch_window=0.0)
    try:
        heavy = service.submit(text_explanation(model, LONG, heavy_cfg))
        time.sleep(0.2)
        light = service.submit(prediction_work(model, TEXTS[0], heavy_cfg))
        assert light.result(timeout=30).label == bs.explain(model, TEXTS[0]).prediction.label
        assert not heavy.done()
    finally:
        service.stop(drain=False)
