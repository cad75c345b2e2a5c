"""The server's routes (Starlette): health, model metadata, KServe V1 predict and explain, the
V2 inference protocol (the model, and its explainer as a model), the OpenAPI document and the
web page. Every model's work goes through its :class:`~blackbox_sal.engine.service.EngineService`,
so concurrent requests share onnxruntime runs. See :mod:`blackbox_sal.server.protocol` for the
statuses; no route loads or changes a model.

Bodies are JSON alone (415 otherwise: a web page may post ``text/plain`` or a form to a server on
loopback without a preflight), read within ``read_timeout`` seconds (408 beyond) while the
bodies being read hold at most ``max_reading`` × ``max_body`` bytes in all (503 beyond): a client
that stops sending holds only what it sent, for a while, and no other client waits on it. Every
request ends in one line of the access log (route, model, status, milliseconds; JSON) when it
is on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from blackbox_sal import __version__
from blackbox_sal.api.explaining import prediction_work, runner
from blackbox_sal.engine.pairs import PairService
from blackbox_sal.engine.service import Busy, DeadlineExceeded, EngineService, Stopped
from blackbox_sal.gradients.backend import BACKENDS, choose_backend
from blackbox_sal.jobs.batch import work_for
from blackbox_sal.jobs.datasets import Row
from blackbox_sal.methods import METHODS
from blackbox_sal.model.encoder_decoder import Pair
from blackbox_sal.model.pair_files import FilePair
from blackbox_sal.model.text_model import TextModel
from blackbox_sal.render.generation import generation_json
from blackbox_sal.seq2seq.explaining import METHODS as PAIR_METHODS
from blackbox_sal.seq2seq.explaining import explain_generation as explain_pair
from blackbox_sal.seq2seq.explaining import generate
from blackbox_sal.server.openapi import openapi_document
from blackbox_sal.server.protocol import (
    HttpError,
    Limits,
    check_instances,
    check_json_type,
    explanation_object,
    infer_rows,
    instance_rows,
    parse_json,
    settings_of,
    status_of,
)
from blackbox_sal.text.tokenization import tokenize
from blackbox_sal.vocabulary.config import ExplainConfig
from blackbox_sal.vocabulary.errors import SalError, UsageError
from blackbox_sal.vocabulary.result import Prediction
from blackbox_sal.vocabulary.runs import Work

EXPLAINER = "-explainer"  # the V2 explainer of model NAME is the model NAME-explainer
#: seconds past its deadline after which a request is answered 504 whatever its engine does
ANSWER_GRACE = 1.0
#: seconds past the deadline a worker may spend in one step before health reports it stuck
STALL_GRACE = 5.0
#: the access log: one JSON object a line (route, model, status, ms); ``process.run`` shows it
ACCESS_LOG = logging.getLogger("blackbox_sal.access")
#: output tokens an encoder/decoder's :predict (and :explain without target_text) generates
PAIR_GENERATE = 20
#: the ``kind`` in an encoder/decoder pair's V2 metadata (the web page shows its two matrices)
PAIR_KIND = "encoder-decoder"
#: most instances of one pair explained at once (each holds a thread; the rest wait in its queue)
PAIR_THREADS = 4


@dataclass
class Served:
    """One model the server answers for, with its engine."""

    name: str
    model: TextModel
    service: EngineService
    graph: bool  # whether a verified gradient graph is ready (the exact backend)

    def metadata(self) -> dict[str, Any]:
        m = self.model
        return {
            "name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                        {"name": "label", "datatype": "BYTES", "shape": [-1]}],
            "task": m.task, "output": m.output, "labels": list(m.labels) if m.labels else None,
            "max_length": m.max_length, "device": m.device,
            "methods": {name: spec.summary for name, spec in METHODS.items()},
            "backends": [b for b in BACKENDS if b != "graph" or self.graph],
            "explainer": self.name + EXPLAINER,
        }


class Server:
    """The models, their engines and the server's state (ready, draining). ``app`` is the
    ASGI application; ``stop`` drains and ends the engines."""

    def __init__(self, models: dict[str, TextModel], defaults: ExplainConfig | None = None,
                 limits: Limits | None = None, pairs: dict[str, Pair | FilePair] | None = None) -> None:
        self.defaults = dataclasses.replace(defaults or ExplainConfig(), progress=False).validated()
        self.limits = limits or Limits()
        self.served: dict[str, Served] = {}
        for name, model in models.items():
            if not name or any(c in name for c in "/:?#%") or name != name.strip():
                raise UsageError(f"model name {name!r} cannot be part of a route: use letters, digits, '-', '_', '.'")
            graph = _warm(model, self.defaults)
            self.served[name] = Served(name, model, EngineService(
                runner(model, self.defaults), max_active=self.limits.max_active,
                queue_size=self.limits.queue_size, batch_window=self.limits.batch_window,
                stall_after=self.limits.deadline + STALL_GRACE), graph)
        self.pairs = dict(pairs or {})  # encoder/decoder pairs: KServe V1 alone, admitted as the engine admits
        for name in self.pairs:
            if not name or any(c in name for c in "/:?#%") or name != name.strip() or name in self.served:
                raise UsageError(f"model name {name!r} is repeated or cannot be part of a route")
        self.pair_services = {name: PairService(
            max_active=max(1, min(self.limits.max_active, PAIR_THREADS)), queue_size=self.limits.queue_size,
            stall_after=self.limits.deadline + STALL_GRACE) for name in self.pairs}
        self.ready = True
        self.in_flight = 0  # requests being answered (draining waits for them)
        self.buffered = 0  # bytes of request bodies being read, in all (at most max_reading × max_body)
        routes = [
            Route("/", self.page, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/v2/health/live", self.live, methods=["GET"]),
            Route("/v2/health/ready", self.health_ready, methods=["GET"]),
            Route("/v2", self.server_metadata, methods=["GET"]),
            Route("/v2/models", self.models, methods=["GET"]),
            Route("/v2/models/{name}", self.model_metadata, methods=["GET"]),
            Route("/v2/models/{name}/ready", self.model_ready, methods=["GET"]),
            Route("/v2/models/{name}/infer", self.infer, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            # NAME:VERB (a name is all before the last colon) is POST alone: another method is 405
            # with Allow: POST (v1_status answers GET); NAME is GET alone (Allow: GET, HEAD)
            Route("/v1/models/{name}:{verb}", self.v1, methods=["POST"]),
            Route("/v1/models/{name}", self.v1_status, methods=["GET"]),
        ]
        self.app = _Bounded(Starlette(routes=routes, exception_handlers={HTTPException: _http_exception,
                                                                          Exception: _internal}),
                            self.limits.max_connections, {r.endpoint: r.path for r in routes})
        self.openapi_doc = openapi_document(list(self.served), self.defaults, self.limits, list(self.pairs))

    def stop(self, drain: bool = True) -> None:
        """Readiness off; with ``drain`` the queued and admitted work is finished first."""
        self.ready = False
        for served in self.served.values():
            served.service.stop(drain=drain, timeout=self.limits.deadline)
        for service in self.pair_services.values():
            service.stop(drain=drain)

    def drain_started(self) -> None:
        """SIGTERM: readiness off, new work refused (503); the work in flight goes on."""
        self.ready = False

    # -- routes ------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(resources.files("blackbox_sal.server").joinpath("page.html").read_text("utf-8"),
                            headers={"Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                                                                "script-src 'unsafe-inline'"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.openapi_doc)

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def health_ready(self, request: Request) -> Response:
        """Ready when taking work and every model's worker is; else 503 naming what is not,
        without waiting on any worker."""
        problems = {name: why for name, s in self.served.items() if (why := s.service.health()) is not None}
        problems.update({name: why for name, p in self.pair_services.items() if (why := p.health()) is not None})
        ready = self.ready and not problems
        body: dict[str, Any] = {"ready": ready}
        if problems:
            body["models"] = {name: f"not ready: {why}" for name, why in problems.items()}
        return JSONResponse(body, status_code=200 if ready else 503, headers=None if ready else {"Retry-After": "5"})

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "blackbox-sal", "version": __version__, "extensions": ["explain"]})

    async def models(self, request: Request) -> Response:
        return JSONResponse({"models": [*self.served, *self.pairs]})

    async def model_metadata(self, request: Request) -> Response:
        return await _answer(lambda: self._metadata(request.path_params["name"]))

    async def _metadata(self, name: str) -> Response:
        base = name.removesuffix(EXPLAINER)
        if base in self.pairs:  # an encoder/decoder pair: texts in, generated texts (or explanations) out
            out = "explanation" if base != name else "text"
            # the web page reads kind, methods, backends and generate to offer a pair's form
            page = {} if base != name else {
                "kind": PAIR_KIND, "methods": {m: METHODS[m].summary for m in PAIR_METHODS},
                "backends": ["graph", "fd"] if self.pairs[base].decoder_grad is not None else ["fd"],
                "generate": PAIR_GENERATE}
            return JSONResponse({"name": name, "versions": ["1"], "platform": "blackbox-sal",
                                 "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                                 "outputs": [{"name": out, "datatype": "BYTES", "shape": [-1]}],
                                 **({"explains": base} if base != name else page)})
        if name.endswith(EXPLAINER) and name[:-len(EXPLAINER)] in self.served:
            served = self.served[name[:-len(EXPLAINER)]]
            return JSONResponse({"name": name, "versions": ["1"], "platform": "blackbox-sal",
                                 "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
                                 "outputs": [{"name": "explanation", "datatype": "BYTES", "shape": [-1]}],
                                 "explains": served.name})
        return JSONResponse(self._served(name).metadata())

    async def model_ready(self, request: Request) -> Response:
        async def ready() -> Response:
            name = request.path_params["name"]
            base = name[:-len(EXPLAINER)] if name.endswith(EXPLAINER) else name
            why = self.pair_services[base].health() if base in self.pairs else self._served(base).service.health()
            ready = self.ready and why is None
            body: dict[str, Any] = {"name": name, "ready": ready}
            if why is not None:
                body["error"] = f"the model is not ready: {why}"
            return JSONResponse(body, status_code=200 if ready else 503)
        return await _answer(ready)

    async def v1(self, request: Request) -> Response:
        """``POST /v1/models/NAME:predict`` and ``NAME:explain``."""
        name, verb = request.path_params["name"], request.path_params["verb"]
        if verb not in ("predict", "explain"):
            return _error(404, f"no route POST {request.url.path}: use NAME:predict or NAME:explain")
        return await _answer(lambda: self._v1(request, name, verb))

    async def v1_status(self, request: Request) -> Response:
        """``GET /v1/models/NAME``; on a served NAME:predict or NAME:explain, 405 (Allow: POST)."""
        async def status() -> Response:
            name = request.path_params["name"]
            model, _, verb = name.rpartition(":")
            if (model in self.served or model in self.pairs) and verb in ("predict", "explain"):
                return _error(405, f"GET is not allowed on {request.url.path}", headers={"Allow": "POST"})
            if name not in self.pairs:
                self._served(name)
            return JSONResponse({"name": name, "ready": self.ready})
        return await _answer(status)

    async def _v1(self, request: Request, name: str, verb: str) -> Response:
        if name in self.pairs:
            return await self._v1_pair(request, name, verb)
        served = self._served(name)
        data = await self._body(request)
        _known(data, {"instances", "parameters", "id"})
        rows = instance_rows(data, self.limits.max_instances, self.limits.max_chars)
        cfg, deadline = self._settings(data.get("parameters"))
        if verb == "predict":
            if any(r.pair is not None or r.choices is not None or r.target is not None or r.question is not None
                   or r.at is not None or r.contrast is not None for r in rows):
                raise HttpError(400, ":predict takes texts: target, at, contrast, pair, choices and question are for "
                                     ":explain")
            predictions = await self._run(served, [prediction_work(served.model, r.text, cfg) for r in rows],
                                          deadline)
            return _json({**_echo_id(data), "predictions": [
                {**_id(row), **(_instance_error(p) if isinstance(p, HttpError) else _prediction(p[0]))}
                for row, p in zip(rows, predictions, strict=True)]})
        check_instances(rows, cfg)  # an instance's own target, at, contrast or answer, as the parameters are
        results = await self._run(served, [work_for(served.model, r, cfg) for r in rows], deadline)
        return _json({**_echo_id(data), "explanations": [
            {**_id(row), **(_instance_error(r) if isinstance(r, HttpError) else explanation_object(*r))}
            for row, r in zip(rows, results, strict=True)]})

    async def _v1_pair(self, request: Request, name: str, verb: str) -> Response:
        """An encoder/decoder pair: ``:predict`` generates (``{"text"}`` per instance),
        ``:explain`` answers the generation's JSON view per instance ``{"text", "target_text"}``
        (teacher-forced when a target_text is given), within the request's deadline; the
        instances are admitted by the pair's :class:`PairService` (429 when its queue is full)."""
        data = await self._body(request)
        _known(data, {"instances", "parameters", "id"})
        cfg, deadline = self._settings(data.get("parameters"))
        rows = _pair_rows(data, self.limits.max_instances, self.limits.max_chars, verb)
        results = await self._pair_answers(name, verb, [(text, target) for _, text, target in rows], cfg, deadline)
        return _json({**_echo_id(data), "predictions" if verb == "predict" else "explanations": [
            {**({} if row[0] is None else {"id": row[0]}), **(_instance_error(r) if isinstance(r, HttpError) else r)}
            for row, r in zip(rows, results, strict=True)]})

    async def _pair_answers(self, name: str, verb: str, rows: list[tuple[str, str | None]], cfg: ExplainConfig,
                            deadline: float) -> list[dict[str, Any] | HttpError]:
        """Each (text, target_text)'s answer on the pair ``name`` (``{"text"}`` generated, or
        the generation's JSON view), or its failure; all failed: the first failure raised."""
        pair = self.pairs[name]
        if not self.ready:
            raise HttpError(503, "the server is not ready (starting or stopping)", retry_after=5)
        steps = 32 if cfg.steps == "auto" else int(cfg.steps)
        max_chars = self.limits.max_chars

        def one(text: str, target: str | None) -> dict[str, Any]:
            if verb == "predict":
                ids = tokenize(pair.tokenizer, text, 512, max_chars).ids.astype(np.int64)
                return {"text": pair.tokenizer.decode(generate(pair, ids, PAIR_GENERATE), skip_special_tokens=True)}
            return generation_json(explain_pair(
                pair, text, generate_tokens=None if target is not None else PAIR_GENERATE, target_text=target,
                method=cfg.method, steps=steps, baseline=cfg.baseline, batch_size=cfg.batch_size or 64,
                backend=cfg.backend, max_chars=max_chars))

        start = time.monotonic()
        try:
            futures = self.pair_services[name].submit_all(
                [functools.partial(one, text, target) for text, target in rows], deadline=start + deadline)
        except Busy:
            raise HttpError(429, "the server is busy: its queue is full", retry_after=1) from None
        except Stopped:
            raise HttpError(503, "the server is stopping", retry_after=5) from None
        self.in_flight += 1
        try:  # every run inside an instance is stopped at the deadline; the wait's own limit is a second later
            done = await asyncio.wait_for(asyncio.gather(*(asyncio.wrap_future(f) for f in futures),
                                                         return_exceptions=True), timeout=deadline + ANSWER_GRACE)
        except asyncio.TimeoutError:
            raise HttpError(504, "the request's deadline passed") from None
        finally:
            self.in_flight -= 1
        results: list[dict[str, Any] | HttpError] = [
            _failure(r, k, len(rows)) if isinstance(r, BaseException) else r for k, r in enumerate(done)]
        if all(isinstance(r, HttpError) for r in results):
            first = results[0]
            assert isinstance(first, HttpError)
            raise first
        return results

    async def _infer_pair(self, request: Request, name: str, base: str) -> Response:
        """V2 ``infer`` on a pair: NAME generates (``text`` BYTES [n]); NAME-explainer explains
        each generation (``explanation`` BYTES [n], JSON objects; an ``error`` output as for
        other models' predictions where some instance failed)."""
        data = await self._body(request)
        _known(data, {"inputs", "outputs", "parameters", "id"})
        rows = infer_rows(data, self.limits.max_instances, self.limits.max_chars)
        cfg, deadline = self._settings(data.get("parameters"))
        explain = name != base
        answers = await self._pair_answers(base, "explain" if explain else "predict",
                                           [(r.text, None) for r in rows], cfg, deadline)
        n = len(rows)
        if explain:
            data_out = [json.dumps(_instance_error(a) if isinstance(a, HttpError) else a, ensure_ascii=False,
                                   allow_nan=False) for a in answers]
        else:
            data_out = ["" if isinstance(a, HttpError) else str(a["text"]) for a in answers]
        outputs: list[dict[str, Any]] = [{"name": "explanation" if explain else "text", "datatype": "BYTES",
                                          "shape": [n], "data": data_out}]
        if not explain and any(isinstance(a, HttpError) for a in answers):
            outputs.append({"name": "error", "datatype": "BYTES", "shape": [n],
                            "data": [a.message if isinstance(a, HttpError) else "" for a in answers]})
        return _json({"model_name": name, "model_version": "1", **_echo_id(data), "outputs": outputs})

    async def infer(self, request: Request) -> Response:
        """V2 ``infer``: on NAME, the predictions (scores FP32 [n, C], label BYTES [n]); on
        NAME-explainer, the explanations (one BYTES output of JSON objects)."""
        return await _answer(lambda: self._infer(request, request.path_params["name"]))

    async def _infer(self, request: Request, name: str) -> Response:
        if name.removesuffix(EXPLAINER) in self.pairs:
            return await self._infer_pair(request, name, name.removesuffix(EXPLAINER))
        explainer = name.endswith(EXPLAINER) and name[:-len(EXPLAINER)] in self.served
        served = self._served(name[:-len(EXPLAINER)] if explainer else name)
        data = await self._body(request)
        _known(data, {"inputs", "outputs", "parameters", "id"})
        rows = infer_rows(data, self.limits.max_instances, self.limits.max_chars, explainer)
        cfg, deadline = self._settings(data.get("parameters"))
        head: dict[str, Any] = {"model_name": name, "model_version": "1", **_echo_id(data)}
        n = len(rows)
        if explainer:
            check_instances(rows, cfg)
            results = await self._run(served, [work_for(served.model, r, cfg) for r in rows], deadline)
            objects = [json.dumps(_instance_error(r) if isinstance(r, HttpError) else explanation_object(*r),
                                  ensure_ascii=False, allow_nan=False) for r in results]
            return _json({**head, "outputs": [{"name": "explanation", "datatype": "BYTES", "shape": [n],
                                               "data": objects}]})
        answers = await self._run(served, [prediction_work(served.model, r.text, cfg) for r in rows], deadline)
        done = [a[0] for a in answers if not isinstance(a, HttpError)]
        width = len(done[0].scores) if done else 0
        # a failed instance's row of scores is null (JSON has no NaN), its label "", and an
        # "error" output (present only then) holds its message, "" for the others
        scores = [[None] * width if isinstance(a, HttpError) else [_finite(v) for v in a[0].scores] for a in answers]
        labels = ["" if isinstance(a, HttpError) else a[0].label if a[0].label is not None else str(a[0].index)
                  for a in answers]
        outputs: list[dict[str, Any]] = [
            {"name": "scores", "datatype": "FP32", "shape": [n, width], "data": [v for row in scores for v in row]},
            {"name": "label", "datatype": "BYTES", "shape": [n], "data": labels}]
        if len(done) < n:
            outputs.append({"name": "error", "datatype": "BYTES", "shape": [n],
                            "data": [a.message if isinstance(a, HttpError) else "" for a in answers]})
        return _json({**head, "outputs": outputs})

    # -- helpers -----------------------------------------------------------------------------

    def _served(self, name: str) -> Served:
        if name not in self.served:
            raise HttpError(404, f"no model named {name!r} (served: {', '.join(self.served)})")
        return self.served[name]

    async def _body(self, request: Request) -> dict[str, Any]:
        """The request's JSON object: JSON alone (415), within the body limit (413 beyond it,
        before anything is parsed), in full within ``read_timeout`` seconds (408), while the
        bodies being read fit ``max_reading`` × ``max_body`` bytes in all (503)."""
        check_json_type(request.headers.get("content-type"))
        limit = self.limits.max_body
        length = request.headers.get("content-length")
        if length is not None:
            if not (length.isascii() and length.isdigit()):  # isdigit alone takes '²', which int() refuses
                raise HttpError(400, "Content-Length is not a number")
            if int(length) > limit:
                raise HttpError(413, f"the body has {int(length):,} bytes; at most {limit:,} are accepted")
        chunks: list[bytes] = []
        try:
            await asyncio.wait_for(self._read(request, chunks), timeout=self.limits.read_timeout)
        except asyncio.TimeoutError:
            raise HttpError(408, f"the body did not arrive within {self.limits.read_timeout:g} s",
                            close=True) from None
        except ClientDisconnect:  # no one to answer; the access log says 400, not a traceback in the log
            raise HttpError(400, "the client closed the connection before its body arrived", close=True) from None
        finally:
            self.buffered -= sum(map(len, chunks))
        return parse_json(b"".join(chunks))

    async def _read(self, request: Request, chunks: list[bytes]) -> None:
        """Read the body into ``chunks``, counting its bytes in ``buffered`` as they arrive (the
        caller gives them back)."""
        limit, budget = self.limits.max_body, self.limits.max_reading * self.limits.max_body
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"the body has over {limit:,} bytes; at most {limit:,} are accepted",
                                close=True)
            if self.buffered + len(chunk) > budget:
                raise HttpError(503, f"the server is reading {self.buffered:,} bytes of request bodies; "
                                     "try again", retry_after=1, close=True)
            self.buffered += len(chunk)
            chunks.append(chunk)

    def _settings(self, parameters: Any) -> tuple[ExplainConfig, float]:
        """The request's config and its deadline (``parameters.deadline`` seconds, at most the
        server's)."""
        return settings_of(parameters, self.defaults, self.limits)

    async def _run(self, served: Served, works: Sequence[Work[Any]],
                   seconds: float) -> list[tuple[Any, float] | HttpError]:
        """Every work's result and the seconds it took, or its failure, through the model's
        engine. When every work failed, the first failure (in instance order) becomes the
        request's status; else each failure is its instance's answer."""
        if not self.ready:
            for work in works:
                work.close()
            raise HttpError(503, "the server is not ready (starting or stopping)", retry_after=5)
        start = time.monotonic()
        try:
            futures = served.service.submit_all(list(works), deadline=start + seconds)
        except Busy:
            raise HttpError(429, "the server is busy: its queue is full", retry_after=1) from None
        except Stopped:
            raise HttpError(503, "the server is stopping", retry_after=5) from None
        self.in_flight += 1
        try:
            done = [_timed(f, start) for f in futures]
            # the engine ends every work by its deadline; the wait's own limit (a second later)
            # answers the request even if the engine did not (a bug must not leave it open)
            results = await asyncio.wait_for(
                asyncio.gather(*(asyncio.wrap_future(f) for f in done), return_exceptions=True),
                timeout=seconds + ANSWER_GRACE)
        except asyncio.TimeoutError:
            raise HttpError(504, "the request's deadline passed") from None
        finally:
            self.in_flight -= 1
        out = [_failure(r, k, len(results)) if isinstance(r, BaseException) else r for k, r in enumerate(results)]
        if all(isinstance(r, HttpError) for r in out):
            first = out[0]
            assert isinstance(first, HttpError)
            raise first
        return out


class _Bounded:
    """The ASGI app, answering at most ``limit`` requests at a time; beyond, 503 in JSON with
    Retry-After (uvicorn's own connection limit, set a little above, answers in plain text).
    Each request ends in one line of :data:`ACCESS_LOG`: its route (the template, ``routes``
    maps endpoints to them), model, status and milliseconds, as JSON (every character
    escaped), and nothing of its body."""

    def __init__(self, app: Starlette, limit: int, routes: dict[Any, str] | None = None) -> None:
        self.app, self.limit, self.active, self.routes = app, limit, 0, routes or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.monotonic(), [500]

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)
        try:
            if self.active >= self.limit:
                await _error(503, f"the server is answering {self.limit:,} requests; try again", 1)(
                    scope, receive, sending)
                return
            self.active += 1
            try:
                await self.app(scope, receive, sending)
            finally:
                self.active -= 1
        finally:
            if ACCESS_LOG.isEnabledFor(logging.INFO):
                ACCESS_LOG.info(self._line(scope, status[0], time.monotonic() - start))

    def _line(self, scope: Scope, status: int, seconds: float) -> str:
        route = self.routes.get(scope.get("endpoint"))
        model = (scope.get("path_params") or {}).get("name")
        return json.dumps({"method": scope.get("method"), "route": route if route is not None else "(none)",
                           "model": None if model is None else str(model)[:200], "status": status,
                           "ms": round(seconds * 1000, 1)})


