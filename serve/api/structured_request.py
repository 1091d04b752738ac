"""A request's output constraint: `response_format` or `structured_outputs` (or tools, see
tool_spec.py) -> one StructuredSpec, and the name of the field it came from (for 400s).

One constraint per request: two `structured_outputs` keys, or both fields constraining, is a 400
naming the field. A spec that does not compile is a 400 naming its field too, checked before the
request is queued (only for backends that decode here; an upstream checks its own).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serve.api.errors import invalid
from serve.api.protocol_tools import JsonObjectFormat, JsonSchemaFormat, StructuredOutputs
from serve.structured.spec import StructuredSpec

Constraint = tuple[StructuredSpec, str]  # (spec, the request field it came from)


def from_response_format(fmt: Any) -> Constraint | None:
    if isinstance(fmt, JsonObjectFormat):
        return StructuredSpec.json_schema(None), "response_format"
    if isinstance(fmt, JsonSchemaFormat):
        return StructuredSpec.json_schema(fmt.json_schema.schema_ or {}), "response_format"
    return None  # "text" or absent: no constraint


def from_structured_outputs(so: StructuredOutputs | None) -> Constraint | None:
    if so is None:
        return None
    given = [k for k in ("json_", "regex", "choice", "grammar") if getattr(so, k) is not None]
    names = [k.rstrip("_") for k in given]
    if len(given) > 1:
        raise invalid(f"structured_outputs takes exactly one of json, regex, choice, grammar; got "
                      f"{', '.join(names)}", "structured_outputs")
    if not given:
        raise invalid("structured_outputs needs one of json, regex, choice, grammar", "structured_outputs")
    return _spec(names[0], getattr(so, given[0])), "structured_outputs"


def _spec(kind: str, value: Any) -> StructuredSpec:
    try:
        if kind == "json":
            schema = json.loads(value) if isinstance(value, str) else value
            return StructuredSpec.json_schema(schema)
        if kind == "choice":
            return StructuredSpec.choices(value)
        return StructuredSpec(kind, value)  # type: ignore[arg-type]
    except ValueError as e:
        raise invalid(f"invalid structured_outputs.{kind}: {e}", "structured_outputs") from e


def one_constraint(*candidates: Constraint | None) -> Constraint | None:
    """At most one of the candidates may be set; two are a 400 naming the second's field."""
    given = [c for c in candidates if c is not None]
    if len(given) > 1:
        raise invalid(f"'{given[1][1]}' cannot be combined with '{given[0][1]}': one output constraint "
                      "per request", given[1][1])
    return given[0] if given else None


def _check(spec: StructuredSpec) -> str:
    from llguidance import LLMatcher

    try:
        return LLMatcher.validate_grammar(spec.grammar())
    except ValueError as e:
        return str(e)


async def check_compiles(constraint: Constraint) -> None:
    """400 naming the field when the constraint does not compile (syntax, unsupported schema keyword).
    On a thread: a large schema takes milliseconds to compile."""
    spec, field = constraint
    err = await asyncio.to_thread(_check, spec)
    if err:
        raise invalid(f"invalid {field}: {err}", field)
