"""The Backend the ingress's router sees for a model on Ray: one "replica" whose generate() streams
from the model's engine deployment through a DeploymentHandle. Serve's request router picks the
engine replica (ours, in routers.py, by the model's policy); Serve's controller places, scales and
replaces them.

A replica lost before the first event (its node gone) is retried here, bounded: Serve routes the
retry to a live replica. After the first event the client has partial output, so the stream ends
with BackendUnavailable (the API turns it into an SSE error event and [DONE]).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

from serve.backends.base import BackendBusy, BackendUnavailable, GenerateRequest, ModelInfo, StreamEvent
from serve.cluster.engine import Failure
from serve.telemetry import tracing

log = logging.getLogger("sluice.cluster")

# A replica (or its node) went away: the request never reached an engine, or its stream broke.
LOST = (RayActorError, ActorUnavailableError, ReplicaUnavailableError, DeploymentUnavailableError)
ATTEMPTS = 4
BACKOFF_S = 0.5


def prefix_key(request: GenerateRequest, prefix_tokens: int) -> str:
    """What the prefix-affinity router hashes: the prompt's first `prefix_tokens` token ids (and the
    tenant's cache salt: another tenant's cache is no hit)."""
    head = request.prompt_token_ids[:prefix_tokens] if request.prompt_token_ids else ()
    text = ",".join(map(str, head)) if head else (request.prompt or "")[:1024]
    return hashlib.blake2b(f"{request.cache_salt or ''}\x00{text}".encode(), digest_size=8).hexdigest()


class RayBackend:
    name = "ray"

    def __init__(self, deployment: str, handle: Any, prefix_tokens: int = 64) -> None:
        self.deployment, self.handle, self.prefix_tokens = deployment, handle, prefix_tokens
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise RuntimeError("RayBackend.info before start()")
        return self._info

    async def start(self) -> None:
        """Waits for one engine replica to be up (the ingress is not ready before)."""
        self._info = await self._call("model_info")

    async def stop(self) -> None:
        pass  # the engines belong to Serve; `sluice serve` deletes the application on exit

    async def check_health(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.handle.healthy.remote(), timeout=5.0))
        except Exception:  # noqa: BLE001 - any failure of a probe means down
            return False

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return await self._call("tokenize", text, add_special, parse_special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self._call("detokenize", list(token_ids))

    async def abort(self, request_id: str) -> None:
        pass  # closing the stream cancels it on its replica (see generate)

    async def _call(self, method: str, *args: Any) -> Any:
        for attempt in range(ATTEMPTS):
            try:
                return await getattr(self.handle, method).remote(*args)
            except LOST as e:
                await self._backoff(attempt, e)
        raise AssertionError("unreachable")

    async def _backoff(self, attempt: int, e: Exception) -> None:
        if attempt + 1 >= ATTEMPTS:
            raise BackendUnavailable(f"{self.deployment}: no engine replica answered ({type(e).__name__})") from e
        log.warning("%s: engine replica lost before the first event (%s); retrying", self.deployment,
                    type(e).__name__)
        await asyncio.sleep(BACKOFF_S * (attempt + 1))

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        key = prefix_key(request, self.prefix_tokens)
        for attempt in range(ATTEMPTS):
            stream = self.handle.options(stream=True).generate.remote(request, key, tracing.headers())
            started, done = False, False
            try:
                async for batch in stream:  # lists of events (the engine coalesces them)
                    for event in batch:
                        if isinstance(event, Failure):
                            raise event.error()
                        started = True
                        yield event
                done = True
                return
            except BackPressureError as e:
                raise BackendBusy(f"{self.deployment}: every engine replica is full", 503, "1") from e
            except LOST as e:
                if started:
                    raise BackendUnavailable(f"{self.deployment}: engine replica lost mid-stream "
                                             f"({type(e).__name__})") from e
                await self._backoff(attempt, e)
            finally:
                if not done:
                    stream.cancel()  # the client left or it failed: free the engine's slot now