def _warm(model: TextModel, cfg: ExplainConfig) -> bool:
    """Build (or read) the model's verified gradient graph before the server is ready, so no
    request waits for it. False when finite differences answer (:func:`choose_backend`)."""
    if model.features is not None:  # feature models build their graphs when first asked
        return False
    return choose_backend(cfg.backend, model).name == "graph"


def _timed(future: Future[Any], start: float) -> Future[tuple[Any, float]]:
    """A future of (result, seconds from ``start`` until it was done)."""
    out: Future[tuple[Any, float]] = Future()

    def done(f: Future[Any]) -> None:
        if not out.set_running_or_notify_cancel():  # the request was cancelled (it timed out, or shutdown)
            return
        exc = f.exception()
        if exc is not None:
            out.set_exception(exc)
        else:
            out.set_result((f.result(), time.monotonic() - start))
    future.add_done_callback(done)
    return out


def _failure(exc: BaseException, k: int, n: int) -> HttpError:
    """Instance ``k``'s failure as its status and message (a bug's is 500, named)."""
    where = f"instance {k}: " if n > 1 else ""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, DeadlineExceeded):
        return HttpError(504, "the request's deadline passed; its work was stopped")
    if isinstance(exc, Stopped):
        return HttpError(503, "the server stopped", retry_after=5)
    if isinstance(exc, SalError):
        return HttpError(status_of(exc), where + str(exc))
    return HttpError(500, f"{where}internal error ({type(exc).__name__}); this is a bug in blackbox-sal")


