"""Sluice on Ray Serve, on one machine: a local three-node Ray cluster (`ray.cluster_utils.Cluster`,
one CPU each), `sluice serve --config` with `[cluster] engine = "ray"`, and the bundled model on
llama.cpp engine replicas (one thread, one slot, small context).

Two models share the cluster so both routers run side by side: "pa" (prefix-affinity, our
cache-aware router) and "rr" (round-robin), two engine replicas each at half a CPU. Requests go
through our FastAPI ingress with the official openai client. The last test removes a node: a stream
running there ends with an SSE error event and [DONE], requests after it go to the survivor, and
Serve replaces the lost replica on the spare CPU.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.e2e.ray_local import loopback_cluster, openai_client, sluice_on_ray
from tests.e2e.server_proc import MODEL, ServerProc
from tests.requirements import model_missing, ray_missing, requires

pytestmark = [pytest.mark.e2e, pytest.mark.slow, requires("ray", ray_missing()),
              requires("model", model_missing())]

# A shared head longer than the 64 tokens the prefix-affinity router hashes.
SYSTEM = ("You are a terse assistant for a hardware shop. Answer in one short sentence. " * 6).strip()
QUESTIONS = ["What is a bolt?", "What is a nut?", "What is a washer?", "What is a hinge?", "What is a drill?",
             "What is a rivet?"]


def _config(tmp: Path, address: str) -> Path:
    models = "".join(f"""
[[models]]
name = "{name}"
policy = "{policy}"
[[models.replicas]]
backend = "llamacpp"
model = "{MODEL}"
options = {{ n_parallel = 1, n_ctx_per_seq = 1024 }}
""" for name, policy in (("pa", "prefix-affinity"), ("rr", "round-robin")))
    cluster = f"""
