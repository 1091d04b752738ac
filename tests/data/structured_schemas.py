"""A corpus of JSON schemas for the structured-output validity tests: (prompt, schema) pairs.

Written for these tests. They cover nested objects, arrays with min/max items, enums, patterns,
numbers with bounds, optional fields, $ref / $defs, anyOf, const and nullable values. Strings carry a
maxLength and arrays a maxItems so that a complete answer fits the test's token budget: an output cut
at max_tokens is counted as invalid, never excused.
"""

from __future__ import annotations

from typing import Any

S = {"type": "string", "maxLength": 24}
SHORT = {"type": "string", "maxLength": 12}


def obj(props: dict[str, Any], required: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(props) if required is None else required,
            "additionalProperties": False, **kw}


def arr(items: dict[str, Any], lo: int = 0, hi: int = 3) -> dict[str, Any]:
    return {"type": "array", "items": items, "minItems": lo, "maxItems": hi}


def num(lo: float, hi: float, integer: bool = False) -> dict[str, Any]:
    """Bounds, and for non-integers a multipleOf: with an unbounded fraction a greedy 135M model
    repeats a digit until max_tokens ("1.1111..."). 0.25 is exact in binary, so jsonschema's float
    division checks it without rounding error."""
    if integer:
        return {"type": "integer", "minimum": lo, "maximum": hi}
    return {"type": "number", "minimum": lo, "maximum": hi, "multipleOf": 0.25}


ADDRESS = obj({"street": S, "city": SHORT, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})
COLOR = {"type": "string", "enum": ["red", "green", "blue"]}

