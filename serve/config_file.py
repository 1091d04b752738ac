"""Load a ServerConfig from a TOML or YAML file (same structure in both).

    [server]                      # optional: host, port, api_key, max_body_bytes, health_interval_s
    [limits]                      # optional, per request: max_tokens = 4096, request_timeout_s = 120, ...
    [[models]]
    name = "smollm2"              # the name clients send
    aliases = ["default"]
    policy = "prefix-affinity"    # round-robin | least-outstanding | prefix-affinity
    max_outstanding = 64          # admitted requests before 503
    [[models.replicas]]
    backend = "llamacpp"          # llamacpp | native | vllm | remote
    model = "smollm2-135m-instruct"
    options = { n_parallel = 4 }
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import yaml

from serve.config import ModelConfig, ReplicaSpec, ServerConfig
from serve.limits import LIMIT_NAMES, Limits

_SERVER_KEYS = {"host", "port", "api_key", "max_body_bytes", "health_interval_s", "log_level"}
_MODEL_KEYS = {"name", "aliases", "policy", "max_outstanding", "replicas"}
_REPLICA_KEYS = {"backend", "model", "url", "api_key", "options"}


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
    _check_keys("the config", data, {"server", "models", "limits"})
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
        models.append(ModelConfig(name=m.get("name", ""), replicas=tuple(replicas),
                                  aliases=tuple(m.get("aliases") or ()), policy=m.get("policy", "least-outstanding"),
                                  max_outstanding=int(m.get("max_outstanding", 256))))
    if not models:
        raise ValueError("the config declares no models")
    return ServerConfig(models=tuple(models), limits=_limits(data.get("limits") or {}, overrides), **server)


def _limits(section: Any, overrides: dict[str, Any]) -> Limits:
    """[limits] from the file; `sluice serve --limit-*` flags (the `limits` override) win key by key."""
    table = dict(_mapping("[limits]", section))
    _check_keys("[limits]", table, set(LIMIT_NAMES))
    flags = overrides.get("limits") or {}
    return Limits(**{**table, **flags})
