"""One of our backends as a Ray Serve replica (the engine deployment's body).

Plain class, no Ray import: deploy.py turns it into a deployment with the model's resources. What
crosses the actor boundary is our own frozen dataclasses (GenerateRequest in; lists of Delta, Usage
or a Failure out, batched by coalesce.py), pickled by Ray. A BackendError is sent as a Failure event
rather than raised, so the ingress re-raises the same class with the same status (Ray would wrap it
in a RayTaskError).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from serve.backends.base import BackendError, GenerateRequest, ModelInfo, StreamEvent
from serve.backends.registry import create_backend
from serve.cluster.coalesce import coalesce
from serve.config import ReplicaSpec
from serve.telemetry import tracing


@dataclass(frozen=True)
class Failure:
    """A BackendError, as data: raised again on the ingress side."""

    message: str
    status: int
    kind: str
    param: str | None
    code: str | None
    retry_after: str | None

    @classmethod
    def of(cls, e: BackendError) -> Failure:
        return cls(str(e), e.status, e.kind, e.param, e.code, e.retry_after)

    def error(self) -> BackendError:
        e = BackendError(self.message, self.status, self.kind, self.param, self.code)
        e.retry_after = self.retry_after
        return e


class EngineReplica:
    """Serve calls these methods through a DeploymentHandle; `generate` streams."""

    async def __init__(self, spec: ReplicaSpec, threads: int, stream_interval_s: float = 0.0) -> None:
        _limit_threads(threads)
        self.stream_interval_s = stream_interval_s
        tracing.configure_from_env()
        self.backend = create_backend(spec)
        await self.backend.start()

    async def model_info(self) -> ModelInfo:
        return self.backend.info

    async def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        return await self.backend.tokenize(text, add_special=add_special, parse_special=parse_special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self.backend.detokenize(token_ids)

    async def healthy(self) -> bool:
        return await self.backend.check_health()

    async def check_health(self) -> None:
        """Serve's own probe: raising makes the controller replace this replica."""
        if not await asyncio.wait_for(self.backend.check_health(), timeout=10.0):
            raise RuntimeError("backend reports unhealthy")

    async def generate(self, request: GenerateRequest, prefix_key: str = "",
                       trace: dict[str, str] | None = None) -> AsyncIterator[list[StreamEvent | Failure]]:
        """Batches of events, in order (coalesce.py). `prefix_key` is read by the request router, not
        here. Cancellation (the ingress closed the stream) closes the backend's generator, which
        aborts the request and frees its KV blocks."""
        with tracing.span("engine generate", carrier=trace, **{"sluice.backend": self.backend.name}):
            try:
                async with contextlib.aclosing(coalesce(self.backend.generate(request),
                                                        self.stream_interval_s)) as batches:
                    async for batch in batches:
                        yield batch
            except BackendError as e:
                yield [Failure.of(e)]

    async def __del__(self) -> None:
        """Serve's shutdown hook for a replica: pending generations end, the model is released."""
        backend = getattr(self, "backend", None)
        if backend is not None:
            await backend.stop()


def _limit_threads(threads: int) -> None:
    """Keep a replica to its declared CPUs: torch and OpenMP default to every core of the node."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass
