"""OpenAI response and stream-chunk objects built from backend events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serve.backends.base import Delta, TokenLogprob, Usage


def usage_dict(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _bytes(lp: TokenLogprob) -> list[int]:
    return list(lp.bytes_) if lp.bytes_ is not None else list(lp.token.encode("utf-8", "replace"))


def chat_logprobs(lps: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> dict[str, Any]:
    return {"content": [
        {"token": lp.token, "logprob": lp.logprob, "bytes": _bytes(lp),
         "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8", "replace"))}
                          for t, v in lp.top]}
        for lp in lps
    ]}


def completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return {
        "tokens": [lp.token for lp in lps],
        "token_logprobs": [lp.logprob for lp in lps],
        "top_logprobs": [dict(lp.top) for lp in lps],
        "text_offset": offsets,
    }


@dataclass
class ChoiceState:
    """What one choice has produced so far (non-streaming responses, and text offsets for streams)."""

    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    chars: int = 0
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)  # by tool-call index

    def add(self, d: Delta) -> None:
        self.text.append(d.text)
        self.chars += len(d.text)
        if d.logprobs:
            self.logprobs.extend(d.logprobs)
        if d.finish_reason:
            self.finish_reason = d.finish_reason
        for part in d.tool_calls or ():
            _merge_call(self.tool_calls, part)

    def message(self) -> dict[str, Any]:
        text = "".join(self.text)
        if not self.tool_calls:
            return {"role": "assistant", "content": text}
        calls = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return {"role": "assistant", "content": text or None, "tool_calls": calls}


def _merge_call(calls: dict[int, dict[str, Any]], part: dict[str, Any]) -> None:
    """Fold one stream delta of a tool call into the whole call (arguments concatenate)."""
    call = calls.setdefault(int(part.get("index", 0)),
                            {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
    if part.get("id"):
        call["id"] = part["id"]
    fn = part.get("function") or {}
    if fn.get("name"):
        call["function"]["name"] = fn["name"]
    call["function"]["arguments"] += fn.get("arguments") or ""


def chat_response(rid: str, created: int, model: str, choices: dict[int, ChoiceState], usage: Usage | None,
                  want_logprobs: bool) -> dict[str, Any]:
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": model,
        "choices": [
            {"index": i, "message": c.message(),
             "logprobs": chat_logprobs(c.logprobs) if want_logprobs else None,
             "finish_reason": c.finish_reason or "stop"}
            for i, c in sorted(choices.items())
        ],
        "usage": usage_dict(usage) if usage else None,
    }


def completion_response(rid: str, created: int, model: str, choices: dict[int, ChoiceState],
                        usage: Usage | None, want_logprobs: bool, echo_texts: dict[int, str]) -> dict[str, Any]:
    out = []
    for i, c in sorted(choices.items()):
        prefix = echo_texts.get(i, "")
        out.append({"index": i, "text": prefix + "".join(c.text),
                    "logprobs": completion_logprobs(c.logprobs, len(prefix)) if want_logprobs else None,
                    "finish_reason": c.finish_reason or "stop"})
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": out,
            "usage": usage_dict(usage) if usage else None}


def chat_chunk(rid: str, created: int, model: str, index: int, delta: dict[str, Any],
               finish_reason: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}]}


def completion_chunk(rid: str, created: int, model: str, index: int, text: str,
                     finish_reason: str | None = None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}


def usage_chunk(rid: str, created: int, model: str, obj: str, usage: Usage) -> dict[str, Any]:
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
            "usage": usage_dict(usage)}
