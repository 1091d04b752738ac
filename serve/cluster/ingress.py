"""Our FastAPI app as the Serve ingress: the same routes, errors, auth and metrics as `sluice serve`,
with one RayBackend "replica" per model in front of that model's engine deployment."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve.api.app import create_app
from serve.cluster.ray_backend import RayBackend
from serve.config import ServerConfig
from serve.router.breaker import CircuitBreaker
from serve.router.policy import make_policy
from serve.router.replica import Replica
from serve.router.router import ModelGroup, Router


def engine_name(model: str) -> str:
    return f"engine-{model}"


def cluster_router(config: ServerConfig, handles: dict[str, Any]) -> Router:
    assert config.cluster is not None
    groups = []
    for mc in config.models:
        backend = RayBackend(engine_name(mc.name), handles[mc.name], config.cluster.model(mc.name).prefix_tokens)
        replica = Replica(model=mc.name, replica_id=f"{mc.name}/ray", backend=backend,
                          breaker=CircuitBreaker(mc.breaker))
        # The policy here has one replica to choose from; Serve's request router does the real choice.
        groups.append(ModelGroup(mc, [replica], make_policy(mc.policy)))
    return Router(groups)


@serve.ingress()
class SluiceIngress:
    """Handles arrive in the models' order (Serve resolves each bound engine into its handle)."""

    def __init__(self, config: ServerConfig, *handles: Any) -> None:
        self._config = config
        self._handles = {mc.name: h for mc, h in zip(config.models, handles, strict=True)}

    def __serve_build_asgi_app__(self) -> Any:
        return create_app(self._config, cluster_router(self._config, self._handles))
