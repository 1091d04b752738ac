"""Chaos: SIGKILL one of two real `sluice serve` upstreams while a front `sluice serve` routes a
bounded load to both over the remote backend. Every request must end with a full answer or a clean
OpenAI-envelope error (a stream: an error event, then [DONE]); none may hang; every request that
starts after the kill must succeed on the survivor."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, start_server

pytestmark = pytest.mark.e2e

REQUESTS, WORKERS, KILL_AFTER = 40, 4, 8
ENVELOPE = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProc, ServerProc, ServerProc]]:
    tmp = tmp_path_factory.mktemp("kill")
    ups = [start_server(["--backend", "llamacpp", "-o", "n_parallel=2", "-o", "n_threads=1"], tmp)
           for _ in range(2)]
    cfg = tmp / "front.toml"
    # Probes every 60 s: the router must learn of the dead replica from failed requests.
    cfg.write_text('[server]\nhealth_interval_s = 60\n\n[[models]]\nname = "smol"\npolicy = "round-robin"\n'
                   + "".join(f'[[models.replicas]]\nbackend = "remote"\nurl = "{u.base_url}/v1"\n'
                             f'model = "{MODEL}"\n' for u in ups))
    front = start_server(["--config", str(cfg)], tmp)
    yield front, ups[0], ups[1]
    for s in (front, *ups):
        s.stop()


@dataclass
class Outcome:
    started: float
    ok: bool
    detail: str


def _clean_error(r: httpx.Response) -> bool:
    try:
        return r.status_code >= 500 and set(r.json()["error"]) == ENVELOPE
    except (ValueError, KeyError, TypeError):
        return False


def _plain(client: httpx.Client, url: str) -> tuple[bool, str]:
    r = client.post(f"{url}/v1/completions", json={"model": "smol", "prompt": "Hello there", "max_tokens": 8})
    if r.status_code == 200:
        choice = r.json()["choices"][0]
        return choice["finish_reason"] in ("length", "stop"), "ok"
    assert _clean_error(r), f"unclean error {r.status_code}: {r.text[:300]}"
    return False, f"error {r.status_code}"


def _streamed(client: httpx.Client, url: str) -> tuple[bool, str]:
    body = {"model": "smol", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8, "stream": True}
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            assert _clean_error(r), f"unclean error {r.status_code}: {r.text[:300]}"
            return False, f"error {r.status_code}"
        events = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
    assert events and events[-1] == "[DONE]", f"stream did not end with [DONE]: {events[-3:]}"
    last = json.loads(events[-2])
    if "error" in last:
        assert set(last["error"]) == ENVELOPE, last
        return False, "stream error event"
    finished = any(c.get("finish_reason") for e in events[:-1] for c in json.loads(e).get("choices") or ())
    assert finished, f"stream ended without finish_reason or error: {events[-3:]}"
    return True, "ok"


def test_sigkill_of_a_replica_under_load(cluster: tuple[ServerProc, ServerProc, ServerProc]) -> None:
    front, victim, survivor = cluster
    outcomes: list[Outcome] = []
    failures: list[str] = []
    ids = itertools.count()
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while (i := next(ids)) < REQUESTS:
                t0 = time.monotonic()
                try:
                    ok, detail = (_streamed if i % 2 else _plain)(client, front.base_url)
                except (AssertionError, httpx.HTTPError) as e:  # unclean answer or client timeout
                    failures.append(f"request {i}: {e!r}")
                    ok, detail = False, "unclean"
                with lock:
                    outcomes.append(Outcome(t0, ok, detail))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(outcomes) < KILL_AFTER and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.kill()
    killed_at = time.monotonic()
    for t in threads:
        t.join(timeout=max(1.0, deadline + 60 - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert not failures, failures
    assert len(outcomes) == REQUESTS
    after = [o for o in outcomes if o.started > killed_at]
    assert after and all(o.ok for o in after), [o.detail for o in after]
    # only requests already in flight on the victim may have failed, each cleanly
    assert sum(not o.ok for o in outcomes) <= WORKERS, [o.detail for o in outcomes]
    assert httpx.get(f"{front.base_url}/health", timeout=5).status_code == 200
    r = httpx.post(f"{front.base_url}/v1/completions", json={"model": "smol", "prompt": "Hi", "max_tokens": 2},
                   timeout=60)
    assert r.status_code == 200 and survivor.proc.poll() is None
