"""A server span per generation request, opened before anything else runs (auth, body, routing),
child of the client's `traceparent` when it sends one. Pure ASGI: a BaseHTTPMiddleware would buffer
the SSE stream, and the span must stay open until the last frame is sent."""

from __future__ import annotations

from typing import Any

from serve.telemetry import tracing

# Path -> GenAI operation name (the semantic conventions' well-known values).
OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion"}

Scope = dict[str, Any]


class TracingMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        op = OPERATIONS.get(scope.get("path", "")) if scope["type"] == "http" else None
        if op is None or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind, Status, StatusCode

        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        attributes = {"gen_ai.operation.name": op, "http.request.method": scope.get("method", ""),
                      "url.path": scope["path"]}
        with tracing.tracer().start_as_current_span(op, context=tracing.extract(carrier), kind=SpanKind.SERVER,
                                                    attributes=attributes) as span:
            async def traced_send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, traced_send)
