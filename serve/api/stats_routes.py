"""GET /v1/stats: the dashboard's one-second figures, as small JSON.

Counters the engines keep since start (prefix-cache queries and hits, drafted and accepted tokens)
are turned into rates over the recent window by remembering what they were on earlier reads; latency
percentiles and output tokens/s come from the metering wrapper's LiveStats.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import psutil
from fastapi import Request

from serve.api.state import AppState
from serve.router.replica import Replica
from serve.router.router import ModelGroup

# Cumulative engine counters the dashboard shows as windowed ratios: (numerator, denominator).
_RATIOS = {"prefix_cache_hit_rate": ("prefix_cache_hits", "prefix_cache_queries"),
           "spec_acceptance_rate": ("spec_decode_num_accepted_tokens", "spec_decode_num_draft_tokens")}
_COUNTERS = sorted({k for pair in _RATIOS.values() for k in pair})


class CounterHistory:
    """Totals of the engine counters at earlier reads, so a ratio covers only the last window."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=4096)

    def ratios(self, now: float, totals: dict[str, float]) -> dict[str, float | None]:
        while self.samples and now - self.samples[0][0] > self.window_s:
            self.samples.popleft()
        base = self.samples[0][1] if self.samples else dict.fromkeys(totals, 0.0)
        if not self.samples or now - self.samples[-1][0] >= 0.5:
            self.samples.append((now, totals))
        out: dict[str, float | None] = {}
        for name, (num, den) in _RATIOS.items():
            d = totals[den] - base.get(den, 0.0)
            # a restarted engine resets its counters: a negative delta means "no figure", not a ratio
            out[name] = round((totals[num] - base.get(num, 0.0)) / d, 4) if d > 0 else None
        return out


def _replica(r: Replica) -> dict[str, Any]:
    stats = r.backend.stats() if r.healthy and callable(getattr(r.backend, "stats", None)) else {}
    return {"id": r.replica_id, "healthy": r.up, "circuit": r.breaker.state.name.lower(),
            "outstanding": r.outstanding, "running": stats.get("num_requests_running"),
            "waiting": stats.get("num_requests_waiting"), "kv_cache_usage": stats.get("kv_cache_usage")}


def _model(state: AppState, g: ModelGroup) -> dict[str, Any]:
    pool = state.router.on_demand
    running = sum(r.outstanding for r in g.replicas)
    out: dict[str, Any] = {"name": g.name, "backend": ",".join(sorted({r.backend.name for r in g.replicas})),
                           "running": running, "waiting": max(0, g.admitted - running),
                           "replicas": [_replica(r) for r in g.replicas]}
    if pool is not None:
        out.update(pool.model_info(g.name))
    else:
        out["state"] = "loaded" if any(r.up for r in g.replicas) else "unavailable"
    return out


def _totals(state: AppState) -> tuple[dict[str, float], list[float]]:
    totals = dict.fromkeys(_COUNTERS, 0.0)
    usage: list[float] = []
    for r in state.router.all_replicas():
        if not r.healthy or not callable(getattr(r.backend, "stats", None)):
            continue
        stats = r.backend.stats()
        for k in _COUNTERS:
            totals[k] += float(stats.get(k, 0) or 0)
        if isinstance(stats.get("kv_cache_usage"), int | float):
            usage.append(float(stats["kv_cache_usage"]))
    return totals, usage


async def stats(request: Request) -> dict[str, Any]:
    state: AppState = request.app.state.sluice
    live = state.metrics.live
    history: CounterHistory = request.app.state.sluice_counter_history
    models = [_model(state, g) for g in state.router.groups.values()]
    totals, usage = _totals(state)
    return {"time": time.time(), **live.snapshot(),
            "requests_running": sum(m["running"] for m in models),
            "requests_waiting": sum(m["waiting"] for m in models),
            "kv_cache_usage": max(usage) if usage else None,  # the fullest replica is the one that preempts
            **history.ratios(time.monotonic(), totals),
            "process_rss_bytes": int(psutil.Process().memory_info().rss), "models": models}
