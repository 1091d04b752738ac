"""`remote` backend: any OpenAI-compatible upstream over HTTP (httpx), streamed chunk by chunk.

Chat requests go upstream as chat requests (the upstream applies its own template); upstream errors
keep their status and message inside our envelope; a refused connection or a 5xx before the first
chunk is `BackendUnavailable`, so the router retries another replica; a 429 (or a 503 with
Retry-After) is `BackendBusy`: backpressure, retried elsewhere without counting against the upstream.

Deadlines (replica options, seconds): `connect_timeout_s` to connect, `first_byte_timeout_s` from
sending the request to its first SSE event, `read_timeout_s` between events after that. An upstream
that accepts and then hangs ends in `BackendTimeout` instead of holding the client forever; one that
closes the stream before `[DONE]` (and before every choice finished) is a failure, not a short answer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from serve.backends.base import (
    BackendBusy,
    BackendError,
    BackendTimeout,
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
from serve.telemetry import tracing


@dataclass(frozen=True)
class Deadlines:
    connect_s: float = 5.0
    # Generous: a busy upstream may queue a long prompt before its first event.
    first_byte_s: float = 120.0
    read_s: float = 60.0  # between two SSE lines once the stream has started

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Deadlines:
        d = cls(connect_s=float(options.get("connect_timeout_s", cls.connect_s)),
                first_byte_s=float(options.get("first_byte_timeout_s", cls.first_byte_s)),
                read_s=float(options.get("read_timeout_s", cls.read_s)))
        if min(d.connect_s, d.first_byte_s, d.read_s) <= 0:
            raise ValueError("remote timeouts (connect_timeout_s, first_byte_timeout_s, read_timeout_s) must be > 0")
        return d


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
        self.deadlines = Deadlines.from_options(spec.options)
        # httpx's own read timeout is only a backstop: generate() enforces the phase deadlines itself.
        backstop = max(self.deadlines.first_byte_s, self.deadlines.read_s) + 5.0
        timeout = httpx.Timeout(connect=self.deadlines.connect_s, read=backstop, write=30.0, pool=30.0)
        self.client = httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits)
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

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        # The upstream templates chat itself (templates_locally=False), so the content-as-text split
        # of chat_prompt never runs here; an upstream /tokenize always parses special-token text.
        if not parse_special:
            raise BackendError("the remote backend cannot tokenize with special-token parsing off", 400,
                               "invalid_request_error")
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
            raise _upstream_error(r.status_code, r.text, r.headers.get("retry-after"))
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
        body.update(request.upstream_fields)  # constraints and tools, exactly as the client sent them
        if request.cache_salt and self.spec.options.get("cache_salt", True):
            body["cache_salt"] = request.cache_salt  # vLLM's field; option cache_salt=false for upstreams that refuse it
        url = f"{self.base}/{'chat/completions' if chat else 'completions'}"
        # One first-byte deadline covers connecting, the status line and the first SSE line.
        deadline = asyncio.get_running_loop().time() + self.deadlines.first_byte_s
        resp = await self._send(url, body, deadline)
        try:
            async for event in _events(_lines(resp, self.deadlines, deadline, self.base), chat):
                yield event
        except httpx.HTTPError as e:
            raise _transport_error(self.base, e, "mid-stream") from e
        finally:
            await resp.aclose()

    async def _send(self, url: str, body: dict[str, Any], deadline: float) -> httpx.Response:
        """POST and wait for the status line by `deadline` (loop time); a non-200 is raised."""
        # traceparent: the upstream's spans join this request's trace ({} when tracing is off)
        request = self.client.build_request("POST", url, json=body, headers=tracing.headers())
        try:
            async with asyncio.timeout_at(deadline):
                resp = await self.client.send(request, stream=True)
        except TimeoutError as e:
            raise BackendTimeout(f"upstream {self.base} sent nothing within "
                                 f"{self.deadlines.first_byte_s:g}s") from e
        except httpx.HTTPError as e:
            raise _transport_error(self.base, e, "before the first byte") from e
        if resp.status_code != 200:
            try:
                text = (await resp.aread()).decode("utf-8", "replace")
            except httpx.HTTPError:
                text = ""
            finally:
                await resp.aclose()
            raise _upstream_error(resp.status_code, text, resp.headers.get("retry-after"))
        return resp


def _transport_error(base: str, e: httpx.HTTPError, when: str) -> BackendUnavailable:
    if isinstance(e, httpx.TimeoutException):
        return BackendTimeout(f"upstream {base} timed out {when}: {e!r}")
    return BackendUnavailable(f"upstream {base} failed {when}: {e!r}")


@dataclass
class _Progress:
    """What a stream has said so far, to tell a finished answer from one cut short."""

    seen: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)

    def complete(self) -> bool:
        return bool(self.seen) and self.seen <= self.finished


async def _lines(resp: httpx.Response, d: Deadlines, first_by: float, base: str) -> AsyncIterator[str]:
    """The response's lines, each within its deadline: the first by `first_by` (loop time), the rest
    `read_s` after the one before. The deadline wraps only the read, never the consumer's work."""
    lines = resp.aiter_lines()
    loop = asyncio.get_running_loop()
    deadline = first_by
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                line = await anext(lines)
        except StopAsyncIteration:
            return
        except TimeoutError as e:
            raise BackendTimeout(f"upstream {base} went silent (deadline {d.first_byte_s:g}s to the first "
                                 f"event, {d.read_s:g}s between events)") from e
        deadline = loop.time() + d.read_s
        yield line


