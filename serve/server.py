"""Assemble config -> replicas -> router -> FastAPI app."""

from __future__ import annotations

from fastapi import FastAPI

from serve.api.app import create_app
from serve.backends.registry import create_backend
from serve.config import ServerConfig
from serve.router.breaker import CircuitBreaker
from serve.router.replica import Replica
from serve.router.router import Router


def build_router(config: ServerConfig) -> Router:
    replicas: dict[str, list[Replica]] = {}
    for mc in config.models:
        replicas[mc.name] = [
            Replica(model=mc.name, replica_id=f"{mc.name}/{i}:{spec.backend}", backend=create_backend(spec),
                    breaker=CircuitBreaker(mc.breaker))
            for i, spec in enumerate(mc.replicas)
        ]
    return Router.from_replicas(list(config.models), replicas)


def build_app(config: ServerConfig) -> FastAPI:
    return create_app(config, build_router(config))
