"""SSE framing: OpenAI chunk order per choice, usage only on request, logprob offsets, and a stream
that always ends with exactly one [DONE], even when it fails midway."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

from serve.api import responses as R
from serve.api.errors import APIError
from serve.api.openai_routes import _ChatFormat, _CompletionFormat
from serve.api.protocol import ChatCompletionRequest, CompletionRequest, parse
from serve.api.state import to_api_error
from serve.api.streaming import chain_first, prime, sse, sse_body
from serve.backends.base import Delta, StreamEvent, TokenLogprob, Usage

USAGE = Usage(prompt_tokens=5, completion_tokens=3, cached_tokens=2)


async def from_list(events: Iterable[StreamEvent]) -> AsyncIterator[StreamEvent]:
    for ev in events:
        yield ev


async def drain(frames: AsyncIterator[str]) -> list[str]:
    return [f async for f in frames]


def decode(frames: list[str]) -> list[Any]:
    out = []
    for f in frames:
        assert f.startswith("data: ") and f.endswith("\n\n"), f
        payload = f[len("data: "):-2]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def chat_frames(events: list[StreamEvent], include_usage: bool, **kw: Any) -> list[dict[str, Any]]:
    req = parse(ChatCompletionRequest, {"model": "m", "messages": [{"role": "user", "content": "x"}], **kw})
    return decode(asyncio.run(drain(_ChatFormat("chatcmpl-1", req).frames(from_list(events), include_usage))))


def completion_frames(events: list[StreamEvent], prompts: list[str | list[int]], n: int = 1,
                      **kw: Any) -> list[dict[str, Any]]:
    req = parse(CompletionRequest, {"model": "m", "prompt": prompts, **kw})
    fmt = _CompletionFormat("cmpl-1", req, prompts, n)
    return decode(asyncio.run(drain(fmt.frames(from_list(events), False))))


def test_sse_frame_is_compact_json_line() -> None:
    assert sse({"a": "é", "b": [1, 2]}) == 'data: {"a":"é","b":[1,2]}\n\n'


TWO_CHOICES = [Delta(0, "Hel"), Delta(1, "Wo"), Delta(0, "lo"), Delta(1, "rld", finish_reason="length"),
               Delta(0, "", finish_reason="stop"), USAGE]


def test_chat_role_once_per_choice_before_content_then_finish() -> None:
    chunks = chat_frames(TWO_CHOICES, include_usage=False)
    for c in chunks:
        assert c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" and c["model"] == "m"
    per: dict[int, list[dict[str, Any]]] = {}
    for c in chunks:
        assert len(c["choices"]) == 1
        per.setdefault(c["choices"][0]["index"], []).append(c["choices"][0])
    for index, text, reason in [(0, "Hello", "stop"), (1, "World", "length")]:
        seq = per[index]
        assert seq[0]["delta"] == {"role": "assistant", "content": ""}
        assert sum("role" in s["delta"] for s in seq) == 1
        assert "".join(s["delta"].get("content", "") for s in seq) == text
        assert [s["finish_reason"] for s in seq][-1] == reason
        assert all(s["finish_reason"] is None for s in seq[:-1])
        assert seq[-1]["delta"] == {}


def test_chat_usage_chunk_only_when_requested() -> None:
    assert all("usage" not in c for c in chat_frames(TWO_CHOICES, include_usage=False))
    chunks = chat_frames(TWO_CHOICES, include_usage=True)
    last = chunks[-1]
    assert last["choices"] == []
    assert last["usage"] == {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                             "prompt_tokens_details": {"cached_tokens": 2}}
    assert sum("usage" in c for c in chunks) == 1


def test_chat_empty_delta_without_finish_sends_nothing_but_the_role() -> None:
    chunks = chat_frames([Delta(0, ""), Delta(0, "a")], include_usage=False)
    assert [c["choices"][0]["delta"] for c in chunks] == [{"role": "assistant", "content": ""}, {"content": "a"}]


def _lp(token: str, logprob: float, top: tuple[tuple[str, float], ...] = ()) -> TokenLogprob:
    return TokenLogprob(token=token, logprob=logprob, top=top)


def test_chat_logprobs_only_when_asked() -> None:
    ev = Delta(0, "ab", logprobs=(_lp("a", -0.1, (("a", -0.1), ("b", -2.0))), _lp("b", -0.5)))
    plain = chat_frames([ev], include_usage=False)
    assert plain[1]["choices"][0]["logprobs"] is None
    with_lp = chat_frames([ev], include_usage=False, logprobs=True, top_logprobs=2)
    content = with_lp[1]["choices"][0]["logprobs"]["content"]
    assert [c["token"] for c in content] == ["a", "b"]
    assert content[0]["bytes"] == [97]
    assert content[0]["top_logprobs"] == [{"token": "a", "logprob": -0.1, "bytes": [97]},
                                          {"token": "b", "logprob": -2.0, "bytes": [98]}]


def test_completion_chunks_text_and_finish() -> None:
    chunks = completion_frames([Delta(0, "foo"), Delta(0, ""), Delta(0, "bar", finish_reason="stop"), USAGE],
                               ["p"])
    assert [c["object"] for c in chunks] == ["text_completion"] * 2  # the empty delta sends nothing
    assert [c["choices"][0]["text"] for c in chunks] == ["foo", "bar"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, "stop"]


def test_completion_logprobs_text_offset_runs_across_chunks_and_echo() -> None:
    events = [Delta(0, "ab", logprobs=(_lp("a", -1.0), _lp("b", -2.0))),
              Delta(0, "cde", logprobs=(_lp("cd", -3.0), _lp("e", -4.0)), finish_reason="length")]
    chunks = completion_frames(events, ["Hi "], logprobs=0, echo=True)
    first, second = (c["choices"][0] for c in chunks)
    assert first["text"] == "Hi ab"  # the echoed prompt leads the first chunk
    assert first["logprobs"]["text_offset"] == [0, 1]
    assert second["logprobs"]["text_offset"] == [5, 7]  # after "Hi ab"
    assert second["logprobs"]["tokens"] == ["cd", "e"]
    assert second["logprobs"]["token_logprobs"] == [-3.0, -4.0]


def test_completion_logprobs_offsets_without_echo() -> None:
    events = [Delta(0, "ab", logprobs=(_lp("a", -1.0), _lp("b", -2.0))), Delta(0, "c", logprobs=(_lp("c", -1.0),))]
    chunks = completion_frames(events, ["Hi "], logprobs=1)
    assert [c["choices"][0]["logprobs"]["text_offset"] for c in chunks] == [[0, 1], [2]]


def test_completion_echo_per_prompt_and_sample() -> None:
    events = [Delta(i, "x", finish_reason="stop") for i in range(4)]
    chunks = completion_frames(events, ["A", "B"], n=2, echo=True)
    assert [c["choices"][0]["text"] for c in chunks] == ["Ax", "Ax", "Bx", "Bx"]


def test_non_stream_responses() -> None:
    st = R.ChoiceState()
    for d in (Delta(0, "a", logprobs=(_lp("a", -1.0),)), Delta(0, "b", logprobs=(_lp("b", -2.0),), finish_reason="length")):
        st.add(d)
    chat = R.chat_response("id", 1, "m", {0: st}, USAGE, want_logprobs=True)
    assert chat["choices"][0]["message"] == {"role": "assistant", "content": "ab"}
    assert chat["choices"][0]["finish_reason"] == "length"
    assert chat["usage"]["total_tokens"] == 8
    comp = R.completion_response("id", 1, "m", {0: st}, None, want_logprobs=True, echo_texts={0: "P:"})
    assert comp["choices"][0]["text"] == "P:ab"
    assert comp["choices"][0]["logprobs"]["text_offset"] == [2, 3]
    assert comp["usage"] is None


# --- sse_body: the stream ends with exactly one [DONE], errors become one SSE error event ---

class ClosableEvents:
    """The event source sse_body must close when it ends (that close aborts a generation)."""

    def __init__(self) -> None:
        self.closed = False

    def __aiter__(self) -> ClosableEvents:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        self.closed = True


async def frames_then(n: int, exc: BaseException | None) -> AsyncIterator[str]:
    for i in range(n):
        yield sse({"i": i})
    if exc is not None:
        raise exc


def run_body(n: int, exc: BaseException | None) -> tuple[list[Any], ClosableEvents, list[BaseException]]:
    events, seen = ClosableEvents(), []

    def to_error(e: BaseException) -> APIError:
        seen.append(e)
        return to_api_error(e)

    out = asyncio.run(drain(sse_body(frames_then(n, exc), to_error, events)))
    return decode(out), events, seen


def test_normal_stream_ends_with_exactly_one_done_and_closes_events() -> None:
    out, events, seen = run_body(3, None)
    assert out == [{"i": 0}, {"i": 1}, {"i": 2}, "[DONE]"]
    assert events.closed and seen == []


def test_error_mid_stream_is_one_error_event_then_done() -> None:
    boom = APIError(400, "bad stop", param="stop")
    out, events, seen = run_body(2, boom)
    assert out[:2] == [{"i": 0}, {"i": 1}]
    assert out[2] == {"error": {"message": "bad stop", "type": "invalid_request_error", "param": "stop", "code": None}}
    assert out[3:] == ["[DONE]"]
    assert seen == [boom] and events.closed


def test_unexpected_error_mid_stream_does_not_leak_its_message() -> None:
    out, _, _ = run_body(1, RuntimeError("secret path /etc/shadow"))
    assert out[-1] == "[DONE]" and out.count("[DONE]") == 1
    err = out[1]["error"]
    assert err["type"] == "server_error" and "secret" not in err["message"]


def test_prime_raises_errors_before_the_first_event_and_chains_the_rest() -> None:
    async def failing() -> AsyncIterator[int]:
        raise APIError(404, "nope")
        yield 0  # pragma: no cover

    async def three() -> AsyncIterator[int]:
        for i in range(3):
            yield i

    async def main() -> None:
        try:
            await prime(failing())
        except APIError as e:
            assert e.status == 404
        else:
            raise AssertionError("prime did not raise")
        first, rest = await prime(three())
        assert first == 0
        assert [x async for x in chain_first(first, rest)] == [0, 1, 2]
        none, empty = await prime(from_list([]))
        assert none is None and [x async for x in chain_first(none, empty)] == []

    asyncio.run(main())
