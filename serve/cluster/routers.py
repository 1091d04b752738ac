"""Our router policies as Ray Serve request routers, picked by the model's `policy`.

prefix-affinity is cache-aware with bounded load (the rules and their reasons: prefix_table.py): a
prefix seen before goes back to the replica that holds its KV unless that replica is overloaded
relative to the others; a new prefix goes to the least-loaded replica with the fewest prefixes.
Loads are Serve's own per-replica ongoing-request counts (its queue-length cache, probed when stale).
Serve tries the ranks in order and a replica at its max_ongoing_requests refuses, so the later ranks
are the spill-over when the first is full. round-robin rotates, ignoring the prompt: the baseline
prefix-affinity is measured against. least-outstanding is Serve's own power-of-two-choices router
(the default; no class needed).

Each DeploymentHandle (one per ingress replica) has its own router and so its own table: with one
ingress, as deployed here, that is the whole picture; with several, each learns the same prefixes
independently and the rendezvous tie-break makes them tend to agree.
"""

from __future__ import annotations

import itertools
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, ReplicaID, RequestRouter, RunningReplica

from serve.router.prefix_table import PrefixTable

KEY_ARG = 1  # EngineReplica.generate(request, prefix_key, trace): where the key sits


def _key(pending: PendingRequest | None) -> str:
    if pending is None:
        return ""
    if "prefix_key" in pending.kwargs:
        return str(pending.kwargs["prefix_key"])
    args = pending.args
    return args[KEY_ARG] if len(args) > KEY_ARG and isinstance(args[KEY_ARG], str) else ""


class PrefixAffinityRouter(RequestRouter):
    """No FIFOMixin: with it, a replica picked for one request's prefix goes to whichever request has
    waited longest, another prefix when several are pending; without, to the request it was picked for."""

    def initialize_state(self, max_imbalance: int = 4, **kwargs: Any) -> None:
        self.table = PrefixTable(max_imbalance=max_imbalance)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        key = _key(pending_request)
        if not candidate_replicas:
            return []
        if not key:  # not a generation (model_info, tokenize...): any replica, Serve picks the least busy
            return [list(candidate_replicas)]
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = await self._loads(candidate_replicas)
        return [[by_id[r]] for r in self.table.rank(key, loads)]

    async def _loads(self, replicas: list[RunningReplica]) -> dict[str, int]:
        """Ongoing requests per replica id. Serve's cache counts every request this handle sends and
        what replicas report back; an entry unrefreshed for 10 s is None, then the replica is asked.
        One that does not answer ranks last."""
        cache = self.replica_queue_len_cache
        loads: dict[str, int] = {}
        stale = []
        for r in replicas:
            n = cache.get(r.replica_id)
            if n is None:
                stale.append(r)
            else:
                loads[r.replica_id.unique_id] = n
        if stale:
            for r, n in await self._probe_queue_lens(stale, 0):
                loads[r.replica_id.unique_id] = r.max_ongoing_requests if n is None else n
        return loads

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        """Where the request really went (the first rank may have been full): that replica holds it now."""
        key = _key(pending_request)
        if key:
            self.table.record(key, replica_id.unique_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self.table.retain(r.replica_id.unique_id for r in replicas)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self.table.retain(r.unique_id for r in self.curr_replicas)


class RoundRobinRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, **kwargs: Any) -> None:
        self._turn = itertools.count()

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        # Sorted by id so the rotation is stable while the set of replicas is.
        ordered = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        if not _key(pending_request):  # not a generation (model_info, tokenize...): it takes no turn
            return [ordered]
        start = next(self._turn) % len(ordered)
        return [[r] for r in ordered[start:] + ordered[:start]]


# policy name -> request router class path; None: Serve's default router
ROUTERS: dict[str, str | None] = {
    "prefix-affinity": "serve.cluster.routers.PrefixAffinityRouter",
    "round-robin": "serve.cluster.routers.RoundRobinRouter",
    "least-outstanding": None,
}
