"""ModelPool when loads go wrong or take too long: a failed load is a 503 for every waiter and the
next request retries; a load timeout answers 503 while the shared load carries on; waiting for room
gives up at the load timeout; the tokenizer routes load, and fail, like generation does."""

from __future__ import annotations

import asyncio

import pytest

from serve.backends.base import BackendUnavailable
from serve.config import ModelConfig, OnDemandConfig, ReplicaSpec
from serve.router.replica import Replica
from serve.router.router import Router
from tests.unit.model_pool_fakes import (
    TokenizingBackend,
    make_pool,
    run,
    settle,
    states,
    use,
)


def test_waiting_for_room_gives_up_at_the_load_timeout() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", "b", max_loaded=1, load_timeout_s=0.1)
        await pool.acquire(pool.router.groups["a"])
        with pytest.raises(BackendUnavailable, match="did not load within 0.1 s|waiting for room"):
            await pool.acquire(pool.router.groups["b"])
        assert pool.slots["b"].pinned == 0
        await asyncio.sleep(0.1)  # the load itself gives up at its deadline too: no place kept waiting
        assert states(pool) == {"a": "loaded", "b": "unloaded"} and not pool.slots["b"].room
        assert b["b"].starts == 0 and b["a"].stops == 0

    run(main)


def test_load_failure_is_a_503_and_the_next_request_retries() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", "b", max_loaded=1)
        b["a"].fail_starts = 1
        with pytest.raises(BackendUnavailable, match="model 'a' could be started"):
            await pool.acquire(pool.router.groups["a"])
        assert states(pool)["a"] == "unloaded" and pool.slots["a"].pinned == 0 and pool.slots["a"].loads == 0
        assert b["a"].stops == 1  # whatever it half-loaded is released
        await use(pool, "b")  # the failed load did not keep the only place
        await use(pool, "a")
        assert states(pool) == {"a": "loaded", "b": "unloaded"} and b["a"].starts == 2

    run(main)


def test_load_failure_reaches_every_waiter_of_the_shared_load() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a")
        b["a"].gate, b["a"].fail_starts = asyncio.Event(), 1
        waiters = [asyncio.create_task(pool.acquire(pool.router.groups["a"])) for _ in range(2)]
        await settle()
        b["a"].gate.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, BackendUnavailable) for r in results) and b["a"].starts == 1
        assert pool.slots["a"].pinned == 0 and states(pool) == {"a": "unloaded"}

    run(main)


def test_load_timeout_answers_503_and_the_shared_load_carries_on() -> None:
    async def main() -> None:
        pool, b, _ = make_pool("a", load_timeout_s=0.05)
        b["a"].gate = asyncio.Event()
        with pytest.raises(BackendUnavailable, match="did not load within 0.05 s"):
            await pool.acquire(pool.router.groups["a"])
        assert pool.slots["a"].pinned == 0 and states(pool) == {"a": "loading"}
        # The load is not cancelled (a backend's start runs in a thread that cancelling cannot stop);
        # the next request joins it instead of starting a second one.
        again = asyncio.create_task(pool.acquire(pool.router.groups["a"]))
        await settle()
        b["a"].gate.set()
        await again
        assert b["a"].starts == 1 and pool.slots["a"].loads == 1 and states(pool) == {"a": "loaded"}

    run(main)


def test_tokenize_and_detokenize_load_an_unloaded_model() -> None:
    from fastapi.testclient import TestClient

    from serve.api.app import create_app
    from serve.config import ServerConfig

    backends = {n: TokenizingBackend(n) for n in ("a", "b")}
    configs = tuple(ModelConfig(name=n, replicas=(ReplicaSpec(),)) for n in backends)
    router = Router.from_replicas(list(configs), {n: [Replica(n, f"{n}/0:fake", b)]  # type: ignore[arg-type]
                                                  for n, b in backends.items()})
    config = ServerConfig(models=configs, ui=False, health_interval_s=3600, on_demand=OnDemandConfig(max_loaded=1))
    with TestClient(create_app(config, router)) as client:
        pool = router.on_demand
        assert pool is not None and states(pool) == {"a": "unloaded", "b": "unloaded"}
        r = client.post("/tokenize", json={"model": "a", "prompt": "hi"})
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == [104, 105] and states(pool) == {"a": "loaded", "b": "unloaded"}
        r = client.post("/detokenize", json={"model": "b", "tokens": [111, 107]})
        assert r.status_code == 200 and r.json()["prompt"] == "ok", r.text
        assert states(pool) == {"a": "unloaded", "b": "loaded"}  # --models-max 1: a made way
        assert pool.slots["a"].pinned == pool.slots["b"].pinned == 0  # released after the answer
        assert client.post("/tokenize", json={"model": "a"}).status_code == 400  # checked before any load
        assert states(pool)["a"] == "unloaded"
        backends["a"].fail_starts = 1
        r = client.post("/tokenize", json={"model": "a", "prompt": "x"})
        assert r.status_code == 503 and "model 'a' could be started" in r.text
        assert pool.slots["a"].pinned == 0
