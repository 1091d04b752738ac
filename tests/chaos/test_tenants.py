"""Tenancy against a real `sluice serve` (native backend, bundled model) on loopback, four keys from a
TOML config: rate limits hit (429 + Retry-After + x-ratelimit-*) and recovered, a per-key model
allow-list, a concurrency cap, a tokens-per-minute budget, prefix-cache isolation between tenants,
/metrics behind a key, and an audit log that holds a canary prompt nowhere (and, in a second server
started with --audit-log-prompts, does)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from serve.tenancy.keys import hash_key
from tests.e2e.server_proc import MODEL, ServerProc, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CANARY = f"canary-{uuid.uuid4().hex}"
KEYS = {"a": "key-a-0123456789", "b": "key-b-0123456789", "c": "key-c-0123456789", "d": "key-d-0123456789"}
# A passage long enough to fill several 16-token KV blocks.
PASSAGE = " ".join(f"Line {i}: the river keeps flowing past the old mill and the stone bridge." for i in range(12))


def config(tmp: Path) -> str:
    return f"""
[server]
audit_log = "{tmp / 'audit.jsonl'}"
[[models]]
name = "smol"
[[models.replicas]]
backend = "native"
model = "{MODEL}"
options = {{ kv_cache_bytes = 67108864, max_num_seqs = 8 }}
[[models]]
name = "other"                      # served, but key b may not see it (an upstream that is down)
[[models.replicas]]
backend = "remote"
model = "x"
url = "http://127.0.0.1:9/v1"
[[keys]]
id = "a"
hash = "{hash_key(KEYS['a'])}"
[[keys]]
id = "b"
env = "TENANT_B_KEY"
models = ["smol"]
[[keys]]
id = "c"
hash = "{hash_key(KEYS['c'])}"
max_concurrent = 1
tokens_per_minute = 20
[[keys]]
id = "d"
hash = "{hash_key(KEYS['d'])}"
requests_per_minute = 30
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch) -> Iterator[ServerProc]:
    tmp = tmp_path_factory.mktemp("tenants")
    (tmp / "sluice.toml").write_text(config(tmp))
    monkeypatch_module.setenv("TENANT_B_KEY", KEYS["b"])
    s = start_server(["--config", str(tmp / "sluice.toml")], tmp, timeout_s=240)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def http(server: ServerProc, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {KEYS[key]}"} if key else {}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=120)


def complete(c: httpx.Client, prompt: str, max_tokens: int = 1, model: str = "smol") -> httpx.Response:
    return c.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": max_tokens,
                                           "temperature": 0})


def cached(r: httpx.Response) -> int:
    assert r.status_code == 200, r.text
    return int(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])


def test_metrics_and_docs_need_a_key_health_does_not(server: ServerProc) -> None:
    anon = http(server, None)
    assert anon.get("/health").status_code == 200
    for path in ("/metrics", "/docs", "/openapi.json", "/v1/models"):
        r = anon.get(path)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
    assert http(server, "a").get("/metrics").status_code == 200


def test_prefix_cache_is_a_namespace_per_tenant(server: ServerProc) -> None:
    prompt = f"{uuid.uuid4().hex} {CANARY} {PASSAGE}"  # never sent before by anyone
    a, b = http(server, "a"), http(server, "b")
    assert cached(complete(a, prompt)) == 0
    assert cached(complete(a, prompt)) > 0  # a's repeat hits a's cache
    assert cached(complete(b, prompt)) == 0  # b cannot hit (and so cannot time) a's prompt
    assert cached(complete(b, prompt)) > 0  # b's own namespace caches as usual


def test_model_allow_list_hides_other_models(server: ServerProc) -> None:
    b = http(server, "b")
    assert [m["id"] for m in b.get("/v1/models").json()["data"]] == ["smol"]
    hidden, absent = complete(b, "hi", model="other"), complete(b, "hi", model="nope")
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["error"]["code"] == "model_not_found"
    assert hidden.json()["error"]["message"] == absent.json()["error"]["message"].replace("nope", "other")
    assert "other" in [m["id"] for m in http(server, "a").get("/v1/models").json()["data"]]


