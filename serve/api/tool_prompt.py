"""Tools in the prompt, and tool calls / tool results in the history.

A chat template that reads `tools` (Hermes-, Qwen-, Llama-3.1-style) renders them itself: it gets the
OpenAI tool list as `tools=`. A template that does not (SmolLM2's, ChatML) gets our rendering: a
system turn (merged into the first system message when there is one) that lists each function as
one JSON line `{"name", "description", "parameters"}` and states the call format of tool_spec.py.
Either way the grammar, not the prompt, guarantees the format; the prompt only makes a call likely.

History: an assistant message's `tool_calls` become, for a template without tool support, the text
the model would have produced (`<tool_call>` + the calls as JSON), so it sees its own format; for a
template with support, their `arguments` strings are parsed to objects (what such templates expect,
as vLLM passes them). `role: tool` messages keep their role and `tool_call_id`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from serve.api.tool_spec import PREFIX, ToolPlan

_READS_TOOLS = re.compile(r"\btools\b")


def template_reads_tools(template: str | None) -> bool:
    return bool(template and _READS_TOOLS.search(template))


def tool_system_text(plan: ToolPlan) -> str:
    lines = ["# Tools", "", "You can call these functions (JSON schemas of their arguments):"]
    for t in plan.tools:
        fn = t.function
        lines.append(json.dumps({"name": fn.name, "description": fn.description or "",
                                 "parameters": fn.parameters or {"type": "object"}}))
    shape = '{"name": <function name>, "arguments": <arguments object>}'
    if plan.parallel:
        lines += ["", f"To call functions, reply with {PREFIX} followed by a JSON array of calls, each {shape}."]
    else:
        lines += ["", f"To call a function, reply with {PREFIX} followed by one JSON object {shape}."]
    if plan.mode == "named":
        lines.append(f"You must call the function {plan.callable[0]}.")
    elif plan.mode == "required":
        lines.append("You must call a function.")
    else:
        lines.append("Otherwise, answer the user in plain text.")
    return "\n".join(lines)


def prepare(messages: list[dict[str, Any]], plan: ToolPlan | None,
            template: str | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(messages for the template, extra template variables)."""
    native = template_reads_tools(template)
    out = [_history_message(m, native) for m in messages]
    if plan is None:
        return out, {}
    if native:
        return out, {"tools": plan.template_tools()}
    return _with_system(out, tool_system_text(plan)), {}


def _with_system(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0].get("role") in ("system", "developer"):
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{text}".lstrip()}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _history_message(m: dict[str, Any], native: bool) -> dict[str, Any]:
    calls = m.get("tool_calls")
    if m.get("role") != "assistant" or not calls:
        return m
    if native:
        return {**m, "tool_calls": [_with_parsed_arguments(c) for c in calls]}
    as_text = [{"name": c.get("function", {}).get("name", ""), "arguments": _arguments(c)} for c in calls]
    body = json.dumps(as_text[0] if len(as_text) == 1 else as_text, ensure_ascii=False, separators=(",", ":"))
    return {**m, "content": f"{m.get('content') or ''}{PREFIX}{body}"}


def _arguments(call: dict[str, Any]) -> Any:
    raw = (call.get("function") or {}).get("arguments", "{}")
    try:
        return json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        return raw  # not JSON: shown to the model as the string it was


def _with_parsed_arguments(call: dict[str, Any]) -> dict[str, Any]:
    fn = call.get("function") or {}
    return {**call, "function": {**fn, "arguments": _arguments(call)}}
