"""Models on demand against a real server: SmolLM2 and Gemma-3-270M, `--models-max 1`.

Requests alternate between the two models; every one succeeds, only one model is resident at a time
(/v1/stats and the process RSS say so), concurrent first requests share one load, and /health,
/v1/models and /metrics show the loading state. The cold-model TTFT is printed (`-s`) for the README.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.server_proc import ServerProc, start_server
from tests.requirements import model_missing, require

SMOL, GEMMA = "smollm2-135m-instruct", "gemma3-270m"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    require("model", model_missing(SMOL))
    require("model", model_missing(GEMMA))
    # llamacpp for both: gemma3 runs only there, and one backend keeps the RSS comparison fair.
    s = start_server(["--model", SMOL, "--model", GEMMA, "--models-max", "1", "--backend", "llamacpp",
                      "-o", "n_parallel=2"], tmp_path_factory.mktemp("ondemand"))
    yield s
    s.stop()


def _stats(server: ServerProc) -> dict:
    return httpx.get(f"{server.base_url}/v1/stats", timeout=5).json()


def _loaded(server: ServerProc) -> list[str]:
    return [m["name"] for m in _stats(server)["models"] if m["state"] != "unloaded"]


def _ttft(server: ServerProc, model: str) -> float:
    """Seconds to the first streamed token of a completion (asserts it finished normally)."""
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 8, "stream": True}
    t0 = time.monotonic()
    first, done = None, False
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {") and first is None and '"text":""' not in line:
                first = time.monotonic() - t0
            done = done or line == "data: [DONE]"
    assert first is not None and done
    return first


def test_nothing_loaded_at_start(server: ServerProc) -> None:
    health = httpx.get(f"{server.base_url}/health", timeout=5)
    assert health.status_code == 200 and health.json()["models"] == {SMOL: "unloaded", GEMMA: "unloaded"}
    cards = httpx.get(f"{server.base_url}/v1/models", timeout=5).json()["data"]
    assert {c["id"]: c["status"] for c in cards} == {SMOL: "unloaded", GEMMA: "unloaded"}


def test_concurrent_first_requests_share_one_load(server: ServerProc) -> None:
    seen_loading: list[bool] = []
    results: list[float] = []

    def watch() -> None:
        for _ in range(100):
            h = httpx.get(f"{server.base_url}/health", timeout=5).json()
            seen_loading.append(GEMMA in h["loading"])
            if h["models"][GEMMA] == "loaded":
                return
            time.sleep(0.05)

    threads = [threading.Thread(target=lambda: results.append(_ttft(server, GEMMA))) for _ in range(3)]
    watcher = threading.Thread(target=watch)
    for t in (*threads, watcher):
        t.start()
    for t in (*threads, watcher):
        t.join(timeout=300)
    assert len(results) == 3
    assert any(seen_loading)  # /health said "loading" while it loaded
    gemma = next(m for m in _stats(server)["models"] if m["name"] == GEMMA)
    assert gemma["loads"] == 1 and gemma["state"] == "loaded"
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    assert f'sluice:model_state{{model="{GEMMA}",state="loaded"}} 1.0' in metrics


def test_alternating_models_one_resident(server: ServerProc) -> None:
    rss: list[int] = []
    cold: dict[str, list[float]] = {SMOL: [], GEMMA: []}
    for model in (SMOL, GEMMA, SMOL, GEMMA, SMOL, GEMMA):
        cold[model].append(_ttft(server, model))
        assert _loaded(server) == [model]  # the other was unloaded to make room
        rss.append(_stats(server)["process_rss_bytes"])
    print(f"\ncold TTFT (load + first token), s: {cold}; RSS after each, MiB: {[r >> 20 for r in rss]}")
    # Two models resident would add the first model's footprint each round; one at a time keeps RSS flat
    # (allowing 25% for allocator slack).
    assert max(rss[2:]) < 1.25 * max(rss[:2])
    warm = _ttft(server, GEMMA)
    assert warm < min(cold[GEMMA]), (warm, cold)
