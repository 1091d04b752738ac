"""Request schemas for tool calling and structured output (OpenAI's `tools`, `tool_choice`,
`response_format`).

They are parsed (so /openapi.json and the 400s describe them) but not yet honoured: a request that
sets one of them to anything but a no-op gets a 400 naming the field rather than an answer that
silently ignores it. `unsupported_feature` is that check.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDef


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["json_object"]


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    name: str
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


def unsupported_feature(tools: list[Tool] | None, tool_choice: ToolChoice | None,
                        response_format: Any) -> str | None:
    """The first of the three fields set to something this server cannot honour yet, else None.
    No-ops: no or empty tools; tool_choice "none" (or "auto" with no tools: nothing to call);
    response_format {"type": "text"} (plain text is what every answer is)."""
    if tools:
        return "tools"
    if tool_choice is not None and tool_choice not in ("none", "auto"):
        return "tool_choice"
    if response_format is not None and not isinstance(response_format, TextFormat):
        return "response_format"
    return None