def _instance_error(error: HttpError) -> dict[str, Any]:
    """What stands in place of a failed instance's answer when others succeeded."""
    return {"error": error.message, "status": error.status}


def _pair_rows(data: dict[str, Any], max_instances: int, max_chars: int,
               verb: str) -> list[tuple[str | int | None, str, str | None]]:
    """An encoder/decoder request's instances as (id, text, target_text): each a text or
    ``{"text", "target_text", "id"}`` (target_text on :explain alone)."""
    instances = data.get("instances")
    if not isinstance(instances, list) or not instances:
        raise HttpError(400, 'the body must hold "instances": a non-empty list of texts or objects')
    if len(instances) > max_instances:
        raise HttpError(413, f"{len(instances):,} instances; at most {max_instances:,} per request")
    rows: list[tuple[str | int | None, str, str | None]] = []
    for k, item in enumerate(instances):
        where = f"instance {k}"
        obj = {"text": item} if isinstance(item, str) else item
        if not isinstance(obj, dict):
            raise HttpError(400, f"{where} must be a text or an object with a text")
        keys = {"text", "id"} | ({"target_text"} if verb == "explain" else set())
        if set(obj) - keys:
            raise HttpError(400, f"{where} has unknown fields {', '.join(sorted(set(obj) - keys))} "
                                 f"(an encoder/decoder model's {verb} takes {', '.join(sorted(keys))})")
        id_, text, target = obj.get("id"), obj.get("text"), obj.get("target_text")
        if not isinstance(id_, str | int | None) or isinstance(id_, bool):
            raise HttpError(400, f"{where}: id must be a string, an integer or null")
        for field, value in (("text", text), ("target_text", target)):
            if (field == "text" or value is not None) and (not isinstance(value, str) or not value.strip()):
                raise HttpError(400, f"{where}: {field} must be a non-empty string")
            if isinstance(value, str) and len(value) > max_chars:
                raise HttpError(413, f"{where}: {field} has {len(value):,} characters; at most {max_chars:,}")
        assert isinstance(text, str)
        rows.append((None if id_ is None else str(id_), text, target))  # echoed as a string, as elsewhere
    return rows


