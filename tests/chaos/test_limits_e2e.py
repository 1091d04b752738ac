"""Limits through a real `sluice serve`: a client trickling its body gets a 408 while others are
served; a stream that outlives the wall-clock limit ends with an error event and [DONE] and leaves
the engine; size limits answer in OpenAI's envelope."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, metric_sum, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = start_server(["--backend", "llamacpp", "-o", "n_parallel=2", "-o", "n_ctx_per_seq=2048",
                      "--limit-body-timeout-s", "1", "--limit-request-timeout-s", "1.5", "--limit-max-n", "2", "--limit-max-tokens", "1000"],
                     tmp_path_factory.mktemp("limits"))
    yield s
    s.stop()


def _trickle(port: int, out: dict[str, object]) -> None:
    """Declares a 200-byte body, then sends one byte every 0.3 s."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 200\r\n\r\n")
        sock.settimeout(0.3)
        reply = b""
        for _ in range(200):
            try:
                sock.sendall(b" ")
                reply += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if reply:
                break
    out["reply"], out["took"] = reply.decode(errors="replace"), time.monotonic() - started


def test_slow_body_is_408_while_others_are_served(srv: ServerProc) -> None:
    out: dict[str, object] = {}
    t = threading.Thread(target=_trickle, args=(srv.port, out))
    t.start()
    time.sleep(0.2)
    r = httpx.post(f"{srv.base_url}/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                   timeout=30)
    t.join(30)
    assert r.status_code == 200
    reply = str(out["reply"])
    assert reply.startswith("HTTP/1.1 408"), reply
    assert '"code":"body_timeout"' in reply
    assert float(out["took"]) < 5  # type: ignore[arg-type]


def test_stream_past_the_time_limit_ends_with_an_error_event_and_done(srv: ServerProc) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{srv.base_url}/v1/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    error = json.loads(events[-2])["error"]
    assert error["type"] == "timeout_error" and error["code"] == "request_timeout"
    assert len(events) > 3  # tokens were streamed before the limit hit
    deadline = time.monotonic() + 5
    while metric_sum(srv.base_url, "engine_requests_running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric_sum(srv.base_url, "engine_requests_running") == 0  # the generation was aborted


def test_non_streaming_request_past_the_time_limit_is_408(srv: ServerProc) -> None:
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True}
    r = httpx.post(f"{srv.base_url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 408 and r.json()["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"prompt": "x", "n": 3}, 400, "n"),
    ({"prompt": "x", "max_tokens": 1500}, 400, "max_tokens"),
    ({"prompt": [[1, 2], [5, 10**9]]}, 400, "prompt"),
    ({"prompt": "x", "seed": -7, "max_tokens": 2}, 200, None),
])
def test_limits_and_ids_through_the_server(srv: ServerProc, body: dict, status: int, param: str | None) -> None:
    r = httpx.post(f"{srv.base_url}/v1/completions", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == status, r.text
    if param:
        assert r.json()["error"]["param"] == param
        assert r.json()["error"]["code"] in ("limit_exceeded", "invalid_token_id")


def test_max_body_bytes_still_holds(srv: ServerProc) -> None:
    r = httpx.post(f"{srv.base_url}/v1/completions", json={"model": MODEL, "prompt": "x" * (5 << 20)}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
