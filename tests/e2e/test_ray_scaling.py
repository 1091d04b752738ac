"""Sluice on Ray Serve, what tests/e2e/test_ray_cluster.py leaves out: autoscaling, the native engine
as an engine replica, and one trace from the client through the ingress into an engine replica.

A local one-node Ray cluster (`ray.cluster_utils.Cluster`, two logical CPUs) runs `sluice serve
--config` with `[cluster] engine = "ray"` and two models on the bundled SmolLM2:
- "auto": llama.cpp replicas (one thread, one slot), autoscaling from 1 to 2 replicas at a target of
  one ongoing request, with short delays and look-back so that Serve reacts in seconds (the look-back
  stays above Serve's 10 s metrics push interval, which Serve warns will be required);
- "nat": one native-engine replica (small KV cache; no prefix cache, so that a repeated greedy request
  is computed the same way twice: on the GGUF kernel path a prefix-cache hit moves the logits).
The server exports OTLP/HTTP to a loopback collector (tests/e2e/otlp_collector.py); `sluice serve`
hands its OTEL_* environment to the replicas' Ray workers (serve/cluster/deploy.py, replica_env).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.ray_local import loopback_cluster, openai_client, sluice_on_ray
from tests.e2e.server_proc import MODEL, ServerProc
from tests.requirements import model_missing, otel_missing, ray_missing, requires

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires("ray", ray_missing()),
              requires("model", model_missing())]

CONFIG = f"""
[server]
health_interval_s = 1

[[models]]
name = "auto"
[[models.replicas]]
backend = "llamacpp"
model = "{MODEL}"
options = {{ n_parallel = 1, n_ctx_per_seq = 512 }}

[[models]]
name = "nat"
[[models.replicas]]
backend = "native"
model = "{MODEL}"
options = {{ kv_cache_bytes = 16777216, max_model_len = 512, enable_prefix_caching = false }}

[cluster]
engine = "ray"
address = "{{address}}"
ingress_num_cpus = 0
[cluster.models.auto]
min_replicas = 1
max_replicas = 2
target_ongoing_requests = 1
upscale_delay_s = 0
downscale_delay_s = 1
look_back_period_s = 12
num_cpus = 0.5
threads = 1
[cluster.models.nat]
replicas = 1
num_cpus = 0.5
threads = 1
"""
SERVICE = "sluice-ray"


@pytest.fixture(scope="module")
def collector() -> Iterator[Any]:
    """The OTLP receiver, or None where OpenTelemetry is missing (only the trace test needs it)."""
    if otel_missing() is not None:
        yield None
        return
    from tests.e2e.otlp_collector import Collector

    with Collector() as c:
        yield c


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, collector: Any) -> Iterator[ServerProc]:
    with loopback_cluster({"num_cpus": 2}) as cluster:
        tmp = tmp_path_factory.mktemp("ray-scaling")
        path = tmp / "cluster.toml"
        path.write_text(CONFIG.replace("{address}", cluster.address))
        env = {} if collector is None else {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                                            "OTEL_SERVICE_NAME": SERVICE, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        with sluice_on_ray(path, tmp, env) as srv:
            yield srv


def _replicas(deployment: str) -> dict[str, int]:
    """Serve's replica states of one engine deployment, e.g. {"RUNNING": 1}."""
    from ray import serve

    return dict(serve.status().applications["sluice"].deployments[deployment].replica_states)


def test_a_native_engine_replica_answers_through_the_ingress(server: ServerProc) -> None:
    client = openai_client(server)
    assert {m.id for m in client.models.list().data} == {"auto", "nat"}
    assert _replicas("engine-nat") == {"RUNNING": 1}
    msgs = [{"role": "user", "content": "Name a colour."}]
    full = client.chat.completions.create(model="nat", messages=msgs, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    assert full.model == "nat" and full.choices[0].finish_reason in ("stop", "length")
    assert 0 < full.usage.completion_tokens <= 8 and full.usage.prompt_tokens > 0  # type: ignore[union-attr]
    chunks = list(client.chat.completions.create(model="nat", messages=msgs, max_tokens=8, temperature=0,  # type: ignore[arg-type]
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens  # type: ignore[union-attr]
    text = client.completions.create(model="nat", prompt="One, two,", max_tokens=4, temperature=0)
    assert text.usage.completion_tokens > 0  # type: ignore[union-attr]


@requires("otel", otel_missing())
def test_a_client_trace_reaches_the_engine_replica(server: ServerProc, collector: Any) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    body = {"model": "nat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60,
                      headers={"traceparent": f"00-{trace_id}-{client_span}-01"}) as r:
        frames = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert frames[-1] == "[DONE]" and "error" not in json.loads(frames[0])

    def both(spans: list) -> bool:
        return {"chat nat", "engine generate"} <= {s.name for s in spans if s.trace_id == trace_id}

    spans = [s for s in collector.wait_for(both, timeout_s=30) if s.trace_id == trace_id]
    root = next(s for s in spans if s.name == "chat nat")
    engine = next(s for s in spans if s.name == "engine generate")
    assert root.parent_span_id == client_span and {s.service for s in spans} == {SERVICE}
    assert engine.attributes["sluice.backend"] == "native"
    # The engine span hangs under the ingress's request span (directly or through a phase span).
    by_id = {s.span_id: s for s in spans}
    chain, span = [], engine
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span.name)
    assert chain and chain[-1] == "chat nat", chain
    print(f"engine generate -> {' -> '.join(chain)}")


def _stream(server: ServerProc, i: int) -> list[str]:
    body = {"model": "auto", "prompt": f"Count to a hundred ({i}):", "max_tokens": 32, "stream": True,
            "temperature": 0, "ignore_eos": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        return [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]


def test_autoscaling_adds_a_replica_under_a_burst_and_removes_it_after(server: ServerProc) -> None:
    assert _replicas("engine-auto") == {"RUNNING": 1}  # min_replicas
    stop = threading.Event()
    done: list[list[str]] = []
    failed: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while not stop.is_set():  # one stream after another: 4 ongoing against a target of 1
                done.append(_stream(server, i))
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            failed.append(e)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    seen: list[dict[str, int]] = []
    start = time.monotonic()
    try:
        deadline = start + 90
        while time.monotonic() < deadline and not failed:
            seen.append(_replicas("engine-auto"))
            if seen[-1].get("RUNNING", 0) == 2:
                scaled_up = time.monotonic() - start
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"no second replica under the burst: {seen[-5:]}, failures {failed}")
        finished = len(done)
        while len(done) < finished + 4 and time.monotonic() < deadline:  # requests go on with two replicas
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    assert not failed, failed
    assert all(sum(s.values()) <= 2 for s in seen), seen  # never past max_replicas
    assert len(done) >= finished + 4
    for frames in done:
        assert frames[-1] == "[DONE]" and json.loads(frames[-2])["choices"][0]["finish_reason"] == "length", frames[-3:]
    # Idle again: after the look-back window and the downscale delay, back to min_replicas.
    idle = time.monotonic()
    deadline = idle + 60
    while _replicas("engine-auto") != {"RUNNING": 1}:
        if time.monotonic() > deadline:
            pytest.fail(f"not scaled back to one replica: {_replicas('engine-auto')}")
        time.sleep(0.5)
    print(f"two replicas {scaled_up:.1f} s into the burst ({len(done)} streams in all), one again {time.monotonic() - idle:.1f} s "
          "after it")
    assert openai_client(server).completions.create(model="auto", prompt="Hi", max_tokens=2).usage.completion_tokens > 0  # type: ignore[union-attr]