def _known(data: dict[str, Any], keys: set[str]) -> None:
    extra = sorted(set(data) - keys)
    if extra:
        raise HttpError(400, f"unknown field {', '.join(map(repr, extra))} (known: {', '.join(sorted(keys))})")


def _id(row: Row) -> dict[str, Any]:
    """An instance's own id, echoed beside its answer where it gave one."""
    return {} if row.id is None else {"id": row.id}


def _echo_id(data: dict[str, Any]) -> dict[str, Any]:
    """The request's id, echoed in its answer where it gave one."""
    return {"id": data["id"]} if isinstance(data.get("id"), str) else {}


def _prediction(p: Prediction) -> dict[str, Any]:
    return {"index": p.index, "label": p.label, "scores": [_finite(v) for v in p.scores],
            "top": [{"index": t.index, "label": t.label, "value": _finite(t.value)} for t in p.top]}


def _finite(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _json(data: dict[str, Any]) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, allow_nan=False), media_type="application/json")


def _error(status: int, message: str, retry_after: int | None = None,
           headers: dict[str, str] | None = None) -> Response:
    headers = {**(headers or {}), **({"Retry-After": str(retry_after)} if retry_after is not None else {})}
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers or None)


async def _answer(handler: Callable[[], Awaitable[Response]]) -> Response:
    try:
        return await handler()
    except HttpError as exc:  # a body left half-read cannot be followed by another request
        return _error(exc.status, exc.message, exc.retry_after, headers={"Connection": "close"} if exc.close else None)


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return _error(404, f"no route {request.method} {request.url.path}")
    if exc.status_code == 405:  # with Starlette's Allow header (RFC 9110 requires it on a 405)
        allow = (exc.headers or {}).get("Allow")
        return _error(405, f"{request.method} is not allowed on {request.url.path}",
                      headers={"Allow": allow} if allow else None)
    return _error(exc.status_code, str(exc.detail))


async def _internal(request: Request, exc: Exception) -> Response:
    return _error(500, f"internal error ({type(exc).__name__}); this is a bug in blackbox-sal")
