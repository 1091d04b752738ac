"""The remote backend forwards the tenant's cache salt in vLLM's `cache_salt` field (off by option)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serve.backends.base import GenerateRequest
from serve.backends.remote import RemoteBackend
from serve.config import ReplicaSpec
from serve.sampling_params import SamplingParams

SSE = ('data: {"choices":[{"index":0,"text":"ok","finish_reason":"stop"}]}\n\n'
       'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n')


def sent_body(options: dict, salt: str | None) -> dict:
    bodies: list[dict] = []

    def handle(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(200, text=SSE, headers={"content-type": "text/event-stream"})

    backend = RemoteBackend(ReplicaSpec(backend="remote", model="up", url="http://upstream/v1", options=options))
    backend.client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    req = GenerateRequest("r", SamplingParams(max_tokens=1), prompt="hi", cache_salt=salt)

    async def run() -> None:
        async for _ in backend.generate(req):
            pass

    asyncio.run(run())
    return bodies[0]


@pytest.mark.parametrize(("options", "salt", "expected"), [
    ({}, "s1", "s1"), ({}, None, None), ({"cache_salt": False}, "s1", None),
])
def test_cache_salt_goes_upstream(options: dict, salt: str | None, expected: str | None) -> None:
    assert sent_body(options, salt).get("cache_salt") == expected
