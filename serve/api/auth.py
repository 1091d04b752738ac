"""Who may call, how often, and what is written down: API keys, per-key limits, the audit log.

One pure ASGI middleware (not BaseHTTPMiddleware: that one wraps `receive`, which hides client
disconnects from the routes and adds a task per streamed response). It is installed only when keys
or an audit log are configured; without them nothing changes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.api.errors import APIError
from serve.api.tenancy import SCOPE_KEY, RequestRecord
from serve.config import ServerConfig
from serve.tenancy.audit import AuditLog
from serve.tenancy.keys import KeyRing, Tenant, all_keys
from serve.tenancy.limits import Clock, Refusal, TenantLimiter, Ticket, estimate_tokens, retry_after

HEALTH = "/health"  # always open: load balancers probe it without credentials
METRICS = "/metrics"
DOCS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


def open_paths(config: ServerConfig) -> frozenset[str]:
    paths = {HEALTH}
    if config.ui:  # static files only; every API call the page makes carries the key (serve/ui)
        from serve.ui import PATHS as UI_PATHS

        paths |= UI_PATHS
    if config.public_metrics:
        paths.add(METRICS)
    if config.public_docs:
        paths |= DOCS
    return frozenset(paths)


def bearer_token(scope: Scope) -> str:
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def unauthorized() -> APIError:
    return APIError(401, "Incorrect or missing API key. Send it as 'Authorization: Bearer <key>'.",
                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def too_many(refusal: Refusal) -> APIError:
    return APIError(429, refusal.message, code="rate_limit_exceeded",
                    headers={**refusal.headers, "Retry-After": retry_after(refusal.retry_after_s)})


@dataclass
class Gate:
    keys: KeyRing
    open_paths: frozenset[str]
    audit: AuditLog | None = None
    limiters: dict[str, TenantLimiter] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: ServerConfig, clock: Clock = time.monotonic) -> Gate | None:
        keys = KeyRing(all_keys(config.keys, config.api_key))
        audit = AuditLog(config.audit_log, config.audit_log_prompts) if config.audit_log else None
        if not keys and audit is None:
            return None
        limiters = {t.id: TenantLimiter(t.spec, clock) for t in keys.tenants
                    if t.spec.requests_per_minute or t.spec.tokens_per_minute or t.spec.max_concurrent}
        return cls(keys, open_paths(config), audit, limiters)

    def authenticate(self, scope: Scope) -> Tenant | None:
        if not self.keys or scope["path"] in self.open_paths:
            return None
        tenant = self.keys.lookup(bearer_token(scope))
        if tenant is None:
            raise unauthorized()
        return tenant

    def admit(self, scope: Scope, tenant: Tenant | None) -> Ticket | None:
        """Limits count the requests that do work (POST); listing models or reading metrics is free."""
        limiter = self.limiters.get(tenant.id) if tenant else None
        if limiter is None or scope["method"] != "POST":
            return None
        length = Headers(scope=scope).get("content-length", "")
        verdict = limiter.admit(estimate_tokens(int(length) if length.isdigit() else None))
        if isinstance(verdict, Refusal):
            raise too_many(verdict)
        return verdict


class AuthMiddleware:
    def __init__(self, app: ASGIApp, gate: Gate) -> None:
        self.app, self.gate = app, gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH:
            await self.app(scope, receive, send)
            return
        rec = RequestRecord(want_text=bool(self.gate.audit and self.gate.audit.include_prompts))
        scope[SCOPE_KEY] = rec
        status = 500  # what the client gets if the app raises before answering
        extra: list[tuple[bytes, bytes]] = []

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if extra:
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        ticket = None
        try:
            try:
                rec.tenant = self.gate.authenticate(scope)
                ticket = self.gate.admit(scope, rec.tenant)
            except APIError as e:
                rec.error = e.kind
                await e.response()(scope, receive, send_with_headers)
                return
            if ticket is not None:
                extra = [(k.encode(), v.encode()) for k, v in ticket.limiter.headers().items()]
            await self.app(scope, receive, send_with_headers)
        finally:
            if ticket is not None:
                ticket.settle(rec.total_tokens(ticket.estimate))
            if self.gate.audit is not None:
                self.gate.audit.write(rec.audit(scope, status))
