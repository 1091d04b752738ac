"""Schemathesis against a real `sluice serve` (llamacpp backend, the bundled 135M model): every
operation in /openapi.json is fuzzed from its own schema, and every answer must be a non-5xx that
matches the schema (the OpenAI error envelope for failures). Tight limits keep each case fast;
the limits are part of what is fuzzed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.e2e.server_proc import MODEL, ServerProc, metric_sum, start_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LIMITS = {"max-tokens": 16, "max-n": 2, "max-prompts": 2, "max-messages": 8, "max-prompt-tokens": 200,
          "max-stop": 4, "max-logit-bias": 8, "max-tools-bytes": 4096, "max-schema-bytes": 4096,
          "request-timeout-s": 20}
EXAMPLES = 40


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    flags = [x for k, v in LIMITS.items() for x in (f"--limit-{k}", str(v))]
    s = start_server(["--backend", "llamacpp", "-o", "n_parallel=2", "-o", "n_ctx_per_seq=256", *flags],
                     tmp_path_factory.mktemp("fuzz"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProc) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")


# Sampling knobs drawn at random are almost always out of range (a fast 400). Cases stripped down to
# these fields reach the engine, so that generation, streaming and the limits are fuzzed too.
STRUCTURAL = {"model", "messages", "prompt", "tokens", "stream", "stream_options", "n", "max_tokens",
              "max_completion_tokens", "stop", "echo", "logprobs", "add_special_tokens", "add_generation_prompt",
              "tools", "tool_choice", "response_format", "seed"}


def _structural(case: schemathesis.Case) -> schemathesis.Case:
    if isinstance(case.body, dict):
        case.body = {k: v for k, v in case.body.items() if k in STRUCTURAL}
    return case


OPERATIONS = [("/v1/chat/completions", "POST"), ("/v1/completions", "POST"), ("/tokenize", "POST"),
              ("/detokenize", "POST"), ("/v1/models", "GET"), ("/health", "GET"), ("/metrics", "GET"),
              ("/v1/stats", "GET")]


def test_every_operation_is_fuzzed(api_schema: schemathesis.BaseSchema) -> None:
    found = {(op.ok().path, op.ok().method.upper()) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


# schemathesis' own pytest plugin does not run under pytest 9 (it reaches for a private attribute),
# so each operation's case strategy is driven by hypothesis directly: the same generation.
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_server_errors_and_answers_match_the_schema(api_schema: schemathesis.BaseSchema, fuzz_server: ServerProc,
                                                        path: str, method: str) -> None:
    op = api_schema[path][method]
    positive = op.as_strategy(GenerationMode.POSITIVE)
    cases = st.one_of(positive, positive.map(_structural), op.as_strategy(GenerationMode.NEGATIVE))

    @given(case=cases)
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              database=None)
    def run(case: schemathesis.Case) -> None:
        # A random model name only ever reaches the 404; the served one lets the body reach the engine.
        if isinstance(case.body, dict) and "model" in case.body:
            case.body["model"] = MODEL
        r = case.call_and_validate(base_url=fuzz_server.base_url, timeout=60,
                                   checks=[not_a_server_error, response_schema_conformance])
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    statuses: dict[int, int] = {}
    run()
    print(path, sorted(statuses.items()))
    assert _engine_idle(fuzz_server.base_url), "a fuzzed request left work running in the engine"


def _engine_idle(base_url: str, within_s: float = 5.0) -> bool:
    """Every answered request has left the engine: no slot held by a request nobody waits for."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if metric_sum(base_url, "engine_requests_running") == 0:
            return True
        time.sleep(0.1)
    return False
