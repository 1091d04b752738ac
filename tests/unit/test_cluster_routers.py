"""Our Ray request routers inside Serve's own routing loop, without a cluster: fake replicas answer
the queue-length probe, PendingRequests carry (request, prefix_key, trace) like RayBackend's calls."""

from __future__ import annotations

import asyncio

import pytest

from tests.requirements import ray_missing, requires

pytestmark = requires("ray", ray_missing())


class FakeReplica:
    """What the router reads of a RunningReplica; each queue-length probe takes the next of `delays_s`
    (then none)."""

    def __init__(self, name: str, delays_s: tuple[float, ...] = ()) -> None:
        from ray.serve._private.common import DeploymentID, ReplicaID

        self.replica_id = ReplicaID(name, DeploymentID("engine-smol", "sluice"))
        self.max_ongoing_requests, self.delays_s = 8, list(delays_s)

    async def get_queue_len(self, *, deadline_s: float) -> int:
        await asyncio.sleep(self.delays_s.pop(0) if self.delays_s else 0.0)
        return 0


def make_router():  # noqa: ANN201 - PrefixAffinityRouter
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from serve.cluster.routers import PrefixAffinityRouter

    router = PrefixAffinityRouter(deployment_id=DeploymentID("engine-smol", "sluice"),
                                  handle_source=DeploymentHandleSource.UNKNOWN, use_replica_queue_len_cache=True)
    router.initialize_state(max_imbalance=4)
    return router


def pending(key: str, n: int):  # noqa: ANN201 - PendingRequest
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    meta = RequestMetadata(request_id=f"{key}{n}", internal_request_id=f"{key}{n}", call_method="generate",
                           is_streaming=True)
    return PendingRequest(args=[object(), key, None], kwargs={}, metadata=meta)


def test_concurrent_requests_each_get_their_own_prefixs_replica() -> None:
    """Serve's FIFO mixin would hand the replica picked for one request to the oldest one pending:
    here the first request's pick waits on a slow probe while the second's is quick, so the second's
    replica would go to the first. Ours gives each request the replica picked for it."""

    async def main() -> list[tuple[str, str]]:
        r0, r1 = FakeReplica("r0"), FakeReplica("r1")
        router = make_router()
        router.update_replicas([r0, r1])
        await asyncio.sleep(0.05)  # the first probes fill the queue-length cache
        homes = {}
        for key in ("a", "b"):
            homes[key] = (await router._choose_replica_for_request(pending(key, 0))).replica_id.unique_id
        assert set(homes.values()) == {"r0", "r1"}
        for r in (r0, r1):  # stale: both picks probe again, the first probe slowly
            router.replica_queue_len_cache.invalidate_key(r.replica_id)
            r.delays_s = [0.2]
        prs = [pending("a", 1), pending("b", 1)]
        got = await asyncio.gather(*(router._choose_replica_for_request(pr) for pr in prs))
        return [(homes[k], r.replica_id.unique_id) for k, r in zip("ab", got, strict=True)]

    pairs = asyncio.run(main())
    assert all(want == got for want, got in pairs), pairs


def test_lost_replica_prefixes_move_to_the_survivor() -> None:
    async def main() -> tuple[str, str]:
        r0, r1 = FakeReplica("r0"), FakeReplica("r1")
        router = make_router()
        router.update_replicas([r0, r1])
        first = (await router._choose_replica_for_request(pending("a", 0))).replica_id.unique_id
        survivor = r1 if first == "r0" else r0
        router.update_replicas([survivor])
        again = (await router._choose_replica_for_request(pending("a", 1))).replica_id.unique_id
        return again, survivor.replica_id.unique_id

    again, survivor = asyncio.run(main())
    assert again == survivor


@pytest.mark.parametrize("key", ["", None])
def test_calls_without_a_prefix_key_go_to_any_replica(key: str | None) -> None:
    async def main() -> str:
        router = make_router()
        router.update_replicas([FakeReplica("r0"), FakeReplica("r1")])
        pr = pending("x", 0)
        pr.args = [] if key is None else [object(), key, None]
        return (await router._choose_replica_for_request(pr)).replica_id.unique_id

    assert asyncio.run(main()) in {"r0", "r1"}
