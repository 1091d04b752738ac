"""Load a ServerConfig from a TOML or YAML file (same structure in both).

    [server]                      # optional: host, port, api_key, max_body_bytes, health_interval_s,
                                  # public_metrics, public_docs, audit_log, audit_log_prompts
    [limits]                      # optional, per request: max_tokens = 4096, request_timeout_s = 120, ...
    [[models]]
    name = "smollm2"              # the name clients send
    aliases = ["default"]
    policy = "prefix-affinity"    # round-robin | least-outstanding | prefix-affinity
    max_outstanding = 64          # admitted requests before 503
    breaker = { failures = 3, cooldown_s = 10.0 }   # per replica: faults in a row -> no traffic for cooldown_s
    [[models.replicas]]
    backend = "llamacpp"          # llamacpp | native | vllm | remote
    model = "smollm2-135m-instruct"
    options = { n_parallel = 4 }  # remote also reads connect_timeout_s, first_byte_timeout_s, read_timeout_s

Tenants: each `[[keys]]` entry is one API key. With any key configured (or `api_key`, `--api-key`,
`--api-key-file`, `$SLUICE_API_KEY`, which add one key with id "default" and no limits) every path but
/health needs `Authorization: Bearer <key>`; `public_metrics = true` / `public_docs = true` open
/metrics or /docs, /redoc, /openapi.json again.

    [[keys]]
    id = "team-a"                 # shown in the audit log and in rate-limit messages
    hash = "sha256:9f86d0..."     # of the key: `sluice keys hash` (key on stdin); or:
    # env = "TEAM_A_KEY"          # the name of an environment variable holding the key itself
    models = ["smollm2"]          # allow-list (names or aliases); absent = every model
    requests_per_minute = 600     # token bucket: bursts up to the limit, refilled evenly over a minute
    tokens_per_minute = 200000    # prompt + completion: estimated up front (body bytes / 4), settled after
    max_concurrent = 8            # requests in flight at once

Over a limit the answer is 429 (`rate_limit_error`) with `Retry-After`; every limited response carries
OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers. A model outside `models`
answers 404 `model_not_found`, as an unknown model does. With two or more keys each key's prompts go
into its own prefix-cache namespace (a cache salt), so one tenant cannot time another's prompts.

`[cluster] engine = "ray"` runs each model's engines as Ray Serve replicas behind this same HTTP app
(serve/cluster/config.py lists its keys); without it everything runs in this one process.

`audit_log = "/var/log/sluice/audit.jsonl"` writes one JSON line per request (time, request id, key id,
model, token counts, status, latency, finish reasons, client address), never prompt or output text
unless `audit_log_prompts = true`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from serve.cluster.config import parse_cluster
from serve.config import BreakerConfig, ModelConfig, ReplicaSpec, ServerConfig
from serve.limits import LIMIT_NAMES, Limits
from serve.tenancy.keys import KeySpec

_SERVER_KEYS = {"host", "port", "api_key", "max_body_bytes", "health_interval_s", "log_level", "public_metrics",
                "public_docs", "audit_log", "audit_log_prompts"}
_MODEL_KEYS = {"name", "aliases", "policy", "max_outstanding", "replicas", "breaker"}
_BREAKER_KEYS = {"failures", "cooldown_s"}
_REPLICA_KEYS = {"backend", "model", "url", "api_key", "options"}
_KEY_KEYS = {"id", "hash", "env", "models", "requests_per_minute", "tokens_per_minute", "max_concurrent"}


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> ServerConfig:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"config file {p} does not exist")
    text = p.read_text()
    try:
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"config file {p} is not valid {'TOML' if p.suffix == '.toml' else 'YAML'}: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"config file {p} must hold a mapping at the top level")
    try:
        return from_dict(data, overrides or {})
    except TypeError as e:  # e.g. `port: abc`: a wrong scalar type is bad input, not a crash
        raise ValueError(f"config file {p} has a value of the wrong type: {e}") from e


def _check_keys(where: str, got: dict[str, Any], allowed: set[str]) -> None:
    _mapping(where, got)
    extra = set(got) - allowed
    if extra:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}")


def _mapping(where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping (key: value pairs), got {type(value).__name__}")
    return value


def from_dict(data: dict[str, Any], overrides: dict[str, Any]) -> ServerConfig:
    _check_keys("the config", data, {"server", "models", "keys", "limits", "cluster"})
    server = dict(_mapping("[server]", data.get("server") or {}))
    _check_keys("[server]", server, _SERVER_KEYS)
    server.update({k: v for k, v in overrides.items() if v is not None and k != "limits"})
    models = []
    for i, m in enumerate(data.get("models") or []):
        _check_keys(f"models[{i}]", m, _MODEL_KEYS)
        replicas = []
        for j, r in enumerate(m.get("replicas") or []):
            _check_keys(f"models[{i}].replicas[{j}]", r, _REPLICA_KEYS)
            options = _mapping(f"models[{i}].replicas[{j}].options", r.get("options") or {})
            replicas.append(ReplicaSpec(**{**r, "options": dict(options)}))
        breaker = dict(_mapping(f"models[{i}].breaker", m.get("breaker") or {}))
        _check_keys(f"models[{i}].breaker", breaker, _BREAKER_KEYS)
        models.append(ModelConfig(name=m.get("name", ""), replicas=tuple(replicas),
                                  aliases=tuple(m.get("aliases") or ()), policy=m.get("policy", "least-outstanding"),
                                  max_outstanding=int(m.get("max_outstanding", 256)),
                                  breaker=BreakerConfig(**breaker)))
    if not models:
        raise ValueError("the config declares no models")
    keys = tuple(_key_spec(i, k) for i, k in enumerate(data.get("keys") or []))
    cluster = None
    if "cluster" in data:  # serve/cluster/config.py documents the table
        cluster = parse_cluster(data["cluster"], {m.name for m in models})
    return ServerConfig(models=tuple(models), keys=keys, limits=_limits(data.get("limits") or {}, overrides),
                        cluster=cluster, **server)


def _key_spec(i: int, k: Any) -> KeySpec:
    _check_keys(f"keys[{i}]", k, _KEY_KEYS)
    models = k.get("models")
    if models is not None and not (isinstance(models, list) and all(isinstance(m, str) for m in models)):
        raise ValueError(f"keys[{i}].models must be a list of model names")
    return KeySpec(**{**k, "models": tuple(models) if models is not None else None})


def _limits(section: Any, overrides: dict[str, Any]) -> Limits:
    """[limits] from the file; `sluice serve --limit-*` flags (the `limits` override) win key by key."""
    table = dict(_mapping("[limits]", section))
    _check_keys("[limits]", table, set(LIMIT_NAMES))
    flags = overrides.get("limits") or {}
    return Limits(**{**table, **flags})
