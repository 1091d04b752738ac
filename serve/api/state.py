"""Per-app state and the request plumbing every route shares: body limits and error mapping."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from starlette.requests import ClientDisconnect

from serve.api.chat_template import ChatTemplateError
from serve.api.errors import APIError
from serve.api.metrics import Metrics
from serve.api.tenancy import resolve_for
from serve.backends.base import BackendError
from serve.config import ServerConfig
from serve.router.router import ModelGroup, Overloaded, Router, UnknownModel
from serve.sampling_params import ParamError

log = logging.getLogger("sluice.api")


@dataclass
class AppState:
    config: ServerConfig
    router: Router
    metrics: Metrics
    ready: bool = False

    def resolve(self, model: str, request: Request | None = None) -> ModelGroup:
        if request is not None:  # the caller's key may limit which models it can see
            return resolve_for(request, self.router, model)
        try:
            return self.router.resolve(model)
        except UnknownModel as e:
            raise APIError(404, str(e), param="model", code="model_not_found") from e


async def read_json(request: Request, state: AppState) -> Any:
    limit = state.config.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    body = await _read_body(request, limit, state.config.limits.body_timeout_s)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    return data


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytearray:
    """The body, bounded in size and in time: a client trickling bytes holds only its own request,
    and only for `timeout_s` (uvicorn has no body timeout of its own)."""
    body = bytearray()
    cm = asyncio.timeout(timeout_s if timeout_s > 0 else None)
    try:
        async with cm:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise APIError(413, f"request body exceeds the limit of {limit} bytes")
    except TimeoutError as e:
        if not cm.expired():
            raise
        raise APIError(408, f"the request body was not received within {timeout_s:g} s",
                       code="body_timeout") from e
    except ClientDisconnect as e:  # gone while sending its body: nothing to answer, nothing to log
        raise APIError(499, "client disconnected", kind="client_closed_request") from e
    return body


def to_api_error(exc: BaseException, state: AppState | None = None, model: str = "") -> APIError:
    """Map any failure onto the OpenAI envelope; unexpected ones are logged, never leaked."""
    err = _map(exc)
    if state is not None:
        state.metrics.errors.labels(model or "-", err.kind).inc()
    return err


def _map(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, Overloaded):
        return APIError(503, str(exc), kind="service_unavailable", code="overloaded",
                        headers={"Retry-After": "1"})
    if isinstance(exc, BackendError):
        # An upstream's own Retry-After passes through; otherwise a busy or absent replica says 1 s.
        retry = exc.retry_after or ("1" if exc.status in (429, 503) else None)
        headers = {"Retry-After": retry} if retry else None
        return APIError(exc.status, str(exc), param=exc.param, code=exc.code, kind=exc.kind, headers=headers)
    if isinstance(exc, ChatTemplateError):
        return APIError(400, str(exc), param="messages")
    if isinstance(exc, ParamError):
        return APIError(400, str(exc), param=exc.param)
    log.exception("unexpected error", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}")
