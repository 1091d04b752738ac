"""Bad input gets OpenAI's error envelope with the right status; overload fails fast; a client that
goes away stops its generation. Against a real `sluice serve`."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.server_proc import ServerProc, start_server

pytestmark = pytest.mark.e2e
MSG = [{"role": "user", "content": "hi"}]


def _post(server: ServerProc, path: str, **kw: object) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", timeout=60, **kw)  # type: ignore[arg-type]


def _assert_envelope(r: httpx.Response, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"] and "Traceback" not in err["message"]
    if param is not None:
        assert err["param"] == param
    return err


def test_invalid_parameter_names_param(server: ServerProc, model: str) -> None:
    r = _post(server, "/v1/chat/completions", json={"model": model, "messages": MSG, "temperature": 5})
    _assert_envelope(r, 400, "temperature")


def test_wrong_type_is_400_not_pydantic_422(server: ServerProc, model: str) -> None:
    r = _post(server, "/v1/chat/completions", json={"model": model, "messages": MSG, "max_tokens": "many"})
    err = _assert_envelope(r, 400, "max_tokens")
    assert "loc" not in r.text and "input" not in err


def test_missing_field_and_bad_json(server: ServerProc, model: str) -> None:
    _assert_envelope(_post(server, "/v1/chat/completions", json={"model": model}), 400, "messages")
    r = _post(server, "/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    _assert_envelope(r, 400)


def test_unknown_model_is_404_listing_served(client: openai.OpenAI, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MSG)
    assert model in str(e.value)


def test_context_length_exceeded_says_limit_and_counts(server: ServerProc, model: str) -> None:
    r = _post(server, "/v1/completions", json={"model": model, "prompt": "hello", "max_tokens": 100000})
    err = _assert_envelope(r, 400, "max_tokens")
    assert err["code"] == "context_length_exceeded"
    assert "4096" in err["message"] and "100000" in err["message"]
    long_prompt = "word " * 5000
    r = _post(server, "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": long_prompt}]})
    assert _assert_envelope(r, 400)["code"] == "context_length_exceeded"


def test_body_too_large_is_413(server: ServerProc, model: str) -> None:
    r = _post(server, "/v1/completions", json={"model": model, "prompt": "x" * (5 * 1024 * 1024)})
    _assert_envelope(r, 413)


def test_api_key_required_when_set(tmp_path: Path, model: str) -> None:
    s = start_server(["--backend", "llamacpp", "--api-key", "s3cret", "-o", "n_parallel=1"], tmp_path)
    try:
        url = f"{s.base_url}/v1/completions"
        body = {"model": model, "prompt": "hi", "max_tokens": 2}
        _assert_envelope(httpx.post(url, json=body), 401)
        _assert_envelope(httpx.post(url, json=body, headers={"Authorization": "Bearer wrong"}), 401)
        ok = httpx.post(url, json=body, headers={"Authorization": "Bearer s3cret"}, timeout=60)
        assert ok.status_code == 200
        assert httpx.get(f"{s.base_url}/health").status_code == 200  # probes stay open
    finally:
        s.stop()


def _running(server: ServerProc) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    m = re.search(r'^sluice:engine_requests_running\{[^}]*\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _wait_idle(server: ServerProc, timeout_s: float = 10.0) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _running(server) > 0:
        time.sleep(0.05)
    return _running(server)


def test_stream_disconnect_aborts_generation(server: ServerProc, model: str) -> None:
    body = {"model": model, "prompt": "Count forever:", "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data:") for line in got)
        assert _running(server) == 1
    t0 = time.monotonic()
    assert _wait_idle(server) == 0
    assert time.monotonic() - t0 < 5  # 3000 tokens would take ~20 s: generation really stopped


def test_non_stream_disconnect_aborts_generation(server: ServerProc, model: str) -> None:
    body = {"model": model, "prompt": "Count forever:", "max_tokens": 3000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=1.0)
    assert _wait_idle(server) == 0


def _engine_load(server: ServerProc) -> float:
    text = httpx.get(f"{server.base_url}/metrics").text
    vals = re.findall(r'^sluice:engine_requests_(?:running|waiting)\{[^}]*\} (\S+)$', text, re.M)
    return sum(float(v) for v in vals)


def test_overload_answers_503_with_retry_after(server: ServerProc, model: str) -> None:
    """The fixture server admits 6 requests (4 slots + 2 queued); the next must fail fast, not queue."""
    body = {"model": model, "prompt": "Tell a long story:", "max_tokens": 400, "ignore_eos": True, "stream": True}
    stop = threading.Event()

    def hold() -> None:
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    threads = [threading.Thread(target=hold) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while _engine_load(server) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _engine_load(server) == 6
        t0 = time.monotonic()
        r = _post(server, "/v1/completions", json={**body, "stream": False, "max_tokens": 5})
        assert time.monotonic() - t0 < 2
        _assert_envelope(r, 503)
        assert r.headers.get("retry-after") == "1"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert _wait_idle(server, 60) == 0


def test_metrics_exposes_latency_and_token_series(server: ServerProc, client: openai.OpenAI, model: str) -> None:
    client.completions.create(model=model, prompt="hello", max_tokens=4)
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in ("sluice:time_to_first_token_seconds_bucket", "sluice:e2e_request_latency_seconds_count",
                 "sluice:inter_token_latency_seconds_count", "sluice:request_queue_time_seconds_count",
                 "sluice:prompt_tokens_total", "sluice:generation_tokens_total",
                 'sluice:request_success_total{finished_reason="length"', "sluice:replica_healthy",
                 "sluice:num_requests_running"):
        assert name in text, name