SCHEMAS: list[tuple[str, dict[str, Any]]] = [
    ("a person", obj({"name": S, "age": num(0, 120, True)})),
    ("a book", obj({"title": S, "author": S, "year": num(1400, 2030, True)})),
    ("a point", obj({"x": num(-100, 100), "y": num(-100, 100)})),
    ("a yes/no answer", obj({"answer": {"type": "boolean"}})),
    ("a color", obj({"color": COLOR})),
    ("an address", ADDRESS),
    ("a customer with an address", obj({"name": S, "address": ADDRESS})),
    ("a list of tags", obj({"tags": arr(SHORT, 1, 3)})),
    ("three numbers", obj({"values": arr(num(0, 9, True), 3, 3)})),
    ("a to-do item", obj({"task": S, "done": {"type": "boolean"}, "priority": num(1, 5, True)})),
    ("a product", obj({"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}, "price": num(0, 1000)})),
    ("a temperature reading", obj({"celsius": num(-50, 60), "unit": {"const": "C"}})),
    ("a movie", obj({"title": S, "rating": num(0, 10)}, required=["title"])),
    ("a user profile", obj({"username": {"type": "string", "pattern": "^[a-z]{3,10}$"},
                            "email": {"type": "string", "pattern": "^[a-z]{1,8}@[a-z]{1,8}\\.com$"}})),
    ("a date", obj({"date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"}})),
    ("a traffic light state", obj({"light": {"enum": ["red", "yellow", "green"]}, "seconds": num(0, 90, True)})),
    ("a city with coordinates", obj({"city": SHORT, "lat": num(-90, 90), "lon": num(-180, 180)})),
    ("a team", obj({"name": SHORT, "members": arr(obj({"name": SHORT, "role": SHORT}), 1, 2)})),
    ("a recipe", obj({"dish": SHORT, "ingredients": arr(SHORT, 2, 3), "minutes": num(1, 240, True)})),
    ("an order", obj({"id": num(1, 99999, True), "items": arr(obj({"sku": SHORT, "qty": num(1, 9, True)}), 1, 2)})),
    ("a rectangle", {"$defs": {"pt": obj({"x": num(0, 50, True), "y": num(0, 50, True)})},
                     **obj({"top_left": {"$ref": "#/$defs/pt"}, "bottom_right": {"$ref": "#/$defs/pt"}})}),
    ("a family", {"$defs": {"person": obj({"name": SHORT, "age": num(0, 100, True)})},
                  **obj({"parent": {"$ref": "#/$defs/person"}, "children": arr({"$ref": "#/$defs/person"}, 0, 2)})}),
    ("an optional nickname", obj({"name": SHORT, "nickname": SHORT}, required=["name"])),
    ("a nullable middle name", obj({"first": SHORT, "middle": {"type": ["string", "null"], "maxLength": 10}})),
    ("a shape", obj({"shape": {"anyOf": [obj({"kind": {"const": "circle"}, "r": num(0, 10)}),
                                         obj({"kind": {"const": "square"}, "side": num(0, 10)})]}})),
    ("an HTTP response", obj({"status": {"enum": [200, 404, 500]}, "body": S})),
    ("a weekday", obj({"day": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}})),
    ("a score", obj({"player": SHORT, "score": num(0, 100, True), "level": num(1, 10, True)})),
    ("a version", obj({"version": {"type": "string", "pattern": "^[0-9]\\.[0-9]{1,2}\\.[0-9]{1,2}$"}})),
    ("a hex color", obj({"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}})),
    ("a percentage", obj({"percent": num(0, 100)})),
    ("a pair of booleans", obj({"a": {"type": "boolean"}, "b": {"type": "boolean"}})),
    ("a matrix", obj({"rows": arr(arr(num(0, 9, True), 2, 2), 2, 2)})),
    ("a config", obj({"debug": {"type": "boolean"}, "level": {"enum": ["info", "warn", "error"]},
                      "retries": num(0, 5, True)})),
    ("a planet", obj({"name": SHORT, "moons": num(0, 100, True), "gas_giant": {"type": "boolean"}})),
    ("an animal", obj({"species": SHORT, "legs": {"enum": [0, 2, 4, 6, 8]}})),
    ("a flight", obj({"from": {"type": "string", "pattern": "^[A-Z]{3}$"}, "to": {"type": "string", "pattern": "^[A-Z]{3}$"},
                      "stops": num(0, 3, True)})),
    ("a bank transfer", obj({"amount": num(0.25, 10000), "currency": {"enum": ["USD", "EUR", "GBP"]},
                             "note": SHORT}, required=["amount", "currency"])),
    ("a sentence classification", obj({"label": {"enum": ["positive", "negative", "neutral"]},
                                       "confidence": num(0, 1)})),
    ("an event", obj({"name": S, "when": obj({"day": num(1, 31, True), "month": num(1, 12, True)})})),
    ("a nested config", obj({"server": obj({"host": SHORT, "port": num(1, 65535, True)}),
                             "client": obj({"timeout": num(0, 60, True)})})),
    ("a list of points", obj({"points": arr(obj({"x": num(0, 9, True), "y": num(0, 9, True)}), 1, 3)})),
    ("a chess move", obj({"move": {"type": "string", "pattern": "^[a-h][1-8]-[a-h][1-8]$"}})),
    ("a grade", obj({"student": SHORT, "grade": {"enum": ["A", "B", "C", "D", "F"]}})),
    ("a dimension", obj({"width": num(1, 100, True), "height": num(1, 100, True), "unit": {"enum": ["cm", "in"]}})),
    ("an ID card", obj({"id": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{4}$"}, "valid": {"type": "boolean"}})),
    ("a language", obj({"language": {"enum": ["python", "rust", "go", "c"]}, "years": num(0, 40, True)})),
    ("a review", obj({"stars": num(1, 5, True), "text": S, "recommend": {"type": "boolean"}})),
    ("a tree node", {"$defs": {"leaf": obj({"value": num(0, 9, True)})},
                     **obj({"value": num(0, 9, True), "children": arr({"$ref": "#/$defs/leaf"}, 0, 2)})}),
    ("a question and options", obj({"question": S, "options": arr(SHORT, 2, 3), "answer": num(0, 2, True)})),
    ("an empty-able list", obj({"items": arr(num(0, 9, True), 0, 2)})),
    ("a status message", obj({"ok": {"type": "boolean"}, "error": {"type": ["string", "null"], "maxLength": 16}})),
    ("a stock quote", obj({"ticker": {"type": "string", "pattern": "^[A-Z]{1,4}$"}, "price": num(0, 5000)})),
    ("a url", obj({"url": {"type": "string", "pattern": "^https://[a-z]{1,10}\\.(com|org)$"}})),
]

REGEXES: list[tuple[str, str]] = [
    ("a phone number", r"[0-9]{3}-[0-9]{4}"),
    ("a year", r"(19|20)[0-9]{2}"),
    ("an IPv4 address", r"([0-9]{1,3}\.){3}[0-9]{1,3}"),
    ("an email", r"[a-z]{1,8}@[a-z]{1,8}\.(com|org)"),
    ("a time of day", r"([01][0-9]|2[0-3]):[0-5][0-9]"),
    ("a yes or no", r"(yes|no)"),
    ("a hex byte", r"0x[0-9A-F]{2}"),
    ("a capitalised word", r"[A-Z][a-z]{1,10}"),
    ("a price", r"\$[0-9]{1,4}\.[0-9]{2}"),
    ("a license plate", r"[A-Z]{2}-[0-9]{3}"),
]

CHOICES: list[tuple[str, list[str]]] = [
    ("Is the sky blue?", ["yes", "no"]),
    ("Pick a color", ["red", "green", "blue"]),
    ("How do you feel?", ["happy", "sad", "neutral", "angry"]),
    ("Which is a fruit?", ["apple", "carrot", "potato"]),
    ("Best language?", ["Python", "Rust", "C++", "Go"]),
    ("Pick a direction", ["north", "south", "east", "west"]),
]
