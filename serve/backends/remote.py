"""`remote` backend: any OpenAI-compatible upstream over HTTP (httpx), streamed chunk by chunk.

Chat requests go upstream as chat requests (the upstream applies its own template); upstream errors
keep their status and message inside our envelope; a refused connection or a 5xx before the first
chunk is `BackendUnavailable`, so the router retries another replica.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from serve.backends.base import (
    BackendError,
    BackendUnavailable,
    Delta,
    GenerateRequest,
    ModelInfo,
    StreamEvent,
    TokenLogprob,
    Usage,
)
from serve.config import ReplicaSpec
from serve.sampling_params import SamplingParams

_TIMEOUT = httpx.Timeout(connect=5.0, read=600.0, write=30.0, pool=30.0)


def _body(p: SamplingParams) -> dict[str, Any]:
    body: dict[str, Any] = {"n": p.n, "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed,
                            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty}
    if p.max_tokens is not None:
        body["max_tokens"] = p.max_tokens
    if p.stop:
        body["stop"] = list(p.stop)
    if p.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in p.logit_bias.items()}
    # Extensions understood by vLLM, SGLang, llama.cpp and sluice; sent only when set.
    for key, value, default in (("top_k", p.top_k, 0), ("min_p", p.min_p, 0.0),
                                ("repetition_penalty", p.repetition_penalty, 1.0),
                                ("ignore_eos", p.ignore_eos, False),
                                ("stop_token_ids", list(p.stop_token_ids), [])):
        if value != default:
            body[key] = value
    return {k: v for k, v in body.items() if v is not None}


class RemoteBackend:
    name = "remote"

    def __init__(self, spec: ReplicaSpec) -> None:
        assert spec.url, "remote replicas need a url"
        self.spec = spec
        self.base = spec.url.rstrip("/")
        self.root = self.base[:-3] if self.base.endswith("/v1") else self.base
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        limits = httpx.Limits(max_connections=int(spec.options.get("max_connections", 1024)),
                              max_keepalive_connections=64)
        self.client = httpx.AsyncClient(timeout=_TIMEOUT, headers=headers, limits=limits)
        self._info = ModelInfo(max_model_len=int(spec.options.get("max_model_len", 1 << 20)),
                               templates_locally=False)

    @property
    def info(self) -> ModelInfo:
        return self._info

    async def start(self) -> None:
        """Learn the upstream's context length when it says (vLLM and sluice do); never fatal."""
        try:
            r = await self.client.get(f"{self.base}/models", timeout=5.0)
            for m in r.json().get("data", []):
                if m.get("id") == self.spec.model and m.get("max_model_len"):
                    self._info = ModelInfo(max_model_len=int(m["max_model_len"]), templates_locally=False)
        except (httpx.HTTPError, ValueError, AttributeError):
            pass

    async def stop(self) -> None:
        await self.client.aclose()

    async def check_health(self) -> bool:
        for url in (f"{self.root}/health", f"{self.base}/models"):
            try:
                if (await self.client.get(url, timeout=5.0)).status_code == 200:
                    return True
            except httpx.HTTPError:
                continue
        return False

    async def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = await self._post_json(f"{self.root}/tokenize", {"model": self.spec.model, "prompt": text,
                                                                "add_special_tokens": add_special})
        return list(data["tokens"])

    async def detokenize(self, token_ids: list[int]) -> str:
        data = await self._post_json(f"{self.root}/detokenize", {"model": self.spec.model, "tokens": token_ids})
        return str(data["prompt"])

    async def _post_json(self, url: str, body: dict[str, Any]) -> Any:
        try:
            r = await self.client.post(url, json=body)
        except httpx.HTTPError as e:
            raise BackendUnavailable(f"upstream {self.root} unreachable: {e}") from e
        if r.status_code != 200:
            raise _upstream_error(r.status_code, r.text)
        return r.json()

    async def abort(self, request_id: str) -> None:
        """Closing the stream (the caller's aclose) drops the connection; the upstream aborts on that."""

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        chat = request.messages is not None
        body = {**_body(request.params), "model": self.spec.model, "stream": True,
                "stream_options": {"include_usage": True}}
        if chat:
            body["messages"] = list(request.messages or ())
            if request.params.logprobs is not None:
                body["logprobs"], body["top_logprobs"] = True, request.params.logprobs
        else:
            body["prompt"] = request.prompt
            if request.params.logprobs is not None:
                body["logprobs"] = request.params.logprobs
        if request.cache_salt and self.spec.options.get("cache_salt", True):
            body["cache_salt"] = request.cache_salt  # vLLM's field; option cache_salt=false for upstreams that refuse it
        url = f"{self.base}/{'chat/completions' if chat else 'completions'}"
        try:
            async with self.client.stream("POST", url, json=body) as resp:
                if resp.status_code != 200:
                    raise _upstream_error(resp.status_code, (await resp.aread()).decode("utf-8", "replace"))
                async for event in _events(resp, chat):
                    yield event
        except httpx.HTTPError as e:
            raise BackendUnavailable(f"upstream {self.base} failed: {e}") from e


async def _events(resp: httpx.Response, chat: bool) -> AsyncIterator[StreamEvent]:
    async for line in resp.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        chunk = json.loads(data)
        if "error" in chunk:
            err = chunk["error"]
            raise BackendError(f"upstream error: {err.get('message', err)}", 500)
        for choice in chunk.get("choices") or ():
            yield _delta(choice, chat)
        if chunk.get("usage"):
            u = chunk["usage"]
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            yield Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)), int(cached))


def _delta(choice: dict[str, Any], chat: bool) -> Delta:
    text = (choice.get("delta") or {}).get("content") if chat else choice.get("text")
    return Delta(index=int(choice.get("index", 0)), text=text or "", finish_reason=choice.get("finish_reason"),
                 logprobs=_logprobs(choice.get("logprobs"), chat))


def _logprobs(lp: dict[str, Any] | None, chat: bool) -> tuple[TokenLogprob, ...] | None:
    if not lp:
        return None
    if chat:
        return tuple(TokenLogprob(c["token"], float(c["logprob"]),
                                  top=tuple((t["token"], float(t["logprob"])) for t in c.get("top_logprobs") or ()))
                     for c in lp.get("content") or ())
    tops = lp.get("top_logprobs") or [None] * len(lp.get("tokens") or ())
    return tuple(TokenLogprob(t, float(v if v is not None else 0.0), top=tuple((top or {}).items()))
                 for t, v, top in zip(lp.get("tokens") or (), lp.get("token_logprobs") or (), tops, strict=False))


def _upstream_error(status: int, text: str) -> BackendError:
    try:
        err = json.loads(text).get("error", {})
        message = err.get("message") if isinstance(err, dict) else str(err)
        param = err.get("param") if isinstance(err, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        message, param, code = text[:500], None, None
    if status >= 500 or status == 429:
        return BackendUnavailable(f"upstream answered {status}: {message}")
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    return BackendError(f"upstream: {message}", status=status, kind=kind, param=param,
                        code=str(code) if code is not None else None)