def test_requests_per_minute_429_then_recovered(server: ServerProc) -> None:
    d = http(server, "d")
    statuses = [d.post("/tokenize", json={"model": "smol", "prompt": "hi"}) for _ in range(31)]
    assert [r.status_code for r in statuses[:30]] == [200] * 30
    first = statuses[0]
    assert first.headers["x-ratelimit-limit-requests"] == "30"
    assert first.headers["x-ratelimit-remaining-requests"] == "29"
    limited = statuses[30]
    assert limited.status_code == 429
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    wait = int(limited.headers["retry-after"])
    assert 1 <= wait <= 2  # one request refills in 60 / 30 = 2 s
    time.sleep(wait)
    assert d.post("/tokenize", json={"model": "smol", "prompt": "hi"}).status_code == 200


def test_concurrency_cap_and_tokens_per_minute(server: ServerProc) -> None:
    c = http(server, "c")
    body = {"model": "smol", "prompt": "Count slowly from one to a thousand:", "max_tokens": 600,
            "temperature": 0, "ignore_eos": True, "stream": True}
    with c.stream("POST", "/v1/completions", json=body) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()  # kept: a dropped iterator closes the connection, which aborts
        next(lines)  # the first chunk: the request is running, and will for a while
        second = complete(c, "hi")
        assert second.status_code == 429 and "concurrent" in second.json()["error"]["message"]
        assert second.headers["retry-after"] == "1"
    # Closing the stream aborts it; once the server has seen that, c may run a request again. Each
    # costs > 20 real tokens (prompt + 24 out), settled when it ends: the 20/min budget runs out.
    deadline, refusal = time.monotonic() + 30, None
    while refusal is None and time.monotonic() < deadline:
        r = complete(c, "hi", max_tokens=24)
        if r.status_code == 429 and "tokens per minute" in r.json()["error"]["message"]:
            refusal = r
        else:
            assert r.status_code in (200, 429), r.text
            time.sleep(0.2)
    assert refusal is not None
    assert refusal.json()["error"]["type"] == "rate_limit_error"
    assert refusal.headers["x-ratelimit-limit-tokens"] == "20"
    assert refusal.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(refusal.headers["retry-after"]) >= 1


def test_audit_log_never_holds_the_prompt(server: ServerProc, tmp_path: Path) -> None:
    log = server.log_path.parent / "audit.jsonl"
    text = log.read_text()
    assert CANARY not in text
    lines = [json.loads(x) for x in text.splitlines()]
    done = [x for x in lines if x["key_id"] == "a" and x["path"] == "/v1/completions"]
    assert done and all(x["status"] == 200 and x["model"] == "smol" for x in done)
    assert any(x["cached_tokens"] > 0 for x in done) and all(x["prompt_tokens"] > 100 for x in done)
    assert all(x["finish_reasons"] == ["length"] and x["client"] == "127.0.0.1" for x in done)
    assert {429, 401, 404} <= {x["status"] for x in lines}

    # A second server in front of the first (remote backend), told to log prompts: the canary appears.
    front_log = tmp_path / "front-audit.jsonl"
    front = start_server(["--backend", "remote", "--url", f"{server.base_url}/v1", "--model", "smol",
                          "--upstream-api-key", KEYS["a"], "--audit-log", str(front_log), "--audit-log-prompts"],
                         tmp_path)
    try:
        r = httpx.post(f"{front.base_url}/v1/completions", timeout=60,
                       json={"model": "smol", "prompt": f"Say {CANARY}", "max_tokens": 2})
        assert r.status_code == 200, r.text
    finally:
        front.stop()
    line = json.loads(front_log.read_text().splitlines()[-1])
    assert line["prompt"] == f"Say {CANARY}" and line["key_id"] is None and line["completion_tokens"] == 2
