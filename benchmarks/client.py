"""Streaming OpenAI-compatible client that times every chunk on the monotonic clock.

Timestamps are taken the moment a complete SSE line is handed to us, before any JSON parsing; the
time spent parsing is summed per request (`client_overhead`) so the client's own cost is known.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from benchmarks.record import RequestRecord
from benchmarks.workload import Turn

Counter = Callable[[str], int]  # text -> token count, for the tokenizer fallback


@dataclass(frozen=True)
class Target:
    base_url: str  # ends in /v1
    model: str
    endpoint: str = "completions"  # "completions" | "chat"
    api_key: str | None = None
    ignore_eos: bool = False
    temperature: float = 0.0
    timeout_s: float = 600.0
    extra_body: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h


def normalize_base_url(url: str) -> str:
    """'http://h:8000', 'http://h:8000/' and 'http://h:8000/v1' all mean the same OpenAI root."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--base-url must start with http:// or https://, got {url!r}")
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def request_body(target: Target, turn: Turn, history: list[dict[str, str]]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model, "stream": True, "max_tokens": turn.output_len,
        "temperature": target.temperature, "stream_options": {"include_usage": True},
    }
    if target.endpoint == "chat":
        body["messages"] = [*history, {"role": "user", "content": turn.prompt}]
    else:
        body["prompt"] = "".join(m["content"] for m in history) + turn.prompt
    if target.ignore_eos:
        body["ignore_eos"] = True
    body.update(target.extra_body)
    return body


@dataclass
class _Stream:
    """Mutable state while one response streams in."""

    chunk_times: list[float] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    overhead: float = 0.0
    events: int = 0
    done: bool = False
    error: str | None = None
    written: float | None = None
    last_event: float | None = None  # E2E ends here: the stream's last event, not the body's close
    new_connection: bool = False

    async def trace(self, event: str, _info: dict[str, Any]) -> None:
        """httpx trace hook: when the body reached the socket, and whether a TCP connect was needed."""
        if event == "http11.send_request_body.complete":
            self.written = time.monotonic()
        elif event == "connection.connect_tcp.complete":
            self.new_connection = True

    def feed(self, payload: str, t: float) -> None:
        self.events += 1
        self.last_event = t
        if payload == "[DONE]":
            self.done = True
            return
        obj = json.loads(payload)
        if "error" in obj:
            err = obj["error"]
            self.error = err.get("message", str(err)) if isinstance(err, dict) else str(err)
            return
        if obj.get("usage"):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or ():
            piece = _content(choice)
            if piece:
                self.chunk_times.append(t)
                self.text.append(piece)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]


def _content(choice: dict[str, Any]) -> str:
    """Generated text of one choice; a role-only delta yields ''. Reasoning text counts as output."""
    if "delta" in choice:
        d = choice["delta"] or {}
        return (d.get("content") or "") + (d.get("reasoning_content") or d.get("reasoning") or "")
    return choice.get("text") or ""


async def send(client: httpx.AsyncClient, target: Target, turn: Turn, history: list[dict[str, str]],
               index: int, count_tokens: Counter | None) -> tuple[RequestRecord, str]:
    """Run one streaming request; never raises for request failures (they become error records)."""
    body = json.dumps(request_body(target, turn, history)).encode()  # encoded before the clock starts
    st = _Stream()
    status: int | None = None
    sent = time.monotonic()
    try:
        async with client.stream("POST", target.url, content=body, headers=target.headers(),
                                 timeout=target.timeout_s, extensions={"trace": st.trace}) as resp:
            status = resp.status_code
            if status != 200:
                detail = (await resp.aread()).decode("utf-8", "replace")[:300]
                return _failed(index, sent, turn, f"http_{status}", detail, status), ""
            await _consume(resp, st)
    except httpx.TimeoutException as e:
        return _failed(index, sent, turn, "timeout", repr(e), status), ""
    except httpx.ConnectError as e:
        return _failed(index, sent, turn, "connect", str(e), status), ""
    except (httpx.ReadError, httpx.RemoteProtocolError) as e:
        return _failed(index, sent, turn, "read", repr(e), status), ""
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError, TypeError) as e:
        return _failed(index, sent, turn, "protocol", f"bad SSE payload: {e}", status), ""
    end = st.last_event or time.monotonic()
    return _finish(st, index, sent, end, turn, count_tokens, status), "".join(st.text)


async def _consume(resp: httpx.Response, st: _Stream) -> None:
    async for line in resp.aiter_lines():
        if st.done:
            continue  # read the body to its end so the connection goes back to the pool for reuse
        t = time.monotonic()
        if line.startswith("data:"):
            st.feed(line[5:].strip(), t)
        st.overhead += time.monotonic() - t
        if st.error:
            return


def _finish(st: _Stream, index: int, sent: float, end: float, turn: Turn,
            count_tokens: Counter | None, status: int | None) -> RequestRecord:
    text = "".join(st.text)
    prompt_tokens, output_tokens, source, cached = _token_counts(st, turn, text, count_tokens)
    kind, err = None, None
    if st.error:
        kind, err = "stream_error", st.error
    elif not st.chunk_times:
        kind, err = "empty", "the stream carried no generated content"
    elif not st.done:
        kind, err = "incomplete", "the stream ended without [DONE]"
    elif st.finish_reason is None:
        kind, err = "truncated", "the stream ended without a finish_reason"
    return RequestRecord(
        index=index, sent=sent, written=st.written, end=end, chunk_times=tuple(st.chunk_times), prompt_tokens=prompt_tokens,
        output_tokens=output_tokens, token_source=source, expected_prompt_tokens=turn.prompt_len,
        expected_output_tokens=turn.output_len, cached_tokens=cached, finish_reason=st.finish_reason,
        error_kind=kind, error=err, status=status, conversation=turn.conversation, turn=turn.turn,
        client_overhead=st.overhead, events=st.events,
        extra={"new_connection": True} if st.new_connection else {})


def _token_counts(st: _Stream, turn: Turn, text: str,
                  count_tokens: Counter | None) -> tuple[int | None, int | None, str, int | None]:
    u = st.usage
    if u and u.get("completion_tokens") is not None:
        details = u.get("prompt_tokens_details") or {}
        return u.get("prompt_tokens"), u["completion_tokens"], "usage", details.get("cached_tokens")
    if count_tokens is None:
        return turn.prompt_len, len(st.chunk_times), "chunks", None
    return turn.prompt_len, count_tokens(text), "tokenizer", None


def _failed(index: int, sent: float, turn: Turn, kind: str, detail: str, status: int | None) -> RequestRecord:
    return RequestRecord(index=index, sent=sent, end=time.monotonic(), error_kind=kind, error=detail,
                         status=status, expected_prompt_tokens=turn.prompt_len,
                         expected_output_tokens=turn.output_len, conversation=turn.conversation,
                         turn=turn.turn)
