"""`[cluster]`: where and how the engines run when Ray Serve places them.

    [cluster]
    engine = "ray"                # the only engine so far
    address = "auto"              # an existing Ray cluster ("auto", "HOST:PORT"); absent: start a local one
    ingress_num_cpus = 1          # CPUs reserved for the HTTP ingress replica (it templates and tokenizes)
    ingress_resources = { head = 0.01 }  # custom Ray resources the ingress needs: pins it to nodes that have them
    [cluster.models.smollm2]      # per served model (its `name`); absent: defaults below
    replicas = 2                  # fixed replica count (ignored when min/max_replicas are set)
    num_cpus = 1                  # CPUs Ray reserves per engine replica
    threads = 1                   # compute threads per replica (OMP_NUM_THREADS, the backend's own knob)
    min_replicas = 1              # autoscaling on: both of min/max_replicas set
    max_replicas = 4
    target_ongoing_requests = 2   # per replica, what the autoscaler steers towards
    upscale_delay_s = 30          # demand above target this long before a replica is added (Serve's default)
    downscale_delay_s = 600       # below target this long before one is removed (Serve's default)
    look_back_period_s = 30       # the window Serve averages ongoing requests over (Serve's default)
    max_ongoing_requests = 8      # per replica, before Serve queues at the caller
    prefix_tokens = 64            # prompt tokens that pick a replica under the prefix-affinity policy
    prefix_max_imbalance = 4      # prefix-affinity: ongoing requests a prefix's replica may run above the
                                  # least-loaded replica before that prefix spills over to another
    stream_interval_ms = 50       # engine -> ingress: the first event goes at once, later ones that come
                                  # within this many ms of the last send go together (0: one per token)

The engine replicas are built from the model's first `[[models.replicas]]` entry (backend, model,
options); the model's `policy` picks the Serve request router.

`stream_interval_ms` trades smoothness for CPU: every item of a Ray streaming generator costs about
a millisecond of CPU over its two ends (measured on a 2-core box: 1.0-1.3 ms per token at one item
per token, 0.1-0.2 ms at 50 ms), taken from the cores the engine decodes on. Coalescing keeps every
event, in order, with its finish reason, usage and errors; a token waits at most this long; the first
token (TTFT) never waits; a stream slower than one token per interval goes one per token as before.
50 ms is also Ray Serve LLM's default for the same batching.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

ENGINES = ("ray",)


@dataclass(frozen=True)
class ClusterModel:
    replicas: int | None = None  # None: as many as the model lists in [[models.replicas]]
    num_cpus: float = 1.0
    threads: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    max_ongoing_requests: int = 8
    prefix_tokens: int = 64
    # None: Serve's own defaults (30 s, 600 s, 30 s); only read when autoscaling.
    upscale_delay_s: float | None = None
    downscale_delay_s: float | None = None
    look_back_period_s: float | None = None
    prefix_max_imbalance: int = 4
    stream_interval_ms: float = 50.0

    def __post_init__(self) -> None:
        if self.replicas is not None and self.replicas < 1:
            raise ValueError("cluster replicas must be >= 1")
        if self.num_cpus < 0 or self.threads < 1:
            raise ValueError("cluster num_cpus must be >= 0 and threads >= 1")
        if (self.min_replicas is None) != (self.max_replicas is None):
            raise ValueError("cluster autoscaling needs both min_replicas and max_replicas")
        if self.min_replicas is not None and not 0 <= self.min_replicas <= (self.max_replicas or 0):
            raise ValueError("cluster needs 0 <= min_replicas <= max_replicas, max_replicas >= 1")
        if self.max_replicas is not None and self.max_replicas < 1:
            raise ValueError("cluster max_replicas must be >= 1")
        if self.target_ongoing_requests <= 0 or self.max_ongoing_requests < 1 or self.prefix_tokens < 1:
            raise ValueError("cluster target_ongoing_requests, max_ongoing_requests, prefix_tokens must be positive")
        if any(d is not None and d < 0 for d in (self.upscale_delay_s, self.downscale_delay_s)):
            raise ValueError("cluster upscale_delay_s and downscale_delay_s must be >= 0")
        if self.look_back_period_s is not None and self.look_back_period_s <= 0:
            raise ValueError("cluster look_back_period_s must be positive")
        if self.prefix_max_imbalance < 0 or self.stream_interval_ms < 0:
            raise ValueError("cluster prefix_max_imbalance and stream_interval_ms must be >= 0")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    def autoscaling_config(self) -> dict[str, Any]:
        """Serve's autoscaling_config for this model (call only when `autoscaling`)."""
        knobs = {"upscale_delay_s": self.upscale_delay_s, "downscale_delay_s": self.downscale_delay_s,
                 "look_back_period_s": self.look_back_period_s}
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                **{k: v for k, v in knobs.items() if v is not None}}


@dataclass(frozen=True)
class ClusterConfig:
    engine: str = "ray"
    address: str | None = None
    ingress_num_cpus: float = 1.0
    ingress_resources: dict[str, float] = field(default_factory=dict)
    models: dict[str, ClusterModel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown cluster engine {self.engine!r}; choose one of: {', '.join(ENGINES)}")
        if self.ingress_num_cpus < 0:
            raise ValueError("cluster ingress_num_cpus must be >= 0")

    def model(self, name: str) -> ClusterModel:
        return self.models.get(name, ClusterModel())


_MODEL_KEYS = {f.name for f in fields(ClusterModel)}
_KEYS = {"engine", "address", "ingress_num_cpus", "ingress_resources", "models"}


def parse_cluster(table: Any, served: set[str]) -> ClusterConfig:
    """The `[cluster]` table -> ClusterConfig; unknown keys and models not served are errors."""
    if not isinstance(table, dict):
        raise ValueError("[cluster] must be a mapping")
    extra = set(table) - _KEYS
    if extra:
        raise ValueError(f"unknown key(s) in [cluster]: {', '.join(sorted(extra))}; allowed: {', '.join(sorted(_KEYS))}")
    models: dict[str, ClusterModel] = {}
    for name, m in (table.get("models") or {}).items():
        if name not in served:
            raise ValueError(f"[cluster.models.{name}] names a model that is not served")
        if not isinstance(m, dict) or set(m) - _MODEL_KEYS:
            raise ValueError(f"[cluster.models.{name}] allows only: {', '.join(sorted(_MODEL_KEYS))}")
        models[name] = ClusterModel(**m)
    rest = {k: v for k, v in table.items() if k != "models"}
    return ClusterConfig(**rest, models=models)
