"""`sluice serve --config FILE` with `[cluster] engine = "ray"`: connect to (or start) Ray, deploy one
engine deployment per model and our ingress, serve until interrupted, then delete the application."""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from serve.cluster.config import ClusterModel
from serve.config import ModelConfig, ReplicaSpec, ServerConfig

log = logging.getLogger("sluice.cluster")
APP = "sluice"
# Passed to every replica: Ray workers start from the raylet's environment, not ours.
_ENV_PREFIXES = ("OTEL_", "SLUICE_", "HF_", "TRANSFORMERS_", "XDG_CACHE_HOME")
_THREAD_OPTION = {"llamacpp": "n_threads", "native": "num_threads"}
# A local Ray started for `sluice serve` shares its cores with the engines, whose decode threads wait
# on each other at every step: background wake-ups cost more than their CPU share. Defaults (the
# environment wins) that cut the idle tree's CPU by a quarter (7% -> 5% of a core, 2-core box).
_LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_enable_metrics_collection": "0",  # Ray's own metrics: no dashboard here to read them; our /metrics is ours
    "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",  # every replica flushed its metric cache each 100 ms
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",  # the controller's reconcile loop, the largest idle cost at 0.1 s
}


def replica_env() -> dict[str, str]:
    """Environment for replicas: our settings, and a PYTHONPATH that finds this very checkout of
    `serve` (and its kernels) on a node where sluice runs from source rather than an install."""
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    root = Path(__file__).resolve().parents[2]
    paths = [str(root), *([str(root / "kernels")] if (root / "kernels").is_dir() else [])]
    env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _engine_spec(mc: ModelConfig, cm: ClusterModel) -> ReplicaSpec:
    """The model's first replica entry, with the cluster's thread count unless it sets its own."""
    spec = mc.replicas[0]
    option = _THREAD_OPTION.get(spec.backend)
    if option and option not in spec.options:
        spec = replace(spec, options={**spec.options, option: cm.threads})
    return spec


def engine_options(mc: ModelConfig, cm: ClusterModel, env: dict[str, str]) -> dict[str, Any]:
    from ray.serve.config import RequestRouterConfig

    from serve.cluster.ingress import engine_name
    from serve.cluster.routers import ROUTERS

    opts: dict[str, Any] = {
        "name": engine_name(mc.name),
        "ray_actor_options": {"num_cpus": cm.num_cpus, "runtime_env": {"env_vars": env}},
        "max_ongoing_requests": cm.max_ongoing_requests,
        "health_check_period_s": 2.0, "health_check_timeout_s": 30.0, "graceful_shutdown_timeout_s": 5.0,
    }
    if cm.autoscaling:
        opts["autoscaling_config"] = cm.autoscaling_config()
    else:
        opts["num_replicas"] = cm.replicas or len(mc.replicas)
    router = ROUTERS.get(mc.policy)
    if router is not None:
        kwargs = {"max_imbalance": cm.prefix_max_imbalance} if mc.policy == "prefix-affinity" else {}
        opts["request_router_config"] = RequestRouterConfig(request_router_class=router,
                                                            request_router_kwargs=kwargs)
    return opts


def build_application(config: ServerConfig) -> Any:
    from ray import serve

    from serve.cluster.engine import EngineReplica
    from serve.cluster.ingress import SluiceIngress

    assert config.cluster is not None
    env = replica_env()
    engines = []
    for mc in config.models:
        cm = config.cluster.model(mc.name)
        engines.append(serve.deployment(EngineReplica).options(**engine_options(mc, cm, env))
                       .bind(_engine_spec(mc, cm), cm.threads, cm.stream_interval_ms / 1000))
    ingress = serve.deployment(SluiceIngress).options(
        name="ingress", num_replicas=1, max_ongoing_requests=10_000,  # our app admits by its own limits
        ray_actor_options={"num_cpus": config.cluster.ingress_num_cpus, "runtime_env": {"env_vars": env},
                           "resources": dict(config.cluster.ingress_resources)})
    return ingress.bind(config, *engines)


def _loopback(address: str | None) -> bool:
    host = (address or "127.0.0.1").rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1")


def run_cluster(config: ServerConfig) -> int:
    assert config.cluster is not None
    if _loopback(config.cluster.address):
        # Ray rewrites a loopback address to the host's outward IP (and a local Ray binds there)
        # unless it is told that this is not a multi-host cluster; read when ray is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    local = config.cluster.address is None
    if local:
        for k, v in _LOCAL_RAY_ENV.items():
            os.environ.setdefault(k, v)  # read at import and by the processes ray.init starts
    import ray
    from ray import serve

    # "local", not None: None joins whatever cluster this machine last started (RAY_ADDRESS or Ray's
    # session file), another user's included, and our shutdown below would then take theirs down.
    ray.init(address="local" if local else config.cluster.address, namespace="sluice",
             runtime_env={"env_vars": replica_env()}, include_dashboard=False if local else None,
             log_to_driver=True)
    serve.start(proxy_location="HeadOnly", http_options={"host": config.host, "port": config.port})
    try:
        serve.run(build_application(config), name=APP, route_prefix="/")
        log.info("sluice on Ray Serve: http://%s:%d", config.host, config.port)
        _wait_for_signal()
    finally:
        serve.delete(APP)
        if local:  # our own local Ray: take it down with us
            serve.shutdown()
            ray.shutdown()
    return 0


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
