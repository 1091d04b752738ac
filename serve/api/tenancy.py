"""What a route needs to know about the tenant behind a request, and what it tells the audit log.

The auth middleware (serve/api/auth.py) puts a RequestRecord into the ASGI scope; routes read the
tenant from it (model allow-list, cache salt) and fill in what only they know (request id, model,
token usage, finish reasons). Without keys and without an audit log there is no record and every
hook here is a no-op.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from serve.api.errors import APIError
from serve.backends.base import Delta, GenerateRequest, StreamEvent, Usage
from serve.router.router import ModelGroup, Router, UnknownModel
from serve.tenancy.audit import utc_iso
from serve.tenancy.keys import Tenant

SCOPE_KEY = "sluice.request"


@dataclass
class RequestRecord:
    started: float = field(default_factory=time.monotonic)
    wall: float = field(default_factory=time.time)
    want_text: bool = False  # --audit-log-prompts: keep the prompt and the output for the log
    tenant: Tenant | None = None
    request_id: str = field(default_factory=lambda: f"req-{uuid.uuid4().hex}")
    model: str | None = None
    usage: Usage | None = None
    finish: dict[int, str] = field(default_factory=dict)
    streamed: int = 0  # output tokens seen so far (one per text chunk where a backend sends no ids)
    error: str | None = None
    prompt: Any = None
    output: dict[int, list[str]] = field(default_factory=dict)

    def total_tokens(self, prompt_estimate: int) -> int | None:
        """Real usage; else, for a request cut short after output began (no Usage comes then), the
        estimate plus what was streamed, so a client cannot skip the bill by hanging up; else None."""
        if self.usage is not None:
            return self.usage.prompt_tokens + self.usage.completion_tokens
        return prompt_estimate + self.streamed if self.streamed else None

    def audit(self, scope: Scope, status: int) -> dict[str, Any]:
        u = self.usage
        client = scope.get("client")
        out: dict[str, Any] = {
            "time": utc_iso(self.wall), "request_id": self.request_id,
            "key_id": self.tenant.id if self.tenant else None, "method": scope.get("method"),
            "path": scope.get("path"), "model": self.model, "status": status,
            "latency_ms": round((time.monotonic() - self.started) * 1000, 1),
            "prompt_tokens": u.prompt_tokens if u else None, "completion_tokens": u.completion_tokens if u else None,
            "cached_tokens": u.cached_tokens if u else None,
            "finish_reasons": [r for _, r in sorted(self.finish.items())], "error": self.error,
            "client": client[0] if client else None,
        }
        if self.want_text:
            out["prompt"] = self.prompt
            out["output"] = {str(i): "".join(t) for i, t in sorted(self.output.items())}
        return out


def record_of(request: Request) -> RequestRecord | None:
    return request.scope.get(SCOPE_KEY)


def tenant_of(request: Request) -> Tenant | None:
    rec = record_of(request)
    return rec.tenant if rec else None


def _allowed_groups(router: Router, tenant: Tenant) -> set[str] | None:
    if tenant.spec.models is None:
        return None
    return {router.resolve(m).name for m in tenant.spec.models if m in router.served()}


def visible_models(request: Request, router: Router) -> list[str]:
    tenant = tenant_of(request)
    allowed = _allowed_groups(router, tenant) if tenant else None
    return [n for n in router.served() if allowed is None or router.resolve(n).name in allowed]


def resolve_for(request: Request, router: Router, model: str) -> ModelGroup:
    """The model's group, or 404. A model outside the key's allow-list gets the same 404 as one that
    does not exist (OpenAI does the same: "does not exist or you do not have access to it"), so a
    key cannot learn what else is served."""
    rec = record_of(request)
    if rec is not None:
        rec.model = model
    tenant = rec.tenant if rec else None
    allowed = _allowed_groups(router, tenant) if tenant else None
    try:
        group = router.resolve(model)
    except UnknownModel as e:
        if allowed is None:
            raise APIError(404, str(e), param="model", code="model_not_found") from e
        group = None
    if allowed is not None and (group is None or group.name not in allowed):
        raise APIError(404, f"The model '{model}' does not exist or you do not have access to it.",
                       param="model", code="model_not_found")
    assert group is not None
    return group


RequestFactory = Callable[[Any], Awaitable[GenerateRequest]]


def salted(make: RequestFactory, request: Request) -> RequestFactory:
    """Stamp the tenant's cache salt on every GenerateRequest the router builds for this request."""
    tenant = tenant_of(request)
    if tenant is None or tenant.cache_salt is None:
        return make
    salt = tenant.cache_salt

    async def make_salted(replica: Any) -> GenerateRequest:
        return dataclasses.replace(await make(replica), cache_salt=salt)

    return make_salted


def observed(events: AsyncIterator[StreamEvent], request: Request, request_id: str,
             body: Any) -> AsyncIterator[StreamEvent]:
    """Record usage and finish reasons (for the token bucket and the audit log) as events flow by."""
    rec = record_of(request)
    if rec is None:
        return events
    rec.request_id = request_id
    if rec.want_text:
        rec.prompt = _prompt_text(body)
    return _observe(events, rec)


async def _observe(events: AsyncIterator[StreamEvent], rec: RequestRecord) -> AsyncIterator[StreamEvent]:
    try:
        async for ev in events:
            if isinstance(ev, Usage):
                rec.usage = ev
            elif isinstance(ev, Delta):
                rec.streamed += len(ev.token_ids) or (1 if ev.text else 0)
                if ev.finish_reason:
                    rec.finish[ev.index] = ev.finish_reason
                if rec.want_text and ev.text:
                    rec.output.setdefault(ev.index, []).append(ev.text)
            yield ev
    except Exception as e:
        rec.error = type(e).__name__
        raise
    finally:
        await events.aclose()  # type: ignore[attr-defined]


def _prompt_text(body: Any) -> Any:
    messages = getattr(body, "messages", None)
    if messages is not None:
        return json.loads(json.dumps([m.flat() for m in messages], default=str))
    return getattr(body, "prompt", None)
