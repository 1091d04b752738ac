"""Prometheus metrics, `sluice:` prefix, named after vLLM's where the meaning is the same."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from serve.api.live_stats import LiveStats

_LAT = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)

# Engine stats a backend may expose through `stats() -> dict`, mapped to gauge names.
_ENGINE_GAUGES = {
    "num_requests_running": "sluice:engine_requests_running",
    "num_requests_waiting": "sluice:engine_requests_waiting",
    "kv_cache_usage": "sluice:kv_cache_usage_perc",
    "prefix_cache_queries": "sluice:prefix_cache_queries",
    "prefix_cache_hits": "sluice:prefix_cache_hits",
    "num_preemptions": "sluice:num_preemptions",
}
# Cumulative engine stats exported as counters (the `_total` suffix is added by the exposition).
_ENGINE_COUNTERS = {
    "spec_decode_num_drafts": "sluice:spec_decode_num_drafts",
    "spec_decode_num_draft_tokens": "sluice:spec_decode_num_draft_tokens",
    "spec_decode_num_accepted_tokens": "sluice:spec_decode_num_accepted_tokens",
}
# Stats keyed `<prefix><position>` -> one counter with a `position` label (vLLM's per-position
# acceptance: accepted[position] / num_drafts is the acceptance rate of draft position j).
_PER_POS_PREFIX = "spec_decode_num_accepted_tokens_per_pos."
_PER_POS_NAME = "sluice:spec_decode_num_accepted_tokens_per_pos"


class _EngineCollector:
    """Reads backend stats at scrape time, so the engine never pushes metrics on its hot path."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, str, dict]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "replica"]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            **{k: GaugeMetricFamily(v, f"engine stat {k}", labels=labels) for k, v in _ENGINE_GAUGES.items()},
            **{k: CounterMetricFamily(v, f"engine stat {k}", labels=labels) for k, v in _ENGINE_COUNTERS.items()}}
        per_pos = CounterMetricFamily(_PER_POS_NAME, "accepted draft tokens at each draft position",
                                      labels=[*labels, "position"])
        for model, replica, stats in self._source():
            for key, value in stats.items():
                if not isinstance(value, int | float):
                    continue
                if key in families:
                    families[key].add_metric([model, replica], float(value))
                elif key.startswith(_PER_POS_PREFIX):
                    per_pos.add_metric([model, replica, key[len(_PER_POS_PREFIX):]], float(value))
        return [f for f in (*families.values(), per_pos) if f.samples]


class Metrics:
    def __init__(self, stats_source: Callable[[], Iterable[tuple[str, str, dict]]] | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.live = LiveStats()  # the dashboard's recent window (GET /v1/stats)
        m = ["model"]
        self.running = Gauge("sluice:num_requests_running", "requests generating", m, registry=r)
        self.waiting = Gauge("sluice:num_requests_waiting", "requests admitted, not yet generating", m, registry=r)
        self.ttft = Histogram("sluice:time_to_first_token_seconds", "time to first token", m, buckets=_LAT, registry=r)
        self.itl = Histogram("sluice:inter_token_latency_seconds", "gap between output chunks", m,
                             buckets=_ITL, registry=r)
        self.e2e = Histogram("sluice:e2e_request_latency_seconds", "request latency", m, buckets=_LAT, registry=r)
        self.queue = Histogram("sluice:request_queue_time_seconds", "time queued before running", m,
                               buckets=_LAT, registry=r)
        self.prompt_tokens = Counter("sluice:prompt_tokens", "prompt tokens processed", m, registry=r)
        self.generation_tokens = Counter("sluice:generation_tokens", "tokens generated", m, registry=r)
        self.cached_tokens = Counter("sluice:prefix_cache_hit_tokens", "prompt tokens served from cache", m,
                                     registry=r)
        self.success = Counter("sluice:request_success", "finished requests", m + ["finished_reason"], registry=r)
        self.errors = Counter("sluice:request_errors", "failed requests", m + ["type"], registry=r)
        self.upstream = Histogram("sluice:replica_request_latency_seconds", "latency per replica",
                                  ["replica", "outcome"], buckets=_LAT, registry=r)
        self.replica_healthy = Gauge("sluice:replica_healthy",
                                     "1 when the replica passes health checks and its circuit is not open",
                                     ["model", "replica"], registry=r)
        self.circuit = Gauge("sluice:replica_circuit_state", "circuit breaker: 0 closed, 1 half-open, 2 open",
                             ["model", "replica"], registry=r)
        self.retries = Counter("sluice:replica_retries", "requests moved to another replica", m, registry=r)
        if stats_source is not None:
            r.register(_EngineCollector(stats_source))

    # RouterObserver
    def replica_done(self, replica_id: str, seconds: float, ok: bool) -> None:
        self.upstream.labels(replica_id, "ok" if ok else "error").observe(seconds)

    def retried(self, model: str) -> None:
        self.retries.labels(model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
