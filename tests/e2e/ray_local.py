"""A local Ray cluster for the e2e tests, on loopback only, and `sluice serve --config` on it.

Loopback only: Ray otherwise rewrites 127.0.0.1 to the host's outward address when connecting (the
same switch `sluice serve` sets for a loopback address; read at import, so the constant is patched
too). Cluster() records its address as this machine's current Ray (what address="auto" finds): what
was there is put back, so that other Ray users on the machine do not land on a test's cluster.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.e2e.server_proc import ServerProc, start_server

NODE = {"object_store_memory": 80 * 1024**2, "node_ip_address": "127.0.0.1"}


@contextmanager
def loopback_cluster(head: dict[str, Any], workers: Sequence[dict[str, Any]] = ()) -> Iterator[Any]:
    """A `ray.cluster_utils.Cluster` (head plus `workers`, each given as extra node args), this
    process connected to it; shut down on exit."""
    import ray
    from ray._private import ray_constants
    from ray._private import utils as ray_utils
    from ray.cluster_utils import Cluster

    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    address_file = Path(ray_utils.get_ray_address_file(None))
    before = address_file.read_text() if address_file.exists() else None
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False, **head})
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)
        for w in workers:
            cluster.add_node(**NODE, **w)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="sluice-test")
        # Serve caches its controller client per process; one left by an earlier test file points at a
        # cluster that is gone ("Can't find actor ... from a different cluster").
        from ray.serve import context as serve_context
        serve_context._set_global_client(None)
        yield cluster
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        mp.undo()


@contextmanager
def sluice_on_ray(config: Path, tmp: Path, env: dict[str, str] | None = None) -> Iterator[ServerProc]:
    """`sluice serve --config CONFIG` (its [cluster] table names the cluster), stopped on exit."""
    server = start_server(["--config", str(config)], tmp, timeout_s=240, env=env)
    try:
        yield server
    finally:
        server.stop()


def openai_client(server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)
