"""Our router policies as Ray Serve request routers, picked by the model's `policy`.

prefix-affinity is the single-process PrefixAffinity rule (serve/router/policy.py): rendezvous
hashing of the request's prefix key over replica ids, so a replica lost or added moves only its own
prefixes. Serve tries the ranks in order and a replica at its max_ongoing_requests refuses, so the
later ranks are the spill-over when the preferred replica is full. round-robin rotates, ignoring the
prompt: the baseline prefix-affinity is measured against. least-outstanding is Serve's own
power-of-two-choices router (the default; no class needed).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

KEY_ARG = 1  # EngineReplica.generate(request, prefix_key, trace): where the key sits


def _score(key: str, replica_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{replica_id}\x00{key}".encode(), digest_size=8).digest(), "big")


def _key(pending: PendingRequest | None) -> str:
    if pending is None:
        return ""
    if "prefix_key" in pending.kwargs:
        return str(pending.kwargs["prefix_key"])
    args = pending.args
    return args[KEY_ARG] if len(args) > KEY_ARG and isinstance(args[KEY_ARG], str) else ""


class RendezvousRouter(FIFOMixin, RequestRouter):
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        key = _key(pending_request)
        if not candidate_replicas:
            return []
        if not key:  # not a generation (model_info, tokenize...): any replica
            return [list(candidate_replicas)]
        ranked = sorted(candidate_replicas, key=lambda r: _score(key, r.replica_id.unique_id), reverse=True)
        return [[r] for r in ranked]


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
    "prefix-affinity": "serve.cluster.routers.RendezvousRouter",
    "round-robin": "serve.cluster.routers.RoundRobinRouter",
    "least-outstanding": None,
}
