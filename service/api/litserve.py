"""Every place where this service reaches into LitServe's private API, in one module.

LitServe gives a LitAPI's route, queues and worker loop no public hooks for what this service
needs, so a few private methods are overridden here, and nowhere else. They are written
against SUPPORTED_LITSERVE; tests/unit/test_service_litserve.py fails on any other version, so
an upgrade (`make upgrade`) is a deliberate re-check of each override below:

- `GreedyBatchLoop.get_batch_requests`: batch submissions without waiting for a batch to fill.
  LitServe's batched loop polls its queue every millisecond until `batch_timeout` expires,
  which costs CPU when idle and latency under light load. This loop blocks for the first
  request, then takes whatever else is already queued (up to max_batch_size): alone, a request
  goes straight through; under load, many submissions share one database commit.
- `JobServer._init_manager`: plain pipe-backed queues instead of multiprocessing.Manager
  proxies (docs/benchmarks-service.md has the profile).
- `JobServer._register_api_endpoints`: POST /v1/jobs answers 202 with its own OpenAPI body and
  its own auth dependency (the key of a small submission is checked in the inference worker).
- `SubmissionHandler._prepare_request`: read the body without turning bad input into a 500.
- `JobServer.inference_workers_ready`: reads LitServe's worker status for /health.
- `JobServer._start_server` / `_perform_graceful_shutdown` and `DrainingUvicornServer`: a clean
  stop on SIGTERM (service/api/drain.py). LitServe stopped its uvicorn processes one after the
  other (each drained up to the timeout while the others kept accepting) and its parent kept
  the shared listening socket open, so connections queued there were never answered.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from queue import Empty
from typing import Any

import litserve as ls
import litserve.server as litserve_server
from fastapi import Depends, HTTPException, Request
from litserve.callbacks.base import EventTypes
from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.server import RegularRequestHandler
from litserve.transport.process_transport import MPQueueTransport
from litserve.utils import LitAPIStatus, LoopResponseType, WorkerSetupStatus

from service.api.drain import draining, start_draining

SUPPORTED_LITSERVE = "0.2.19"


class GreedyBatchLoop(BatchedLoop):
    def get_batch_requests(self, lit_api, request_queue, transport):
        payloads: list = []
        timed_out: list = []
        try:
            item = request_queue.get(timeout=1.0)
        except Empty:
            return payloads, timed_out
        timeout = lit_api.request_timeout
        while True:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START,
                              LoopResponseType.REGULAR)
            if timeout not in (None, -1, False) and time.monotonic() - timestamp > timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
            if len(payloads) >= lit_api.max_batch_size:
                break
            try:
                item = request_queue.get_nowait()
            except Empty:
                break
        return payloads, timed_out


class SubmissionHandler(RegularRequestHandler):
    """LitServe's handler with our body reader; a refusal from the inference worker (a dict
    with "error") becomes the HTTP error it describes, after `refused(request, status)`."""

    def __init__(self, lit_api, server, read_body: Callable, refused: Callable):
        super().__init__(lit_api, server)
        self._read_body = read_body
        self._refused = refused

    async def _prepare_request(self, request, request_type) -> dict:
        return await self._read_body(request)

    async def handle_request(self, request, request_type):
        response = await super().handle_request(request, request_type)
        if isinstance(response, dict) and "error" in response:
            self._refused(request, response["error"]["status_code"])
            raise HTTPException(**response["error"])
        return response


class DrainingUvicornServer(litserve_server._Server):
    """LitServe's uvicorn server (one per API process) that gives notice before it stops."""

    drain_notice_s = 1.0  # set by JobServer before the processes fork

    def run(self, worker_id: int, sockets=None) -> None:
        # Forked from the API process: its SIGTERM handler (KeyboardInterrupt) is not ours.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        self._listen_sockets = list(sockets or [])
        return super().run(worker_id, sockets)

    def handle_exit(self, sig, frame) -> None:
        if sig == signal.SIGTERM and not draining.is_set():
            # 503 + Connection: close first; uvicorn's own shutdown after the notice
            start_draining(lambda: setattr(self, "should_exit", True), self.drain_notice_s,
                           getattr(self, "_listen_sockets", None))
            return
        super().handle_exit(sig, frame)  # a second signal: uvicorn's usual (faster) exit


