"""Chaos: a real `sluice serve` front routing to scripted fake upstreams (tests/chaos/fake_upstream.py)
that answer 429, 500, hang, stall or cut their streams. The point is the router and the remote
backend: backpressure is not failure, faults open a circuit only when repeated, a hung upstream
costs the client a bounded wait, and a broken stream still ends with an error event and [DONE]."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.chaos.fake_upstream import FakeUpstream
from tests.e2e.server_proc import ServerProc, start_server

pytestmark = pytest.mark.e2e

COOLDOWN_S = 1.5
TIMEOUT_S = 1.0


@dataclass
class Rig:
    front: ServerProc
    ups: dict[str, FakeUpstream]


# model -> (fake upstreams in replica order, replica options, faults before its circuit opens)
MODELS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "busy": (("busy", "okA"), "", 3),
    "flaky": (("flaky", "okB"), "", 3),
    "hang": (("hang",), f"first_byte_timeout_s = {TIMEOUT_S}", 3),
    "stall": (("stall",), f"read_timeout_s = {TIMEOUT_S}", 3),
    # every request must reach the cutting upstream, however often it failed before
    "cut": (("cut",), "", 100),
}


def _config(ups: dict[str, FakeUpstream]) -> str:
    # Health probes every 60 s: the circuit must move on request outcomes, not on a lucky probe.
    text = "[server]\nhealth_interval_s = 60\n"
    for model, (names, options, failures) in MODELS.items():
        text += (f'\n[[models]]\nname = "{model}"\npolicy = "round-robin"\n'
                 f"breaker = {{ failures = {failures}, cooldown_s = {COOLDOWN_S} }}\n")
        for n in names:
            text += (f'[[models.replicas]]\nbackend = "remote"\nurl = "{ups[n].url}"\nmodel = "fake"\n'
                     f"options = {{ {options} }}\n")
    return text


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("chaos")
    modes = {"busy": "429", "okA": "ok", "flaky": "ok", "okB": "ok", "hang": "hang", "stall": "stall", "cut": "cut"}
    ups = {name: FakeUpstream(mode) for name, mode in modes.items()}
    cfg = tmp / "front.toml"
    cfg.write_text(_config(ups))
    front = start_server(["--config", str(cfg)], tmp, timeout_s=60)
    yield Rig(front, ups)
    front.stop()


def _gauge(front: ServerProc, name: str, replica: str) -> float:
    text = httpx.get(f"{front.base_url}/metrics", timeout=10).text
    m = re.search(rf'^sluice:{name}\{{model="[^"]*",replica="{re.escape(replica)}"\}} (\S+)$', text, re.M)
    assert m, f"{name} for {replica} not exported"
    return float(m.group(1))


def _complete(front: ServerProc, model: str, stream: bool = False) -> httpx.Response:
    return httpx.post(f"{front.base_url}/v1/completions", timeout=30,
                      json={"model": model, "prompt": "Hello", "max_tokens": 4, "stream": stream})


def _sse(front: ServerProc, model: str) -> tuple[int, list[str]]:
    """Status and the `data:` payloads of a streamed chat request."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{front.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        return r.status_code, [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]


def _assert_error_then_done(events: list[str]) -> dict:
    assert events[-1] == "[DONE]", events
    err = json.loads(events[-2])["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert any(json.loads(e).get("choices") for e in events[:-2]), "the partial output reached the client"
    return err


def test_429_is_backpressure_not_failure(rig: Rig) -> None:
    for _ in range(6):
        r = _complete(rig.front, "busy")
        assert r.status_code == 200 and r.json()["choices"][0]["text"] == " t0 t1 t2 t3"
    assert rig.ups["busy"].hits["429"] >= 3  # round-robin sent requests there first
    assert _gauge(rig.front, "replica_healthy", "busy/0:remote") == 1.0
    assert _gauge(rig.front, "replica_circuit_state", "busy/0:remote") == 0.0
    rig.ups["okA"].mode = "429"  # now every replica is busy: the client is told to come back later
    try:
        r = _complete(rig.front, "busy")
        assert r.status_code == 429 and r.headers["retry-after"] == "7"
        assert r.json()["error"]["type"] == "rate_limit_error"
    finally:
        rig.ups["okA"].mode = "ok"
    assert _gauge(rig.front, "replica_healthy", "busy/1:remote") == 1.0


def _until_hits(rig: Rig, name: str, mode: str, n: int) -> None:
    """Send requests to `flaky` (each must succeed) until upstream `name` answered `mode` n times."""
    for _ in range(4 * n + 4):
        if rig.ups[name].hits[mode] >= n:
            return
        assert _complete(rig.front, "flaky").status_code == 200
    pytest.fail(f"{name} never reached {n} {mode} answers: {rig.ups[name].hits}")


def test_5xx_opens_the_circuit_only_when_repeated_then_half_open_recovers(rig: Rig) -> None:
    flaky, replica = rig.ups["flaky"], "flaky/0:remote"
    flaky.mode = "500"
    _until_hits(rig, "flaky", "500", 1)
    assert _gauge(rig.front, "replica_healthy", replica) == 1.0  # one 5xx: still in rotation
    _until_hits(rig, "flaky", "500", 3)
    assert _gauge(rig.front, "replica_circuit_state", replica) == 2.0  # open
    assert _gauge(rig.front, "replica_healthy", replica) == 0.0
    for _ in range(4):  # open: the survivor takes everything, the broken one sees nothing
        assert _complete(rig.front, "flaky").status_code == 200
    assert flaky.hits["500"] == 3
    time.sleep(COOLDOWN_S + 0.2)  # half-open; the trial still fails -> open again
    _until_hits(rig, "flaky", "500", 4)
    assert _gauge(rig.front, "replica_circuit_state", replica) == 2.0
    flaky.mode = "ok"
    time.sleep(COOLDOWN_S + 0.2)
    _until_hits(rig, "flaky", "ok", 1)  # the trial succeeds -> closed
    assert _gauge(rig.front, "replica_circuit_state", replica) == 0.0
    assert _gauge(rig.front, "replica_healthy", replica) == 1.0


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_that_hangs_gives_a_timely_504(rig: Rig, stream: bool) -> None:
    t0 = time.monotonic()
    r = _complete(rig.front, "hang", stream=stream)
    assert time.monotonic() - t0 < TIMEOUT_S + 3
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"


def test_upstream_that_stalls_mid_stream_ends_with_error_event_and_done(rig: Rig) -> None:
    t0 = time.monotonic()
    status, events = _sse(rig.front, "stall")
    assert time.monotonic() - t0 < TIMEOUT_S + 3
    assert status == 200 and _assert_error_then_done(events)["code"] == "upstream_timeout"


@pytest.mark.parametrize("mode", ["cut", "short"])
def test_upstream_that_closes_mid_stream_ends_with_error_event_and_done(rig: Rig, mode: str) -> None:
    rig.ups["cut"].mode = mode
    status, events = _sse(rig.front, "cut")
    assert status == 200
    _assert_error_then_done(events)
    r = _complete(rig.front, "cut")  # not streamed: a clean envelope, never a truncated answer
    assert r.status_code == 503 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert "mid-stream" in r.json()["error"]["message"] or "before it finished" in r.json()["error"]["message"]
    assert rig.ups["cut"].hits[mode] == 2
