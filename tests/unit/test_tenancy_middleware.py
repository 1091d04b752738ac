"""The auth middleware in a real ASGI app (no model): which paths need a key, 401/429 in OpenAI's
envelope with Retry-After and x-ratelimit-* headers, token settlement from the Usage event, and the
audit log (one line per request, no text unless asked)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from serve.api.auth import AuthMiddleware, Gate
from serve.api.protocol import CompletionRequest
from serve.api.tenancy import observed, tenant_of
from serve.backends.base import Delta, StreamEvent, Usage
from serve.config import ServerConfig
from serve.tenancy.keys import KeySpec, hash_key

CANARY = "canary-7d1f0b3e"


def make_app(tmp_path: Path, prompts: bool = False, **server: object) -> tuple[TestClient, Gate]:
    keys = (KeySpec("a", hash=hash_key("key-a"), requests_per_minute=3, tokens_per_minute=600),
            KeySpec("b", hash=hash_key("key-b"), max_concurrent=1))
    config = ServerConfig(keys=keys, audit_log=str(tmp_path / "audit.jsonl"), audit_log_prompts=prompts,
                          **server)  # type: ignore[arg-type]
    gate = Gate.from_config(config)
    assert gate is not None
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> dict:
        return {}

    @app.post("/v1/completions")
    async def complete(request: Request) -> dict:
        body = CompletionRequest(model="m", prompt=CANARY)
        text = ""
        async for ev in observed(_events(), request, "cmpl-1", body):
            text += ev.text if isinstance(ev, Delta) else ""
        tenant = tenant_of(request)
        return {"text": text, "key": tenant.id if tenant else None}

    @app.post("/v1/cut")
    async def cut(request: Request) -> dict:  # output began, then the request ended without a Usage
        async for _ in observed(_cut_short(), request, "cmpl-2", CompletionRequest(model="m", prompt="p")):
            pass
        return {}

    app.add_middleware(AuthMiddleware, gate=gate)
    return TestClient(app), gate


async def _cut_short() -> AsyncIterator[StreamEvent]:
    yield Delta(0, text="a", token_ids=(1, 2))
    yield Delta(0, text="b")  # no ids (a remote upstream): one token per chunk


async def _events() -> AsyncIterator[StreamEvent]:
    yield Delta(0, text=f"echo {CANARY}")
    yield Delta(0, finish_reason="stop")
    yield Usage(prompt_tokens=40, completion_tokens=10, cached_tokens=8)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_every_path_but_health_needs_a_key(tmp_path: Path) -> None:
    c, _ = make_app(tmp_path)
    assert c.get("/health").status_code == 200
    for path in ("/metrics", "/docs", "/openapi.json", "/redoc"):
        r = c.get(path)
        assert r.status_code == 401, path
        assert r.json()["error"]["type"] == "authentication_error" and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/metrics", headers=auth("key-b")).status_code == 200
    assert c.get("/docs", headers=auth("key-b")).status_code == 200
    assert c.post("/v1/completions", headers=auth("wrong")).status_code == 401
    assert c.post("/v1/completions", headers={"Authorization": "key-a"}).status_code == 401  # no scheme


def test_public_metrics_and_docs_are_configurable(tmp_path: Path) -> None:
    c, _ = make_app(tmp_path, public_metrics=True)
    assert c.get("/metrics").status_code == 200 and c.get("/docs").status_code == 401
    c, _ = make_app(tmp_path, public_docs=True)
    assert c.get("/metrics").status_code == 401 and c.get("/openapi.json").status_code == 200


def test_rate_limit_429_headers_and_token_settlement(tmp_path: Path) -> None:
    c, gate = make_app(tmp_path)
    ok = c.post("/v1/completions", headers=auth("key-a"), content=b"x" * 400)  # estimate: 100 tokens
    assert ok.status_code == 200 and ok.json() == {"text": f"echo {CANARY}", "key": "a"}
    assert ok.headers["x-ratelimit-limit-requests"] == "3" and ok.headers["x-ratelimit-remaining-requests"] == "2"
    assert ok.headers["x-ratelimit-limit-tokens"] == "600"
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) in range(499, 501)  # the estimate, up front
    tokens = gate.limiters["a"].tokens
    assert tokens is not None and 549 <= tokens.level() <= 551  # settled: 40 + 10 real tokens
    for _ in range(2):
        assert c.post("/v1/completions", headers=auth("key-a")).status_code == 200
    r = c.post("/v1/completions", headers=auth("key-a"))
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert r.headers["retry-after"] == "20" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert c.get("/metrics", headers=auth("key-a")).status_code == 200  # GETs are not limited
    assert c.post("/v1/completions", headers=auth("key-b")).status_code == 200  # b has its own limits


def test_a_request_cut_short_pays_its_estimate_and_streamed_tokens(tmp_path: Path) -> None:
    c, gate = make_app(tmp_path)
    assert c.post("/v1/cut", headers=auth("key-a"), content=b"x" * 400).status_code == 200
    tokens = gate.limiters["a"].tokens
    assert tokens is not None and 496 <= tokens.level() <= 498  # 600 - (100 estimated + 3 streamed)


def test_audit_log_has_one_line_per_request_and_no_text(tmp_path: Path) -> None:
    c, _ = make_app(tmp_path)
    c.post("/v1/completions", headers=auth("key-a"))
    c.get("/metrics")
    c.get("/health")  # probes are not audited
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert CANARY not in (tmp_path / "audit.jsonl").read_text()
    assert len(lines) == 2
    done, denied = lines
    assert (done["key_id"], done["request_id"], done["status"], done["path"]) == ("a", "cmpl-1", 200, "/v1/completions")
    assert (done["prompt_tokens"], done["completion_tokens"], done["cached_tokens"]) == (40, 10, 8)
    assert done["finish_reasons"] == ["stop"] and done["client"] == "testclient" and done["latency_ms"] >= 0
    assert done["time"].endswith("Z") and "prompt" not in done and "output" not in done
    assert (denied["key_id"], denied["status"], denied["error"]) == (None, 401, "authentication_error")
    assert (tmp_path / "audit.jsonl").stat().st_mode & 0o077 == 0  # owner-only


def test_audit_log_prompts_when_asked(tmp_path: Path) -> None:
    c, _ = make_app(tmp_path, prompts=True)
    c.post("/v1/completions", headers=auth("key-b"))
    line = json.loads((tmp_path / "audit.jsonl").read_text())
    assert line["prompt"] == CANARY and line["output"] == {"0": f"echo {CANARY}"}


def test_no_keys_and_no_audit_log_installs_nothing() -> None:
    assert Gate.from_config(ServerConfig()) is None
    gate = Gate.from_config(ServerConfig(api_key="plain"))
    assert gate is not None and [t.id for t in gate.keys.tenants] == ["default"] and not gate.limiters
