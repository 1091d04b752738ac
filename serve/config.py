"""Frozen configuration dataclasses. Validation raises ValueError with a message a user can act on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve.cluster.config import ClusterConfig
from serve.limits import Limits
from serve.tenancy.keys import KeySpec

BACKENDS = ("llamacpp", "native", "vllm", "remote")
POLICIES = ("round-robin", "least-outstanding", "prefix-affinity")
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ReplicaSpec:
    """One replica of a served model: a backend plus the options that backend reads."""

    backend: str = "llamacpp"
    # Catalog name, local path (.gguf file or HF-style directory), or, for `remote`, the upstream model name.
    model: str = DEFAULT_MODEL
    url: str | None = None  # remote: upstream base URL, e.g. http://127.0.0.1:9000/v1
    api_key: str | None = None  # remote: bearer token for the upstream
    options: dict[str, Any] = field(default_factory=dict)  # backend-specific knobs (n_ctx, parallel, ...)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of: {', '.join(BACKENDS)}")
        if self.backend == "remote" and not self.url:
            raise ValueError("a remote replica needs `url` (the upstream's OpenAI base URL)")


@dataclass(frozen=True)
class BreakerConfig:
    """Per-replica circuit breaker: after `failures` consecutive faults (refused or reset connections,
    timeouts, 5xx before the first token) the replica gets no traffic for `cooldown_s` seconds, then
    one trial request (or a passing health probe) decides whether it serves again."""

    failures: int = 3
    cooldown_s: float = 10.0

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("breaker failures must be >= 1")
        if self.cooldown_s < 0:
            raise ValueError("breaker cooldown_s must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """A model name clients use, its aliases, its replicas and how requests are spread over them."""

    name: str
    replicas: tuple[ReplicaSpec, ...]
    aliases: tuple[str, ...] = ()
    policy: str = "least-outstanding"
    # Requests admitted at once (running + queued) before new ones get 503 + Retry-After.
    max_outstanding: int = 256
    breaker: BreakerConfig = BreakerConfig()  # applied to each replica of this model

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a non-empty `name`")
        if not self.replicas:
            raise ValueError(f"model {self.name!r} has no replicas")
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose one of: {', '.join(POLICIES)}")
        if self.max_outstanding < 1:
            raise ValueError("max_outstanding must be >= 1")


@dataclass(frozen=True)
class OnDemandConfig:
    """Models loaded at their first request instead of at start (serve/router/on_demand.py)."""

    max_loaded: int = 0  # models resident at once; loading one more unloads the least recently used (0: no cap)
    idle_unload_s: float = 0.0  # unload a model unused this long (0: never)
    load_timeout_s: float = 600.0  # a request waits at most this long for its model to load

    def __post_init__(self) -> None:
        if self.max_loaded < 0:
            raise ValueError("--models-max must be >= 0 (0: no cap)")
        if self.idle_unload_s < 0:
            raise ValueError("--idle-unload must be >= 0 seconds (0: never)")
        if self.load_timeout_s <= 0:
            raise ValueError("load_timeout_s must be > 0")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    models: tuple[ModelConfig, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    health_interval_s: float = 5.0
    log_level: str = "info"
    keys: tuple[KeySpec, ...] = ()  # tenants; with any key (or api_key) set every path but /health needs one
    public_metrics: bool = False  # with keys: serve /metrics without one (a scraper on a trusted network)
    public_docs: bool = False  # with keys: serve /docs, /redoc, /openapi.json without one
    audit_log: str | None = None  # JSONL file, one line per request
    audit_log_prompts: bool = False  # also write prompt and output text into the audit log
    limits: Limits = field(default_factory=Limits)
    cluster: ClusterConfig | None = None  # [cluster]: engines on Ray Serve; None: this one process
    ui: bool = True  # the web UI at / (--no-ui turns it off)
    on_demand: OnDemandConfig | None = None  # None: every model's replicas start with the server

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range 0..65535")
        names: set[str] = set()
        for m in self.models:
            for n in (m.name, *m.aliases):
                if n in names:
                    raise ValueError(f"model name or alias {n!r} is declared twice")
                names.add(n)
        self._check_keys(names)

    def _check_keys(self, served: set[str]) -> None:
        ids = [k.id for k in self.keys]
        if len(set(ids)) != len(ids):
            raise ValueError("two [[keys]] entries share an id")
        for k in self.keys:
            unknown = sorted(set(k.models or ()) - served) if served else []
            if unknown:
                raise ValueError(f"key {k.id!r} allows model(s) that are not served: {', '.join(unknown)}")