async def _events(lines: AsyncIterator[str], chat: bool) -> AsyncIterator[StreamEvent]:
    progress = _Progress()
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except ValueError as e:
            raise BackendUnavailable(f"upstream sent a malformed SSE event: {data[:200]!r}") from e
        if "error" in chunk:
            err = chunk["error"]
            raise BackendError(f"upstream error: {err.get('message', err)}", 500)
        for choice in chunk.get("choices") or ():
            delta = _delta(choice, chat)
            progress.seen.add(delta.index)
            if delta.finish_reason:
                progress.finished.add(delta.index)
            yield delta
        if chunk.get("usage"):
            u = chunk["usage"]
            cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            yield Usage(int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0)), int(cached))
    if not progress.complete():
        raise BackendUnavailable("upstream closed the stream before it finished (no [DONE])")


def _delta(choice: dict[str, Any], chat: bool) -> Delta:
    delta = choice.get("delta") or {}
    text = delta.get("content") if chat else choice.get("text")
    calls = delta.get("tool_calls") if chat else None
    return Delta(index=int(choice.get("index", 0)), text=text or "", finish_reason=choice.get("finish_reason"),
                 logprobs=_logprobs(choice.get("logprobs"), chat), tool_calls=tuple(calls) if calls else None)


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


def _upstream_error(status: int, text: str, retry_after: str | None = None) -> BackendError:
    try:
        err = json.loads(text).get("error", {})
        message = err.get("message") if isinstance(err, dict) else str(err)
        param = err.get("param") if isinstance(err, dict) else None
        code = err.get("code") if isinstance(err, dict) else None
    except (ValueError, AttributeError):
        message, param, code = text[:500], None, None
    # A 503 with Retry-After is an overloaded upstream asking for patience (sluice's own admission
    # limit answers so), not a broken one: like 429 it must not trip the breaker.
    if status == 429 or (status == 503 and retry_after):
        return BackendBusy(f"upstream answered {status}: {message}", status=status,
                           retry_after=_seconds(retry_after))
    if status >= 500:
        return BackendUnavailable(f"upstream answered {status}: {message}")
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error")
    return BackendError(f"upstream: {message}", status=status, kind=kind, param=param,
                        code=str(code) if code is not None else None)


def _seconds(retry_after: str | None) -> str | None:
    """Pass Retry-After through when it is delay-seconds; an HTTP date (rare upstream) is dropped
    rather than parsed, and the HTTP layer's default applies."""
    if retry_after and retry_after.strip().isdigit():
        return retry_after.strip()
    return None
