"""The FastAPI application: routes, auth, error envelope, lifespan (start replicas, health loop)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.api import openai_routes, openapi, stats_routes, tokenize_routes
from serve.api.auth import AuthMiddleware, Gate
from serve.api.chat_template import ChatTemplateError
from serve.api.errors import APIError
from serve.api.metrics import Metrics
from serve.api.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from serve.api.state import AppState, to_api_error
from serve.api.tenancy import visible_models
from serve.backends.base import BackendError
from serve.config import ServerConfig
from serve.router.on_demand import ModelPool
from serve.router.router import Overloaded, Router
from serve.sampling_params import ParamError
from serve.telemetry import tracing
from serve.telemetry.middleware import TracingMiddleware


def create_app(config: ServerConfig, router: Router) -> FastAPI:
    metrics = Metrics(stats_source=lambda: _engine_stats(router))
    router.observer = metrics
    state = AppState(config=config, router=router, metrics=metrics)
    if config.on_demand is not None:
        router.on_demand = ModelPool(router, config.on_demand)
        metrics.registry.register(router.on_demand)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await router.start()
        state.ready = True
        tasks = [asyncio.create_task(router.health_loop(config.health_interval_s))]
        if router.on_demand is not None:
            tasks.append(asyncio.create_task(router.on_demand.idle_loop()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await router.stop()

    app = FastAPI(title="Sluice", version="0.1.0", lifespan=lifespan)
    app.state.sluice = state
    _install_errors(app, state)
    _install_auth(app, config)
    if tracing.configure_from_env():  # added last: outermost, so auth refusals are traced too
        app.add_middleware(TracingMiddleware)
    _routes(app, state)
    app.state.sluice_counter_history = stats_routes.CounterHistory(metrics.live.window_s)
    app.get("/v1/stats")(stats_routes.stats)
    if config.ui:
        from serve import ui

        ui.install(app)
    return app


def _model_card(state: AppState, name: str, created: int) -> dict:
    group = state.router.resolve(name)
    card = {"id": name, "object": "model", "created": created, "owned_by": "sluice", "root": group.name}
    healthy = [r for r in group.replicas if r.up]
    if healthy:  # vLLM reports it here too; the remote backend reads it to check context up front
        card["max_model_len"] = min(r.backend.info.max_model_len for r in healthy)
    pool = state.router.on_demand  # "loaded" | "loading" | "unloaded" (models on demand)
    card["status"] = pool.state(group.name).value if pool else "loaded" if healthy else "unavailable"
    return card


def _engine_stats(router: Router) -> Iterable[tuple[str, str, dict]]:
    for r in router.all_replicas():
        stats = getattr(r.backend, "stats", None)
        if callable(stats):
            yield r.model, r.replica_id, stats()


def _install_errors(app: FastAPI, state: AppState) -> None:
    async def api_error(_: Request, exc: Exception) -> Response:
        return to_api_error(exc, state).response()

    async def validation(_: Request, exc: Exception) -> Response:
        return APIError(400, "invalid request").response()

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return APIError(exc.status_code, str(exc.detail), kind=kind).response()

    # Known failures are answered by Starlette's ExceptionMiddleware; only the catch-all `Exception`
    # goes to ServerErrorMiddleware, which re-raises (and logs a traceback) after answering.
    for known in (APIError, BackendError, Overloaded, ChatTemplateError, ParamError):
        app.add_exception_handler(known, api_error)
    app.add_exception_handler(Exception, api_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(StarletteHTTPException, http_error)


def _install_auth(app: FastAPI, config: ServerConfig) -> None:
    gate = Gate.from_config(config)
    if gate is not None:  # no keys and no audit log: no middleware, nothing changes
        app.add_middleware(AuthMiddleware, gate=gate)


def _routes(app: FastAPI, state: AppState) -> None:
    doc = openapi.route_doc
    app.post("/v1/chat/completions", **doc(ChatCompletionRequest, openapi.ChatCompletionResponse,
                                           openapi.ChatCompletionChunk))(openai_routes.chat_completions)
    app.post("/v1/completions", **doc(CompletionRequest, openapi.CompletionResponse,
                                      openapi.CompletionChunk))(openai_routes.completions)
    app.post("/tokenize", **doc(TokenizeRequest, openapi.TokenizeResponse))(tokenize_routes.tokenize)
    app.post("/detokenize", **doc(DetokenizeRequest, openapi.DetokenizeResponse))(tokenize_routes.detokenize)
    requests = [ChatCompletionRequest, CompletionRequest, TokenizeRequest, DetokenizeRequest]
    openapi.install(app, [*requests, *openapi.STREAM_MODELS])

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        created = int(time.time())
        names = visible_models(request, state.router)  # a key sees only the models it may use
        return {"object": "list", "data": [_model_card(state, name, created) for name in names]}

    @app.get("/health")
    async def health() -> Response:
        healthy = [r for r in state.router.all_replicas() if r.up]
        pool = state.router.on_demand
        if pool is not None and state.ready:  # up with nothing loaded: a model loads at its first request
            models = {name: pool.state(name).value for name in state.router.groups}
            return JSONResponse({"status": "ok", "replicas_healthy": len(healthy), "models": models,
                                 "loading": [n for n, s in models.items() if s == "loading"]})
        if not state.ready or not healthy:
            status = "loading" if not state.ready else "unhealthy"
            return JSONResponse({"status": status}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse({"status": "ok", "replicas_healthy": len(healthy)})

    @app.get("/metrics")
    async def metrics() -> Response:
        for r in state.router.all_replicas():
            state.metrics.replica_healthy.labels(r.model, r.replica_id).set(1.0 if r.up else 0.0)
            state.metrics.circuit.labels(r.model, r.replica_id).set(r.breaker.state.value)
        for g in state.router.groups.values():
            state.metrics.waiting.labels(g.name).set(max(0, g.admitted - sum(r.outstanding for r in g.replicas)))
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