class JobServer(ls.LitServer):
    """LitServer whose one LitAPI route is registered by `route` (a RouteSpec below)."""

    def __init__(self, lit_api, *, route: RouteSpec, drain_notice_s: float = 1.0, **kwargs):
        self._route = route
        self._drain_notice_s = drain_notice_s
        self._listen_sockets: list = []
        super().__init__(lit_api, **kwargs)

    def _start_server(self, port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type,
                      **kwargs):
        self._listen_sockets = list(sockets)
        DrainingUvicornServer.drain_notice_s = self._drain_notice_s
        litserve_server._Server = DrainingUvicornServer  # the class LitServe instantiates
        return super()._start_server(port, num_uvicorn_servers, log_level, sockets,
                                     uvicorn_worker_type, **kwargs)

    def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason="normal"):
        # This process's copy of the listening socket: once every uvicorn process has closed
        # its own, new connections are refused instead of queueing unanswered.
        for sock in self._listen_sockets:
            sock.close()
        self._listen_sockets = []
        # Every uvicorn process drains at the same time, under one deadline.
        processes = [w for w in uvicorn_workers.values() if isinstance(w, mp.process.BaseProcess)]
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + self._drain_notice_s + self.uvicorn_graceful_timeout + 1.0
        for proc in processes:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        others = {k: w for k, w in uvicorn_workers.items() if w not in processes}
        # then LitServe's own: the queues, the inference workers, the manager
        super()._perform_graceful_shutdown(manager, others, shutdown_reason)

    def _init_manager(self, num_api_servers: int):
        # LitServe (0.2.19) passes requests and responses through multiprocessing.Manager
        # queues: every put and get is a round trip to the manager process, and the request
        # put blocks the uvicorn event loop. Plain pipe-backed queues (made before the uvicorn
        # processes fork and handed to the spawned workers) carry the same tuples for less.
        manager = super()._init_manager(num_api_servers)
        ctx = mp.get_context("spawn")
        for lit_api in self.litapi_connector:
            self.litapi_request_queues[lit_api.api_path] = ctx.Queue()
        self._transport = MPQueueTransport(manager, [ctx.Queue() for _ in range(num_api_servers)])
        return manager

    # Replaces LitServer._register_api_endpoints for our single, non-streaming, spec-less API;
    # queues, workers and responses are LitServe's own.
    def _register_api_endpoints(self, lit_api, request_type, response_type):
        self._callback_runner.trigger_event(EventTypes.ON_SERVER_START.value, litserver=self)
        route = self._route
        handler = SubmissionHandler(lit_api, self, route.read_body, route.refused)

        async def endpoint(request: Request):
            return await handler.handle_request(request, Request)

        endpoint.__annotations__["return"] = route.response_model
        self.app.add_api_route(
            lit_api.api_path, endpoint, methods=["POST"], status_code=route.status_code,
            response_model=route.response_model, dependencies=[Depends(route.authorize)],
            summary=route.summary, tags=route.tags, openapi_extra=route.openapi_extra,
            responses=route.responses,
        )

    def inference_workers_ready(self) -> bool:
        status = getattr(self, "workers_setup_status", None)
        try:
            return bool(status) and all(v == WorkerSetupStatus.READY for v in status.values())
        except Exception:  # the manager is gone: shutting down
            return False


@dataclass(frozen=True)
class RouteSpec:
    """How JobServer registers the LitAPI's route: authorize (its FastAPI dependency; the
    LitAPI's own `authorize` still guards LitServe's /info and /health/workers), read_body(request)
    -> the payload handed to decode_request in the inference worker (both run in the uvicorn
    process), refused(request, status) when the inference worker refuses a request."""

    read_body: Callable
    authorize: Callable
    refused: Callable
    response_model: Any
    status_code: int
    summary: str
    tags: list[str]
    openapi_extra: dict
    responses: dict
