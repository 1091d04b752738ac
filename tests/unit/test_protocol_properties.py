"""Property tests (hypothesis): whatever JSON a client sends, parsing and validation end in a request
or in an APIError naming the field, never in another exception; SamplingParams likewise raises only
ParamError; and SSE framing round-trips any text and always ends with exactly one [DONE]."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve.api.errors import APIError
from serve.api.protocol import ChatCompletionRequest, CompletionRequest, parse
from serve.api.request_limits import check_chat, check_completion
from serve.api.streaming import sse, sse_body
from serve.limits import Limits
from serve.sampling_params import ParamError, SamplingParams

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)  # JSON text has no lone surrogates
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=12)
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
          "min_p", "stop", "stop_token_ids", "seed", "n", "presence_penalty", "frequency_penalty",
          "repetition_penalty", "logit_bias", "ignore_eos", "stream", "stream_options", "priority", "logprobs",
          "top_logprobs", "echo", "suffix", "tools", "tool_choice", "response_format", "num_speculative_tokens",
          "structured_outputs", "parallel_tool_calls"]
# Near-valid bodies: real field names with arbitrary values, and well-formed messages, so that the
# checks after the schema (sampling params, limits, unsupported features) are reached too.
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "wizard"]),
                                 "content": TEXT | JSON})
NEAR = st.fixed_dictionaries({"model": st.just("m"), "messages": st.lists(MESSAGE, max_size=3),
                              "prompt": TEXT | st.lists(st.integers(), max_size=3)},
                             optional={f: JSON for f in FIELDS if f not in ("model", "messages", "prompt")})
BODIES = st.dictionaries(TEXT, JSON, max_size=6) | NEAR


def _validate(model: type, body: dict[str, Any]) -> None:
    limits = Limits()
    req = parse(model, body)
    if isinstance(req, ChatCompletionRequest):
        check_chat(req, limits)
        req.constraint()
        for m in req.messages:
            m.flat()
    else:
        check_completion(req, limits, len(req.prompts()))
        req.constraint()
    req.sampling_params()


@SETTINGS
@given(body=BODIES, model=st.sampled_from([ChatCompletionRequest, CompletionRequest]))
def test_any_json_object_parses_or_is_a_4xx_naming_the_field(body: dict[str, Any], model: type) -> None:
    try:
        _validate(model, body)
    except APIError as e:
        assert e.status in (400, 413)
        assert e.param, e.message
        assert e.body()["error"]["message"]


SP_VALUES = {f.name: JSON for f in dataclasses.fields(SamplingParams)} | {
    "n": st.integers(), "max_tokens": st.none() | st.integers(), "temperature": st.floats(),
    "top_p": st.floats(), "top_k": st.integers(), "min_p": st.floats(), "seed": st.none() | st.integers(),
    "stop": st.lists(TEXT, max_size=20).map(tuple), "logprobs": st.none() | st.integers(),
    "logit_bias": st.dictionaries(st.integers(), st.floats(), max_size=3),
    "num_speculative_tokens": st.none() | st.integers(), "repetition_penalty": st.floats(),
    "presence_penalty": st.floats(), "frequency_penalty": st.floats(),
}
SP_TYPED = {k: v for k, v in SP_VALUES.items() if k not in ("stop_token_ids", "ignore_eos", "echo")}


@SETTINGS
@given(kw=st.fixed_dictionaries({}, optional=SP_TYPED))
def test_sampling_params_raise_only_param_errors_naming_a_field(kw: dict[str, Any]) -> None:
    names = {f.name for f in dataclasses.fields(SamplingParams)}
    try:
        p = SamplingParams(**kw)
    except ParamError as e:
        assert e.param in names
        return
    assert 1 <= p.n <= 128 and 0.0 <= p.temperature <= 2.0 and 0.0 < p.top_p <= 1.0
    assert p.seed is None or -(1 << 63) <= p.seed < (1 << 63)


@SETTINGS
@given(obj=st.dictionaries(TEXT, JSON, max_size=5))
def test_sse_frame_round_trips_any_json(obj: dict[str, Any]) -> None:
    frame = sse(obj)
    assert frame.startswith("data: ") and frame.endswith("\n\n")
    body = frame[len("data: "):-2]
    assert "\n" not in body and "\r" not in body  # a newline in the text would split the event
    assert json.loads(body) == obj


class Boom(Exception):
    pass


async def _frames(texts: list[str], fail_at: int | None) -> AsyncIterator[str]:
    for i, t in enumerate(texts):
        if i == fail_at:
            raise Boom("mid-stream")
        yield sse({"text": t})


def _to_error(e: BaseException) -> APIError:
    return APIError(500, f"failed: {type(e).__name__}")


@SETTINGS
@given(texts=st.lists(TEXT | st.sampled_from(["data: [DONE]", "\n\ndata: x\n\n", "\r\n", "[DONE]"]), max_size=8),
       fail=st.none() | st.integers(0, 8))
def test_stream_always_ends_with_exactly_one_done(texts: list[str], fail: int | None) -> None:
    async def run() -> list[str]:
        source = _frames(texts, fail)
        return [f async for f in sse_body(source, _to_error, source)]

    frames = asyncio.run(run())
    assert frames[-1] == "data: [DONE]\n\n"
    assert frames.count("data: [DONE]\n\n") == 1
    events = [json.loads(f[len("data: "):-2]) for f in frames[:-1]]
    failed = fail is not None and fail < len(texts)
    sent = texts[:fail] if failed else texts
    assert [e["text"] for e in events[:len(sent)]] == sent
    assert len(events) == len(sent) + (1 if failed else 0)
    if failed:
        assert events[-1]["error"]["message"] == "failed: Boom"
