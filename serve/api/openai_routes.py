"""POST /v1/chat/completions and /v1/completions: parse, template, tokenize, route, respond."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from serve.api import responses as R
from serve.api.chat_prompt import chat_prompt
from serve.api.deadline import with_deadline
from serve.api.errors import invalid
from serve.api.metering import metered
from serve.api.protocol import UPSTREAM_FIELDS, ChatCompletionRequest, CompletionRequest, _Common, parse
from serve.api.request_limits import check_chat, check_completion, check_max_tokens, check_prompt_tokens
from serve.api.state import AppState, read_json, to_api_error
from serve.api.streaming import chain_first, prime, sse, sse_body, until_disconnect
from serve.api.structured_request import check_compiles
from serve.api.tenancy import observed, salted
from serve.api.token_ids import check_request_ids
from serve.api.tool_calls import tool_events
from serve.api.tool_prompt import prepare
from serve.backends.base import Backend, Delta, GenerateRequest, ModelInfo, StreamEvent, Unsupported, Usage
from serve.backends.merge import merge
from serve.limits import Limits
from serve.router.replica import Replica
from serve.sampling_params import SamplingParams
from serve.telemetry.genai import traced


def check_supported(req: _Common, info: ModelInfo, backend: str) -> None:
    for name in sorted(req.set_fields() & info.unsupported):
        raise Unsupported(name, backend)


def fit_context(prompt_len: int, params: SamplingParams, max_len: int) -> SamplingParams:
    """Fill in max_tokens from the context left, or refuse loudly: never truncate silently."""
    room = max_len - prompt_len
    if params.max_tokens is None:
        if room < 1:
            raise invalid(f"This model's maximum context length is {max_len} tokens. However, your prompt "
                          f"has {prompt_len} tokens, leaving no room for output.", "messages",
                          "context_length_exceeded")
        return replace(params, max_tokens=room)
    if prompt_len + params.max_tokens > max_len:
        raise invalid(f"This model's maximum context length is {max_len} tokens. However, you requested "
                      f"{prompt_len + params.max_tokens} tokens ({prompt_len} in the prompt, "
                      f"{params.max_tokens} for the completion). Please reduce the prompt or max_tokens.",
                      "max_tokens", "context_length_exceeded")
    return params


async def _local_request(backend: Backend, rid: str, params: SamplingParams, prompt: str | list[int],
                         add_special: bool, model: str, priority: int, limits: Limits,
                         text: str | None = None) -> GenerateRequest:
    if isinstance(prompt, str):
        ids = await backend.tokenize(prompt, add_special=add_special)
        text = prompt
    else:
        ids = list(prompt)
    if not ids:
        raise invalid("the prompt is empty", "prompt")
    check_request_ids(ids, params, backend.info.vocab_size)
    check_prompt_tokens(len(ids), limits, "prompt" if add_special else "messages")
    fitted = fit_context(len(ids), params, backend.info.max_model_len)
    check_max_tokens(params.max_tokens, limits)
    if params.max_tokens is None:  # "up to the context" still stops at the server's max_tokens
        fitted = replace(fitted, max_tokens=min(fitted.max_tokens or 1, limits.max_tokens))
    params = fitted
    return GenerateRequest(rid, params, prompt=text, prompt_token_ids=tuple(ids), model=model, priority=priority)


async def chat_completions(request: Request) -> Response:
    state: AppState = request.app.state.sluice
    body = await read_json(request, state)
    req: ChatCompletionRequest = parse(ChatCompletionRequest, body)
    check_chat(req, state.config.limits)
    group = state.resolve(req.model, request)
    plan = req.tool_plan()
    constraint = req.constraint()
    params = req.sampling_params(constraint[0] if constraint else None)
    messages = [m.flat() for m in req.messages]
    upstream = _upstream_fields(body)
    rid = f"chatcmpl-{uuid.uuid4().hex}"
    served_locally = [True]  # set by `make` for the replica that serves (before its first event)

    async def make(replica: Replica) -> GenerateRequest:
        backend, info = replica.backend, replica.backend.info
        check_supported(req, info, backend.name)
        served_locally[0] = info.templates_locally
        if not info.templates_locally:
            check_max_tokens(params.max_tokens, state.config.limits)
            return GenerateRequest(rid, params, messages=tuple(messages), model=req.model, priority=req.priority,
                                   upstream_fields=upstream)
        if not info.chat_template:
            # vLLM's rule too: guessing a template for a base model gives confident nonsense.
            raise invalid(f"model '{req.model}' has no chat template (a base model?); use /v1/completions",
                          "messages", "no_chat_template")
        if constraint:
            await check_compiles(constraint)
        rendered, extra = prepare(messages, plan, info.chat_template)
        text, ids = await chat_prompt(backend, info, rendered, req.add_generation_prompt, extra)
        return await _local_request(backend, rid, params, ids, False, req.model, req.priority,
                                    state.config.limits, text)

    prefix_key = "\x00".join(str(m["content"]) for m in messages[:2])[:1024]
    events = state.router.stream(group, salted(make, request), prefix_key)
    if plan is not None:
        events = tool_events(events, plan, lambda: served_locally[0])
    return await _respond(request, state, req, group.name, rid, events, _ChatFormat(rid, req))


def _upstream_fields(body: object) -> dict[str, Any]:
    """The constraint fields exactly as the client sent them (an upstream may know more than we parse)."""
    if not isinstance(body, dict):
        return {}
    return {k: body[k] for k in UPSTREAM_FIELDS if body.get(k) is not None}


async def completions(request: Request) -> Response:
    state: AppState = request.app.state.sluice
    body = await read_json(request, state)
    req: CompletionRequest = parse(CompletionRequest, body)
    if req.suffix:
        raise invalid("suffix is not supported", "suffix")
    prompts = req.prompts()
    check_completion(req, state.config.limits, len(prompts))
    group = state.resolve(req.model, request)
    constraint = req.constraint()
    params = req.sampling_params(constraint[0] if constraint else None)
    upstream = _upstream_fields(body)
    rid = f"cmpl-{uuid.uuid4().hex}"

    def stream_for(prompt: str | list[int]) -> AsyncIterator[StreamEvent]:
        async def make(replica: Replica) -> GenerateRequest:
            check_supported(req, replica.backend.info, replica.backend.name)
            if not replica.backend.info.templates_locally:
                if not isinstance(prompt, str):
                    raise invalid("token-id prompts are not supported by the remote backend", "prompt")
                check_max_tokens(params.max_tokens, state.config.limits)
                return GenerateRequest(rid, params, prompt=prompt, model=req.model, priority=req.priority,
                                       upstream_fields=upstream)
            if constraint:
                await check_compiles(constraint)
            return await _local_request(replica.backend, rid, params, prompt, True, req.model, req.priority,
                                        state.config.limits)
        key = prompt[:1024] if isinstance(prompt, str) else ",".join(map(str, prompt[:256]))
        return state.router.stream(group, salted(make, request), key)

    events = merge([stream_for(p) for p in prompts], [i * params.n for i in range(len(prompts))], False)
    fmt = _CompletionFormat(rid, req, prompts, params.n)
    return await _respond(request, state, req, group.name, rid, events, fmt)


async def _respond(request: Request, state: AppState, req: _Common, model: str, rid: str,
                   events: AsyncIterator[StreamEvent], fmt: _Format) -> Response:
    started = time.monotonic()
    events = metered(with_deadline(events, state.config.limits.request_timeout_s), state.metrics, model, started)
    events = observed(events, request, rid, req)
    events = traced(events, req, model, rid)
    if not req.stream:
        choices, usage = await until_disconnect(request, _collect(events))
        return JSONResponse(fmt.response(choices, usage))
    # Waiting for the first token (queue + prefill) watches the client too: one that leaves while
    # queued gives back its admission slot and never costs a prefill.
    first, rest = await until_disconnect(request, prime(events))
    frames = fmt.frames(chain_first(first, rest), req.include_usage)
    return StreamingResponse(sse_body(frames, lambda e: to_api_error(e, state, model), rest),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "X-Request-Id": rid})


async def _collect(events: AsyncIterator[StreamEvent]) -> tuple[dict[int, R.ChoiceState], Usage | None]:
    choices: dict[int, R.ChoiceState] = {}
    usage = None
    try:
        async for ev in events:
            if isinstance(ev, Usage):
                usage = ev
            else:
                choices.setdefault(ev.index, R.ChoiceState()).add(ev)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return choices, usage


class _Format:
    """Turns events into one response or into SSE frames, per endpoint."""

    created: int
    obj: str

    def response(self, choices: dict[int, R.ChoiceState], usage: Usage | None) -> dict[str, Any]: ...

    def delta_frames(self, ev: Delta, seen: set[int]) -> list[dict[str, Any]]: ...

    async def frames(self, events: AsyncIterator[StreamEvent], include_usage: bool) -> AsyncIterator[str]:
        seen: set[int] = set()
        async for ev in events:
            if isinstance(ev, Usage):
                if include_usage:
                    yield sse(R.usage_chunk(self.rid, self.created, self.model, self.obj, ev))
                continue
            for chunk in self.delta_frames(ev, seen):
                yield sse(chunk)


class _ChatFormat(_Format):
    obj = "chat.completion.chunk"

    def __init__(self, rid: str, req: ChatCompletionRequest) -> None:
        self.rid, self.model, self.created = rid, req.model, int(time.time())
        self.want_logprobs = req.logprobs

    def response(self, choices: dict[int, R.ChoiceState], usage: Usage | None) -> dict[str, Any]:
        return R.chat_response(self.rid, self.created, self.model, choices, usage, self.want_logprobs)

    def delta_frames(self, ev: Delta, seen: set[int]) -> list[dict[str, Any]]:
        out = []
        mk: Callable[..., dict[str, Any]] = R.chat_chunk
        if ev.index not in seen:  # OpenAI sends the role once per choice, before any content
            seen.add(ev.index)
            out.append(mk(self.rid, self.created, self.model, ev.index, {"role": "assistant", "content": ""}))
        if ev.text or ev.logprobs:
            lp = R.chat_logprobs(ev.logprobs) if (self.want_logprobs and ev.logprobs) else None
            out.append(mk(self.rid, self.created, self.model, ev.index, {"content": ev.text}, logprobs=lp))
        if ev.tool_calls:
            out.append(mk(self.rid, self.created, self.model, ev.index, {"tool_calls": list(ev.tool_calls)}))
        if ev.finish_reason:
            out.append(mk(self.rid, self.created, self.model, ev.index, {}, ev.finish_reason))
        return out


class _CompletionFormat(_Format):
    obj = "text_completion"

    def __init__(self, rid: str, req: CompletionRequest, prompts: list[str | list[int]], n: int) -> None:
        self.rid, self.model, self.created = rid, req.model, int(time.time())
        self.want_logprobs = req.logprobs is not None
        self.echo = {i * n + j: p for i, p in enumerate(prompts) for j in range(n) if req.echo and isinstance(p, str)}
        self.offsets: dict[int, int] = {}

    def response(self, choices: dict[int, R.ChoiceState], usage: Usage | None) -> dict[str, Any]:
        return R.completion_response(self.rid, self.created, self.model, choices, usage, self.want_logprobs,
                                     self.echo)

    def delta_frames(self, ev: Delta, seen: set[int]) -> list[dict[str, Any]]:
        text = ev.text
        if ev.index not in seen:
            seen.add(ev.index)
            text = self.echo.get(ev.index, "") + text
        lp = None
        if self.want_logprobs and ev.logprobs:
            lp = R.completion_logprobs(list(ev.logprobs), self.offsets.get(ev.index, 0))
        self.offsets[ev.index] = self.offsets.get(ev.index, 0) + len(text)
        if not text and not ev.finish_reason and lp is None:
            return []
        return [R.completion_chunk(self.rid, self.created, self.model, ev.index, text, ev.finish_reason, lp)]
