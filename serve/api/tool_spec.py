"""Tool calling as a constraint: `tools` + `tool_choice` + `parallel_tool_calls` -> a ToolPlan, and
the grammar that makes the model's output either text or a well-formed call.

The output format (what the grammar allows, what tool_calls.py parses):

    <tool_call>{"name":"get_weather","arguments":{"city":"Paris"}}          parallel_tool_calls=false
    <tool_call>[{"name":"a","arguments":{...}},{"name":"b","arguments":{...}}]   parallel (default)

`arguments` validates against the function's `parameters` schema (any object when it has none);
`name` is one of the offered functions. tool_choice "required" and named force the prefix; "auto"
allows free text instead, and free text can never begin with the prefix, so the first tokens decide,
and no guess over finished text is ever needed. Under "auto" a JSON `response_format` (or
`structured_outputs.json`) shapes the answer instead of free text, as OpenAI allows: the output is
then either that JSON or a call (a JSON value never starts with the prefix).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from serve.api.errors import invalid
from serve.api.protocol_tools import NamedToolChoice, Tool, ToolChoice
from serve.structured.spec import StructuredSpec

PREFIX = "<tool_call>"
Mode = Literal["auto", "required", "named"]

# Free text: anything that does not start with the prefix (llguidance lexemes support & and ~).
_TEXT = r'TEXT: /(.|\n)*/ & ~/<tool_call>(.|\n)*/'


@dataclass(frozen=True)
class ToolPlan:
    tools: tuple[Tool, ...]
    mode: Mode
    callable: tuple[str, ...]  # the names the output may call
    parallel: bool

    def spec(self, answer: StructuredSpec | None = None) -> StructuredSpec:
        """The call grammar; `answer` (a JSON spec, "auto" only) replaces free text as the other choice."""
        calls = [_call_schema(t) for t in self.tools if t.function.name in self.callable]
        one: dict[str, Any] = calls[0] if len(calls) == 1 else {"anyOf": calls}
        schema = {"type": "array", "items": one, "minItems": 1} if self.parallel else one
        # Compact JSON: the streamed argument fragments are then exactly the final arguments text.
        schema = {**schema, "x-guidance": {"whitespace_flexible": False}}
        call = f'"{PREFIX}" calls\ncalls: %json {json.dumps(schema)}'
        if self.mode == "auto" and answer is not None:
            return StructuredSpec("grammar", f"start: answer | {call}\nanswer: %json {_compact(answer)}")
        if self.mode == "auto":
            return StructuredSpec("grammar", f"start: TEXT | {call}\n{_TEXT}")
        return StructuredSpec("grammar", f"start: {call}")

    def template_tools(self) -> list[dict[str, Any]]:
        """The tools as OpenAI sends them: what a chat template that supports tools reads."""
        return [t.model_dump(exclude_none=True) for t in self.tools]


def can_shape_answer(spec: StructuredSpec) -> bool:
    """A JSON schema (an object, not `true`) can stand in for free text next to tool calls; regex,
    choice and grammar constraints stay a conflict (400)."""
    return spec.kind == "json" and isinstance(json.loads(spec.value), dict)


def _compact(answer: StructuredSpec) -> str:
    """A JSON spec's schema, emitted without free whitespace like every other JSON we constrain."""
    if not can_shape_answer(answer):
        raise ValueError("only a JSON object schema can shape the answer next to tool calls")
    return json.dumps({**json.loads(answer.value), "x-guidance": {"whitespace_flexible": False}})


def _call_schema(tool: Tool) -> dict[str, Any]:
    params = tool.function.parameters or {"type": "object"}
    return {"type": "object", "properties": {"name": {"const": tool.function.name}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def plan_tools(tools: list[Tool] | None, choice: ToolChoice | None, parallel: bool | None) -> ToolPlan | None:
    """None when no call can happen (no tools, or tool_choice "none"). 400s name the bad field."""
    names = [t.function.name for t in tools or ()]
    if len(set(names)) != len(names):
        raise invalid("tool function names must be unique", "tools")
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise invalid(f"tool_choice names function '{choice.function.name}', which is not in tools",
                          "tool_choice")
        return ToolPlan(tuple(tools or ()), "named", (choice.function.name,), bool(parallel))
    if choice == "required" and not names:
        raise invalid("tool_choice 'required' needs at least one tool", "tool_choice")
    if not names or choice == "none":
        return None
    mode: Mode = "required" if choice == "required" else "auto"
    return ToolPlan(tuple(tools or ()), mode, tuple(names), parallel is not False)
