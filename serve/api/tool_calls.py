"""Constrained output text -> OpenAI tool calls, incrementally (the format is in tool_spec.py).

Each choice's text passes through a ToolOutput: while it could still become the prefix it is held
back; then it is either content (released as it comes) or a call list, which a scanner turns into
OpenAI's stream deltas: the first delta of each call carries id, type and function.name, later ones
carry `arguments` fragments that concatenate to the exact arguments text. Non-streamed responses
merge the same deltas, so both forms agree byte for byte.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from serve.api.tool_spec import PREFIX, ToolPlan
from serve.backends.base import StreamEvent, Usage

_NAME = re.compile(r'"name":\s*("(?:[^"\\]|\\.)*")')


class _CallScanner:
    """Splits `{"name":N,"arguments":{...}}` objects (alone, or in a JSON array) as they stream.

    Tracks JSON nesting outside strings: a call object sits at depth `base` + 1 (base 1 inside the
    parallel form's array), its arguments object one deeper; every character from the arguments'
    opening brace to its matching close is an arguments fragment."""

    def __init__(self, parallel: bool) -> None:
        self.base = 1 if parallel else 0
        self.depth, self.in_str, self.esc = 0, False, False
        self.index, self.head, self.in_args = -1, "", False

    def feed(self, text: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        frag = ""
        for ch in text:
            opening = not self.in_str and ch == "{"
            if self.in_args:
                frag += ch
                self._step(ch)
                self.in_args = self.depth > self.base + 1
                continue
            if opening and self.depth == self.base + 1:  # the arguments object begins
                out.append(self._header())
                self.in_args = True
                frag = ch
                self._step(ch)
                continue
            if frag:
                out.append({"index": self.index, "function": {"arguments": frag}})
                frag = ""
            if opening and self.depth == self.base:  # a new call object
                self.index += 1
                self.head = ""
            self._step(ch)
            self.head += ch
        if frag:
            out.append({"index": self.index, "function": {"arguments": frag}})
        return out

    def _header(self) -> dict[str, Any]:
        m = _NAME.search(self.head)
        name = json.loads(m.group(1)) if m else ""
        return {"index": self.index, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                "function": {"name": name, "arguments": ""}}

    def _step(self, ch: str) -> None:
        if self.in_str:
            if self.esc:
                self.esc = False
            elif ch == "\\":
                self.esc = True
            elif ch == '"':
                self.in_str = False
        elif ch == '"':
            self.in_str = True
        elif ch in "{[":
            self.depth += 1
        elif ch in "}]":
            self.depth -= 1


class ToolOutput:
    """One choice's text -> (content, tool-call deltas). `mode`: None until decided, "text", "tool"."""

    def __init__(self, plan: ToolPlan) -> None:
        self.mode: str | None = None
        self.held = ""
        self.scanner = _CallScanner(plan.parallel)

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        if self.mode == "text":
            return text, []
        if self.mode == "tool":
            return "", self.scanner.feed(text)
        self.held += text
        if self.held.startswith(PREFIX):
            self.mode = "tool"
            rest, self.held = self.held[len(PREFIX):], ""
            return "", self.scanner.feed(rest)
        if PREFIX.startswith(self.held):
            return "", []
        self.mode, held, self.held = "text", self.held, ""
        return held, []

    def finish(self) -> str:
        """Text still held back (output that ended as a prefix of the marker is content)."""
        held, self.held = self.held, ""
        return held


async def tool_events(events: AsyncIterator[StreamEvent], plan: ToolPlan,
                      local: Callable[[], bool]) -> AsyncIterator[StreamEvent]:
    """Rewrite the deltas of a backend that decoded here (`local()`, asked per event: the router picks
    the replica after this stream is built) into content / tool_calls; an upstream's pass through."""
    outs: dict[int, ToolOutput] = {}
    try:
        async for ev in events:
            if isinstance(ev, Usage) or not local():
                yield ev
                continue
            out = outs.setdefault(ev.index, ToolOutput(plan))
            text, calls = out.feed(ev.text)
            reason = ev.finish_reason
            if reason:
                text += out.finish()
                if out.mode == "tool" and reason == "stop":
                    reason = "tool_calls"
            yield replace(ev, text=text, tool_calls=tuple(calls) or None, finish_reason=reason)
    finally:
        await events.aclose()  # type: ignore[attr-defined]