[cluster]
engine = "ray"
address = "{address}"
ingress_num_cpus = 0
ingress_resources = {{ head = 0.01 }}
[cluster.models.pa]
replicas = 2
num_cpus = 0.5
threads = 1
[cluster.models.rr]
replicas = 2
num_cpus = 0.5
threads = 1
"""
    path = tmp / "cluster.toml"
    path.write_text(f"[server]\nhealth_interval_s = 1\n{models}{cluster}")
    return path


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, ServerProc]]:
    # The head holds the ingress (a custom resource pins it), so removing a worker never cuts the HTTP path.
    with loopback_cluster({"num_cpus": 1, "resources": {"head": 1}}, [{"num_cpus": 1}] * 2) as cluster:
        tmp = tmp_path_factory.mktemp("ray")
        with sluice_on_ray(_config(tmp, cluster.address), tmp) as server:
            yield cluster, server


def test_openai_client_through_the_ingress(ray_cluster) -> None:
    _, server = ray_cluster
    client = openai_client(server)
    assert {m.id for m in client.models.list().data} == {"pa", "rr"}
    msgs = [{"role": "user", "content": "Name a colour."}]
    full = client.chat.completions.create(model="pa", messages=msgs, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model="pa", messages=msgs, max_tokens=8, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens > 0
    assert client.completions.create(model="rr", prompt="Hello", max_tokens=3).usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError):  # our error envelope, through Serve's proxy
        client.completions.create(model="nope", prompt="Hi", max_tokens=2)
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    assert 'sluice:request_success_total{finished_reason="length",model="pa"}' in metrics


def _misses(server: ServerProc, model: str, systems: tuple[str, ...] = (SYSTEM,)) -> list[int]:
    """cached_tokens of each question, the system prompts taking turns."""
    client = openai_client(server)
    cached = []
    for i, q in enumerate(QUESTIONS):
        r = client.chat.completions.create(model=model, max_tokens=2, temperature=0,
                                           messages=[{"role": "system", "content": systems[i % len(systems)]},
                                                     {"role": "user", "content": q}])
        cached.append(r.usage.prompt_tokens_details.cached_tokens or 0)
    return cached


def test_prefix_affinity_keeps_a_prefix_on_one_replica(ray_cluster) -> None:
    """Each engine replica misses the shared head (~110 tokens) once; a "miss" may still reuse the
    chat template's first few tokens. Prefix-affinity sends every request to one replica: one miss,
    then hits. Round-robin alternates: each replica pays its own miss."""
    _, server = ray_cluster
    pa, rr = _misses(server, "pa"), _misses(server, "rr")
    hit = [c > 60 for c in pa]
    assert hit == [False] + [True] * 5, pa
    assert [c > 60 for c in rr] == [False, False] + [True] * 4, rr


def test_prefix_affinity_puts_two_new_prefixes_on_different_replicas(ray_cluster) -> None:
    """Two new heads taking turns: each replica has one slot, so only a 1-1 split hits after the
    first two misses (both on one replica would evict each other every time)."""
    _, server = ray_cluster
    heads = tuple(f"{topic} {SYSTEM}" for topic in ("Garden tools.", "Kitchen scales."))
    pa = _misses(server, "pa", heads)
    assert [c > 60 for c in pa] == [False, False] + [True] * 4, pa


def _replica_nodes(deployment: str) -> dict[str, str]:
    """Alive Serve replica actor name -> node id, read from the GCS (no dashboard needed)."""
    import ray

    table = ray._private.state.actors()  # noqa: SLF001 - the dashboard-free way to see placement
    return {a["Name"]: a["Address"]["NodeID"] for a in table.values()
            if a["State"] == "ALIVE" and f"#{deployment}#" in (a.get("Name") or "")}


def _stream(server: ServerProc, prompt: str, out: list[list[str]], started: threading.Event) -> None:
    body = {"model": "rr", "prompt": prompt, "max_tokens": 400, "stream": True, "temperature": 0,
            "ignore_eos": True}
    frames: list[str] = []
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                frames.append(line[6:])
                if len(frames) == 2:
                    started.set()
    out.append(frames)


def test_node_lost_mid_run(ray_cluster) -> None:
    from ray import serve

    cluster, server = ray_cluster
    placed = _replica_nodes("engine-rr")
    assert len(placed) == 2, placed
    workers = {n.node_id: n for n in cluster.worker_nodes}
    ingress = set(_replica_nodes("ingress").values())  # the HTTP path must survive the loss
    doomed = next((n for n in set(placed.values())
                   if n in workers and n not in ingress and list(placed.values()).count(n) == 1), None)
    if doomed is None:
        pytest.fail(f"no worker node holds exactly one rr replica; placement {placed}, "
                    f"ingress on {ingress}, workers {list(workers)}")
    # Two long streams: round-robin puts one on each replica.
    results: list[list[str]] = []
    flags = [threading.Event() for _ in range(2)]
    threads = [threading.Thread(target=_stream, args=(server, f"Count slowly {i}:", results, f)) for i, f in
               enumerate(flags)]
    for t in threads:
        t.start()
    assert all(f.wait(60) for f in flags), "streams did not start"
    cluster.remove_node(workers[doomed], allow_graceful=False)
    for t in threads:
        t.join(120)
    assert len(results) == 2
    errors = [f for f in results if any('"error"' in x for x in f)]
    assert len(errors) == 1, [f[-3:] for f in results]  # the stream on the lost node, only that one
    assert errors[0][-1] == "[DONE]" and "error" in json.loads(errors[0][-2])
    ok = next(f for f in results if f is not errors[0])
    assert ok[-1] == "[DONE]" and json.loads(ok[-2])["choices"][0]["finish_reason"] == "length"
    # Requests that had not started go to the surviving replica (or retry there): none fails.
    client = openai_client(server)
    for i in range(4):
        assert client.completions.create(model="rr", prompt=f"Hi {i}", max_tokens=2).choices[0].text is not None
    # Serve replaces the lost replica on the spare CPU. Until the GCS notices the dead node (its health
    # checks take seconds), the lost replica still reads ALIVE/RUNNING: wait for it to be gone, too.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        states = serve.status().applications["sluice"].deployments["engine-rr"].replica_states
        nodes = _replica_nodes("engine-rr")
        if states.get("RUNNING", 0) == 2 and len(nodes) == 2 and doomed not in set(nodes.values()):
            break
        time.sleep(1)
    else:
        pytest.fail(f"lost replica not replaced: {states}, placement {nodes}, lost node {doomed}")
