"""StructuredSpec: one output constraint of a request, as plain text (frozen, hashable, no torch).

The HTTP layer builds it from `response_format` / `structured_outputs` / tools; a backend that decodes
in-process turns it into a grammar (`grammar()`) and a GrammarMatcher per sequence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["json", "regex", "choice", "grammar"]
KINDS: tuple[str, ...] = ("json", "regex", "choice", "grammar")

# OpenAI's json_object mode: any JSON object (not any JSON value: a bare string would pass `{}`).
JSON_OBJECT_SCHEMA = '{"type": "object"}'

# JSON is emitted compactly and without free whitespace: a small model given flexible whitespace
# tends to pad with newlines until max_tokens instead of closing the object.
_JSON_OPTIONS: dict[str, Any] = {"whitespace_flexible": False}


@dataclass(frozen=True)
class StructuredSpec:
    """kind "json": value is a JSON schema (compact text, keys in the client's order: llguidance emits
    properties in schema order, so sorting would reorder the output's fields); "regex": a regex the whole
    output matches; "choice": a JSON list of strings, the output is one of them exactly; "grammar":
    a Lark grammar in llguidance's dialect (GBNF is accepted and converted when compiled)."""

    kind: Kind
    value: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown structured output kind {self.kind!r}; one of {', '.join(KINDS)}")

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool | None) -> StructuredSpec:
        """A schema (None: any JSON object), as compact text: equal schemas share a compiled grammar."""
        if schema is None:
            return cls("json", JSON_OBJECT_SCHEMA)
        return cls("json", json.dumps(schema, separators=(",", ":")))

    @classmethod
    def choices(cls, options: list[str]) -> StructuredSpec:
        if not options or not all(isinstance(o, str) for o in options):
            raise ValueError("choice needs a non-empty list of strings")
        return cls("choice", json.dumps(options))

    def grammar(self) -> str:
        """The llguidance grammar (its JSON text) for this constraint. Raises ValueError when the
        value cannot be read (bad JSON, a grammar that does not convert); compile errors surface
        when a matcher is built (GrammarFactory.matcher)."""
        from llguidance import LLMatcher, grammar_from

        if self.kind == "json":
            try:
                return LLMatcher.grammar_from_json_schema(self.value, defaults=_JSON_OPTIONS)  # type: ignore[arg-type]
            except ValueError as e:
                raise ValueError(f"invalid JSON schema: {e}") from e
        if self.kind == "regex":
            return LLMatcher.grammar_from_regex(self.value)
        if self.kind == "choice":
            options = json.loads(self.value)
            return LLMatcher.grammar_from_lark("start: " + " | ".join(_lark_string(o) for o in options))
        return grammar_from("grammar", self.value)


def _lark_string(text: str) -> str:
    """A Lark string literal matching `text` exactly (JSON escapes are Lark's escapes)."""
    return json.dumps(text)
