"""Routing through a front `sluice serve` to two upstream `sluice serve` processes over the remote
backend: both replicas take traffic, streams pass through, and killing one mid-run loses nothing
that had not started."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, start_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, ServerProc, ServerProc]]:
    tmp = tmp_path_factory.mktemp("cluster")
    ups = [start_server(["--backend", "llamacpp", "-o", "n_parallel=2", "-o", "n_threads=1"], tmp) for _ in range(2)]
    cfg = tmp / "front.toml"
    cfg.write_text(f"""
[server]
# Long on purpose: the failover test must see the router learn of a dead replica from a failed
# request (and retry it), not from a health probe that happened to run first.
health_interval_s = 60

[[models]]
name = "smol"
aliases = ["{MODEL}"]
policy = "round-robin"
""" + "".join(f"""
[[models.replicas]]
backend = "remote"
url = "{u.base_url}/v1"
model = "{MODEL}"
""" for u in ups))
    front = start_server(["--config", str(cfg)], tmp)
    yield front, ups[0], ups[1]
    for s in (front, *ups):
        s.stop()


def _successes(server: ServerProc) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    return sum(float(v) for v in re.findall(r"^sluice:request_success_total\{[^}]*\} (\S+)$", text, re.M))


def _client(s: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0, timeout=60)


def test_remote_stream_passes_through(cluster: tuple[ServerProc, ServerProc, ServerProc]) -> None:
    front, up, _ = cluster
    msgs = [{"role": "user", "content": "Name a colour."}]
    direct = _client(up).chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    chunks = list(_client(front).chat.completions.create(model="smol", messages=msgs, max_tokens=12,
                                                         temperature=0, stream=True,
                                                         stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == direct.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == direct.usage.completion_tokens
    # the alias routes to the same model; unknown names are still 404 through the front
    assert _client(front).completions.create(model=MODEL, prompt="Hi", max_tokens=2).choices
    with pytest.raises(openai.NotFoundError):
        _client(front).completions.create(model="nope", prompt="Hi", max_tokens=2)


def test_round_robin_uses_both_replicas(cluster: tuple[ServerProc, ServerProc, ServerProc]) -> None:
    front, a, b = cluster
    before = (_successes(a), _successes(b))
    for _ in range(6):
        _client(front).completions.create(model="smol", prompt="Hello", max_tokens=3)
    assert _successes(a) - before[0] == 3
    assert _successes(b) - before[1] == 3


def test_upstream_error_keeps_status(cluster: tuple[ServerProc, ServerProc, ServerProc]) -> None:
    front = cluster[0]
    # The front cannot count a remote model's tokens: the upstream refuses, and its error comes back
    # with its status, param and code intact.
    r = httpx.post(f"{front.base_url}/v1/completions",
                   json={"model": "smol", "prompt": "word " * 5000, "max_tokens": 10}, timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_failover_when_a_replica_dies(cluster: tuple[ServerProc, ServerProc, ServerProc], tmp_path: Path) -> None:
    front, a, b = cluster
    results: list[str] = []

    def load() -> None:
        for _ in range(16):
            try:
                r = _client(front).completions.create(model="smol", prompt="Hello there", max_tokens=4)
                results.append("ok" if r.choices[0].text is not None else "empty")
            except openai.APIStatusError as e:
                results.append(f"error {e.status_code}")

    t = threading.Thread(target=load)
    t.start()
    while len(results) < 4:
        time.sleep(0.02)
    a.kill()
    t.join(timeout=120)
    assert len(results) == 16
    # At most the one request in flight on the killed replica may fail (cleanly); every later one is
    # retried on the survivor before its first token.
    assert results.count("ok") >= 15, results
    assert all(r == "ok" or r.startswith("error 5") for r in results)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = httpx.get(f"{front.base_url}/metrics").text
        if re.search(r'sluice:replica_healthy\{model="smol",replica="smol/0:remote"\} 0\.0', text):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the dead replica was never marked down")
    assert httpx.get(f"{front.base_url}/health").status_code == 200
    assert _successes(b) > 0
    text = httpx.get(f"{front.base_url}/metrics").text
    assert re.search(r'^sluice:replica_retries_total\{model="smol"\} [1-9]', text, re.M)
    assert 'sluice:replica_request_latency_seconds_count{outcome="ok",replica="smol/1:remote"}' in text
