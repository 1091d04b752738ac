"""Every constrained output is valid: 54 JSON schemas, 10 regexes and 6 choice lists through the real
llama.cpp engine on the bundled model, greedy and at temperature 0.8.

An output counts only when it finished by itself (the grammar completed: finish "stop") and
validates with `jsonschema` / matches the regex in full / is one of the choices. The budget per
output is generous for the corpus (strings and arrays are bounded), so a cut answer is a failure.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import jsonschema
import pytest

from serve.backends.llamacpp_engine import Finished, Job, LlamaCppEngine
from serve.sampling_params import SamplingParams
from serve.structured.spec import StructuredSpec
from tests.data.structured_schemas import CHOICES, REGEXES, SCHEMAS
from tests.unit.model_fixtures import llamacpp_engine

pytestmark = pytest.mark.slow

MAX_TOKENS = 160


@dataclass
class Out:
    text: str = ""
    reason: str = ""
    done: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, payload: object) -> None:
        if kind == "token":
            self.text += payload[0]  # type: ignore[index]
        else:
            assert isinstance(payload, Finished)
            self.text += payload.tail
            self.reason = payload.reason
            self.done.set()


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    yield from llamacpp_engine(n_parallel=8, n_ctx_per_seq=512, n_threads=2)


def generate(engine: LlamaCppEngine, items: list[tuple[str, StructuredSpec]], temperature: float) -> list[Out]:
    """All items at once (the engine batches them); seeded, so a failure reproduces."""
    factory = engine.grammar_factory()
    outs = [Out() for _ in items]
    for i, ((prompt, spec), out) in enumerate(zip(items, outs, strict=True)):
        chat = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
        params = SamplingParams(max_tokens=MAX_TOKENS, temperature=temperature, seed=i, structured=spec)
        engine.submit(Job(f"c{i}", engine.tokenize(chat, False), params, out.emit, matcher=factory.matcher(spec)))
    for out in outs:
        assert out.done.wait(600)
    return outs


def _json_ok(schema: dict, out: Out) -> bool:
    try:
        jsonschema.validate(json.loads(out.text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return out.reason == "stop"


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_json_schema_output_validates(engine: LlamaCppEngine, temperature: float) -> None:
    items = [(f"Reply with JSON describing {name}.", StructuredSpec.json_schema(schema)) for name, schema in SCHEMAS]
    outs = generate(engine, items, temperature)
    bad = [(name, o.reason, o.text) for (name, schema), o in zip(SCHEMAS, outs, strict=True) if not _json_ok(schema, o)]
    print(f"json schemas valid at temperature {temperature}: {len(SCHEMAS) - len(bad)}/{len(SCHEMAS)}")
    assert not bad, bad


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_regex_output_matches(engine: LlamaCppEngine, temperature: float) -> None:
    items = [(f"Write {name}.", StructuredSpec("regex", rx)) for name, rx in REGEXES]
    outs = generate(engine, items, temperature)
    bad = [(rx, o.reason, o.text) for (_, rx), o in zip(REGEXES, outs, strict=True)
           if o.reason != "stop" or not re.fullmatch(rx, o.text)]
    print(f"regexes matched at temperature {temperature}: {len(REGEXES) - len(bad)}/{len(REGEXES)}")
    assert not bad, bad


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_every_choice_output_is_a_choice(engine: LlamaCppEngine, temperature: float) -> None:
    items = [(q, StructuredSpec.choices(options)) for q, options in CHOICES]
    outs = generate(engine, items, temperature)
    bad = [(options, o.text) for (_, options), o in zip(CHOICES, outs, strict=True)
           if o.reason != "stop" or o.text not in options]
    print(f"choices valid at temperature {temperature}: {len(CHOICES) - len(bad)}/{len(CHOICES)}")
    assert not bad, bad
