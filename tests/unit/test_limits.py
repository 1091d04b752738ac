"""Per-request limits: each one a 400/413 naming its field, configurable from TOML and flags; the
wall-clock limit as a 408 before the first event and an error after it, closing the source."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from serve.api.deadline import with_deadline
from serve.api.errors import APIError
from serve.api.protocol import ChatCompletionRequest, CompletionRequest, parse
from serve.api.request_limits import check_chat, check_completion, check_max_tokens, check_prompt_tokens
from serve.api.token_ids import check_token_ids
from serve.cli_serve import add_parser, build_config
from serve.config_file import from_dict
from serve.limits import Limits

LIM = Limits(max_messages=3, max_prompt_tokens=10, max_tokens=50, max_n=2, max_stop=2, max_stop_chars=5,
             max_logit_bias=2, max_prompts=2, max_tools_bytes=200, max_schema_bytes=100)
MSG = {"role": "user", "content": "hi"}
TOOL = {"type": "function", "function": {"name": "f", "description": "x" * 300}}


def chat_error(**kw: Any) -> APIError:
    req = parse(ChatCompletionRequest, {"model": "m", "messages": [MSG], **kw})
    with pytest.raises(APIError) as info:
        check_chat(req, LIM)
    return info.value


@pytest.mark.parametrize(("kw", "param", "status"), [
    ({"messages": [MSG] * 4}, "messages", 400),
    ({"n": 3}, "n", 400),
    ({"stop": ["a", "b", "c"]}, "stop", 400),
    ({"stop": "toolong"}, "stop", 400),
    ({"logit_bias": {"1": 1, "2": 1, "3": 1}}, "logit_bias", 400),
    ({"tools": [TOOL]}, "tools", 413),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {"d": "x" * 200}}}},
     "response_format", 413),
])
def test_each_chat_limit_names_its_field(kw: dict[str, Any], param: str, status: int) -> None:
    err = chat_error(**kw)
    assert (err.status, err.param) == (status, param)
    assert "limit" in err.message and err.body()["error"]["code"] == "limit_exceeded"


def test_requests_at_the_limits_pass() -> None:
    req = parse(ChatCompletionRequest, {"model": "m", "messages": [MSG] * 3, "max_tokens": 50, "n": 2,
                                        "stop": ["abcde", "x"], "logit_bias": {"1": 1, "2": 2}})
    check_chat(req, LIM)


def test_max_tokens_limit_names_max_tokens() -> None:
    check_max_tokens(50, LIM)
    check_max_tokens(None, LIM)
    with pytest.raises(APIError) as info:
        check_max_tokens(51, LIM)
    assert (info.value.status, info.value.param) == (400, "max_tokens")


def test_completion_batch_and_prompt_tokens() -> None:
    req = parse(CompletionRequest, {"model": "m", "prompt": ["a", "b", "c"]})
    with pytest.raises(APIError) as info:
        check_completion(req, LIM, len(req.prompts()))
    assert info.value.param == "prompt"
    check_prompt_tokens(10, LIM, "prompt")
    with pytest.raises(APIError) as info:
        check_prompt_tokens(11, LIM, "messages")
    assert (info.value.status, info.value.param) == (400, "messages")


def test_malformed_response_format_is_a_400_on_its_field() -> None:
    with pytest.raises(APIError) as info:
        parse(ChatCompletionRequest, {"model": "m", "messages": [MSG], "response_format": {"type": "yaml"}})
    assert info.value.param == "response_format"


@pytest.mark.parametrize("ids", [[-1], [5, 100], [10**30]])
def test_token_ids_outside_the_vocabulary_are_400(ids: list[int]) -> None:
    with pytest.raises(APIError) as info:
        check_token_ids(ids, 100, "prompt")
    assert (info.value.status, info.value.param) == (400, "prompt")
    check_token_ids([0, 99], 100, "prompt")
    check_token_ids([-5], None, "prompt")  # unknown vocabulary (remote): the upstream checks


@pytest.mark.parametrize("kw", [{"max_n": 0}, {"max_tokens": -1}, {"request_timeout_s": -1.0},
                                {"max_messages": "many"}, {"max_stop": True}])
def test_bad_limits_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="limits."):
        Limits(**kw)


def test_limits_from_toml_section_and_flags_win() -> None:
    data = {"models": [{"name": "m", "replicas": [{"backend": "native"}]}],
            "limits": {"max_tokens": 100, "request_timeout_s": 5}}
    cfg = from_dict(data, {"limits": {"max_tokens": 7}})
    assert (cfg.limits.max_tokens, cfg.limits.request_timeout_s, cfg.limits.max_n) == (7, 5, Limits().max_n)
    with pytest.raises(ValueError, match=r"unknown key\(s\) in \[limits\]: max_token"):
        from_dict({**data, "limits": {"max_token": 1}}, {})


def test_limit_flags(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('[[models]]\nname = "m"\n[[models.replicas]]\nbackend = "native"\n')
    args = parser.parse_args(["serve", "--config", str(cfg_file), "--limit-max-n", "3",
                              "--limit-body-timeout-s", "2.5"])
    limits = build_config(args).limits
    assert (limits.max_n, limits.body_timeout_s, limits.max_tokens) == (3, 2.5, Limits().max_tokens)


async def _events(delays: list[float], closed: list[bool]) -> AsyncIterator[int]:
    try:
        for i, d in enumerate(delays):
            await asyncio.sleep(d)
            yield i
    finally:
        closed.append(True)


def _run(delays: list[float], timeout_s: float) -> tuple[list[int], APIError | None, list[bool]]:
    closed: list[bool] = []
    got: list[int] = []

    async def go() -> APIError | None:
        try:
            async for ev in with_deadline(_events(delays, closed), timeout_s):
                got.append(ev)
        except APIError as e:
            return e
        return None

    return got, asyncio.run(go()), closed


def test_deadline_before_the_first_event_is_a_408_and_closes_the_source() -> None:
    got, err, closed = _run([5.0], 0.05)
    assert got == [] and err is not None and err.status == 408 and closed == [True]
    assert err.body()["error"]["type"] == "timeout_error"


def test_deadline_mid_stream_keeps_what_was_sent() -> None:
    got, err, closed = _run([0.0, 0.0, 5.0], 0.1)
    assert got == [0, 1] and err is not None and err.status == 408 and closed == [True]


def test_no_deadline_and_fast_streams_pass() -> None:
    assert _run([0.0, 0.01], 0)[:2] == ([0, 1], None)
    assert _run([0.0, 0.01], 5.0)[:2] == ([0, 1], None)


def test_a_timeout_of_the_source_itself_is_not_relabelled() -> None:
    async def own_timeout() -> AsyncIterator[int]:
        raise TimeoutError("upstream")
        yield 0

    async def go() -> None:
        async for _ in with_deadline(own_timeout(), 5.0):
            pass

    with pytest.raises(TimeoutError, match="upstream"):
        asyncio.run(go())
